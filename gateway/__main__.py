"""``python -m gateway`` (or the ``gateway`` console script): serve the gateway with uvicorn.

uvicorn picks the ``uvloop`` event loop when it is installed; the HTTP/1.1 protocol is
uvicorn's ``httptools`` one with the gateway's bounds on heads, bodies and connections
(:mod:`gateway.server`). The access log is kept only when it would be printed (log level
``info`` or lower): uvicorn formats each line before the level filter would drop it.

Logging is the runner's (``runner_service.logs``): one handler with credentials redacted, the
gateway's own loggers at ``GATEWAY_LOG_LEVEL``, uvicorn's server and access lines at INFO or
above, other libraries at WARNING or above; JSON lines in the runner's shape
(``GATEWAY_LOG_JSON``, on in the production profile: the access line's parts are fields too, and
a request's lines carry its ``trace_id`` and ``x_request_id``) or readable text (the development
and testing profiles). uvicorn's own logging set-up is not used.
"""

from __future__ import annotations

import logging
import sys

import uvicorn
from uvicorn.config import LOG_LEVELS, TRACE_LOG_LEVEL

from gateway import server
from gateway import settings as settings_mod
from gateway.app import create_app
from runner_service import logs, tls

_ACCESS_LOG_LEVELS = ("trace", "debug", "info")

log = logging.getLogger("gateway")


def _upstream_mode(settings: settings_mod.Settings) -> str:
    if not settings.upstream_tls_ca_file:
        return "plaintext"
    return "mtls" if settings.upstream_tls_cert_file else "tls"


def main() -> int:
    try:
        settings = settings_mod.from_env()
    except ValueError as exc:
        print(f"gateway: bad configuration: {exc}", file=sys.stderr)
        return 2
    level = settings.log_level.lower()
    if level not in LOG_LEVELS:
        print(f"gateway: bad configuration: GATEWAY_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}", file=sys.stderr)
        return 2
    logs.configure(LOG_LEVELS[level], json_lines=settings.log_json)
    if LOG_LEVELS[level] <= TRACE_LOG_LEVEL:  # uvicorn's protocol traces, asked for by name
        for name in ("uvicorn.error", "uvicorn.asgi"):
            logging.getLogger(name).setLevel(TRACE_LOG_LEVEL)
    try:  # the TLS files are read and checked here: a broken one stops the gateway at once
        config = server.config(
            create_app(settings),
            settings,
            host=settings.host,
            port=settings.port,
            loop="auto",  # uvloop when installed
            lifespan="on",
            log_config=None,  # logs.configure() above
            log_level=None,  # levels set by logs.configure()
            access_log=level in _ACCESS_LOG_LEVELS,
            timeout_graceful_shutdown=5,
        )
    except ValueError as exc:
        print(f"gateway: bad configuration: {exc}", file=sys.stderr)
        return 2
    # uvicorn's start line says http either way: the gateway does its TLS itself (gateway.server).
    mode = tls.mode(settings.tls_cert_file, settings.tls_client_ca_file)
    log.info("TLS: clients %s on %s, upstream %s", mode, settings.listen, _upstream_mode(settings))
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
