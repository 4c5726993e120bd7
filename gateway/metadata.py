"""HTTP headers ↔ gRPC metadata and the ``Grpc-Timeout`` header (pure functions).

Request headers passed upstream: ``Authorization``, ``traceparent``, ``tracestate``,
``x-request-id`` and every ``Grpc-Metadata-<key>`` (as ``<key>``; a ``-bin`` key's value is
base64). Response metadata, initial and trailing, comes back as ``Grpc-Metadata-<key>`` headers,
except the transport's own ``grpc-*`` keys.
"""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Iterable

PASSED_HEADERS = ("authorization", "traceparent", "tracestate", "x-request-id")
METADATA_PREFIX = "grpc-metadata-"
REQUEST_ID = "x-request-id"

_TIMEOUT = re.compile(r"(\d{1,8})([HMSmun])")
_UNIT_S = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
_KEY = re.compile(r"[0-9a-z_.-]+")
_VALUE = re.compile(r"[\x20-\x7e]*")


#: What one metadata entry costs beyond its key and value, as HTTP/2 (and gRPC's limit) counts.
ENTRY_OVERHEAD = 32


class HeaderError(ValueError):
    """A header that cannot become metadata or a deadline; ``header`` names it."""

    def __init__(self, header: str, message: str) -> None:
        super().__init__(message)
        self.header = header


class MetadataTooLarge(HeaderError):
    """The headers passed on would make more metadata than the limit."""


def parse_grpc_timeout(value: str) -> float:
    """Seconds from a gRPC timeout (``TimeoutValue TimeoutUnit``: at most 8 digits and one
    of H M S m u n).

    >>> parse_grpc_timeout("5S"), parse_grpc_timeout("100m"), parse_grpc_timeout("1H")
    (5.0, 0.1, 3600.0)

    Raises HeaderError for anything else.
    """
    found = _TIMEOUT.fullmatch(value.strip())
    if found is None:
        raise HeaderError("grpc-timeout", f"Grpc-Timeout must be 1-8 digits and a unit (H M S m u n), not {value!r}")
    return int(found.group(1)) * _UNIT_S[found.group(2)]


def request_id(headers: dict[str, str]) -> str:
    """The caller's ``x-request-id``, or a new one."""
    return headers.get(REQUEST_ID) or uuid.uuid4().hex


def to_metadata(
    headers: Iterable[tuple[str, str]], rid: str, max_bytes: int | None = None
) -> tuple[tuple[str, str | bytes], ...]:
    """gRPC metadata for a request from its (lower-case) headers and its request id.

    >>> to_metadata([("authorization", "Bearer t"), ("grpc-metadata-tenant", "a"), ("accept", "*/*")], "r1")
    (('authorization', 'Bearer t'), ('tenant', 'a'), ('x-request-id', 'r1'))

    Raises HeaderError for a metadata key gRPC does not allow or a ``-bin`` value that is not
    base64, and MetadataTooLarge when the entries, counted as HTTP/2 counts them (key, value and
    :data:`ENTRY_OVERHEAD` bytes each), pass ``max_bytes``.
    """
    out: list[tuple[str, str | bytes]] = []
    for name, value in headers:
        if name == REQUEST_ID:
            continue
        if name in PASSED_HEADERS:
            out.append((name, _ascii(name, value)))
        elif name.startswith(METADATA_PREFIX):
            key = name[len(METADATA_PREFIX) :]
            if not _KEY.fullmatch(key) or key.startswith("grpc-"):
                raise HeaderError(name, f"header {name!r} does not name a usable gRPC metadata key")
            if key.endswith("-bin"):
                try:
                    out.append((key, base64.b64decode(value + "=" * (-len(value) % 4), validate=True)))
                except (binascii.Error, ValueError):
                    raise HeaderError(name, f"header {name!r} must be base64 (a binary metadata key)") from None
            else:
                out.append((key, _ascii(name, value)))
    out.append((REQUEST_ID, _ascii(REQUEST_ID, rid)))
    if max_bytes is not None:
        size = sum(len(key) + len(value) + ENTRY_OVERHEAD for key, value in out)
        if size > max_bytes:
            raise MetadataTooLarge(
                "grpc-metadata-*",
                f"the headers passed on as gRPC metadata make {size} bytes, more than the limit of {max_bytes}",
            )
    return tuple(out)


def _ascii(name: str, value: str) -> str:
    if not _VALUE.fullmatch(value):
        raise HeaderError(name, f"header {name!r} must be printable ASCII to become gRPC metadata")
    return value


def to_headers(*metadata) -> dict[str, str]:
    """Response headers from response metadata (initial and/or trailing), later wins.

    >>> to_headers((("x-served-by", "r1"), ("grpc-status-details-bin", b"..")), None)
    {'grpc-metadata-x-served-by': 'r1'}
    """
    out: dict[str, str] = {}
    for items in metadata:
        for key, value in items or ():
            if key.startswith("grpc-") or key in ("content-type", "user-agent"):
                continue
            if isinstance(value, bytes):
                value = base64.b64encode(value).decode("ascii")
            out[METADATA_PREFIX + key] = value
    return out
