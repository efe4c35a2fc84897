"""The controller with real nodes, in-process monitors and a real broker."""

from __future__ import annotations

import time

import numpy as np
import pytest

from adaptive.control.controller import Controller, ControllerConfig
from adaptive.errors import AdaptiveError
from adaptive.lab.broker import EmbeddedBroker
from adaptive.lab.ports import free_port
from adaptive.model.observation import CandidatePlans
from adaptive.model.plans import PlanArray
from adaptive.model.profiles import resolve_model
from adaptive.protocol.messages import Message, StageTiming, StatsMessage, stats_topic
from adaptive.runtime.client import InferenceClient
from adaptive.runtime.node import NodeConfig, NodeRuntime, attach_monitor
from monitor.transport import MqttTransport, parse_broker_url

pytestmark = pytest.mark.integration
MODEL, CLUSTER = "resnet20_cifar", "ctl"
CHAIN = [("pi", "raspberry-pi-4"), ("jetson", "jetson-nano"), ("jetson2", "jetson-agx-orin")]
# the jetson really runs 4x as slow as its profile says: 17 ms for the whole model, well above what
# the host needs to compute it even with the cluster's threads in one process (at 2x, 8.7 ms, the host
# sometimes took 9-11 ms and the "true" scale the test expects was not the device's)
TRUE_SCALE = 4.0


class Prefer:
    """Takes the first allowed action of a preference list (a deterministic test policy)."""

    def __init__(self, order):
        self.order = order

    def predict(self, observation, state=None, episode_start=None, deterministic=True, action_masks=None):
        return next(a for a in self.order if action_masks[a]), state


@pytest.fixture
def cluster():
    broker = EmbeddedBroker(port=0).start()
    url = parse_broker_url(broker.url)
    profile = resolve_model(MODEL)
    nano = tuple(float(x) for x in profile.latency_for("jetson-nano"))
    corr = profile.correction_for("jetson-nano")
    configs = [NodeConfig(node="pi", model=MODEL, cluster=CLUSTER, device="raspberry-pi-4", uplink_mbps=50),
               NodeConfig(node="jetson", model=MODEL, cluster=CLUSTER, device="jetson-nano", emulate=nano,
                          emulate_correction=(corr.c0_ms, corr.c1_ms), slowdown=TRUE_SCALE,
                          uplink_mbps=1000),
               NodeConfig(node="jetson2", model=MODEL, cluster=CLUSTER, device="jetson-agx-orin")]
    nodes = [NodeRuntime(c, url).start() for c in configs]
    ports = [free_port() for _ in nodes]
    agents = [attach_monitor(n, {CHAIN[i + 1][0]: ("127.0.0.1", ports[i + 1])} if i < 2 else {},
                             probe_port=ports[i], probe_interval_s=0.5, interval_s=0.25)
              for i, n in enumerate(nodes)]
    yield {"url": url, "nodes": nodes, "agents": agents}
    for a in agents:
        a.close()
    for n in nodes:
        n.close()
    broker.close()


def config(**kw):
    # these tests are about the default plan the controller publishes: no source rule overrides it
    return ControllerConfig.from_dict({"model_profile": MODEL, "cluster": CLUSTER, "interval_s": 0.25,
                                       "min_dwell_s": 0.0, "stale_after_s": 1.5, "source_rule": "off",
                                       "chain": [{"node": n, "device": d} for n, d in CHAIN], **kw})


def candidates():
    # 0 device-only, 1 everything on jetson, 2 everything on jetson2, 3 split across all three
    splits = np.array([[11, 11], [0, 11], [0, 0], [3, 7]])
    return CandidatePlans(PlanArray(splits, np.zeros_like(splits)), ("none", "fp16", "int8"))


