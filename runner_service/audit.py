"""The audit log of operator actions: one JSON object per line, appended off the loop."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time

log = logging.getLogger(__name__)


class AuditLog:
    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = asyncio.Lock()

    async def record(self, action: str, **fields) -> dict:
        """Append an entry (with its UTC time) and flush it to disk before returning."""
        entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "action": action, **fields}
        line = json.dumps(entry, sort_keys=True, default=str) + "\n"
        async with self._lock:  # lines never interleave
            await asyncio.get_running_loop().run_in_executor(None, self._append, line)
        log.warning("audit", extra={"audit": entry})
        return entry

    def _append(self, line: str) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(directory, exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
