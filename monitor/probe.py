"""Active link probing over TCP: RTT pings and timed transfers to a small sink.

Standard library only (the monitor runs on a bare Raspberry Pi). One protocol serves two users:
the monitor's bandwidth/RTT estimates and ``adaptive profile link`` (seed 000 Sec. IV-B: first
packet latency plus per-KB reception, fitted over 20 payload sizes).

Wire format (big-endian), every frame starts with a 16-byte header::

    magic "APRB" | version u8 (1) | kind u8 | flags u16 | length u64

``kind`` 0 is a ping (no payload; the sink echoes the header), 1 a timed transfer of ``length``
payload bytes. After a transfer the sink answers with a 40-byte result::

    magic "APRR" | version u8 | status u8 | reserved u16 | received u64 | first_to_last_ns u64 |
    header_to_last_ns u64 | first_read_bytes u64

``first_to_last_ns`` runs from the first payload byte's arrival to the last byte's; dividing the
payload after the first read by it gives the receive rate. (Timing only a later part of the
transfer was tried and rejected: after a loss, the kernel releases held-back data to the reader
in large chunks, so read times inside a transfer are distorted; the whole span averages that out.
See docs/monitor.md.) Frames are validated (magic, version,
kind, length cap); a bad frame closes that connection and is logged, never raised in the server.
"""

from __future__ import annotations

import logging
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

__all__ = ["ProbeClient", "ProbeError", "ProbeServer", "TransferResult", "host_addresses", "parse_hostport"]

log = logging.getLogger(__name__)

MAGIC, RESULT_MAGIC, VERSION = b"APRB", b"APRR", 1
HEADER = struct.Struct("!4sBBHQ")
RESULT = struct.Struct("!4sBBHQQQQ")
KIND_PING, KIND_TRANSFER = 0, 1
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
_CHUNK = 256 * 1024
_PACE = 8 * 1024  # bytes per limiter call when pacing a transfer


class ProbeError(Exception):
    """A probe could not be completed (connection refused, timeout, bad reply)."""


@dataclass(frozen=True)
class TransferResult:
    """Timing of one transfer, as seen by the sender and by the sink.

    Attributes:
        nbytes: Payload size, bytes.
        sender_ms: From first send call to the sink's result arriving (includes one RTT), ms.
        receive_ms: At the sink, from the first payload byte to the last, ms.
        first_read_bytes: Payload bytes the sink's first read returned (excluded from the rate).
    """

    nbytes: int
    sender_ms: float
    receive_ms: float
    first_read_bytes: int

    @property
    def rate_mbps(self) -> float:
        """Receive rate at the sink, Mbit/s (``nan`` when the payload fit one read)."""
        rest = self.nbytes - self.first_read_bytes
        if rest <= 0 or self.receive_ms <= 0:
            return float("nan")
        return rest * 8 / (self.receive_ms * 1e3)


def parse_hostport(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (IPv6 as ``[addr]:port``); raises ``ValueError`` with a clear message."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT with a port in 1..65535, found '{text}'")
    return host.strip("[]"), int(port)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        buf += chunk
    return bytes(buf)


