"""A controller's heartbeat: one thread calling its tick every ``interval_s`` until closed."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from adaptive.errors import AdaptiveError

__all__ = ["ControlLoop"]

log = logging.getLogger(__name__)


class ControlLoop:
    """Calls ``tick`` every ``interval_s`` (on a fixed schedule, not after each tick) in a daemon thread.

    A tick that raises :class:`AdaptiveError` or ``ValueError`` (a decision that cannot be made
    now) is logged and skipped; the loop goes on.
    """

    def __init__(self, tick: Callable[[], object], interval_s: float, name: str = "controller") -> None:
        self.tick = tick
        self.interval_s = interval_s
        self.name = name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start ticking."""
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop ticking; waits for a tick under way."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._stop.is_set()

    @property
    def running(self) -> bool:
        """The thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                self.tick()
            except (AdaptiveError, ValueError) as exc:
                log.warning("decision skipped: %s", exc)
            next_at += self.interval_s
            self._stop.wait(max(0.0, next_at - time.monotonic()))
