"""Who is online, from the retained status topics, allowing for the broker's own outage.

A node's retained status says ``online`` (with its data endpoint) or ``offline``; the broker publishes
the ``offline`` Last Will when a node vanishes. But Mosquitto also publishes the Last Will of *every*
client when the broker itself shuts down, just before it drops our own session: an ``offline`` that
arrives right before we lose the broker says nothing about the node. :class:`Presence` therefore
holds each ``offline`` for ``hold_s`` before it takes effect, and forgets the ones still held when our
own connection drops (call :meth:`Presence.disconnected` from the transport). Nodes republish
``online`` when the broker is back; a node that really died meanwhile is caught by the callers' own
deadlines (stale telemetry at the controller, unanswered requests at the client).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from adaptive.protocol.messages import SchemaError, Status

__all__ = ["Presence"]


class Presence:
    """The effective status of every node that announced one.

    Args:
        hold_s: An ``offline`` takes effect this long after it arrived, unless the broker connection
            drops first, s (≥ 0).
        clock: Monotonic clock, s (injectable for tests).
    """

    def __init__(self, hold_s: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        if hold_s < 0:
            raise ValueError(f"hold_s must be >= 0, found {hold_s}")
        self.hold_s = hold_s
        self.clock = clock
        self.discarded = 0  # offline statuses forgotten because the broker went away with them
        self._status: dict[str, Status] = {}
        self._endpoint: dict[str, str] = {}
        self._held: dict[str, tuple[Status, float]] = {}
        self._lock = threading.Lock()

    def update(self, status: Status) -> None:
        """Record a validated status message."""
        with self._lock:
            node = status.node
            if status.state == "offline" and self.hold_s > 0:
                self._held[node] = (status, self.clock())
                return
            self._held.pop(node, None)
            self._apply(status)

    def receive(self, node: str, payload: bytes) -> None:
        """Decode and record the status published on ``node``'s status topic.

        Raises:
            SchemaError: An invalid status, or one that names another node (nobody speaks for others).
        """
        status = Status.decode(payload)
        if status.node != node:
            raise SchemaError(f"status names node '{status.node}' on the topic of '{node}'")
        self.update(status)

    def disconnected(self) -> None:
        """Our broker session dropped: the ``offline`` statuses still held may be the broker's own doing."""
        with self._lock:
            self._settle()
            self.discarded += len(self._held)
            self._held.clear()

    def status(self, node: str) -> Status | None:
        """The newest effective status of ``node`` (None if it never announced one)."""
        with self._lock:
            self._settle()
            return self._status.get(node)

    def online(self, node: str) -> bool:
        """``node`` has not gone offline (a node never heard of counts as online)."""
        status = self.status(node)
        return status is None or status.state == "online"

    def endpoint(self, node: str) -> str | None:
        """The data endpoint of ``node`` if it is online and announced one."""
        with self._lock:
            self._settle()
            return self._endpoint.get(node)

    def endpoints(self) -> dict[str, str]:
        """Data endpoints of the online nodes that announced one."""
        with self._lock:
            self._settle()
            return dict(self._endpoint)

    def seen(self) -> set[str]:
        """Every node that ever announced a status, online or not."""
        with self._lock:
            return set(self._status) | set(self._held)

    def _apply(self, status: Status) -> None:
        self._status[status.node] = status
        if status.state != "online":
            self._endpoint.pop(status.node, None)
        elif status.data_endpoint:  # (an online status without endpoint is a monitor's: keep the runtime's)
            self._endpoint[status.node] = status.data_endpoint

    def _settle(self) -> None:
        now = self.clock()
        for node, (status, at) in list(self._held.items()):
            if now - at >= self.hold_s:
                del self._held[node]
                self._apply(status)
