"""``python -m gateway`` (or the ``gateway`` console script): serve the gateway with uvicorn."""
from __future__ import annotations

import logging
import sys

import uvicorn

from gateway import settings as settings_mod
from gateway.app import create_app


def main() -> int:
    try:
        settings = settings_mod.from_env()
    except ValueError as exc:
        print(f"gateway: bad configuration: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        ws="none",
        log_level=settings.log_level.lower(),
        timeout_graceful_shutdown=5,
    )
    uvicorn.Server(config).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
