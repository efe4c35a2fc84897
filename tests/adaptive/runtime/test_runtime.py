"""The node runtime on real sockets with a real broker: switching under load, bad plans, bad frames."""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch
import zmq

from adaptive.lab.broker import EmbeddedBroker
from adaptive.model.plans import enumerate_plans
from adaptive.nn.zoo import build_model
from adaptive.protocol.messages import Ack, Message, PlanMessage, StatsMessage, plan_topic
from adaptive.runtime.client import InferenceClient, plan_label
from adaptive.runtime.node import NodeConfig, NodeRuntime, check_plan
from adaptive.runtime.wire import Frame, decode_frame, encode_frame, tensor_frame
from monitor.transport import MqttTransport, parse_broker_url

pytestmark = pytest.mark.integration
MODEL, SHAPE, CLUSTER = "resnet20_cifar", (1, 3, 32, 32), "rt"
NODES = ("pi", "jetson", "jetson2")


@pytest.fixture(scope="module")
def cluster():
    broker = EmbeddedBroker(port=0).start()
    url = parse_broker_url(broker.url)
    nodes = [NodeRuntime(NodeConfig(node=n, model=MODEL, cluster=CLUSTER, max_payload_bytes=1_000_000,
                                    uplink_mbps=300.0 if n == "pi" else None), url) for n in NODES]
    for n in nodes:
        n.start()
    acks: list[Ack] = []
    control = MqttTransport(url, "test-control", subscriptions=[(f"adaptive/{CLUSTER}/node/+/ack", 1)],
                            on_message=lambda t, p: acks.append(Ack.decode(p))).start()
    deadline = time.monotonic() + 10
    while any(set(NODES) - set(n.presence.endpoints()) for n in nodes) and time.monotonic() < deadline:
        time.sleep(0.05)
    state = {"url": url, "nodes": nodes, "control": control, "acks": acks, "version": 0}
    yield state
    control.close()
    for n in nodes:
        n.close()
    broker.close()


def publish(state, splits, codecs=(), devices=NODES, model=MODEL):
    state["version"] += 1
    msg = PlanMessage(state["version"], model, tuple(devices), tuple(int(s) for s in splits), time.time(),
                      "test", None, tuple(codecs))
    state["control"].publish(Message(plan_topic(CLUSTER), msg.encode(), 1, True))
    return state["version"]


