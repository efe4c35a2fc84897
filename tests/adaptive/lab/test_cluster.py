"""The cluster launcher's own checks and command lines (the demos, live experiments and the chaos
test run it with real processes)."""

from __future__ import annotations

import pytest

from adaptive.errors import AdaptiveError
from adaptive.lab.cluster import Cluster, NodeSpec


def test_each_node_gets_its_device_monitor_and_its_successors_probe_sink(tmp_path):
    lab = Cluster("resnet20_cifar", [
        NodeSpec("pi", "raspberry-pi-4", "jetson", probe_interval_s=0.25, extra=("--uplink-mbps", "20")),
        NodeSpec("jetson", "jetson-nano", emulate=False, monitor=False)], cluster="t", logs=tmp_path)
    pi, jetson = lab.node_args("pi"), lab.node_args("jetson")
    assert pi[pi.index("--emulate") + 1] == "raspberry-pi-4"
    assert pi[pi.index("--peers") + 1] == f"jetson=127.0.0.1:{lab.probe_ports['jetson']}"
    assert pi[pi.index("--probe-interval") + 1] == "0.25" and pi[-2:] == ["--uplink-mbps", "20"]
    assert pi[pi.index("--broker") + 1] == lab.url and pi[pi.index("--cluster") + 1] == "t"
    assert "--emulate" not in jetson and "--monitor" not in jetson and "--peers" not in jetson
    assert lab.log_path("pi") == tmp_path / "node-pi.log"
    assert lab.log_path("controller") == tmp_path / "controller.log"
    lab.close()  # nothing started: closing is a no-op, and may be repeated
    lab.close()


@pytest.mark.parametrize(("nodes", "kwargs", "message"), [
    ([NodeSpec("a", "x"), NodeSpec("a", "y")], {}, "distinct"),
    ([NodeSpec("a", "x", "b")], {}, "'b', which is not a node"),
    ([NodeSpec("a", "x")], {"broker": "rabbit"}, "embedded or mosquitto"),
])
def test_a_cluster_that_cannot_work_is_refused_before_anything_starts(nodes, kwargs, message):
    with pytest.raises(AdaptiveError, match=message):
        Cluster("resnet20_cifar", nodes, **kwargs)


@pytest.mark.skipif(__import__("shutil").which("mosquitto") is None, reason="needs mosquitto")
def test_a_mosquitto_broker_without_logs_writes_nothing_where_the_caller_stands(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lab = Cluster("resnet20_cifar", [NodeSpec("a", "x")], broker="mosquitto")
    lab.start_broker()
    try:
        assert lab.broker_process is not None and lab.broker_process.poll() is None
    finally:
        lab.close()
    assert list(tmp_path.iterdir()) == []  # it used to leave mosquitto.conf here
