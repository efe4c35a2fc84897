"""Attacks on a live node, as someone on the same network would try them (issue 20).

Real broker, real node runtimes, real ZeroMQ sockets. Each attack must fail: no request lost, the
node keeps serving, and it says so truthfully.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
import zmq

from adaptive.control.channel import ControlChannel
from adaptive.lab.broker import EmbeddedBroker
from adaptive.lab.ports import free_port
from adaptive.protocol.fields import MAX_VERSION
from adaptive.protocol.messages import Ack, Message, PlanMessage, Status, plan_topic, status_topic
from adaptive.protocol.rules import RuleMessage, RulePlan, rule_topic
from adaptive.runtime.client import InferenceClient
from adaptive.runtime.node import NodeConfig, NodeRuntime
from adaptive.runtime.security import CurveKeys, generate
from adaptive.runtime.signing import Signer, Verifier, generate_signing_key
from adaptive.runtime.wire import Frame, decode_frame, encode_frame, tensor_frame
from monitor.probe import ProbeClient, ProbeError
from monitor.transport import MqttTransport, parse_broker_url

pytestmark = pytest.mark.integration
MODEL, SHAPE, CLUSTER = "resnet20_cifar", (1, 3, 32, 32), "red"
NODES = ("pi", "jetson")
NUM_BLOCKS = 11  # resnet20_cifar's blocks


@pytest.fixture(scope="module")
def cluster():
    broker = EmbeddedBroker(port=0).start()
    url = parse_broker_url(broker.url)
    nodes = [NodeRuntime(NodeConfig(node=n, model=MODEL, cluster=CLUSTER), url).start() for n in NODES]
    control = MqttTransport(url, "red-control").start()
    deadline = time.monotonic() + 10
    while any(set(NODES) - set(n.presence.endpoints()) for n in nodes) and time.monotonic() < deadline:
        time.sleep(0.05)
    plan = PlanMessage(1, MODEL, NODES, (4,), time.time(), "test")
    control.publish(Message(plan_topic(CLUSTER), plan.encode(), 1, True))
    yield {"url": url, "nodes": nodes}
    control.close()
    for n in nodes:
        n.close()
    broker.close()


class Peer:
    """A raw ZeroMQ peer: pushes frames to a node and pulls what comes back."""

    def __init__(self, endpoint: str) -> None:
        self.ctx = zmq.Context()
        self.pull = self.ctx.socket(zmq.PULL)
        self.reply_to = f"tcp://127.0.0.1:{self.pull.bind_to_random_port('tcp://127.0.0.1')}"
        self.push = self.ctx.socket(zmq.PUSH)
        self.push.connect(endpoint)

    def frame(self, rid: str, reply_to: str | None = None, **fields: object) -> list[bytes]:
        base = Frame(kind="work", request_id=rid, client="red", reply_to=reply_to or self.reply_to,
                     version=1, hop=0, position=0, shape=SHAPE, model=MODEL, devices=NODES, splits=(4,))
        return encode_frame(tensor_frame(base, np.zeros(SHAPE, np.float32), **fields))

    def answer(self, timeout_s: float = 10.0) -> Frame | None:
        if self.pull.poll(int(timeout_s * 1000)):
            return decode_frame(self.pull.recv_multipart())
        return None

    def close(self) -> None:
        self.push.close(0)
        self.pull.close(0)
        self.ctx.term()


BAD_REPLY_TO = ("tcp://x", "tcp://no such host:1", "tcp://127.0.0.1:")


def test_a_frame_that_cannot_be_answered_does_not_wedge_the_node(cluster):
    """A refused plan plus a reply_to that is no endpoint used to kill the work thread (ZMQError).

    The node stayed up and online while its queue held the next request forever.
    """
    pi = cluster["nodes"][0]
    peer = Peer(pi.endpoint)
    try:
        for i, bad in enumerate(BAD_REPLY_TO):
            # refused at the node (a stranger in the plan), and at the decoder's reply path
            peer.push.send_multipart(peer.frame(f"wedge-{i}", bad, devices=("pi", "ghost"), splits=(4,)))
            # a valid plan whose result cannot go back
            peer.push.send_multipart(peer.frame(f"lost-{i}", bad))
        peer.push.send_multipart(peer.frame("after"))
        answer = peer.answer()
        assert answer is not None, "the node stopped serving"
        assert answer.kind == "result" and answer.request_id == "after"
        nodes = cluster["nodes"]  # pi refuses the strangers' plans; the jetson ends the valid ones
        deadline = time.monotonic() + 10
        while sum(n.unanswerable for n in nodes) < 2 * len(BAD_REPLY_TO) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sum(n.unanswerable for n in nodes) == 2 * len(BAD_REPLY_TO)  # each dropped answer, counted
        assert all(t.is_alive() for n in nodes for t in n.threads)
        assert not any(n.failed.is_set() for n in nodes)
    finally:
        peer.close()


def test_a_node_whose_worker_dies_goes_offline_and_exits_non_zero(tmp_path):
    """The watchdog: a worker thread that dies anyway takes the process down, with a non-zero code."""
    code = f"""
