"""The v1 contract: records round-trip, agree with the JSON Schemas, and decoders never crash."""

from __future__ import annotations

import json
from importlib import resources

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adaptive.protocol.messages import (
    Ack,
    LinkEstimate,
    PlanMessage,
    SchemaError,
    StageTiming,
    StatsMessage,
    Status,
    Telemetry,
    TransferTiming,
    parse_topic,
    plan_topic,
    telemetry_topic,
)
from adaptive.protocol.rules import RuleMessage, RulePlan, rule_topic


def schema(name):
    """The JSON Schema of a record kind (``sectioned plan`` is a plan)."""
    file = f"{name.split()[-1]}.v1.json"
    return json.loads(resources.files("adaptive.protocol").joinpath("schemas", file).read_text())


TELEMETRY = Telemetry(node="pi-1", ts=1.7e9, seq=3, cpu_percent=12.5, per_core=(10.0, 15.0), load1=0.4,
                      total_mb=4000.0, available_mb=3000.0, mem_percent=25.0, tx_bps=1e6, rx_bps=2e5,
                      links={"jetson": LinkEstimate(94.1, 0.8, 1.7e9, 80.0), "other": LinkEstimate()},
                      swap_total_mb=100.0, swap_used_mb=0.0, temp_c=51.2, power_w=4.2)
RECORDS = {
    "telemetry": TELEMETRY,
    "status": Status("pi-1", "online", 1.7e9, "raspberry-pi-4", "cpu", 4000.0, "tcp://pi:5555", "pi:7300"),
    "plan": PlanMessage(7, "resnet18", ("pi-1", "jetson"), (4,), 1.7e9, "greedy", 42.0, ("int8",), 14),
    "sectioned plan": PlanMessage(7, "resnet18", ("pi-1", "jetson"), (4,), 1.7e9, "greedy", 42.0, (), 14,
                                  section=(8, 0.375, 2)),
    "ack": Ack("jetson", 7, False, 1.7e9, "unknown node"),
    "rule": RuleMessage(9, "pi-1", "resnet18", ("pi-1", "jetson"), 14, 1.7e9, "greedy", (2.5, 20.0),
                        (RulePlan((14,), (), 80.0, 12.5), RulePlan((4,), ("int8",), 55.0),
                         RulePlan((0,), section=(5, 0.5, 2)))),
    "stats": StatsMessage("pi-1", 1.7e9, (StageTiming(7, 0, 4, 1, 12, 31.5),
                                          StageTiming(8, 4, 9, 1, 3, 12.0, (9, 0.375, 2))),
                          (TransferTiming("jetson", 12, 150528, 41.2),)),
}


@pytest.mark.parametrize("kind", list(RECORDS))
def test_round_trip_and_json_schema(kind):
    record = RECORDS[kind]
    cls = type(record)
    payload = record.encode()
    assert cls.decode(payload) == record
    jsonschema.validate(json.loads(payload), schema(kind))


def test_topics():
    assert telemetry_topic("lab", "pi-1") == "adaptive/lab/node/pi-1/telemetry"
    assert parse_topic("adaptive/lab/node/pi-1/status") == ("lab", "status", "pi-1")
    assert parse_topic(plan_topic("lab")) == ("lab", "plan", None)
    for bad in ("adaptive/lab/node/+/status", "adaptive/lab/x/pi/status", "other/lab/plan", "adaptive//plan"):
        with pytest.raises(SchemaError):
            parse_topic(bad)
    with pytest.raises(SchemaError, match="node must match"):
        telemetry_topic("lab", "a/b")


