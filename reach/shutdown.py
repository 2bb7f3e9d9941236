"""Stopping the foreground commands on SIGINT (Ctrl-C) or SIGTERM."""

from __future__ import annotations

import signal


class StopRequested:
    """Becomes true on SIGINT or SIGTERM, so a command can stop what it started, in order."""

    def __init__(self) -> None:
        self.requested = False
        signal.signal(signal.SIGINT, self._request)
        signal.signal(signal.SIGTERM, self._request)

    def _request(self, signum: int, frame: object) -> None:
        self.requested = True

    def __bool__(self) -> bool:
        return self.requested