import sys, threading, time
from adaptive.cli import main
import adaptive.runtime.node as node_module

def dying(self):
    time.sleep(2.0)
    raise RuntimeError("injected: the work thread dies")
node_module.NodeRuntime._work_loop = dying
sys.exit(main(["node", "--node", "pi", "--model", "{MODEL}", "--broker", sys.argv[1],
               "--cluster", "{CLUSTER}"]))
"""
    broker = EmbeddedBroker(port=0).start()
    statuses = []
    sub = MqttTransport(parse_broker_url(broker.url), "red-watch",
                        subscriptions=[(f"adaptive/{CLUSTER}/node/pi/status", 1)],
                        on_message=lambda t, p: statuses.append(p)).start()
    try:
        proc = subprocess.run([sys.executable, "-c", code, broker.url], capture_output=True, text=True,
                              timeout=60)
        assert proc.returncode not in (0, 2), proc.stderr[-2000:]
        assert "work" in proc.stderr and "died" in proc.stderr
        time.sleep(0.5)
        assert statuses and b'"offline"' in statuses[-1]
    finally:
        sub.close()
        broker.close()


# ---------------------------------------------------------------------- the control plane


def table_rule(version: int, split: int, source: str = "pi", epoch: int = 0) -> RuleMessage:
    """A one-bin rule: every request entering at ``source`` runs blocks [0, split) there."""
    return RuleMessage(version, source, MODEL, NODES, NUM_BLOCKS, time.time(), "red", (),
                       (RulePlan((split,), ()),), epoch=epoch)


def wait_until(predicate, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


def served_under(url, rule: RuleMessage) -> bool:
    """A client's request entering at the pi comes back, planned under ``rule``."""
    with InferenceClient(f"red-{time.monotonic_ns()}", url, CLUSTER, SHAPE, source="pi", timeout_s=10) as c:
        records = c.run(0.01)  # closed loop: one request, then its answer
    return [(r.outcome, r.version) for r in records] == [("ok", rule.version)]


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """Nodes that take only the controller's signed word; the controller's MQTT side; an intruder's key."""
    keys = tmp_path_factory.mktemp("sign")
    generate_signing_key(keys, "controller")
    generate_signing_key(keys, "intruder")
    broker = EmbeddedBroker(port=0).start()
    url = parse_broker_url(broker.url)
    verifier = Verifier(keys / "controller.ed25519.pub")
    nodes = [NodeRuntime(NodeConfig(node=n, model=MODEL, cluster=CLUSTER), url, verifier=verifier).start()
             for n in NODES]
    acks: list[Ack] = []
    channel = ControlChannel(url, CLUSTER, on_ack=acks.append, on_stats=lambda s: None,
                             signer=Signer(keys / "controller.ed25519")).start()
    attacker = MqttTransport(url, "red-attacker").start()
    wait_until(lambda: all(set(NODES) <= set(n.presence.endpoints()) for n in nodes))
    yield {"url": url, "nodes": nodes, "channel": channel, "acks": acks, "attacker": attacker,
           "intruder": Signer(keys / "intruder.ed25519")}
    attacker.close()
    channel.close()
    for n in nodes:
        n.close()
    broker.close()


def test_a_forged_rule_cannot_pin_the_source_and_the_controller_sees_what_is_in_force(signed):
    """A rule of version 10^15 was acked "ok" and pinned the pi; the controller's next rule was ignored."""
    pi, channel, attacker = signed["nodes"][0], signed["channel"], signed["attacker"]
    first = channel.publish_rule(table_rule(channel.next_version(), 4))
    assert channel.wait_rules(10) == [] and pi.source.rule.rank == first.rank
    topic = rule_topic(CLUSTER, "pi")
    ahead = int(time.time() * 1e3) + 600_000  # ten minutes ahead: plausible, were it signed
    forgeries = [
        table_rule(10**15, 0).encode(),                                   # the original attack
        table_rule(2**31, 0).encode(),                                    # past what any client decodes
        table_rule(MAX_VERSION, 0, epoch=ahead).encode(),                 # in range, unsigned
        signed["intruder"].sign(topic, table_rule(MAX_VERSION, 0, epoch=ahead).encode()),  # another key
    ]
    rejected = pi.control.rejected
    for payload in forgeries:
        attacker.publish(Message(topic, payload, 1, True))
    assert wait_until(lambda: pi.control.rejected >= rejected + len(forgeries))
    assert pi.source.rule.rank == first.rank
    assert wait_until(lambda: channel.foreign >= 1)  # the controller put its own back on the broker
    second = channel.publish_rule(table_rule(channel.next_version(), 11))
    assert channel.wait_rules(10) == []  # the controller's view: its newest rule is in force ...
    assert pi.source.rule.rank == second.rank  # ... and it is
    assert served_under(signed["url"], second)


