"""Entry point: settings from the environment, logging, then serve().

Heavy imports stay inside main(): worker processes never import the server.
"""

from __future__ import annotations

import sys


def main() -> int:
    import asyncio
    import os

    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    from runner_service import logs
    from runner_service import settings as settings_mod

    try:
        settings = settings_mod.from_env()
        logs.configure(
            settings.log_level,
            settings.log_json,
            secrets=[settings.admin_token, *logs.url_secrets(settings.database_url)],
        )
    except ValueError as exc:
        print(f"runner: bad configuration: {exc}", file=sys.stderr)
        return 2
    from runner_service.server import serve

    if settings.use_uvloop:
        try:
            import uvloop
        except ImportError:
            pass
        else:
            uvloop.run(serve(settings))
            return 0
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
