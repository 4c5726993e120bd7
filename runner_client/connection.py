"""Where the runner is and how to talk to it: target, TLS files, admin token,
channel options. Nothing here opens a socket; the clients build their channel."""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import grpc

DEFAULT_TARGET = "127.0.0.1:50051"
#: The environment variable naming the runner's address (any gRPC target).
TARGET_ENV = "RUNNER_TARGET"


def resolve_target(target: str | None = None, environ: Mapping[str, str] | None = None) -> str:
    """`target` when given, else $RUNNER_TARGET, else 127.0.0.1:50051."""
    if target:
        return target
    env = os.environ if environ is None else environ
    return env.get(TARGET_ENV) or DEFAULT_TARGET


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """TLS towards the runner: trust `ca_file` (PEM; None: the system's roots), and
    present `cert_file` + `key_file` for a runner that requires client certificates
    (mTLS). `server_name` is the name checked on the runner's certificate when it
    is not the target's host (e.g. a target given by IP address)."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file")

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials from the files (read now). Raises OSError naming a
        file that cannot be read."""

        def read(path: str | None) -> bytes | None:
            return pathlib.Path(path).read_bytes() if path else None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.key_file),
            certificate_chain=read(self.cert_file),
        )

    def options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


def channel_options(tls: TlsFiles | None, extra: Sequence[tuple[str, Any]] = ()) -> list[tuple[str, Any]]:
    """Options of the client's channel: the TLS name override, then `extra`."""
    options: list[tuple[str, Any]] = []
    if tls is not None:
        options.extend(tls.options())
    options.extend(extra)
    return options


def admin_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata of an AdminService call: `authorization: Bearer <token>`.
    Sent on admin calls only, never on the others."""
    return (("authorization", f"Bearer {token}"),) if token else ()