def wait(predicate, timeout_s=10.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_plan_checks():
    plan = PlanMessage(1, MODEL, ("pi", "ghost"), (4,), 0.0, "t")
    assert "unknown node 'ghost'" in check_plan(plan, MODEL, 11, {"pi"})
    assert "out of range 0..11" in check_plan(PlanMessage(1, MODEL, ("pi", "j"), (12,), 0.0, "t"), MODEL, 11,
                                              {"pi", "j"})
    assert "holds 'resnet20_cifar'" in check_plan(PlanMessage(1, "vgg16", ("pi",), (), 0.0, "t"), MODEL, 11,
                                                  {"pi"})
    assert check_plan(PlanMessage(1, MODEL, ("pi", "j"), (11,), 0.0, "t"), MODEL, 11, {"pi", "j"}) == ""
    assert "not non-decreasing" in check_plan(PlanMessage(1, MODEL, ("pi", "j", "k"), (3, 2), 0.0, "t"),
                                              MODEL, 11, {"pi", "j", "k"})
    # an offline node may be named while it gets no blocks (planned around), never while it has work
    around = PlanMessage(1, MODEL, ("pi", "j", "k"), (4, 11), 0.0, "t")
    assert check_plan(around, MODEL, 11, {"pi", "j", "k"}, online={"pi", "j"}) == ""
    assert "'k', which is offline" in check_plan(PlanMessage(1, MODEL, ("pi", "j", "k"), (4, 8), 0.0, "t"),
                                                  MODEL, 11, {"pi", "j", "k"}, online={"pi", "j"})


def test_hundred_plan_switches_under_load_lose_nothing_and_compute_the_model(cluster):
    torch.manual_seed(0)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    with torch.inference_mode():
        expected = build_model(MODEL)(torch.from_numpy(x)).numpy()
    L = cluster["nodes"][0].part.num_blocks
    space = enumerate_plans(L, 3, np.ones((3, L + 1), bool))  # every split, with none/fp16/int8
    rng = np.random.default_rng(1)
    picks = rng.choice(len(space), 400, replace=False)
    names = ("none", "fp16", "int8")
    publish(cluster, (L, L))
    wrong = []

    def check(frame):
        got = frame.tensor()
        if not np.allclose(got, expected, rtol=0.05, atol=0.05 * np.abs(expected).max()):
            wrong.append(frame.request_id)

    stop = threading.Event()
    published = []

    def switcher():
        i = 0
        while not stop.is_set():
            row = picks[i % len(picks)]
            codecs = [names[c] for c in space.codecs[row]]
            published.append(publish(cluster, space.splits[row], codecs))
            i += 1
            time.sleep(0.08)

    with InferenceClient("load", cluster["url"], CLUSTER, SHAPE, timeout_s=15, on_result=check) as client:
        t = threading.Thread(target=switcher)
        t.start()
        deadline = time.monotonic() + 90
        while len(published) < 110 and time.monotonic() < deadline:
            for _ in range(4):
                client.send(x)
            while client.outstanding() >= 4:
                time.sleep(0.002)
        stop.set()
        t.join()
        while client.outstanding() and time.monotonic() < deadline + 20:
            time.sleep(0.05)
        records = list(client.records)
    outcomes = {o: sum(r.outcome == o for r in records) for o in ("ok", "error", "timeout")}
    versions = {r.version for r in records}
    assert len(published) >= 100
    assert len(versions) >= 50, "requests should have run under many plan versions"
    assert outcomes["timeout"] == 0, outcomes  # nothing lost
    assert outcomes["error"] == 0, [r.error for r in records if r.outcome == "error"][:3]
    assert not wrong, f"{len(wrong)} results differ from the whole model"
    assert len(records) >= 300


def send_own_plans(cluster, client_id, plans, seed, tolerance):
    """Send one request per plan (each carrying its own), at most 4 in flight; check every result.

    Returns ``({request id: plan}, records)`` once all are answered, after asserting that none was
    lost and that every result is the whole model's within ``tolerance`` of its scale.
    """
    x = np.random.default_rng(seed).standard_normal(SHAPE).astype(np.float32)
    with torch.inference_mode():
        expected = build_model(MODEL)(torch.from_numpy(x)).numpy()
    L = cluster["nodes"][0].part.num_blocks
    publish(cluster, (L, L))  # only so that the client knows the first node's cluster and version
    wrong, sent = [], {}

    def check(frame):
        scale = tolerance * np.abs(expected).max()
        if not np.allclose(frame.tensor(), expected, rtol=tolerance, atol=scale):
            wrong.append(frame.request_id)

    with InferenceClient(client_id, cluster["url"], CLUSTER, SHAPE, timeout_s=15, on_result=check) as client:
        for plan in plans:
            sent[client.send(x, plan=plan)] = plan
            while client.outstanding() >= 4:
                time.sleep(0.002)
        assert wait(lambda: client.outstanding() == 0, 30)
        records = list(client.records)
    assert len(records) == len(plans) and all(r.outcome == "ok" for r in records), \
        [r.error for r in records if r.outcome != "ok"][:3]
    assert not wrong, f"{len(wrong)} results differ from the whole model"
    return sent, records


def test_every_request_with_its_own_plan_loses_nothing_and_computes_the_model(cluster):
    """No plan topic involved: each request carries a different random plan (splits and codecs)."""
    L = cluster["nodes"][0].part.num_blocks
    space = enumerate_plans(L, 3, np.ones((3, L + 1), bool))
    names = ("none", "fp16", "int8")
    rows = np.random.default_rng(5).choice(len(space), 300, replace=False)
    own = [PlanMessage(1, MODEL, NODES, tuple(int(v) for v in space.splits[row]), time.time(), "test", None,
                       tuple(names[c] for c in space.codecs[row]), L) for row in rows]
    plans, records = send_own_plans(cluster, "own", own, 2, 0.05)
    for r in records:  # each ran where its own plan said
        assert r.plan == plan_label(plans[r.id].splits, plans[r.id].codecs)
        assert {h.split(":")[0] for h in r.hops.split()} == set(plans[r.id].working_nodes())


def test_nodes_reject_bad_plans_on_their_ack(cluster):
    v1 = publish(cluster, (4, 8), devices=("pi", "ghost", "jetson2"))
    v2 = publish(cluster, (4, 99))
    assert wait(lambda: sum(a.version in (v1, v2) for a in cluster["acks"]) >= 6)
    bad = [a for a in cluster["acks"] if a.version in (v1, v2)]
    assert all(not a.ok for a in bad)
    assert any("unknown node 'ghost'" in a.error for a in bad if a.version == v1)
    assert any("out of range 0..11" in a.error for a in bad if a.version == v2)
    state = cluster  # a plan whose parallel section does not fit the model: refused on every ack
    state["version"] += 1
    v3 = state["version"]
    msg = PlanMessage(v3, MODEL, NODES, (2, 11), time.time(), "test", None, (), 11, section=(11, 0.5, 1))
    state["control"].publish(Message(plan_topic(CLUSTER), msg.encode(), 1, True))
    assert wait(lambda: sum(a.version == v3 for a in cluster["acks"]) >= 3)
    assert all(not a.ok and "section: section [2, 11) must end" in a.error
               for a in cluster["acks"] if a.version == v3)
    good = publish(cluster, (3, 7))
    assert wait(lambda: sum(a.version == good and a.ok for a in cluster["acks"]) == 3)


def test_bad_frames_get_an_error_reply_and_never_stop_a_node(cluster):
    version = publish(cluster, (3, 7))
    assert wait(lambda: all(n.plan is not None and n.plan.version == version for n in cluster["nodes"]))
    pi = cluster["nodes"][0]
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = ctx.socket(zmq.PUSH)
    push.connect(pi.endpoint)
    reply_to = f"tcp://127.0.0.1:{port}"
    base = Frame(kind="work", request_id="bad-1", client="tester", reply_to=reply_to, version=version,
                 hop=0, position=0, shape=SHAPE, model=MODEL, devices=NODES, splits=(3, 7))
    zeros = np.zeros(SHAPE, np.float32)
    good = encode_frame(tensor_frame(base, zeros))
    truncated = [good[0], good[1][:100]]
    oversized = encode_frame(tensor_frame(base, np.zeros((1, 3, 300, 300), np.float32)))
    misrouted = encode_frame(tensor_frame(base, zeros, hop=2))
    # the request's own plan is checked by the node: out of range, a stranger, another model
    out_of_range = encode_frame(tensor_frame(base, zeros, splits=(3, 99)))
    stranger = encode_frame(tensor_frame(base, zeros, devices=("pi", "ghost", "jetson2")))
    other_model = encode_frame(tensor_frame(base, zeros, model="vgg16"))
    for parts in (truncated, oversized, [b"garbage"], [b"{}", b""], misrouted, out_of_range, stranger,
                  other_model):
        push.send_multipart(parts)
    errors = []
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    deadline = time.monotonic() + 10
    while len(errors) < 6 and time.monotonic() < deadline:
        if poller.poll(100):
            errors.append(decode_frame(pull.recv_multipart()).error)
    text = " | ".join(errors)
    assert "truncated" in text and "exceeds the limit" in text
    assert "misrouted" in text and "out of range 0..11" in text and "unknown node 'ghost'" in text
    assert "holds 'resnet20_cifar'" in text
    push.send_multipart(good)  # the node still serves
    assert poller.poll(10_000)
    result = decode_frame(pull.recv_multipart())
    assert result.kind == "result" and result.shape == (1, 10)
    assert pi.rejected >= 4
    push.close(0)
    pull.close(0)
    ctx.term()


def test_emulation_control_message_is_validated(cluster):
    pi = cluster["nodes"][0]
    before = pi.rejected
    bad = (b"not json", json.dumps({"v": 1, "trace_start": "soon"}).encode(), b"[]",
           json.dumps({"v": 1, "uplink_mbps": -5}).encode(), json.dumps({"v": 2, "uplink_mbps": 5}).encode())
    for payload in bad:
        cluster["control"].publish(Message(f"adaptive/{CLUSTER}/emulation", payload, 1))
    assert wait(lambda: pi.rejected >= before + len(bad))
    assert pi.shaper.rate_mbps == 300.0
    cluster["control"].publish(Message(f"adaptive/{CLUSTER}/emulation", b'{"v": 1, "uplink_mbps": 12.5}', 1))
    assert wait(lambda: pi.shaper.rate_mbps == 12.5)
    assert pi.rejected == before + len(bad)


def test_requests_of_several_clients_are_batched_and_each_gets_its_own_result():
    """A shared node batches the same stage of different clients within its window (seed 000 V-D)."""
    broker = EmbeddedBroker(port=0).start()
    url = parse_broker_url(broker.url)
    node = NodeRuntime(NodeConfig(node="accel", model=MODEL, cluster="batch", batch_window_ms=150,
                                  max_batch=8), url).start()
    control = MqttTransport(url, "batch-control").start()
    plan = PlanMessage(1, MODEL, ("accel",), (), time.time(), "test")
    control.publish(Message(plan_topic("batch"), plan.encode(), 1, True))
    model = build_model(MODEL).eval()
    rng = np.random.default_rng(3)
    inputs, results = {}, {}
    clients = [InferenceClient(f"c{i}", url, "batch", SHAPE, timeout_s=15,
                               on_result=lambda f: results.__setitem__(f.request_id, f)).start()
               for i in range(4)]
    try:
        for _ in range(3):  # rounds: every client sends one request at (nearly) the same time
            for c in clients:
                x = rng.standard_normal(SHAPE).astype(np.float32)
                inputs[c.send(x)] = x
            assert wait(lambda: all(c.outstanding() == 0 for c in clients), 15)
        records = [r for c in clients for r in c.records]
    finally:
        for c in clients:
            c.close()
        control.close()
        node.close()
        broker.close()
    assert len(records) == 12 and all(r.outcome == "ok" for r in records), records
    batches = [f.trace[-1][3] for f in results.values()]
    assert max(batches) > 1, batches  # requests from different clients shared a batch
    assert any("x" in r.hops for r in records)
    with torch.inference_mode():
        for rid, frame in results.items():  # each answer is the model applied to that client's input
            expected = model(torch.from_numpy(inputs[rid])).numpy()
            np.testing.assert_allclose(frame.tensor(), expected, rtol=1e-3, atol=1e-4)


def test_clients_on_their_own_edge_nodes_batch_on_the_shared_accelerator():
    """Several sources, each with its own rule and plan, share one accelerator: their frames of the
    same stage batch there across plans, and every result goes back to its own client."""
    from adaptive.protocol.rules import RuleMessage, RulePlan, rule_topic

    broker = EmbeddedBroker(port=0).start()
    url = parse_broker_url(broker.url)
    edges = ("e0", "e1", "e2")
    nodes = [NodeRuntime(NodeConfig(node=n, model=MODEL, cluster="multi"), url) for n in edges]
    nodes.append(NodeRuntime(NodeConfig(node="acc", model=MODEL, cluster="multi", batch_window_ms=200,
                                        max_batch=8), url))
    for n in nodes:
        n.start()
    L = nodes[0].part.num_blocks
    control = MqttTransport(url, "multi-control").start()
    for v, (edge, codec) in enumerate(zip(edges, ("none", "fp16", "none"), strict=True), start=1):
        # the same accelerator stage [3, L) for every client; their plans differ in chain and codec
        rule = RuleMessage(v, edge, MODEL, (edge, "acc"), L, time.time(), "test", (),
                           (RulePlan((3,), (codec,)),))
        control.publish(Message(rule_topic("multi", edge), rule.encode(), 1, True))
    model = build_model(MODEL).eval()
    rng = np.random.default_rng(4)
    inputs, results = {}, {}
    clients = [InferenceClient(f"c{i}", url, "multi", SHAPE, timeout_s=15, source=edge,
                               on_result=lambda f: results.__setitem__(f.request_id, f)).start()
               for i, edge in enumerate(edges)]
    try:
        assert wait(lambda: all(n.source.rule is not None for n in nodes[:3]))
        for _ in range(3):
            for c in clients:
                x = rng.standard_normal(SHAPE).astype(np.float32)
                inputs[c.send(x)] = x
            assert wait(lambda: all(c.outstanding() == 0 for c in clients), 15)
        records = [r for c in clients for r in c.records]
    finally:
        for c in clients:
            c.close()
        control.close()
        for n in nodes:
            n.close()
        broker.close()
    assert len(records) == 9 and all(r.outcome == "ok" for r in records), records
    for c, edge in zip(clients, edges, strict=True):  # each client's requests entered at its own edge
        assert all(r.hops.startswith(f"{edge}:") for r in c.records), [r.hops for r in c.records]
    assert max(f.trace[-1][3] for f in results.values()) > 1  # different plans shared a batch on acc
    with torch.inference_mode():
        for rid, frame in results.items():
            expected = model(torch.from_numpy(inputs[rid])).numpy()
            np.testing.assert_allclose(frame.tensor(), expected, rtol=2e-2, atol=2e-2)


def test_a_trace_start_to_come_holds_the_traces_first_rate_until_then():
    """An experiment sets each link to its first rate before a policy starts (the monitors measure it)."""
    broker = EmbeddedBroker(port=0).start()
    url = parse_broker_url(broker.url)
    node = NodeRuntime(NodeConfig(node="pi", model=MODEL, cluster="hold", uplink_trace=(2.0, 30.0, 7.0),
                                  trace_dt_s=0.2), url).start()
    control = MqttTransport(url, "hold-control").start()
    try:
        start = time.time() + 2.0
        message = json.dumps({"v": 1, "trace_start": start}).encode()
        control.publish(Message("adaptive/hold/emulation", message, 1))
        time.sleep(0.5)  # delivered (until then the node replays from its own start)
        seen = set()
        while time.time() < start - 0.2:  # 1.3 s: the replay would cycle through all three values
            seen.add(node.shaper.rate_mbps)
            time.sleep(0.02)
        assert seen == {2.0}, seen
        assert wait(lambda: node.shaper.rate_mbps == 30.0)  # then the replay runs from its start
    finally:
        control.close()
        node.close()
        broker.close()


def test_parallel_sections_mixed_with_layer_plans_lose_nothing_and_compute_the_model(cluster):
    """Requests with a parallel section (Intra-DP's parts, streamed and joined) between layer plans."""
    from adaptive.model.plans import SHARES, Section
    from adaptive.runtime.sections import SectionError, section_rows

    part = cluster["nodes"][0].part
    L = part.num_blocks
    rng = np.random.default_rng(7)
    sectioned = []
    while len(sectioned) < 40:
        s1 = int(rng.integers(0, 8))
        splits = (s1, int(rng.integers(s1, L + 1))) if rng.random() < 0.7 else (s1, s1)
        section = Section(int(rng.integers(s1 + 1, 11)), float(rng.choice(SHARES)), int(rng.integers(1, 4)))
        try:
            section_rows(part, splits, section)
        except SectionError:
            continue
        sectioned.append((splits, section))
    plans = []
    for i in range(120):  # the plan changes every request: a section, or a layer plan, in turn
        splits, section = ((int(rng.integers(0, L + 1)),) * 2, None) if i % 3 == 2 else sectioned[i % 40]
        plans.append(PlanMessage(1, MODEL, NODES, splits, time.time(), "test", None, (), L,
                                 section=section.wire if section else None))
    reports: list[StatsMessage] = []  # what the nodes tell the controller's calibration
    listen = MqttTransport(cluster["url"], "test-stats",
                           subscriptions=[(f"adaptive/{CLUSTER}/node/+/stats", 1)],
                           on_message=lambda t, p: reports.append(StatsMessage.decode(p))).start()
    try:
        sent, records = send_own_plans(cluster, "lop", plans, 3, 1e-4)  # exact: no lossy codec
        time.sleep(1.5)  # one more stats period
    finally:
        listen.close()
    labels = {rid: plan_label(p.splits, (), Section(*p.section) if p.section else None)
              for rid, p in sent.items()}
    assert all(r.plan == labels[r.id] for r in records)
    assert sum("@" in r.plan for r in records) == 80
    bands = {(m.node, st.start, st.stop, st.section) for m in reports for st in m.stages if st.section}
    # the source reports its band, node j its bands: jetson when it runs a stage, else jetson2
    assert {node for node, *_ in bands} == set(NODES)
    assert all(st.exec_ms > 0 for m in reports for st in m.stages if st.section)
    # each names a section a request was sent with, from that plan's first split
    assert {(start, section) for _, start, _, section in bands} <= {
        (p.splits[0], tuple(p.section)) for p in sent.values() if p.section}


def test_a_section_or_piece_that_does_not_fit_gets_an_error_and_the_node_serves_on(cluster):
    from adaptive.model.plans import Section

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    reply_to = f"tcp://127.0.0.1:{port}"
    pi, jetson = cluster["nodes"][0], cluster["nodes"][1]
    pushes = {}
    for node in (pi, jetson):
        pushes[node.config.node] = ctx.socket(zmq.PUSH)
        pushes[node.config.node].connect(node.endpoint)
    base = Frame(kind="work", request_id="sec-1", client="tester", reply_to=reply_to, version=1,
                 hop=0, position=0, shape=SHAPE, model=MODEL, devices=NODES, splits=(2, 11))
    zeros = np.zeros(SHAPE, np.float32)
    cases = [  # (node, frame): a section past the stage, a band that would be empty, bad pieces
        ("pi", tensor_frame(base, zeros, section=Section(11, 0.5))),
        ("pi", tensor_frame(base, zeros, request_id="sec-2", section=Section(9, 0.125, 3))),
        ("jetson", tensor_frame(base, np.zeros((1, 16, 3, 32), np.float32), request_id="sec-3", hop=1,
                                position=2, section=Section(5, 0.5), part=0)),
        ("jetson", tensor_frame(base, zeros, request_id="sec-4", hop=1, position=7, section=Section(5, 0.5),
                                part=0)),
    ]
    for node, frame in cases:
        pushes[node].send_multipart(encode_frame(frame))
    poller = zmq.Poller()
    poller.register(pull, zmq.POLLIN)
    errors = {}
    deadline = time.monotonic() + 10
    while len(errors) < len(cases) and time.monotonic() < deadline:
        if poller.poll(100):
            f = decode_frame(pull.recv_multipart())
            errors[f.request_id] = f.error
    assert "section [2, 11) must end after block 2 and before the next stage's end" in errors["sec-1"]
    assert "a part would be empty" in errors["sec-2"]
    assert "chunk 0 has shape [1, 16, 3, 32]" in errors["sec-3"]
    assert "piece 0 at position 7, expected 2" in errors["sec-4"]
    good = tensor_frame(base, zeros, request_id="sec-5", section=Section(5, 0.5, 2))
    pushes["pi"].send_multipart(encode_frame(good))  # both nodes still serve sections
    assert poller.poll(10_000)
    result = decode_frame(pull.recv_multipart())
    assert result.kind == "result" and result.shape == (1, 10) and result.request_id == "sec-5"
    for s in pushes.values():
        s.close(0)
    pull.close(0)
    ctx.term()
