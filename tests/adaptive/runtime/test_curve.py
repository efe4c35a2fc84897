"""The CURVE data plane: only peers with an authorised key get a frame executed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time

import numpy as np
import pytest
import zmq

from adaptive.errors import AdaptiveError
from adaptive.lab.broker import EmbeddedBroker
from adaptive.protocol.messages import Message, PlanMessage, plan_topic
from adaptive.runtime.client import InferenceClient
from adaptive.runtime.node import NodeConfig, NodeRuntime
from adaptive.runtime.security import CurveKeys, generate
from adaptive.runtime.wire import Frame, encode_frame, tensor_frame
from monitor.transport import MqttTransport, parse_broker_url

pytestmark = pytest.mark.integration
MODEL, SHAPE, CLUSTER = "resnet20_cifar", (1, 3, 32, 32), "sec"


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    keys = tmp_path_factory.mktemp("keys")
    generate(keys, ["accel", "good"])
    outsider = tmp_path_factory.mktemp("outsider")
    generate(outsider, ["intruder"])
    shutil.copy(keys / "accel.key", outsider / "accel.key")  # a server's public key is no secret
    broker = EmbeddedBroker(port=0).start()
    url = parse_broker_url(broker.url)
    node = NodeRuntime(NodeConfig(node="accel", model=MODEL, cluster=CLUSTER), url,
                       curve=CurveKeys(keys, "accel")).start()
    control = MqttTransport(url, "sec-control").start()
    plan = PlanMessage(1, MODEL, ("accel",), (), time.time(), "test")
    control.publish(Message(plan_topic(CLUSTER), plan.encode(), 1, True))
    yield {"url": url, "node": node, "keys": keys, "outsider": outsider}
    control.close()
    node.close()
    broker.close()


def test_a_client_without_an_authorised_key_gets_nothing_executed(secured):
    node = secured["node"]
    before = (node.processed, node.rejected)
    # a client with its own key pair, not in the node's directory
    intruder = InferenceClient("intruder", secured["url"], CLUSTER, SHAPE, timeout_s=3,
                               curve=CurveKeys(secured["outsider"], "intruder")).start()
    try:
        intruder.send()
        intruder.send()
        assert intruder.run(0.1, rate_hz=1) is not None
    finally:
        intruder.close()
    assert intruder.records and all(r.outcome != "ok" for r in intruder.records), intruder.records
    # well-formed work frames straight to the data socket: from a plain ZeroMQ peer, and from a CURVE
    # peer that knows the node's public key but holds an unauthorised key pair
    ctx = zmq.Context()
    plain = ctx.socket(zmq.PUSH)
    rogue = ctx.socket(zmq.PUSH)
    CurveKeys(secured["outsider"], "intruder").connect_to(rogue, "accel")
    base = Frame(kind="work", request_id="plain-1", client="plain", reply_to="tcp://127.0.0.1:1", version=1,
                 hop=0, position=0, shape=SHAPE, model=MODEL, devices=("accel",))
    for sock in (plain, rogue):
        sock.connect(node.endpoint)
        sock.send_multipart(encode_frame(tensor_frame(base, np.zeros(SHAPE, np.float32))))
    time.sleep(2.0)
    for sock in (plain, rogue):
        sock.close(0)
    ctx.term()
    assert (node.processed, node.rejected) == before  # nothing reached the node's code


def test_an_authorised_client_gets_its_result(secured):
    node = secured["node"]
    before = node.processed
    with InferenceClient("good", secured["url"], CLUSTER, SHAPE, timeout_s=15,
                         curve=CurveKeys(secured["keys"], "good")) as client:
        records = client.run(1.0, concurrency=1)
    assert records and all(r.outcome == "ok" for r in records), records[:3]
    assert node.processed == before + len(records)


def test_keys_command_and_bad_key_directories(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "adaptive", "keys", str(tmp_path / "k"), "pi", "client-1"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in (tmp_path / "k").iterdir()} == {"pi.key", "pi.key_secret", "client-1.key",
                                                            "client-1.key_secret"}
    assert (tmp_path / "k" / "pi.key_secret").stat().st_mode & 0o077 == 0
    again = subprocess.run([sys.executable, "-m", "adaptive", "keys", str(tmp_path / "k"), "pi"],
                           capture_output=True, text=True, timeout=60)
    assert again.returncode == 2 and "exists" in again.stderr and len(again.stderr.splitlines()) == 1
    bad = subprocess.run([sys.executable, "-m", "adaptive", "keys", str(tmp_path / "k"), "a/b"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "key id" in bad.stderr
    with pytest.raises(AdaptiveError, match="no secret key for 'ghost'"):
        CurveKeys(tmp_path / "k", "ghost")
    with pytest.raises(AdaptiveError, match="no public key for peer 'nobody'"):
        CurveKeys(tmp_path / "k", "pi").server_key("nobody")


def test_a_secret_key_is_never_readable_by_others_not_even_before_a_chmod(tmp_path, monkeypatch):
    """'adaptive keys' used to write the secret 0644 and chmod it afterwards (issue 20)."""
    import os

    from adaptive.runtime import security, signing

    created = []
    real_open = os.open

    def recording_open(path, flags, mode=0o777, *args, **kwargs):
        if flags & os.O_CREAT:
            created.append((os.path.basename(path), mode))
        return real_open(path, flags, mode, *args, **kwargs)

    monkeypatch.setattr(signing.os, "open", recording_open)
    monkeypatch.setattr(security.zmq.auth, "create_certificates", None)  # nothing else may write keys
    generate(tmp_path, ["pi"])
    generate(tmp_path, ["pi"], overwrite=True)  # replaced the same way
    secrets = [mode for name, mode in created if "key_secret" in name]
    assert secrets == [0o600, 0o600], created
    assert (tmp_path / "pi.key_secret").stat().st_mode & 0o077 == 0
    assert not list(tmp_path.glob(".*.tmp"))
    keys = CurveKeys(tmp_path, "pi")  # the files load as ZeroMQ certificates
    assert keys.server_key("pi") == keys.public
    created.clear()
    signing.generate_signing_key(tmp_path, "controller")  # the controller's Ed25519 key, the same way
    assert [mode for name, mode in created] == [0o600, 0o644], created
    assert (tmp_path / "controller.ed25519").stat().st_mode & 0o077 == 0
    signed = signing.Signer(tmp_path / "controller.ed25519").sign("t", b'{"a":1}')
    assert signing.Verifier(tmp_path / "controller.ed25519.pub").open("t", signed) == b'{"a":1}'


def test_only_a_sections_source_may_send_its_pieces():
    """A section's piece comes from the plan's first node; any earlier hop may send a whole activation."""
    from types import SimpleNamespace

    from adaptive.model.plans import Section

    def sent_by(key):  # what CURVE's ZAP handler puts on a received message: the sender's key id
        return SimpleNamespace(get=lambda prop: key if prop == "User-Id" else None)

    base = Frame(kind="work", request_id="r", client="c", reply_to="tcp://127.0.0.1:1", version=1, hop=2,
                 position=0, shape=(1,), model=MODEL, devices=("pi", "mid", "accel"), splits=(0, 0),
                 section=Section(5, 0.5))
    piece = tensor_frame(base, np.zeros((1, 3, 4, 32), np.float32), part=0)
    whole = tensor_frame(base, np.zeros((1, 3, 32, 32), np.float32), section=None)
    assert CurveKeys.check_sender(sent_by("pi"), piece) == ""
    assert "came from key 'mid'" in CurveKeys.check_sender(sent_by("mid"), piece)
    assert CurveKeys.check_sender(sent_by("mid"), whole) == ""
    assert "came from key 'c'" in CurveKeys.check_sender(sent_by("c"), piece)
