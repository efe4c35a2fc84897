"""Fuzzing the daemons' MQTT message handlers: node, controller, client and collector.

Each handler gets generated payloads on every topic it subscribes to: random bytes, arbitrary JSON,
and valid messages with one field replaced. It must return normally (a bad message is logged and
dropped), and the daemon must keep working: a valid message afterwards still takes effect.
"""

from __future__ import annotations

import json
import logging
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adaptive.control.controller import Controller
from adaptive.control.telemetry import Collector
from adaptive.nn.partition import partition
from adaptive.nn.zoo import build_model
from adaptive.protocol.messages import Status, status_topic
from adaptive.runtime.client import InferenceClient
from adaptive.runtime.node import NodeConfig, NodeRuntime
from monitor.transport import BrokerAddress
from tests.adaptive.control.test_controller import Prefer, candidates, config
from tests.adaptive.protocol.test_fuzz import json_values
from tests.adaptive.protocol.test_messages import RECORDS

MODEL, CLUSTER = "resnet20_cifar", "ctl"
NOWHERE = BrokerAddress("127.0.0.1", 1)  # handlers are called directly: no broker needed
CASES = 1000  # per handler
FUZZ = settings(max_examples=CASES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
TOPICS = {
    "status": f"adaptive/{CLUSTER}/node/jetson/status",
    "telemetry": f"adaptive/{CLUSTER}/node/jetson/telemetry",
    "plan": f"adaptive/{CLUSTER}/plan",
    "ack": f"adaptive/{CLUSTER}/node/jetson/ack",
    "stats": f"adaptive/{CLUSTER}/node/jetson/stats",
    "emulation": f"adaptive/{CLUSTER}/emulation",
    "rule": f"adaptive/{CLUSTER}/node/pi/rule",
}


@st.composite
def messages(draw):
    """(topic, payload): random bytes, arbitrary JSON, or a valid message with one field replaced."""
    topic = draw(st.sampled_from(sorted(TOPICS.values())) | st.text(max_size=40))
    kind = draw(st.sampled_from(["bytes", "json", "field"]))
    if kind == "bytes":
        return topic, draw(st.binary(max_size=200))
    if kind == "json":
        return topic, json.dumps(draw(json_values)).encode()
    doc = json.loads(RECORDS[draw(st.sampled_from(sorted(RECORDS)))].encode())
    doc[draw(st.sampled_from(sorted(doc)))] = draw(json_values)
    return topic, json.dumps(doc).encode()


@pytest.fixture(scope="module")
def node():
    n = NodeRuntime(NodeConfig(node="pi", model=MODEL, cluster=CLUSTER, uplink_mbps=50.0), NOWHERE)
    n.part = partition(build_model(MODEL), (1, 3, 32, 32), name=MODEL)  # what start() would load
    from monitor.transport import MqttTransport

    n.control.bind("tcp://127.0.0.1:1", n.part.num_blocks, MqttTransport(NOWHERE, "fuzz-node"))  # acks wait
    return n


@pytest.fixture(autouse=True)
def quiet(caplog):
    caplog.set_level(logging.CRITICAL)  # thousands of "dropped message" warnings


@FUZZ
@given(messages())
def test_node_handler_never_raises(node, message):
    node.control.handle(*message)
    assert node.shaper.rate_mbps > 0


@FUZZ
@given(messages())
def test_controller_handler_never_raises(message):
    ctl = _controller()
    ctl.channel.handle(*message)
    assert all(k > 0 for k in ctl.scales.values())


_CTL: list[Controller] = []


def _controller():
    if not _CTL:
        _CTL.append(Controller(config(), NOWHERE, Prefer([0]), candidates=candidates()))
    return _CTL[0]


@pytest.fixture(scope="module")
def client():
    c = InferenceClient("fuzz", NOWHERE, CLUSTER, (1, 3, 32, 32))
    yield c
    c.close()


@FUZZ
@given(messages())
def test_client_handler_never_raises(client, message):
    client._on_mqtt(*message)


@FUZZ
@given(messages())
def test_collector_handler_never_raises(message):
    collector = Collector(NOWHERE, CLUSTER, client_id="fuzz-collector")
    collector.handle(*message)
    assert all(v.node for v in collector.nodes().values())


def test_handlers_still_work_after_the_fuzz(node, client):
    status = Status("jetson", "online", time.time(), data_endpoint="tcp://127.0.0.1:5999")
    for handler in (node.control.handle, client._on_mqtt):
        handler(status_topic(CLUSTER, "jetson"), status.encode())
    assert node.presence.endpoint("jetson") == "tcp://127.0.0.1:5999"
    assert client.presence.endpoint("jetson") == "tcp://127.0.0.1:5999"
    node.control.handle(TOPICS["emulation"], b'{"v": 1, "uplink_mbps": 12.5}')
    assert node.shaper.rate_mbps == 12.5


def test_a_bad_rule_is_refused_on_the_ack_and_the_last_good_one_stays(node):
    from adaptive.protocol.messages import Ack
    from adaptive.protocol.rules import RuleMessage, RulePlan, rule_topic

    topic = rule_topic(CLUSTER, "pi")
    good = RuleMessage(7, "pi", MODEL, ("pi", "jetson"), 11, 1.0, "table", (3.0,),
                       (RulePlan((11,)), RulePlan((0,))))
    node.control.handle(topic, good.encode())
    assert node.source.rule == good
    doc = json.loads(good.encode())
    for bad in ({**doc, "version": 8, "edges_mbps": [3.0, 1.0]},       # fails validation
                {**doc, "version": 9, "model": "vgg16"},                # valid, but not this node's model
                {**doc, "version": 10, "plans": [{"splits": [99]}, {"splits": [0]}]}):
        node.control.handle(topic, json.dumps(bad).encode())
    # a policy rule whose network does not take the observation it describes: refused where loaded
    import numpy as np

    from adaptive.model.mlp import MlpPolicyNet
    from adaptive.protocol.rules import OBSERVATION_KEYS, ActorRule

    spec = dict(zip(OBSERVATION_KEYS, (2, 2, 100.0, 1, 4, 0.1, 10_000.0, 10), strict=True))
    net = MlpPolicyNet([(np.ones((2, 12)), np.zeros(2))])  # the observation has 11 entries
    actor = ActorRule((1.0, 10.0), ((200.0, 300.0), (200.0, 100.0)), ("11", "11"), spec, (0.0,) * 11, 0.25,
                      net.to_json())
    node.control.handle(topic, RuleMessage(11, "pi", MODEL, ("pi", "jetson"), 11, 1.0, "ppo", (), good.plans,
                                     "policy", actor).encode())
    sent = [m for m in node.control.transport._buffer if m.topic.endswith("/ack")]
    acks = {a.version: a for a in (Ack.decode(m.payload) for m in sent)}
    assert acks[7].ok and not any(acks[v].ok for v in (8, 9, 10, 11)), acks
    assert "edges_mbps" in acks[8].error and "vgg16" in acks[9].error and "0..11" in acks[10].error
    assert "takes 12 inputs" in acks[11].error
    assert node.source.rule == good  # the source keeps its last good rule
