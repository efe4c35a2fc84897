"""Kernel-shaped links (netns, veth, tbf; root): the goodput follows a step schedule."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time

import pytest

from adaptive.lab.netns import RateSchedule, ShapedLink, netns_available

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not netns_available(), reason="needs root, iproute2 and tc"),
]

TCP_SHARE = 1448 / 1514  # tbf shapes Ethernet frames; TCP carries 1448 of every 1514 bytes

SENDER = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
end = time.monotonic() + float(sys.argv[3])
chunk = b"x" * 65536
while time.monotonic() < end:
    s.sendall(chunk)
s.close()
"""


def test_goodput_follows_a_step_schedule_within_10_percent():
    steps = [(0.0, 20.0), (2.5, 5.0), (5.0, 40.0)]
    try:
        link = ShapedLink("adpsched", steps[0][1], subnet="10.231.9", uplink_only=True,
                          default_route=True).start()
    except OSError as exc:
        pytest.skip(f"network namespaces unavailable here: {exc}")
    server = socket.create_server((link.host_ip, 0))
    port = server.getsockname()[1]
    arrivals: list[tuple[float, int]] = []

    def receive() -> None:
        conn, _ = server.accept()
        with conn:
            while data := conn.recv(1 << 20):
                arrivals.append((time.monotonic(), len(data)))

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    schedule = RateSchedule(link, steps)
    try:
        t0 = time.monotonic()
        schedule.start(t0)
        sender = link.popen([sys.executable, "-c", SENDER, link.host_ip, str(port), "7.5"])
        assert sender.wait(timeout=30) == 0
        receiver.join(timeout=10)
    finally:
        schedule.stop()
        server.close()
        link.close()
    assert not schedule.errors
    bounds = [t for t, _ in steps] + [7.5]
    for (start, rate), end in zip(steps, bounds[1:], strict=True):
        a, b = t0 + start + 0.6, t0 + end - 0.1  # past the queue the change leaves behind
        got = sum(n for t, n in arrivals if a <= t < b) * 8 / (b - a) / 1e6
        assert got == pytest.approx(rate * TCP_SHARE, rel=0.10), (start, rate, got)


def test_a_schedule_must_start_at_zero_and_increase():
    link = ShapedLink("adpnone", 10)  # never started: nothing is created
    for bad in ([], [(1.0, 5.0)], [(0.0, 5.0), (0.0, 6.0)]):
        with pytest.raises(ValueError, match="increasing from 0"):
            RateSchedule(link, bad)
    assert RateSchedule(link, [(0.0, 5.0), (2.0, 7.0)]).rate_at(2.5) == 7.0


def test_a_process_in_the_namespace_reaches_the_root_namespace():
    try:
        link = ShapedLink("adproute", 50, subnet="10.231.10", default_route=True).start()
    except OSError as exc:
        pytest.skip(f"network namespaces unavailable here: {exc}")
    other = ShapedLink("adpother", 50, subnet="10.231.11").start()  # another pair's root-side address
    try:
        server = socket.create_server((other.host_ip, 0))
        port = server.getsockname()[1]
        code = f"import socket; socket.create_connection(('{other.host_ip}', {port}), 5).sendall(b'hi')"
        proc = link.popen([sys.executable, "-c", code], stderr=subprocess.PIPE)
        server.settimeout(10)
        conn, _ = server.accept()
        assert conn.recv(2) == b"hi" and proc.wait(timeout=10) == 0
        conn.close()
        server.close()
    finally:
        link.close()
        other.close()