@pytest.mark.parametrize(
    ("kind", "mutate", "message"),
    [
        ("telemetry", lambda d: d["cpu"].update(percent=140), "expected <= 100"),
        ("telemetry", lambda d: d["cpu"].update(percent="x"), "expected a finite number"),
        ("telemetry", lambda d: d.pop("seq"), "seq"),
        ("telemetry", lambda d: d.update(v=2), "field 'v'"),
        ("telemetry", lambda d: d["net"]["links"].update({"bad/peer": {}}), "peer"),
        ("telemetry", lambda d: d["mem"].update(total_mb=-1), "expected >= 0"),
        ("status", lambda d: d.update(state="sleeping"), "online"),
        ("plan", lambda d: d.update(splits=[5, 4], devices=["a", "b", "c"]), "non-decreasing"),
        ("plan", lambda d: d.update(splits=[1, 2]), "expected 1 integers"),
        ("plan", lambda d: d.update(devices=["a", "a"]), "distinct"),
        ("plan", lambda d: d.update(version=0), "version"),
        ("plan", lambda d: d.update(section={"stop": 8, "share": 1.5, "parts": 1}), "'section'"),
        ("plan", lambda d: d.update(section={"stop": 8, "share": 0.5, "parts": 5}), "'section'"),
        ("plan", lambda d: d.update(section={"stop": 8, "share": 0.5}), "'section'"),
        ("ack", lambda d: d.update(ok="yes"), "true or false"),
        ("stats", lambda d: d["stages"][1].update(section={"stop": 9, "share": 1, "parts": 2}), "'section'"),
        ("stats", lambda d: d["stages"][1].update(section={"stop": 9, "share": 0.5}), "'section'"),
    ],
)
def test_invalid_messages_name_the_field(kind, mutate, message):
    d = json.loads(RECORDS[kind].encode())
    mutate(d)
    with pytest.raises(SchemaError, match=message):
        type(RECORDS[kind]).decode(json.dumps(d).encode())
    with pytest.raises(jsonschema.ValidationError):
        # the JSON Schema rejects these too (cross-field checks excepted)
        if kind == "plan" and message in ("non-decreasing", "expected 1 integers"):
            raise jsonschema.ValidationError("cross-field rule, checked in Python only")
        jsonschema.validate(d, schema(kind))


def test_oversized_and_non_json_payloads():
    with pytest.raises(SchemaError, match="exceeds"):
        Telemetry.decode(b"{" + b" " * 70_000 + b"}")
    for junk in (b"", b"\xff\xfe", b"[1,2]", b"null", b'{"v":1', b"NaN"):
        with pytest.raises(SchemaError):
            Telemetry.decode(junk)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=10), children, max_size=6)),
    max_leaves=30)


def decode_or_schema_error(cls, payload):
    """The decoder's whole contract: a record of its type, or SchemaError; nothing else."""
    try:
        record = cls.decode(payload)
    except SchemaError:
        return None
    assert isinstance(record, cls)
    return record


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), json_values.map(lambda v: json.dumps(v).encode())),
       st.sampled_from([Telemetry, Status, PlanMessage, Ack]))
def test_decoders_only_ever_raise_schema_error(payload, cls):
    decode_or_schema_error(cls, payload)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(list(RECORDS)), st.data())
def test_field_level_fuzz_never_crashes(kind, data):
    d = json.loads(RECORDS[kind].encode())
    key = data.draw(st.sampled_from(sorted(d)))
    d[key] = data.draw(json_values)
    record = decode_or_schema_error(type(RECORDS[kind]), json.dumps(d).encode())
    if record is not None:  # whatever is accepted re-encodes to something the schema accepts
        jsonschema.validate(json.loads(record.encode()), schema(kind))


def test_rule_bins_and_topic():
    rule = RECORDS["rule"]
    assert [rule.index(b) for b in (0.5, 2.5, 10.0, 20.0, 500.0, float("nan"), 0.0)] == [0, 1, 1, 2, 2, 0, 0]
    assert rule.plan(1).splits == (4,) and rule.plan(1).codecs == ("int8",) and rule.plan(1).version == 9
    assert rule_topic("lab", "pi-1") == "adaptive/lab/node/pi-1/rule"
    assert parse_topic(rule_topic("lab", "pi-1")) == ("lab", "rule", "pi-1")
    doc = json.loads(rule.encode())
    for change, message in (({"source": "jetson"}, "not the chain's first node"),
                            ({"edges_mbps": [20.0, 2.5]}, "increasing"),
                            ({"plans": doc["plans"][:2]}, "one per bin"),
                            ({"kind": "bandit"}, "'kind'"),
                            ({"kind": "policy"}, "policy rule has no 'edges_mbps'")):
        with pytest.raises(SchemaError, match=message):
            RuleMessage.decode(json.dumps({**doc, **change}))
    bad_row = [dict(doc["plans"][0], splits=[15]), *doc["plans"][1:]]
    with pytest.raises(SchemaError, match=r"plans\[0\].*0..14"):
        RuleMessage.decode(json.dumps({**doc, "plans": bad_row}))