def test_a_fake_node_gets_no_work_and_no_activation(signed):
    """A fake status for 'ghost' plus a rule routing to it handed the attacker the activation tensor."""
    pi, channel, attacker = signed["nodes"][0], signed["channel"], signed["attacker"]
    trap = zmq.Context()
    sink = trap.socket(zmq.PULL)
    endpoint = f"tcp://127.0.0.1:{sink.bind_to_random_port('tcp://127.0.0.1')}"
    try:
        ghost = Status(node="ghost", state="online", ts=time.time(), data_endpoint=endpoint)
        attacker.publish(Message(status_topic(CLUSTER, "ghost"), ghost.encode(), 1, True))
        assert wait_until(lambda: "ghost" in pi.presence.endpoints())  # the broker let it announce itself
        route = RuleMessage(MAX_VERSION, "pi", MODEL, ("pi", "ghost"), NUM_BLOCKS, time.time(), "red", (),
                            (RulePlan((4,), ()),))
        attacker.publish(Message(rule_topic(CLUSTER, "pi"), route.encode(), 1, True))
        peer = Peer(pi.endpoint)  # a request that names the ghost in its own plan
        try:
            peer.push.send_multipart(peer.frame("via-ghost", devices=("pi", "ghost"), splits=(4,)))
            answer = peer.answer()
            assert answer is not None and answer.kind == "error" and "ghost" in answer.error
        finally:
            peer.close()
        rule = channel.publish_rule(table_rule(channel.next_version(), 6))
        assert channel.wait_rules(10) == []
        assert served_under(signed["url"], rule)
        assert not sink.poll(1000), "an activation reached the fake node"
    finally:
        sink.close(0)
        trap.term()


def test_in_the_lab_mode_a_huge_version_is_refused_and_the_controller_is_told(cluster):
    """Unsigned: a version past 2^31 made every reply undecodable at the client; now it is refused."""
    pi = cluster["nodes"][0]
    channel = ControlChannel(cluster["url"], CLUSTER, on_ack=lambda a: None, on_stats=lambda s: None).start()
    attacker = MqttTransport(cluster["url"], "red-lab-attacker").start()
    try:
        rejected = pi.control.rejected
        attacker.publish(Message(rule_topic(CLUSTER, "pi"), table_rule(2**31, 0).encode(), 1, True))
        attacker.publish(Message(rule_topic(CLUSTER, "pi"), table_rule(10**15, 0).encode(), 1, True))
        assert wait_until(lambda: pi.control.rejected >= rejected + 2)
        rule = channel.publish_rule(table_rule(channel.next_version(), 4))
        assert channel.wait_rules(10) == []
        assert served_under(cluster["url"], rule)
        # what the lab mode leaves open, told truthfully: an unsigned rule from ahead of the controller's
        # epoch is taken, and the controller learns that its own newest is not in force
        ahead = table_rule(1, 0, epoch=channel.epoch + 60_000)
        attacker.publish(Message(rule_topic(CLUSTER, "pi"), ahead.encode(), 1, True))
        assert wait_until(lambda: pi.source.rule.rank == ahead.rank)
        channel.publish_rule(table_rule(channel.next_version(), 4))
        assert channel.wait_rules(3) == ["pi"]
    finally:
        attacker.close()
        channel.close()


# ---------------------------------------------------------------------- the data plane


def test_a_flood_of_frames_to_nowhere_cannot_grow_a_nodes_threads(cluster):
    """50 bad frames from one peer took a node from 18 to 118 threads: a link per reply_to, forever."""
    node = NodeRuntime(NodeConfig(node="flooded", model=MODEL, cluster=CLUSTER, max_links=4, link_idle_s=1.0),
                       cluster["url"]).start()
    peer = Peer(node.endpoint)
    try:
        before = threading.active_count()
        nowhere = [f"tcp://127.0.0.1:{free_port()}" for _ in range(50)]  # nothing listens there
        for i, reply_to in enumerate(nowhere):
            peer.push.send_multipart(peer.frame(f"flood-{i}", reply_to, model="no_such_model"))
        peak = before
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            peak = max(peak, threading.active_count())
            time.sleep(0.02)
        assert peak - before <= 2 * 4, (before, peak)  # at most max_links links, two threads each
        assert wait_until(lambda: node.outbox.open_links == 0, 10)  # idle links are closed
        assert wait_until(lambda: threading.active_count() <= before, 10)
        assert node.unanswerable + node.outbox.refused >= 50  # each lost answer counted
        peer.push.send_multipart(peer.frame("after-flood", devices=("flooded",), splits=()))
        answer = peer.answer()
        assert answer is not None and answer.kind == "result" and answer.request_id == "after-flood"
    finally:
        peer.close()
        node.close()


