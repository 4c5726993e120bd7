"""``python -m gateway`` (or the ``gateway`` console script): serve the gateway with uvicorn.

uvicorn picks its fastest parts when they are installed: the ``uvloop`` event loop and the
``httptools`` HTTP/1.1 parser (a dependency). The access log is kept only when it would be printed (log level
``info`` or lower): uvicorn formats each line before the level filter would drop it.
"""

from __future__ import annotations

import logging
import sys

import uvicorn

from gateway import settings as settings_mod
from gateway.app import create_app

_ACCESS_LOG_LEVELS = ("trace", "debug", "info")


def main() -> int:
    try:
        settings = settings_mod.from_env()
    except ValueError as exc:
        print(f"gateway: bad configuration: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    level = settings.log_level.lower()
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        http="auto",  # httptools
        loop="auto",  # uvloop when installed
        lifespan="on",
        ws="none",
        log_level=level,
        access_log=level in _ACCESS_LOG_LEVELS,
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
