"""Presence: an offline status takes effect after its hold, unless the broker goes away with it."""

from __future__ import annotations

import shutil
import time

import pytest

from adaptive.protocol.messages import Message, Status
from monitor.presence import Presence
from monitor.transport import MqttTransport, parse_broker_url
from tests.brokers import Mosquitto


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def status(node, state, endpoint=""):
    return Status(node, state, 1.0, data_endpoint=endpoint)


def test_offline_takes_effect_after_the_hold():
    clock = Clock()
    p = Presence(hold_s=0.5, clock=clock)
    p.update(status("a", "online", "tcp://a:1"))
    assert p.online("a") and p.endpoint("a") == "tcp://a:1"
    p.update(status("a", "offline"))
    clock.t = 0.4
    assert p.online("a") and p.endpoint("a") == "tcp://a:1"  # still held
    clock.t = 0.5
    assert not p.online("a") and p.endpoint("a") is None
    assert p.seen() == {"a"}


def test_an_offline_held_when_the_broker_drops_is_forgotten():
    clock = Clock()
    p = Presence(hold_s=0.5, clock=clock)
    p.update(status("a", "online", "tcp://a:1"))
    clock.t = 10.0
    p.update(status("a", "offline"))  # the broker's shutdown publishes every Last Will ...
    clock.t = 10.01
    p.disconnected()  # ... then drops us
    clock.t = 20.0
    assert p.online("a") and p.endpoint("a") == "tcp://a:1" and p.discarded == 1


def test_an_offline_that_settled_before_the_drop_stands():
    clock = Clock()
    p = Presence(hold_s=0.5, clock=clock)
    p.update(status("a", "online", "tcp://a:1"))
    p.update(status("a", "offline"))
    clock.t = 2.0
    p.disconnected()
    assert not p.online("a") and p.discarded == 0


def test_a_monitor_status_without_endpoint_keeps_the_runtime_endpoint():
    p = Presence(hold_s=0.0)
    p.update(status("a", "online", "tcp://a:1"))
    p.update(status("a", "online"))  # the in-process monitor announces itself too
    assert p.endpoint("a") == "tcp://a:1"
    p.update(status("a", "offline"))
    assert p.endpoint("a") is None and not p.online("a")
    assert p.online("never-heard-of")
    with pytest.raises(ValueError, match="hold_s"):
        Presence(hold_s=-1)


@pytest.mark.integration
def test_mosquitto_shutdown_publishes_wills_and_presence_ignores_them(tmp_path):
    """The behaviour Presence exists for, observed on a real Mosquitto."""
    if shutil.which("mosquitto") is None:
        pytest.skip("mosquitto is not installed (.ci/run installs it)")
    broker = Mosquitto(tmp_path).start()
    url = parse_broker_url(broker.url)
    node = Status("a", "online", time.time(), data_endpoint="tcp://a:1")
    will = Status("a", "offline", time.time())
    topic = "adaptive/t/node/a/status"
    announcer = MqttTransport(url, "announcer", will=Message(topic, will.encode(), 1, True),
                              on_connect_messages=lambda: [Message(topic, node.encode(), 1, True)]).start()
    presence = Presence(hold_s=0.5)
    states = []

    def on_message(topic, payload):
        s = Status.decode(payload)
        states.append(s.state)
        presence.update(s)

    watcher = MqttTransport(url, "watcher", subscriptions=[("adaptive/t/node/+/status", 1)],
                            on_message=on_message, on_disconnect=presence.disconnected).start()
    try:
        deadline = time.monotonic() + 5
        while presence.endpoint("a") is None and time.monotonic() < deadline:
            time.sleep(0.02)
        broker.stop()
        time.sleep(1.0)
        assert states[-1] == "offline"  # Mosquitto did publish the Will as it shut down
        assert presence.online("a") and presence.endpoint("a") == "tcp://a:1"
        broker.start()
        deadline = time.monotonic() + 10
        while states[-1] != "online" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert states[-1] == "online"  # the announcer republished on reconnect
    finally:
        watcher.close()
        announcer.close()
        broker.stop()