def test_the_probe_sink_takes_only_known_peers_and_a_bounded_number(tmp_path):
    """The sink bound 0.0.0.0, took anyone, one thread per connection, and transfers up to 64 MiB."""
    from monitor.agent import AgentConfig, MonitorAgent

    broker = EmbeddedBroker(port=0).start()
    agent = MonitorAgent(AgentConfig(node="sink", cluster=CLUSTER, probe_port=0, probe_bind="127.0.0.1"),
                         parse_broker_url(broker.url)).start()
    port = agent.probe_port
    held: list[socket.socket] = []
    try:
        stranger = socket.create_connection(("127.0.0.1", port), source_address=("127.0.0.9", 0))
        stranger.settimeout(5)
        assert stranger.recv(1) == b""  # closed before a byte is read: not a known peer
        stranger.close()
        before = threading.active_count()
        for _ in range(40):  # connections that hold on and send nothing
            s = socket.create_connection(("127.0.0.1", port))
            held.append(s)
        time.sleep(1.0)
        assert threading.active_count() - before <= 8, "one thread per connection, without a bound"
        assert agent.sink is not None and agent.sink.refused >= 40 - 8
        with pytest.raises(ProbeError):  # larger than the sink takes
            ProbeClient("127.0.0.1", port, timeout_s=5).transfer(20 * 1024 * 1024)
    finally:
        for s in held:
            s.close()
    try:
        time.sleep(0.5)
        with ProbeClient("127.0.0.1", port, timeout_s=5) as client:  # the sink still serves its peers
            assert client.ping() > 0
    finally:
        agent.close()
        broker.close()


def test_a_key_speaks_only_for_its_own_client(tmp_path):
    """CURVE authenticated a key, not a client: any key holder could claim to be any client."""
    generate(tmp_path, ["accel", "alice", "mallory"])
    broker = EmbeddedBroker(port=0).start()
    url = parse_broker_url(broker.url)
    node = NodeRuntime(NodeConfig(node="accel", model=MODEL, cluster="spoof", slowdown=50.0), url,
                       curve=CurveKeys(tmp_path, "accel")).start()
    control = MqttTransport(url, "spoof-control").start()
    plan = PlanMessage(1, MODEL, ("accel",), (), time.time(), "t")
    control.publish(Message(plan_topic("spoof"), plan.encode(), 1, True))
    results: list[Frame] = []
    alice = InferenceClient("alice", url, "spoof", SHAPE, curve=CurveKeys(tmp_path, "alice"), timeout_s=10,
                            source_decides=False, on_result=results.append).start()
    ctx = zmq.Context()
    mallory = CurveKeys(tmp_path, "mallory")
    to_node, to_alice = ctx.socket(zmq.PUSH), ctx.socket(zmq.PUSH)
    mallory.connect_to(to_node, "accel")
    mallory.connect_to(to_alice, "alice")
    to_node.connect(node.endpoint)
    to_alice.connect(alice.reply_to)
    try:
        base = Frame(kind="work", request_id="spoofed", client="alice", reply_to=alice.reply_to, version=1,
                     hop=0, position=0, shape=SHAPE, model=MODEL, devices=("accel",))
        dropped = node.dropped_frames
        to_node.send_multipart(encode_frame(tensor_frame(base, np.zeros(SHAPE, np.float32))))  # as alice
        assert wait_until(lambda: node.dropped_frames == dropped + 1)
        rid = alice.send()  # a real request; the node takes a while over it (slowdown)
        fake = tensor_frame(replace(base, kind="result", request_id=rid), np.full((1, 7), 6.66, np.float32))
        to_alice.send_multipart(encode_frame(fake))  # a forged answer, ahead of the real one
        alice.run(0.01)
        assert [(r.id, r.outcome) for r in alice.records] == [(rid, "ok")]
        assert [f.shape for f in results] == [(1, 10)], "a forged result reached the client"
        assert node.processed == 1  # only alice's own request ran
    finally:
        to_node.close(0)
        to_alice.close(0)
        ctx.term()
        alice.close()
        control.close()
        node.close()
        broker.close()
