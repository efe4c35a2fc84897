"""The agent against real brokers (Mosquitto and the embedded one) with a real subscriber."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from importlib import resources

import jsonschema
import numpy as np
import pytest

from adaptive.control.telemetry import Collector
from adaptive.protocol.messages import Message, status_topic, telemetry_topic
from monitor.agent import AgentConfig, MonitorAgent
from monitor.transport import MqttTransport, parse_broker_url

pytestmark = pytest.mark.integration
TELEMETRY_SCHEMA = json.loads(
    resources.files("adaptive.protocol").joinpath("schemas", "telemetry.v1.json").read_text())


def wait_for(predicate, timeout_s=10.0, step=0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def raw_subscriber(url, topic):
    """A plain paho subscriber recording (arrival time, payload) pairs."""
    got = []
    t = MqttTransport(parse_broker_url(url), f"raw-{time.monotonic_ns()}", subscriptions=[(topic, 1)],
                      on_message=lambda _t, p: got.append((time.monotonic(), p)))
    return t.start(), got


def spawn_agent(url, node, *extra):
    return subprocess.Popen([sys.executable, "-m", "monitor", "--node", node, "--broker", url,
                             "--cluster", "it", "--probe-port", "-1", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_schema_and_publishing_rate(broker):
    sub, got = raw_subscriber(broker.url, telemetry_topic("it", "rate"))
    config = AgentConfig(node="rate", cluster="it", interval_s=0.2, probe_port=None)
    with MonitorAgent(config, parse_broker_url(broker.url)):
        time.sleep(4.1)
    sub.close()
    assert 17 <= len(got) <= 23, len(got)  # 4 s at 5 Hz
    seqs = [json.loads(p)["seq"] for _, p in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for _, payload in got:
        jsonschema.validate(json.loads(payload), TELEMETRY_SCHEMA)
    gaps = np.diff([t for t, _ in got])
    assert abs(float(np.median(gaps)) - 0.2) < 0.03, gaps


def test_peers_probe_each_other_and_report_links(broker):
    url = parse_broker_url(broker.url)
    a = MonitorAgent(AgentConfig(node="a", cluster="it", interval_s=0.3, probe_port=0,
                                 probe_interval_s=0.5), url).start()
    b = MonitorAgent(AgentConfig(node="b", cluster="it", interval_s=0.3, probe_port=0,
                                 peers={"a": ("127.0.0.1", a.probe_port)}, probe_interval_s=0.5), url)
    with Collector(url, "it") as collector, b:
        assert wait_for(lambda: (v := collector.nodes().get("b")) is not None and v.telemetry
                        and v.telemetry.links["a"].rtt_ms is not None, 10)
        link = collector.nodes()["b"].telemetry.links["a"]
        assert link.rtt_ms >= 0 and link.measured_at > 0
        assert collector.nodes()["a"].status.state == "online"
        assert collector.nodes()["b"].status.probe_endpoint.endswith(f":{b.probe_port}")
    a.close()


def test_last_will_marks_node_offline_after_kill_9(broker):
    url = parse_broker_url(broker.url)
    with Collector(url, "it") as collector:
        proc = spawn_agent(broker.url, "victim", "--keepalive", "2", "--interval", "0.5")
        assert wait_for(lambda: (v := collector.nodes().get("victim")) is not None
                        and v.status and v.status.state == "online" and v.telemetry_count > 0, 15)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        killed = time.monotonic()
        assert wait_for(lambda: collector.nodes()["victim"].status.state == "offline", 10)
        # the broker fires the Will after 1.5 x keep-alive (3 s) plus its check granularity
        assert time.monotonic() - killed < 8
        assert collector.live_nodes(stale_after_s=2.0) == []


def test_sigterm_publishes_offline_immediately(broker):
    url = parse_broker_url(broker.url)
    with Collector(url, "it") as collector:
        proc = spawn_agent(broker.url, "polite", "--interval", "0.5")
        assert wait_for(lambda: (v := collector.nodes().get("polite")) is not None
                        and v.telemetry_count > 0, 15)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert wait_for(lambda: collector.nodes()["polite"].status.state == "offline", 3)


def test_reconnects_after_broker_restart_without_crashing(broker):
    url = parse_broker_url(broker.url)
    proc = spawn_agent(broker.url, "survivor", "--interval", "0.3")
    try:
        with Collector(url, "it") as collector:
            assert wait_for(lambda: (v := collector.nodes().get("survivor")) is not None
                            and v.telemetry_count >= 2, 15)
            before = collector.nodes()["survivor"].telemetry.seq
        broker.stop()
        time.sleep(3)
        assert proc.poll() is None, "the agent died while the broker was away"
        broker.start()
        with Collector(url, "it") as collector:
            assert wait_for(lambda: (v := collector.nodes().get("survivor")) is not None
                            and v.telemetry is not None and v.telemetry.seq > before + 5, 30)
            # the retained 'online' status was re-published on reconnect
            assert wait_for(lambda: collector.nodes()["survivor"].status is not None
                            and collector.nodes()["survivor"].status.state == "online", 5)
        assert proc.poll() is None
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_messages_published_while_disconnected_are_buffered_then_flushed_in_order(broker):
    url = parse_broker_url(broker.url)
    pub = MqttTransport(url, "buffered", buffer_size=50)  # not connected yet
    for i in range(60):
        assert pub.publish(Message("adaptive/it/node/buf/telemetry", str(i).encode(), 1)) is False
    assert pub.dropped == 10  # bounded: the 10 oldest went
    sub, got = raw_subscriber(broker.url, "adaptive/it/node/buf/telemetry")
    pub.start()  # on_connect flushes the buffer before anything else
    pub.publish(Message("adaptive/it/node/buf/telemetry", b"live", 1))
    assert wait_for(lambda: any(p == b"live" for _, p in got), 10)
    pub.close()
    sub.close()
    assert [p for _, p in got] == [str(i).encode() for i in range(10, 60)] + [b"live"]


def test_malformed_messages_never_crash_the_subscriber(broker):
    url = parse_broker_url(broker.url)
    junk = [b"", b"not json", b"\xff\x00", b"[]", b'{"v":1}', b'{"v":1,"node":"x"}',
            json.dumps({"v": 1, "node": "other", "state": "online", "ts": 1}).encode(),
            b"{" * 10_000, b'{"v": 1, "node": "n", "ts": 1e400}']
    with Collector(url, "it") as collector:
        pub = MqttTransport(url, "junk").start()
        for payload in junk:
            pub.publish(Message(telemetry_topic("it", "n"), payload, 1))
            pub.publish(Message(status_topic("it", "n"), payload, 1))
        good = MonitorAgent(AgentConfig(node="n", cluster="it", interval_s=0.2, probe_port=None), url)
        with good:
            assert wait_for(lambda: (v := collector.nodes().get("n")) is not None
                            and v.telemetry_count >= 3, 10)
        pub.close()
        assert collector.rejected >= 2 * len(junk)
        assert collector.transport.connected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--broker", "http://x"], "broker URL must start with mqtt://"),
        (["--broker", "mqtt://127.0.0.1:99999"], "invalid port"),
        (["--broker", "mqtt://127.0.0.1:1"], "cannot reach broker mqtt://127.0.0.1:1"),
        (["--peers", "jetson=no-such-host.invalid:7300"], "unknown peer host 'no-such-host.invalid'"),
        (["--peers", "jetson"], "expected ID=HOST:PORT"),
        (["--interval", "0"], "interval"),
    ],
)
@pytest.mark.parametrize("entry", [["-m", "monitor"], ["-m", "adaptive", "monitor"]])
def test_bad_input_is_one_line_exit_2(entry, args, message):
    proc = subprocess.run([sys.executable, *entry, "--node", "n", "--probe-port", "-1", *args],
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_agent_imports_neither_numpy_nor_torch():
    code = ("import sys, monitor.agent, monitor.cli; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('numpy', 'torch') or "
            "m.startswith('adaptive.') and m.split('.')[1] not in ('protocol', 'errors', '_moved')]; "
            "sys.exit(str(bad) if bad else 0)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr


BLOCK_HEAVY = """
import importlib.abc, sys
BLOCKED = ("torch", "torchvision", "gymnasium", "stable_baselines3", "sb3_contrib", "amqtt", "numpy")
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"blocked: {name}", name=name)
sys.meta_path.insert(0, Block())
from adaptive.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(shutil.which("mosquitto") is None, reason="needs mosquitto")
def test_adaptive_monitor_runs_with_the_heavy_packages_unimportable(tmp_path):
    """``adaptive monitor`` on a bare Pi: no torch, gymnasium, SB3, amqtt (nor numpy) to import."""
    from tests.brokers import Mosquitto

    broker = Mosquitto(tmp_path).start()
    sub, got = raw_subscriber(broker.url, telemetry_topic("it", "bare"))
    proc = subprocess.Popen([sys.executable, "-c", BLOCK_HEAVY, "monitor", "--node", "bare", "--broker",
                             broker.url, "--cluster", "it", "--probe-port", "-1", "--interval", "0.2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: len(got) >= 3 or proc.poll() is not None, 20), "no telemetry"
        assert proc.poll() is None, proc.communicate()[1]
        assert json.loads(got[-1][1])["node"] == "bare"
    finally:
        proc.terminate()
        err = proc.communicate(timeout=10)[1]
        sub.close()
        broker.stop()
    assert proc.returncode == 0 and "blocked" not in err, err


def test_uplink_prefers_the_nodes_own_recent_transfers_over_a_newer_probe():
    from adaptive.protocol.messages import LinkEstimate

    agent = MonitorAgent(AgentConfig(node="src", cluster="it", probe_port=None), parse_broker_url("mqtt://127.0.0.1:1"))
    assert agent.uplink("next") == (None, None)
    agent.observe_transfer("next", 64_000, 0.128, link_level=True)  # 4 Mbit/s, just now
    # a probe that ends later but began before a drop says the link is fast
    agent._links["next"] = LinkEstimate(30.0, 1.0, time.time() + 0.05, agent._links["next"].passive_mbps)
    assert agent.uplink("next")[0] == pytest.approx(4.0)
    # once the node has not sent for longer than the horizon, the newer of the two counts
    assert agent.uplink("next", passive_horizon_s=0.0)[0] == pytest.approx(30.0)
