"""TLS, passwords and the example ACL (docs/deploy), enforced by a real Mosquitto."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adaptive.control.telemetry import Collector
from adaptive.lab.ports import free_port
from adaptive.protocol.messages import (
    Message,
    PlanMessage,
    ack_topic,
    plan_topic,
    stats_topic,
    status_topic,
    telemetry_topic,
)
from adaptive.protocol.rules import RuleMessage, RulePlan, rule_topic
from monitor.transport import BrokerAddress, MqttTransport
from tests.brokers import wait_port

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not (shutil.which("mosquitto") and shutil.which("openssl")
                                      and shutil.which("mosquitto_passwd")),
                                 reason="needs mosquitto, mosquitto_passwd and openssl")]
DEPLOY = Path(__file__).resolve().parents[2] / "docs" / "deploy"
USERS = {"controller": "c-secret", "pi": "pi-secret", "jetson": "j-secret", "client-1": "cl-secret"}


def run(*cmd):
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory):
    d = tmp_path_factory.mktemp("mosq")
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
        "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"))
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=localhost",
        "-keyout", str(d / "server.key"), "-out", str(d / "server.csr"))
    (d / "ext.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("openssl", "x509", "-req", "-in", str(d / "server.csr"), "-CA", str(d / "ca.crt"),
        "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2", "-extfile", str(d / "ext.cnf"),
        "-out", str(d / "server.crt"))
    passwd = d / "passwd"
    passwd.touch()
    for user, pw in USERS.items():
        run("mosquitto_passwd", "-b", str(passwd), user, pw)
    plain, tls = free_port(), free_port()
    # the shipped example, with paths and ports rewritten for this test
    conf = (DEPLOY / "mosquitto.conf").read_text()
    conf = (conf.replace("/etc/mosquitto/adaptive.passwd", str(passwd))
                .replace("/etc/mosquitto/adaptive.acl", str(DEPLOY / "acl.conf"))
                .replace("/etc/mosquitto/certs/", str(d) + "/")
                .replace("listener 1883 127.0.0.1", f"listener {plain} 127.0.0.1")
                .replace("listener 8883", f"listener {tls} 127.0.0.1"))
    # as root, Mosquitto drops to its own user, which cannot read pytest's private tmp dirs
    (d / "mosquitto.conf").write_text("user root\n" + conf)
    proc = subprocess.Popen(["mosquitto", "-c", str(d / "mosquitto.conf")], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(plain)
    wait_port(tls)
    yield {"plain": plain, "tls": tls, "ca": str(d / "ca.crt")}
    proc.terminate()
    proc.wait(timeout=10)


def addr(broker, user, tls=True):
    return BrokerAddress("127.0.0.1", broker["tls" if tls else "plain"], tls, user, USERS.get(user, "wrong"))


def connect(broker, user, tls=True, **kw):
    t = MqttTransport(addr(broker, user, tls), f"{user}-{time.monotonic_ns()}", ca_file=broker["ca"], **kw)
    return t.start(wait_s=5)


def test_agent_connects_over_tls_with_a_password_kept_off_its_command_line(secure_broker, tmp_path):
    secret = tmp_path / "pi.password"
    secret.write_text(USERS["pi"] + "\n")
    url = f"mqtts://pi@127.0.0.1:{secure_broker['tls']}"
    proc = subprocess.Popen([sys.executable, "-m", "monitor", "--node", "pi", "--broker", url,
                             "--password-file", str(secret),
                             "--ca-file", secure_broker["ca"], "--probe-port", "-1", "--interval", "0.3"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with Collector(addr(secure_broker, "controller"), "default", client_id="controller-view",
                       ca_file=secure_broker["ca"]) as collector:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and "pi" not in collector.nodes():
                time.sleep(0.1)
            assert collector.nodes()["pi"].telemetry_count >= 1
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_wrong_password_and_untrusted_tls_are_clear_errors(secure_broker):
    env = {**os.environ, "ADAPTIVE_MQTT_PASSWORD": "nope"}
    bad = subprocess.run([sys.executable, "-m", "monitor", "--node", "pi", "--probe-port", "-1",
                          "--broker", f"mqtts://pi@127.0.0.1:{secure_broker['tls']}",
                          "--ca-file", secure_broker["ca"]], capture_output=True, text=True, timeout=30,
                         env=env)
    assert bad.returncode == 2 and "did not accept the session" in bad.stderr
    env["ADAPTIVE_MQTT_PASSWORD"] = USERS["pi"]
    untrusted = subprocess.run([sys.executable, "-m", "monitor", "--node", "pi", "--probe-port", "-1",
                                "--broker", f"mqtts://pi@127.0.0.1:{secure_broker['tls']}"],
                               capture_output=True, text=True, timeout=30, env=env)
    assert untrusted.returncode == 2 and "cannot reach broker" in untrusted.stderr
    assert len(untrusted.stderr.strip().splitlines()) == 1


def test_acl_node_publishes_only_as_itself_and_only_controller_plans(secure_broker):
    got = []
    watcher = connect(secure_broker, "controller", subscriptions=[("adaptive/#", 1)],
                      on_message=lambda t, p: got.append(t))
    pi = connect(secure_broker, "pi")
    plan = PlanMessage(1, "m", ("pi", "jetson"), (3,), time.time(), "test").encode()
    pi.publish(Message(telemetry_topic("lab", "pi"), b"own", 1))          # allowed
    pi.publish(Message(telemetry_topic("lab", "jetson"), b"spoofed", 1))  # denied by the ACL
    pi.publish(Message(plan_topic("lab"), plan, 1))                        # denied: not the controller
    pi.publish(Message(stats_topic("lab", "pi"), b"own", 1))              # allowed: runtime stats
    pi.publish(Message(stats_topic("lab", "jetson"), b"spoofed", 1))      # denied
    pi.publish(Message("adaptive/lab/emulation", b"{}", 1))               # denied: emulation only
    controller = connect(secure_broker, "controller")
    controller.publish(Message(plan_topic("lab2"), plan, 1))               # allowed
    seen_by_jetson = []
    jetson = connect(secure_broker, "jetson", subscriptions=[("adaptive/lab/node/+/status", 1)],
                     on_message=lambda t, p: seen_by_jetson.append(t))
    pi.publish(Message(status_topic("lab", "pi"), b"own status", 1))      # peers read it (endpoints)
    time.sleep(1.5)
    for t in (watcher, pi, controller, jetson):
        t.close()
    assert telemetry_topic("lab", "pi") in got
    assert stats_topic("lab", "pi") in got
    assert plan_topic("lab2") in got
    assert status_topic("lab", "pi") in seen_by_jetson
    assert telemetry_topic("lab", "jetson") not in got
    assert stats_topic("lab", "jetson") not in got
    assert "adaptive/lab/emulation" not in got
    assert plan_topic("lab") not in got


def test_acl_every_role_stays_in_its_lane_rules_included(secure_broker):
    """Issue 20: the shipped ACL did not mention the rule topic; nodes could publish rules and fake nodes."""
    got = []
    watcher = connect(secure_broker, "controller", subscriptions=[("adaptive/#", 1)],
                      on_message=lambda t, p: got.append(t))
    rule = RuleMessage(1, "pi", "m", ("pi", "jetson"), 11, time.time(), "t", (), (RulePlan((3,), ()),))
    rule = rule.encode()
    pi, jetson, client = (connect(secure_broker, user) for user in ("pi", "jetson", "client-1"))
    pi.publish(Message(rule_topic("lab", "pi"), rule, 1))                    # a node pins its rule: denied
    jetson.publish(Message(rule_topic("lab", "pi"), rule, 1))                # or another's: denied
    client.publish(Message(rule_topic("lab", "pi"), rule, 1))                # a client: denied
    client.publish(Message(plan_topic("lab"), rule, 1))                      # denied
    pi.publish(Message(status_topic("lab", "ghost"), b"fake node", 1))      # a node no account is: denied
    pi.publish(Message(ack_topic("lab", "jetson"), b"ack for another", 1))   # denied
    client.publish(Message(status_topic("lab", "jetson"), b"fake", 1))      # denied
    pi.publish(Message(ack_topic("lab", "pi"), b"own ack", 1))              # allowed
    controller = connect(secure_broker, "controller")
    controller.publish(Message(rule_topic("lab", "pi2"), rule, 1))           # allowed: the controller
    rules_seen = []
    reader = connect(secure_broker, "jetson", subscriptions=[("adaptive/lab/node/+/rule", 1)],
                     on_message=lambda t, p: rules_seen.append(t))             # nodes read every rule
    controller.publish(Message(rule_topic("lab", "pi3"), rule, 1))
    time.sleep(1.5)
    for t in (watcher, pi, jetson, client, controller, reader):
        t.close()
    assert ack_topic("lab", "pi") in got and rule_topic("lab", "pi2") in got
    assert rule_topic("lab", "pi3") in rules_seen
    for denied in (rule_topic("lab", "pi"), plan_topic("lab"), status_topic("lab", "ghost"),
                   ack_topic("lab", "jetson"), status_topic("lab", "jetson")):
        assert denied not in got, denied
