"""Attacks on a live node, as someone on the same network would try them (issue 20).

Real broker, real node runtimes, real ZeroMQ sockets. Each attack must fail: no request lost, the
node keeps serving, and it says so truthfully.
"""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from adaptive.lab.broker import EmbeddedBroker
from adaptive.protocol.messages import Message, PlanMessage, plan_topic
from adaptive.runtime.node import NodeConfig, NodeRuntime
from adaptive.runtime.wire import Frame, decode_frame, encode_frame, tensor_frame
from monitor.transport import MqttTransport, parse_broker_url

pytestmark = pytest.mark.integration
MODEL, SHAPE, CLUSTER = "resnet20_cifar", (1, 3, 32, 32), "red"
NODES = ("pi", "jetson")


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