def wait(predicate, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_plans_are_acked_and_a_dead_node_is_planned_around(cluster):
    ctl = Controller(config(calibrate=False), cluster["url"], Prefer([3, 2, 1, 0]), candidates=candidates(),
                     policy_name="prefer").start()
    try:
        assert wait(lambda: ctl.decisions and ctl.decisions[-1].action == 3
                    and ctl.decisions[-1].applied_at is not None, 15)
        first = ctl.decisions[-1]
        assert first.acked == {"pi", "jetson", "jetson2"}
        # jetson2 goes away: plans 3 and 2 give it work, so the controller moves at once
        cluster["agents"][2].close()
        cluster["nodes"][2].close()
        assert wait(lambda: ctl.decisions[-1].action == 1, 10)
        assert "jetson2" in ctl.observed["dead"]
        moved = ctl.decisions[-1]
        assert moved.expected == {"pi", "jetson"}  # applied once the live nodes accept it
        assert wait(lambda: moved.applied_at is not None, 5)
        assert moved.missing == ()
    finally:
        ctl.close()


def test_online_calibration_converges_to_the_true_scale(cluster):
    ctl = Controller(config(calibration_weight=0.3), cluster["url"], Prefer([1, 0]), candidates=candidates(),
                     policy_name="prefer").start()
    try:
        assert wait(lambda: ctl.decisions and ctl.decisions[-1].applied_at is not None, 15)
        start = time.time()
        with InferenceClient("cal", cluster["url"], CLUSTER, (1, 3, 32, 32)) as client:
            client.run(8.0, concurrency=2)
        assert ctl.scales["jetson"] == pytest.approx(TRUE_SCALE, rel=0.1), ctl.scales
        assert ctl.scales["pi"] == pytest.approx(1.0, abs=0.05)  # it ran nothing: untouched
        converged = next(t for t, s in ctl.scale_history if abs(s["jetson"] / TRUE_SCALE - 1) < 0.1)
        assert converged - start < 8.0
    finally:
        ctl.close()


def test_forged_and_malformed_stats_are_dropped(cluster):
    ctl = Controller(config(), cluster["url"], Prefer([1, 0]), candidates=candidates(),
                     policy_name="prefer").start()
    sender = MqttTransport(cluster["url"], "forger").start()
    try:
        real = StatsMessage("jetson", time.time(), (StageTiming(1, 0, 11, 1, 5, 500.0),))
        sender.publish(Message(stats_topic(CLUSTER, "pi"), real.encode(), 1))  # jetson's stats on pi's topic
        for junk in (b"{", b'{"v": 1, "node": "jetson", "ts": 1, "stages": [{"start": -1}]}', b"\xff" * 10):
            sender.publish(Message(stats_topic(CLUSTER, "jetson"), junk, 1))
        time.sleep(1.0)
        assert ctl.scales == {"pi": 1.0, "jetson": 1.0, "jetson2": 1.0}
        assert ctl.session.loop.running
        sender.publish(Message(stats_topic(CLUSTER, "jetson"), real.encode(), 1))  # the genuine one counts
        assert wait(lambda: ctl.scales["jetson"] > 1.5, 5), ctl.scales
    finally:
        sender.close()
        ctl.close()


def test_plans_not_applied_are_flagged_after_the_timeout():
    from adaptive.control.controller import Decision
    from monitor.transport import BrokerAddress

    ctl = Controller(config(ack_timeout_s=2.0), BrokerAddress("127.0.0.1", 1), Prefer([0]),
                     candidates=candidates())  # never started: no broker needed
    d = Decision(1, 0, 100.0, 10.0, acked={"pi"}, rejected={"jetson": "bad range"},
                 expected=frozenset({"pi", "jetson", "jetson2"}))
    ctl.decisions.append(d)
    ctl.check_acks(now=101.0)
    assert d.missing == ()  # not yet
    ctl.check_acks(now=102.5)
    assert d.missing == ("jetson", "jetson2")  # jetson refused it, jetson2 did not answer
    assert ctl.reissue == 0  # the same plan goes out again at the next step ...
    assert ctl.step(now=103.0) is None  # ... once the broker is there to hear it
    assert list(ctl.decisions) == [d]


def test_bad_controller_config():
    with pytest.raises(AdaptiveError, match="distinct nodes"):
        ControllerConfig.from_dict({"model_profile": MODEL, "chain": [{"node": "a", "device": "x"}] * 2})
    with pytest.raises(AdaptiveError, match="unknown controller config"):
        ControllerConfig.from_dict({"model_profile": MODEL, "chain": [], "colour": 1})


def test_the_controller_schema_matches_the_config_and_the_shipped_examples():
    import dataclasses
    import json
    from importlib import resources
    from pathlib import Path

    import jsonschema
    import yaml

    schema = json.loads(resources.files("adaptive.schemas").joinpath("controller.v1.json").read_text())
    assert set(schema["properties"]) == {f.name for f in dataclasses.fields(ControllerConfig)}
    deploy = Path(__file__).resolve().parents[3] / "docs" / "deploy"
    for name in ("controller.yaml", "controller-clients.yaml"):
        doc = yaml.safe_load((deploy / name).read_text())
        jsonschema.validate(doc, schema)  # the schema takes the examples ...
        ControllerConfig.from_dict(doc, name)  # ... and so does the controller
    bad = yaml.safe_load((deploy / "controller-clients.yaml").read_text())
    bad["sources"][0]["colour"] = "red"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)
    with pytest.raises(AdaptiveError):
        ControllerConfig.from_dict(bad, "bad")


def test_scaled_profiles_scale_each_node_separately_codecs_included():
    from adaptive.control.controller import scaled_profiles
    from adaptive.model.latency import Conditions, SplitModel
    from adaptive.model.profiles import resolve_device

    profile = resolve_model("mobilenet_v2")
    nano = resolve_device("jetson-nano")
    devices = [resolve_device("raspberry-pi-4"), nano, nano]  # two nodes with the same device profile
    base = SplitModel(profile, devices)
    model = SplitModel(*scaled_profiles(profile, devices, [1.0, 2.0, 0.5], ["pi", "j1", "j2"]))
    a, b = np.array([3]), np.array([20])
    assert model.exec_base(1, a, b)[0] == pytest.approx(2.0 * base.exec_base(1, a, b)[0])
    assert model.exec_base(2, a, b)[0] == pytest.approx(0.5 * base.exec_base(2, a, b)[0])
    assert model.exec_base(0, a, b)[0] == pytest.approx(base.exec_base(0, a, b)[0])
    plans = PlanArray(np.array([[5, 12], [5, 12]]), np.array([[2, 0], [0, 0]]))  # int8 at split 1
    scaled = model.evaluate(plans, Conditions(bandwidth_mbps=[20.0, 1000.0]))
    plain = base.evaluate(plans, Conditions(bandwidth_mbps=[20.0, 1000.0]))
    assert np.isfinite(scaled.latency_ms).all()
    assert (scaled.latency_ms > plain.latency_ms).all()  # j1's stage doubled, j2's only halved
