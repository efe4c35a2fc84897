"""Several clients, each on its own edge node, share an accelerator: the joint controller, live.

Real node runtimes with in-process monitors, a real broker, real sockets and real PyTorch; the
joint policy is the ``coordinated`` heuristic wired as the CLI wires it.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from adaptive.control.controller import ControllerConfig
from adaptive.control.shared_controller import SharedController
from adaptive.errors import AdaptiveError
from adaptive.lab.broker import EmbeddedBroker
from adaptive.lab.ports import free_port
from adaptive.nn.zoo import build_model
from adaptive.runtime.client import InferenceClient
from adaptive.runtime.node import NodeConfig, NodeRuntime, attach_monitor
from agents.wiring import build_multi_policy
from monitor.transport import parse_broker_url

pytestmark = pytest.mark.integration
MODEL, CLUSTER, SHAPE = "resnet20_cifar", "shared", (1, 3, 32, 32)
EDGES = {"e1": 50.0, "e2": 20.0, "e3": 5.0}  # each edge's own uplink, Mbit/s


@pytest.fixture
def cluster():
    broker = EmbeddedBroker(port=0).start()
    url = parse_broker_url(broker.url)
    nodes = {e: NodeRuntime(NodeConfig(node=e, model=MODEL, cluster=CLUSTER, device="raspberry-pi-4",
                                       uplink_mbps=mbps), url).start() for e, mbps in EDGES.items()}
    nodes["acc"] = NodeRuntime(NodeConfig(node="acc", model=MODEL, cluster=CLUSTER, device="jetson-nano",
                                          batch_window_ms=20), url).start()
    acc_port = free_port()
    agents = {n: attach_monitor(node, {"acc": ("127.0.0.1", acc_port)} if n != "acc" else {},
                                probe_port=acc_port if n == "acc" else free_port(), probe_interval_s=0.5,
                                interval_s=0.25)
              for n, node in nodes.items()}
    yield {"url": url, "nodes": nodes, "agents": agents}
    for a in agents.values():
        a.close()
    for n in nodes.values():
        n.close()
    broker.close()


def config(**kw):
    return ControllerConfig.from_dict({
        "model_profile": MODEL, "cluster": CLUSTER, "interval_s": 0.25, "stale_after_s": 1.5,
        "chain": [{"node": "e1", "device": "raspberry-pi-4"}, {"node": "acc", "device": "jetson-nano"}],
        "sources": [{"node": "e2", "device": "raspberry-pi-4"}, {"node": "e3", "device": "raspberry-pi-4"}],
        **kw})


def controller(url, policy="coordinated", **kw):
    cfg = config(**kw)
    w = build_multi_policy(policy, cfg)
    return SharedController(cfg, url, w.policy, spec=w.spec, candidates=w.candidates,
                            deadline_ms=w.deadline_ms, step_s=w.step_s, policy_name=w.name,
                            on_shared=w.on_shared)


def wait(predicate, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def send_rounds(clients, rounds, x):
    for _ in range(rounds):
        for c in clients:
            c.send(x)
        time.sleep(0.1)
    assert wait(lambda: all(c.outstanding() == 0 for c in clients), 30)


def test_each_client_gets_its_own_rule_and_every_result_is_the_whole_model(cluster):
    x = np.random.default_rng(1).standard_normal(SHAPE).astype(np.float32)
    with torch.inference_mode():
        expected = build_model(MODEL)(torch.from_numpy(x)).numpy()
    wrong = []

    def check(frame):
        if not np.allclose(frame.tensor(), expected, rtol=0.05, atol=0.05 * np.abs(expected).max()):
            wrong.append(frame.request_id)

    ctl = controller(cluster["url"]).start()
    clients = []
    try:
        assert wait(lambda: all(cluster["nodes"][e].source.rule is not None for e in EDGES), 15)
        for e in EDGES:  # every source holds a rule for itself over its own chain
            rule = cluster["nodes"][e].source.rule
            assert rule.source == e and rule.devices == (e, "acc")
        ctl.step()
        sent = {r.source: r.version for r in ctl.rules}  # the newest rule each source was sent
        assert ctl.wait_rules(5.0) == []  # ... is applied when wait_rules says no source is behind
        assert all(cluster["nodes"][e].source.rule.version >= sent[e] for e in EDGES)
        clients = [InferenceClient(f"c-{e}", cluster["url"], CLUSTER, SHAPE, timeout_s=20, source=e,
                                   on_result=check).start() for e in EDGES]
        assert ctl.history[-1]["alive"] == [True, True, True]
        assert ctl.history[-1]["active"] == [False, False, False]  # idle until their clients send
        send_rounds(clients, 10, x)
        # the sources' stats (every second) show their clients' requests: all three count now
        assert wait(lambda: any(h["active"] == [True, True, True] for h in ctl.history), 4)
    finally:
        for c in clients:
            c.close()
        ctl.close()
    for c, e in zip(clients, EDGES, strict=True):
        assert c.requests == len(c.records) == 10  # nothing lost
        assert all(r.outcome == "ok" for r in c.records), [r.error for r in c.records]
        assert all(r.hops.startswith(f"{e}:") for r in c.records)  # entered at its own edge
    assert not wrong, f"{len(wrong)} results differ from the whole model"


def test_a_client_that_left_gets_no_rule_and_the_others_lose_nothing(cluster):
    ctl = controller(cluster["url"]).start()
    clients = []
    try:
        assert wait(lambda: all(cluster["nodes"][e].source.rule is not None for e in EDGES), 15)
        cluster["agents"]["e3"].close()
        cluster["nodes"]["e3"].close()  # e3's client leaves with its edge
        assert wait(lambda: ctl.history and ctl.history[-1]["alive"] == [True, True, False], 10)
        seen = len(ctl.rules)
        left_at = ctl.history[-1]["at"]
        for _ in range(3):
            ctl.step()
        assert all(r.source != "e3" for r in list(ctl.rules)[seen:])
        assert ctl.wait_rules(5.0) == []  # e3's last rule was applied before it left
        assert all(r.source != "e3" or r.issued_at <= left_at + 1e-3 for r in ctl.rules)
        clients = [InferenceClient(f"c-{e}", cluster["url"], CLUSTER, SHAPE, timeout_s=20, source=e).start()
                   for e in ("e1", "e2")]
        send_rounds(clients, 5, None)
    finally:
        for c in clients:
            c.close()
        ctl.close()
    for c in clients:
        assert c.requests == len(c.records) == 5
        assert all(r.outcome == "ok" for r in c.records), [r.error for r in c.records]


class OutsideTheMask:
    """A broken joint policy: plans that do not exist, for every slot."""

    def __init__(self, num_plans, num_slots):
        self.plans = np.array([num_plans + 3, -1, num_plans] + [0] * (num_slots - 3))

    def predict(self, observation, state=None, episode_start=None, deterministic=True, action_masks=None):
        return self.plans, state


def test_a_plan_outside_the_mask_is_replaced_and_nothing_is_lost(cluster, caplog):
    cfg = config()
    w = build_multi_policy("coordinated", cfg)
    bad = OutsideTheMask(len(w.candidates), w.spec.num_clients)
    ctl = SharedController(cfg, cluster["url"], bad, spec=w.spec, candidates=w.candidates,
                           policy_name="broken")
    ctl.start()
    clients = []
    try:
        assert wait(lambda: all(cluster["nodes"][e].source.rule is not None for e in EDGES), 15)
        clients = [InferenceClient(f"c-{e}", cluster["url"], CLUSTER, SHAPE, timeout_s=20, source=e).start()
                   for e in EDGES]
        send_rounds(clients, 3, None)
        # once the clients send, their slots count, and the broken plans are caught and named
        assert wait(lambda: ctl.rejected_actions >= 3, 5)
        assert "outside its mask" in caplog.text
        for e in EDGES:  # the rule each source holds gives it a real candidate
            for row in cluster["nodes"][e].source.rule.plans:
                assert any(w.candidates.plan(i).splits == row.splits for i in range(len(w.candidates)))
        send_rounds(clients, 3, None)
    finally:
        for c in clients:
            c.close()
        ctl.close()
    for c in clients:
        assert c.requests == len(c.records) == 6 and all(r.outcome == "ok" for r in c.records)


def test_an_unknown_client_gets_a_clear_error_and_loses_nothing(cluster):
    ctl = controller(cluster["url"]).start()
    try:
        assert wait(lambda: all(cluster["nodes"][e].source.rule is not None for e in EDGES), 15)
        with pytest.raises(AdaptiveError, match="'ghost' has no data endpoint"):
            InferenceClient("c-ghost", cluster["url"], CLUSTER, SHAPE, source="ghost").start(wait_s=1)
        # a node of the cluster that is no client's source: it has no rule to decide by
        with InferenceClient("c-stray", cluster["url"], CLUSTER, SHAPE, timeout_s=20, source="acc",
                             max_retries=1) as stray:
            for _ in range(2):
                stray.send()
            assert wait(lambda: stray.outstanding() == 0, 15)
            records = list(stray.records)
    finally:
        ctl.close()
    assert len(records) == 2
    assert all(r.outcome == "error" and "no decision rule" in r.error for r in records), records


def test_bad_shared_configs_are_named():
    with pytest.raises(AdaptiveError, match="sources must be distinct"):
        config(sources=[{"node": "e1", "device": "raspberry-pi-4"}])
    with pytest.raises(AdaptiveError, match="the chain has none"):
        ControllerConfig.from_dict({"model_profile": MODEL,
                                    "chain": [{"node": "e1", "device": "raspberry-pi-4"}],
                                    "sources": [{"node": "e2", "device": "raspberry-pi-4"}]})
    cfg = config()
    w = build_multi_policy("coordinated", cfg, slots=2)  # a policy for two clients, three sources
    with pytest.raises(AdaptiveError, match="2 client slots; the cluster has 3 sources"):
        SharedController(cfg, parse_broker_url("mqtt://127.0.0.1:1"), w.policy, spec=w.spec,
                         candidates=w.candidates)
