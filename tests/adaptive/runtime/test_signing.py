"""The controller's signature on plans and rules, and the order in which they supersede each other."""

from __future__ import annotations

import json
import time

import pytest

from adaptive.errors import AdaptiveError
from adaptive.protocol.messages import PlanMessage, SchemaError
from adaptive.runtime.node_control import MAX_EPOCH_AHEAD_S, MAX_VERSION_STEP, VersionGate
from adaptive.runtime.signing import Signer, Verifier, generate_signing_key

TOPIC = "adaptive/c/plan"


@pytest.fixture
def keys(tmp_path):
    generate_signing_key(tmp_path, "controller")
    generate_signing_key(tmp_path, "intruder")
    return (Signer(tmp_path / "controller.ed25519"), Verifier(tmp_path / "controller.ed25519.pub"),
            Signer(tmp_path / "intruder.ed25519"))


def plan(version=1, epoch=0):
    return PlanMessage(version, "mobilenet_v2", ("pi", "jetson"), (5,), 1.0, "test", epoch=epoch)


def test_a_signed_message_is_still_the_json_message_with_sig_last(keys):
    signer, verifier, _ = keys
    body = plan().encode()
    signed = signer.sign(TOPIC, body)
    obj = json.loads(signed)
    assert list(obj)[-1] == "sig" and obj["sig"].startswith("ed25519:")
    assert PlanMessage.decode(signed) == plan()  # readers that ignore 'sig' read it as before
    assert verifier.open(TOPIC, signed) == body


def _flip_sig_char(signed: bytes) -> bytes:
    """The signature with one character of its data changed, always to a different one."""
    at = len(signed) - 10  # inside the 86 characters, away from the last one's padding bits
    new = b"B" if signed[at:at + 1] == b"A" else b"A"
    return signed[:at] + new + signed[at + 1:]


@pytest.mark.parametrize("attack", ["unsigned", "other key", "other topic", "body changed", "sig changed",
                                    "sig cut", "appended"])
def test_a_node_with_the_controllers_key_refuses_anything_else(keys, attack):
    signer, verifier, intruder = keys
    body = plan().encode()
    payload = {
        "unsigned": body,
        "other key": intruder.sign(TOPIC, body),
        "other topic": signer.sign("adaptive/other/plan", body),
        "body changed": signer.sign(TOPIC, body).replace(b'"splits":[5]', b'"splits":[0]'),
        "sig changed": _flip_sig_char(signer.sign(TOPIC, body)),
        "sig cut": signer.sign(TOPIC, body)[:-10] + b'"}',
        "appended": signer.sign(TOPIC, body)[:-1] + b',"splits":[0]}',
    }[attack]
    with pytest.raises(SchemaError):
        verifier.open(TOPIC, payload)


def test_the_lab_mode_takes_anything_and_says_so(keys):
    signer, _, _ = keys
    lab = Verifier()
    body = plan().encode()
    assert not lab.required
    assert lab.open(TOPIC, body) == body
    assert lab.open(TOPIC, signer.sign(TOPIC, body)) == body


BROKEN_PEM = b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"


@pytest.mark.parametrize("content", [b"", b"not a key", BROKEN_PEM])
def test_a_bad_key_file_is_one_clear_error(tmp_path, content):
    path = tmp_path / "k.pem"
    path.write_bytes(content)
    for load in (Signer, Verifier):
        with pytest.raises(AdaptiveError, match=str(path)):
            load(path)
    with pytest.raises(AdaptiveError, match="not a file"):
        Verifier(tmp_path)


def test_a_secret_key_is_no_public_key_and_back(tmp_path):
    secret = generate_signing_key(tmp_path, "controller")
    with pytest.raises(AdaptiveError, match=r"public key|cannot read"):
        Verifier(secret)
    with pytest.raises(AdaptiveError, match=r"secret key|cannot read"):
        Signer(tmp_path / "controller.ed25519.pub")
    with pytest.raises(AdaptiveError, match="exists"):
        generate_signing_key(tmp_path, "controller")


def test_versions_supersede_in_epoch_order_and_cannot_pin():
    now_ms = int(time.time() * 1e3)
    gate = VersionGate("rule")
    assert gate.check((now_ms, 5)) == ""
    gate.accept((now_ms, 5))
    assert gate.check((now_ms, 5)) == ""  # a redelivery is taken again
    assert "older" in gate.check((now_ms, 4))
    assert "older" in gate.check((now_ms - 1, 10**6))  # an earlier controller's, however high its counter
    assert gate.check((now_ms + 1, 1)) == ""  # a restarted controller's first
    assert "jumps" in gate.check((now_ms, 5 + MAX_VERSION_STEP + 1))
    far = now_ms + int((MAX_EPOCH_AHEAD_S + 60) * 1e3)
    assert "ahead of this node's clock" in gate.check((far, 1))
    assert "ahead" in VersionGate("plan").check((far, 1))  # even with nothing in force yet
