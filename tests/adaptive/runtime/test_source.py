"""Two-level control live: the controller's table rule, applied per request by the source node."""

from __future__ import annotations

import json
import time

import pytest

from adaptive.control.controller import Controller, ControllerConfig
from adaptive.lab.broker import EmbeddedBroker
from adaptive.lab.ports import free_port
from adaptive.model.profiles import resolve_device, resolve_model
from adaptive.protocol.messages import Message
from adaptive.runtime.client import InferenceClient, plan_label
from adaptive.runtime.node import NodeConfig, NodeRuntime, attach_monitor, emulated_latency, emulated_parts
from agents.wiring import build_policy
from monitor.transport import MqttTransport, parse_broker_url

pytestmark = pytest.mark.integration
MODEL, CLUSTER = "resnet20_cifar", "src"
CHAIN = [("pi", "raspberry-pi-4"), ("jetson", "jetson-nano"), ("jetson2", "jetson-agx-orin")]


def emulated(name, device, model=MODEL, cluster=CLUSTER, **kw):
    """A node padding its stages (and parts of sections) to ``device``'s profile."""
    profile = resolve_model(model)
    corr = profile.correction_for(device)
    return NodeConfig(node=name, model=model, cluster=cluster, device=device,
                      emulate=emulated_latency(profile, device), emulate_correction=(corr.c0_ms, corr.c1_ms),
                      emulate_batch=resolve_device(device).batch_per_extra_item,
                      emulate_parts=emulated_parts(profile, resolve_device(device)), **kw)


def start_chain(url, uplink_mbps, model=MODEL, cluster=CLUSTER):
    """The three emulated nodes of CHAIN, each with a monitor probing the next; the source's uplink shaped."""
    nodes = [NodeRuntime(emulated(n, d, model, cluster, uplink_mbps=uplink_mbps if i == 0 else 1000.0),
                         url).start() for i, (n, d) in enumerate(CHAIN)]
    ports = [free_port() for _ in nodes]
    agents = [attach_monitor(n, {CHAIN[i + 1][0]: ("127.0.0.1", ports[i + 1])} if i < 2 else {},
                             probe_port=ports[i], probe_interval_s=0.5, interval_s=0.5)
              for i, n in enumerate(nodes)]
    return nodes, agents


def close_all(*parts):
    """Close controllers, agents and nodes (lists or single objects) in order."""
    for p in parts:
        for x in (p if isinstance(p, list) else [p]):
            x.close()


def test_the_source_follows_uplink_steps_per_request():
    broker = EmbeddedBroker(port=0).start()
    url = parse_broker_url(broker.url)
    nodes, agents = start_chain(url, 30.0)
    config = ControllerConfig.from_dict({"model_profile": MODEL, "cluster": CLUSTER, "interval_s": 0.5,
                                         "source_rule": True,
                                         "chain": [{"node": n, "device": d} for n, d in CHAIN]})
    policy, candidates, spec, name, on_model = build_policy("greedy", config)
    ctl = Controller(config, url, policy, candidates=candidates, obs_spec=spec, policy_name=name,
                     on_model=on_model)
    control = MqttTransport(url, "src-control").start()

    def pin(mbps):
        message = json.dumps({"v": 1, "uplink_mbps": mbps}).encode()
        control.publish(Message(f"adaptive/{CLUSTER}/emulation", message, 1))
        return time.time()

    try:
        time.sleep(1.5)  # telemetry first
        ctl.start()
        deadline = time.monotonic() + 15
        while nodes[0].source.rule is None and time.monotonic() < deadline:
            time.sleep(0.05)
        rule = nodes[0].source.rule
        assert rule is not None and len(rule.plans) >= 2, "the source got no table rule"
        low, high = rule.plans[0].splits, rule.plans[-1].splits
        assert low == (11, 11) and high != low  # device-only on a slow uplink, offload on a fast one
        label = {row.splits: plan_label(row.splits, row.codecs) for row in (rule.plans[0], rule.plans[-1])}
        with InferenceClient("src", url, CLUSTER, (1, 3, 32, 32), timeout_s=15) as client:
            client.run(3.0, rate_hz=10)
            steps = [pin(0.5)]  # far below the table's edge (about 1.5-3.5 Mbit/s, with the host's load)
            client.run(4.0, rate_hz=10)
            steps.append(pin(30.0))
            client.run(4.0, rate_hz=10)
            records = list(client.records)
    finally:
        close_all(control, ctl, agents, nodes, broker)
    assert records and all(r.outcome == "ok" for r in records), [r.error for r in records if r.error][:3]
    before = [r.plan for r in records if r.sent_at < steps[0]]
    assert before.count(label[high]) >= 0.8 * len(before)  # 30 Mbit/s: offload
    # after each step, the source switches on its own estimate, with no controller round trip
    slow = [r for r in records if steps[0] + 1.0 < r.sent_at < steps[1]]
    assert slow and all(r.plan == label[low] for r in slow), [(round(r.sent_at - steps[0], 2), r.plan)
                                                               for r in slow]
    fast = [r for r in records if r.sent_at > steps[1] + 2.0]  # device-only moves no activations: probes
    assert fast and all(r.plan == label[high] for r in fast), [r.plan for r in fast]
    reactions = [min(r.sent_at for r in records if r.sent_at > t and r.plan == label[want]) - t
                 for t, want in zip(steps, (low, high), strict=True)]
    print(f"\nfirst request on the new plan {reactions[0] * 1e3:.0f} ms after the drop, "
          f"{reactions[1] * 1e3:.0f} ms after the rise; estimate ages (s): median "
          f"{sorted(nodes[0].source.ages())[len(nodes[0].source.ages()) // 2]:.3f}")
    assert reactions[0] < 1.0 and reactions[1] < 2.0


