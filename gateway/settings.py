"""The gateway's settings: frozen, read once from ``GATEWAY_*`` environment variables."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from typing import Any

PROFILES = ("production", "development", "testing")


@dataclasses.dataclass(frozen=True)
class Settings:
    #: ``production``, ``development`` or ``testing``: the defaults below, changed by
    #: :data:`_PROFILE_DEFAULTS` (as the runner's profiles change its own).
    profile: str = "production"
    #: HTTP address the gateway listens on.
    listen: str = "127.0.0.1:8080"
    #: gRPC target of the runner (any grpc target: "host:port", "dns:///runners:50051").
    upstream: str = "127.0.0.1:50051"
    #: TLS to the runner: the PEM CA certificate(s) its certificate must chain to (empty:
    #: plaintext); a client certificate and its unencrypted key for a runner requiring mTLS; the
    #: name its certificate must carry when not the target's host (grpc.ssl_target_name_override).
    upstream_tls_ca_file: str = ""
    upstream_tls_cert_file: str = ""
    upstream_tls_key_file: str = ""
    upstream_tls_server_name: str = ""
    #: HTTPS: a PEM certificate (chain) and its unencrypted key (empty: plain HTTP); with a client
    #: CA too, clients must present a certificate it signed.
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    #: Deadline of a unary call when the request has no Grpc-Timeout header.
    unary_timeout_s: float = 10.0
    #: Deadline of the readiness Check on the runner.
    health_timeout_s: float = 1.0
    #: /health/deep answers are memoized this long (0 asks the runner every time).
    deep_health_ttl_s: float = 5.0
    #: Largest request body accepted (413 beyond).
    max_body_bytes: int = 1024 * 1024
    #: Largest request head (request line and headers) accepted (431 beyond).
    max_header_bytes: int = 64 * 1024
    #: Most request headers accepted (431 beyond).
    max_header_count: int = 100
    #: Time a request head may take to arrive, from the connection's start or from the head's
    #: first byte (408 beyond).
    head_timeout_s: float = 10.0
    #: Time a request body may take to arrive, from the end of its head (408 beyond).
    body_timeout_s: float = 30.0
    #: Most connections open at once; one more is answered 503 and closed.
    max_connections: int = 1000
    #: Largest deadline a Grpc-Timeout header may set; a longer one is cut to this.
    max_grpc_timeout_s: float = 300.0
    #: Most bytes of metadata passed upstream (Authorization, traceparent, x-request-id,
    #: Grpc-Metadata-*; 32 bytes more per entry, as HTTP/2 counts them): 431 beyond. Below
    #: gRPC's own default limit (8 KiB), with room for the call's own headers.
    max_metadata_bytes: int = 6 * 1024
    #: SSE keep-alive comment interval while a stream is idle.
    keepalive_s: float = 15.0
    #: How long a stream waits for its first upstream event before sending HTTP headers: an
    #: error within that time gets its own HTTP status, a later one ends the stream.
    stream_open_wait_s: float = 1.0
    #: Upper bound of the channel's reconnect backoff, so a restarted runner is found quickly.
    reconnect_backoff_max_s: float = 2.0
    #: Load-balancing policy over the upstream's addresses ("round_robin" over DNS replicas).
    lb_policy: str = "round_robin"
    log_level: str = "info"
    #: Log lines as JSON (the runner's shape); false: readable text, one line each.
    log_json: bool = True
    #: Prometheus metrics: ``GET /metrics`` on this address (port 0: any free port); empty: off.
    metrics_listen: str = "127.0.0.1:9465"

    @property
    def host(self) -> str:
        return self.listen.rsplit(":", 1)[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])


_FIELDS = {field.name: field for field in dataclasses.fields(Settings)}
_PROFILE_DEFAULTS: dict[str, dict[str, Any]] = {
    "production": {},
    "development": {"log_json": False},
    "testing": {"log_json": False, "metrics_listen": ""},
}


def _boolean(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(raw)


def from_env(env: Mapping[str, str] | None = None, **overrides) -> Settings:
    """Settings from ``GATEWAY_<NAME>`` variables (e.g. ``GATEWAY_UNARY_TIMEOUT_S=5``), then
    ``overrides``; ``GATEWAY_PROFILE`` (or an override) picks the profile's defaults first.
    Raises ValueError for a malformed or out-of-range value."""
    env = os.environ if env is None else env
    profile = overrides.get("profile", env.get("GATEWAY_PROFILE", "production"))
    if profile not in PROFILES:
        raise ValueError(f"GATEWAY_PROFILE must be one of {', '.join(PROFILES)}, not {profile!r}")
    values: dict = {"profile": profile, **_PROFILE_DEFAULTS[profile]}
    for name, field in _FIELDS.items():
        raw = env.get("GATEWAY_" + name.upper())
        if raw is None or name == "profile":
            continue
        kind: Callable[[str], Any] = _boolean if isinstance(field.default, bool) else type(field.default)
        try:
            values[name] = kind(raw)
        except ValueError:
            raise ValueError(f"GATEWAY_{name.upper()}={raw!r} is not a valid {type(field.default).__name__}") from None
    values.update(overrides)
    settings = Settings(**values)
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    if ":" not in settings.listen:
        raise ValueError(f"listen must be host:port, not {settings.listen!r}")
    settings.port  # noqa: B018 - raises ValueError when the port is not a number
    if settings.metrics_listen:
        host, _, port = settings.metrics_listen.rpartition(":")
        if not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"metrics_listen must be host:port (or empty: off), not {settings.metrics_listen!r}")
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        raise ValueError("GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE go together: set both or neither")
    if settings.tls_client_ca_file and not settings.tls_cert_file:
        raise ValueError("GATEWAY_TLS_CLIENT_CA_FILE needs GATEWAY_TLS_CERT_FILE and GATEWAY_TLS_KEY_FILE")
    if bool(settings.upstream_tls_cert_file) != bool(settings.upstream_tls_key_file):
        raise ValueError(
            "GATEWAY_UPSTREAM_TLS_CERT_FILE and GATEWAY_UPSTREAM_TLS_KEY_FILE go together: set both or neither"
        )
    if not settings.upstream_tls_ca_file and (settings.upstream_tls_cert_file or settings.upstream_tls_server_name):
        raise ValueError(
            "GATEWAY_UPSTREAM_TLS_CERT_FILE, _KEY_FILE and _SERVER_NAME need GATEWAY_UPSTREAM_TLS_CA_FILE "
            "(which turns TLS to the runner on)"
        )
    positive = (
        "unary_timeout_s",
        "health_timeout_s",
        "keepalive_s",
        "stream_open_wait_s",
        "reconnect_backoff_max_s",
        "head_timeout_s",
        "body_timeout_s",
        "max_grpc_timeout_s",
        "max_body_bytes",
        "max_header_bytes",
        "max_header_count",
        "max_connections",
        "max_metadata_bytes",
    )
    for name in positive:
        if getattr(settings, name) <= 0:
            raise ValueError(f"{name} must be positive")