class ProbeServer:
    """The sink: answers pings and times transfers, one thread per connection.

    Args:
        host: Address to bind (``"0.0.0.0"`` for all interfaces).
        port: TCP port (0 picks a free one; see :attr:`port` after :meth:`start`).
        max_bytes: Largest transfer accepted; bigger requests close the connection.
        max_connections: Connections served at once; more are closed at once.
        allow: ``allow(ip)`` says whether a peer at that address may probe (None: anyone who can
            reach the port); a refused connection is closed before a byte is read.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_connections: int = 8, allow: Callable[[str], bool] | None = None) -> None:
        self.host, self.port, self.max_bytes = host, port, max_bytes
        self.max_connections = max_connections
        self.allow = allow
        self.refused = 0  # connections closed unserved: not allowed, or over the connection cap
        self._slots = threading.BoundedSemaphore(max_connections)
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def start(self) -> ProbeServer:
        """Bind and serve in a background thread; returns ``self``."""
        sock = socket.create_server((self.host, self.port), reuse_port=False)
        sock.settimeout(0.5)
        self._sock, self.port = sock, sock.getsockname()[1]
        self._thread = threading.Thread(target=self._serve, name="probe-server", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and close the socket."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()

    def __enter__(self) -> ProbeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _serve(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                conn, addr = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            ip = str(addr[0]) if isinstance(addr, tuple) else ""
            allowed = self.allow is None or _allowed(self.allow, ip)
            if not allowed or not self._slots.acquire(blocking=False):
                self.refused += 1
                log.warning("probe sink: closed a connection from %s (%s)", ip,
                            "not a known peer" if not allowed else f"{self.max_connections} already open")
                conn.close()
                continue
            threading.Thread(target=self._handle, args=(conn, addr), daemon=True).start()

    def _handle(self, conn: socket.socket, addr: object) -> None:
        try:
            self._serve_one(conn, addr)
        finally:
            self._slots.release()

    def _serve_one(self, conn: socket.socket, addr: object) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(30)
        with conn:
            try:
                while not self._stop.is_set():
                    raw = conn.recv(HEADER.size)
                    if not raw:
                        return
                    t_header = time.perf_counter_ns()
                    raw += _recv_exact(conn, HEADER.size - len(raw)) if len(raw) < HEADER.size else b""
                    magic, version, kind, _flags, length = HEADER.unpack(raw)
                    if magic != MAGIC or version != VERSION or kind not in (KIND_PING, KIND_TRANSFER):
                        log.warning("probe from %s: bad header %r, closing", addr, raw[:8])
                        return
                    if kind == KIND_PING:
                        conn.sendall(raw)
                        continue
                    if length > self.max_bytes:
                        log.warning("probe from %s: %d bytes exceeds cap %d, closing", addr, length,
                                    self.max_bytes)
                        return
                    conn.sendall(self._receive(conn, length, t_header))
            except (ConnectionError, TimeoutError, OSError, struct.error) as exc:
                log.info("probe connection from %s ended: %s", addr, exc)

    @staticmethod
    def _receive(conn: socket.socket, length: int, t_header: int) -> bytes:
        received, first_read, t_first = 0, 0, 0
        while received < length:
            chunk = conn.recv(min(_CHUNK, length - received))
            if not chunk:
                raise ConnectionError("peer closed mid-transfer")
            if received == 0:
                t_first, first_read = time.perf_counter_ns(), len(chunk)
            received += len(chunk)
        t_last = time.perf_counter_ns()
        span = t_last - t_first if length else 0
        return RESULT.pack(RESULT_MAGIC, VERSION, 0, 0, received, span, t_last - t_header,
                           first_read)


def _allowed(allow: Callable[[str], bool], ip: str) -> bool:
    try:
        return bool(allow(ip))
    except Exception:  # a broken allow-list refuses; it never stops the sink
        log.exception("probe sink: the allow-list failed on %s", ip)
        return False


def host_addresses(hosts: Iterable[str]) -> set[str]:
    """The IP addresses of ``hosts`` (names resolved now; unknown ones left out, and logged)."""
    found: set[str] = set()
    for host in hosts:
        try:
            found |= {str(info[4][0]) for info in socket.getaddrinfo(host, None)}
        except OSError:
            log.warning("probe sink: cannot resolve allowed host %r", host)
    return found


class ProbeClient:
    """Pings and timed transfers to a :class:`ProbeServer`.

    Args:
        host: Sink address.
        port: Sink TCP port.
        timeout_s: Connect and I/O timeout, s.
        limiter: Optional ``limiter(nbytes)`` called before each chunk is sent; it blocks to pace
            the transfer (application-level link emulation; None on real links).
    """

    def __init__(self, host: str, port: int, timeout_s: float = 10.0,
                 limiter: Callable[[int], object] | None = None) -> None:
        self.host, self.port, self.timeout_s = host, port, timeout_s
        self.limiter = limiter
        self._sock: socket.socket | None = None

    def connect(self) -> ProbeClient:
        """Open the connection (done lazily by the other methods)."""
        if self._sock is None:
            try:
                sock = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
            except OSError as exc:
                raise ProbeError(f"cannot reach probe sink {self.host}:{self.port}: {exc}") from None
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sock = sock
        return self

    def close(self) -> None:
        """Close the connection."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __enter__(self) -> ProbeClient:
        return self.connect()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ping(self) -> float:
        """One round trip of a header-only frame, ms."""
        sock = self.connect()._sock
        assert sock is not None
        frame = HEADER.pack(MAGIC, VERSION, KIND_PING, 0, 0)
        try:
            t0 = time.perf_counter_ns()
            sock.sendall(frame)
            reply = _recv_exact(sock, HEADER.size)
            rtt = (time.perf_counter_ns() - t0) / 1e6
        except OSError as exc:
            self.close()
            raise ProbeError(f"ping to {self.host}:{self.port} failed: {exc}") from None
        if reply != frame:
            self.close()
            raise ProbeError(f"bad ping reply from {self.host}:{self.port}")
        return rtt

    def transfer(self, nbytes: int) -> TransferResult:
        """Send ``nbytes`` of payload; the sink times its reception."""
        sock = self.connect()._sock
        assert sock is not None
        payload = memoryview(bytes(nbytes))
        try:
            t0 = time.perf_counter_ns()
            sock.sendall(HEADER.pack(MAGIC, VERSION, KIND_TRANSFER, 0, nbytes))
            if self.limiter is None:
                sock.sendall(payload)
            else:
                for lo in range(0, nbytes, _PACE):  # fine-grained, so the sink sees the pace
                    chunk = payload[lo : lo + _PACE]
                    self.limiter(len(chunk))
                    sock.sendall(chunk)
            raw = _recv_exact(sock, RESULT.size)
            t1 = time.perf_counter_ns()
        except OSError as exc:
            self.close()
            raise ProbeError(f"transfer to {self.host}:{self.port} failed: {exc}") from None
        magic, version, status, _r, received, span_ns, _total_ns, first_read = RESULT.unpack(raw)
        if status != 0 or magic != RESULT_MAGIC or version != VERSION or received != nbytes:
            self.close()
            raise ProbeError(f"bad transfer result from {self.host}:{self.port}")
        return TransferResult(nbytes, (t1 - t0) / 1e6, span_ns / 1e6, int(first_read))
