"""The probe protocol on loopback, and its accuracy on a real tbf-shaped link (netns, root)."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from adaptive.lab.netns import ShapedLink, netns_available
from monitor.agent import AgentConfig, MonitorAgent
from monitor.probe import HEADER, MAGIC, ProbeClient, ProbeError, ProbeServer, parse_hostport
from monitor.transport import BrokerAddress


def test_ping_and_transfer_on_loopback():
    with ProbeServer("127.0.0.1", 0) as server, ProbeClient("127.0.0.1", server.port) as client:
        assert 0 < client.ping() < 1000
        result = client.transfer(2_000_000)
        assert result.nbytes == 2_000_000 and result.receive_ms >= 0


def test_bad_frames_close_the_connection_but_not_the_server():
    with ProbeServer("127.0.0.1", 0, max_bytes=1000) as server:
        for frame in (b"GET / HTTP/1.1\r\n\r\n", HEADER.pack(MAGIC, 9, 1, 0, 10),
                      HEADER.pack(MAGIC, 1, 7, 0, 0), HEADER.pack(MAGIC, 1, 1, 0, 10**9)):
            with socket.create_connection(("127.0.0.1", server.port)) as s:
                s.sendall(frame)
                s.settimeout(5)
                try:
                    reply = s.recv(64)
                except ConnectionResetError:  # closed with our unread bytes pending
                    reply = b""
                assert reply == b""  # closed without a reply
        with ProbeClient("127.0.0.1", server.port) as client:
            client.ping()  # still serving
            with pytest.raises(ProbeError):
                client.transfer(5000)  # over the cap: refused


def test_unreachable_sink_and_bad_addresses():
    with pytest.raises(ProbeError, match="cannot reach probe sink"):
        ProbeClient("127.0.0.1", 1, timeout_s=1).ping()
    for bad in ("host", "host:", ":80", "host:0", "host:70000", "host:http"):
        with pytest.raises(ValueError, match="HOST:PORT"):
            parse_hostport(bad)
    assert parse_hostport("[::1]:7300") == ("::1", 7300)
    assert struct.calcsize("!4sBBHQ") == HEADER.size


@pytest.mark.netns
@pytest.mark.skipif(not netns_available(), reason="needs root, iproute2 and tc")
def test_probe_accuracy_on_a_shaped_link():
    try:
        link = ShapedLink("adptest", 20).start()
    except OSError as exc:
        pytest.skip(f"network namespaces unavailable here: {exc}")
    sink = link.popen([sys.executable, "-m", "adaptive", "profile", "link-server",
                       "--bind", link.peer_ip, "--port", "7398", "--allow", link.host_ip],
                      stdout=subprocess.DEVNULL,
                      stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                ProbeClient(link.peer_ip, 7398, timeout_s=1).ping()
                break
            except ProbeError:
                assert time.monotonic() < deadline, "probe sink did not start"
                time.sleep(0.1)
        agent = MonitorAgent(AgentConfig(node="t", peers={"s": (link.peer_ip, 7398)}, probe_port=None),
                             BrokerAddress("127.0.0.1", 1))
        for rate in (20, 5):
            link.set_rate(rate)
            for _ in range(5):
                agent._probe("s", link.peer_ip, 7398)
            goodput = rate * 1448 / 1514  # tbf shapes Ethernet frames; TCP carries 1448 of 1514 bytes
            assert agent._links["s"].bandwidth_mbps == pytest.approx(goodput, rel=0.05), rate
    finally:
        sink.terminate()
        sink.wait(timeout=10)
        link.close()


def test_agent_follows_step_changes_of_an_emulated_link():
    """Through the runtime's app-level shaper: a 15x rise and a 10x drop each show in one probe."""
    from adaptive.runtime.shaping import LinkShaper

    shaper = LinkShaper(2.0)
    with ProbeServer("127.0.0.1", 0) as sink:
        agent = MonitorAgent(AgentConfig(node="t", peers={"s": ("127.0.0.1", sink.port)}, probe_port=None,
                                         probe_interval_s=1.0, passive=False),
                             BrokerAddress("127.0.0.1", 1), limiters={"s": shaper})
        history = []
        for rate in (2.0, 30.0, 3.0):
            shaper.set_rate(rate)
            for _ in range(4):
                agent._probe("s", "127.0.0.1", sink.port)
                history.append((rate, agent._links["s"].bandwidth_mbps))
        for rate, est in history:  # the first probe after a change already sees the new rate
            assert est == pytest.approx(rate, rel=0.15), history
        assert 1500 <= agent.probe_size("s") <= 64_000


def test_link_level_transfers_are_passive_estimates_however_short():
    agent = MonitorAgent(AgentConfig(node="t", probe_port=None), BrokerAddress("127.0.0.1", 1))
    agent.observe_transfer("s", 20_000, 0.004)  # 4 ms: too short to time with a clock
    assert "s" not in agent._links
    agent.observe_transfer("s", 1000, 0.1, link_level=True)  # under one packet
    assert "s" not in agent._links
    agent.observe_transfer("s", 20_000, 0.004, link_level=True)  # an emulated link's own wire time
    assert agent._links["s"].passive_mbps == pytest.approx(40.0)


def test_probing_a_slow_link_stays_within_its_share_and_stays_accurate():
    """2 Mbit/s probed every 0.25 s at a 5% share: a probe long enough to time (60 ms) is more than one
    interval's share, so the rounds space out instead of taking a third of the link."""
    from adaptive.runtime.shaping import LinkShaper

    shaper = LinkShaper(2.0)
    sent = []

    def counting(nbytes):
        sent.append(nbytes)
        return shaper(nbytes)

    with ProbeServer("127.0.0.1", 0) as sink:
        agent = MonitorAgent(AgentConfig(node="t", peers={"s": ("127.0.0.1", sink.port)}, probe_port=None,
                                         probe_interval_s=0.25, passive=False),
                             BrokerAddress("127.0.0.1", 1), limiters={"s": counting})
        loop = threading.Thread(target=agent._probe_loop, daemon=True)
        t0 = time.monotonic()
        loop.start()
        time.sleep(5.0)
        agent._stop.set()
        loop.join(timeout=5)
        elapsed = time.monotonic() - t0
    share = 0.05 * 2e6 / 8 * elapsed  # bytes the share allows over the run
    # plus the first probe (16 KB, sized before any estimate) and the round in flight at the end (15 KB)
    assert sum(sent) <= share + 16_000 + 16_000, (sum(sent), share)
    assert agent._links["s"].bandwidth_mbps == pytest.approx(2.0, rel=0.15)
    assert agent.probe_size("s") >= 2e6 / 8 * 0.060 * 0.85  # 60 ms of the link: long enough to time


def test_a_probe_pause_is_capped_so_a_faster_link_is_seen_soon():
    agent = MonitorAgent(AgentConfig(node="t", probe_port=None, probe_interval_s=0.25),
                         BrokerAddress("127.0.0.1", 1))
    assert agent.probe_pause(10_000, 2.0) == pytest.approx(0.8)  # 10 KB is 5% of 2 Mbit/s for 0.8 s
    assert agent.probe_pause(150_000, 2.0) == pytest.approx(1.0)  # 12 s by the share: capped
    assert agent.probe_pause(10_000, None) == 0.0