def test_a_slow_request_is_answered_when_its_resend_is_dropped_at_admission():
    """The client resends a request it has waited long for; its source, which still has the first
    attempt queued, drops the resend as late. The request waits for the first attempt's answer."""
    from adaptive.protocol.rules import RuleMessage, RulePlan, rule_topic

    blocks = resolve_model(MODEL).num_blocks
    broker = EmbeddedBroker(port=0).start()
    url = parse_broker_url(broker.url)
    # the source's whole model padded to 600 ms: longer than the client waits before it resends
    nodes = [NodeRuntime(NodeConfig(node="pi", model=MODEL, cluster=CLUSTER, uplink_mbps=30.0,
                                    emulate=(600.0 / blocks,) * blocks), url).start(),
             NodeRuntime(emulated("jetson", "jetson-nano"), url).start()]
    ports = [free_port() for _ in nodes]
    agents = [attach_monitor(nodes[0], {"jetson": ("127.0.0.1", ports[1])}, probe_port=ports[0],
                             probe_interval_s=0.5, interval_s=0.5),
              attach_monitor(nodes[1], {}, probe_port=ports[1], interval_s=0.5)]
    rule = RuleMessage(1, "pi", MODEL, ("pi", "jetson"), blocks, time.time(), "table", (),
                       (RulePlan((blocks,), (), 600.0, at_mbps=30.0, edge_ms=600.0, uplink_bits=0.0),),
                       deadline_ms=800.0)
    control = MqttTransport(url, "src-control").start()
    try:
        control.publish(Message(rule_topic(CLUSTER, "pi"), rule.encode(), 1, retain=True))
        deadline = time.monotonic() + 15
        while (nodes[0].source.rule is None or not nodes[0]._uplink("jetson")[0]) \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        assert nodes[0].source.rule is not None and nodes[0]._uplink("jetson")[0], "no rule or estimate"
        with InferenceClient("slow", url, CLUSTER, (1, 3, 32, 32), timeout_s=10, min_deadline_s=0.25,
                             source="pi") as client:
            records = client.run(0.01, rate_hz=1)  # one request, then its answer
    finally:
        close_all(control, agents, nodes, broker)
    assert nodes[0].source.dropped >= 1  # a resend was dropped at admission ...
    [rec] = records  # ... and the request still ended once, with the first attempt's answer
    assert rec.outcome == "ok" and rec.retries >= 1 and 550 < rec.latency_ms < 2000, rec


def test_the_controllers_rule_names_parallel_sections_and_the_nodes_run_them():
    """``parallel: true``: the table rule names sectioned plans; the source stamps them per request;
    the emulated nodes run them (parts padded to the profile) and every result is the whole model's."""
    import numpy as np
    import torch

    from adaptive.nn.zoo import build_model

    model = "mobilenet_v2"
    broker = EmbeddedBroker(port=0).start()
    url = parse_broker_url(broker.url)
    nodes, agents = start_chain(url, 10.0, model, "lop")
    config = ControllerConfig.from_dict({"model_profile": model, "cluster": "lop", "interval_s": 0.5,
                                         "source_rule": "table", "parallel": True, "calibrate": False,
                                         "chain": [{"node": n, "device": d} for n, d in CHAIN]})
    policy, candidates, spec, name, on_model = build_policy("greedy", config)
    assert candidates.plans.has_sections
    ctl = Controller(config, url, policy, candidates=candidates, obs_spec=spec, policy_name=name,
                     on_model=on_model)
    x = np.random.default_rng(4).standard_normal((1, 3, 224, 224)).astype(np.float32)
    with torch.inference_mode():
        expected = build_model(model)(torch.from_numpy(x)).numpy()
    wrong = []

    def check(frame):
        if not np.allclose(frame.tensor(), expected, rtol=0.05, atol=0.05 * np.abs(expected).max()):
            wrong.append(frame.request_id)

    try:
        time.sleep(1.5)
        ctl.start()
        deadline = time.monotonic() + 20
        while nodes[0].source.rule is None and time.monotonic() < deadline:
            time.sleep(0.05)
        rule = nodes[0].source.rule
        assert rule is not None and any(row.section for row in rule.plans), "no sectioned plan in the rule"
        with InferenceClient("lop", url, "lop", (1, 3, 224, 224), timeout_s=20, on_result=check) as client:
            for _ in range(12):
                client.send(x)
                time.sleep(0.25)
            deadline = time.monotonic() + 30
            while client.outstanding() and time.monotonic() < deadline:
                time.sleep(0.05)
            records = list(client.records)
    finally:
        close_all(ctl, agents, nodes, broker)
    assert len(records) == 12 and all(r.outcome == "ok" for r in records), [r.error for r in records][:3]
    assert not wrong, f"{len(wrong)} results differ from the whole model"
    assert sum("@" in r.plan for r in records) >= 9, [r.plan for r in records]  # at 10 Mbit/s: sections
    print("\n" + ", ".join(f"{r.plan} {r.latency_ms:.0f} ms" for r in records[-4:]))
