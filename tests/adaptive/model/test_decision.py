"""Decision tables and the source's choice per request."""

from __future__ import annotations

import itertools
import json
import re
import time

import numpy as np
import pytest

from adaptive.model.decision import GRID_MBPS, decision_table
from adaptive.model.latency import ConditionBatch, SplitModel
from adaptive.model.observation import candidate_plans
from adaptive.model.profiles import resolve_device, resolve_model
from adaptive.protocol.messages import SchemaError, Status
from adaptive.protocol.rules import RuleMessage, RulePlan
from adaptive.runtime.source import SourceDecider, check_rule
from adaptive.runtime.wire import Frame
from monitor.presence import Presence

CHAIN = ["raspberry-pi-4", "jetson-nano", "jetson-agx-orin"]


@pytest.fixture(scope="module")
def setup():
    model = SplitModel(resolve_model("mobilenet_v2"), [resolve_device(d) for d in CHAIN])
    cands = candidate_plans(model, max_plans=32)
    cond = ConditionBatch(np.array([[10.0, 1000.0]]), np.zeros((1, 2)), np.zeros((1, 3)), np.ones(1),
                          np.array([[4000.0, 4000.0, 32000.0]]))
    return model, cands, cond


def brute_force(model, cands, cond, allowed, bw):
    c = ConditionBatch(np.array([[bw, cond.bandwidth_mbps[0, 1]]]), cond.propagation_ms, cond.cpu_load,
                       cond.clients, cond.available_mb)
    pred = model.evaluate(cands.plans, c)
    return pred.latency_ms[0], pred.throughput_rps[0], pred.feasible[0] & allowed


def test_table_agrees_with_brute_force_at_every_grid_point(setup):
    model, cands, cond = setup
    allowed = np.ones(len(cands), bool)
    table = decision_table(model, cands, cond, allowed)
    assert len(table.actions) == len(table.edges_mbps) + 1 >= 2
    assert list(table.edges_mbps) == sorted(table.edges_mbps)
    for bw in GRID_MBPS:
        k = int(np.searchsorted(table.edges_mbps, bw, side="right"))
        lat, _, ok = brute_force(model, cands, cond, allowed, bw)
        assert lat[table.actions[k]] == pytest.approx(np.min(np.where(ok, lat, np.inf)))


def test_more_bandwidth_moves_the_split_toward_the_input(setup):
    """Seed 000 Fig. 13a, as the table says it: the edge keeps fewer blocks as the uplink gets faster."""
    model, cands, cond = setup
    table = decision_table(model, cands, cond, np.ones(len(cands), bool))
    first_splits = [cands.plan(a).splits[0] for a in table.actions]
    assert first_splits[0] == model.num_blocks  # a near-dead uplink: device-only
    assert first_splits[-1] < first_splits[0]
    assert all(b <= a for a, b in itertools.pairwise(first_splits))


def test_dead_nodes_and_the_request_rate_constrain_the_table(setup):
    model, cands, cond = setup
    L = model.num_blocks
    no_orin = np.array([cands.plan(i).splits[1] == L for i in range(len(cands))])  # jetson-agx-orin idle
    table = decision_table(model, cands, cond, no_orin)
    assert all(no_orin[a] for a in table.actions)
    free = decision_table(model, cands, cond, np.ones(len(cands), bool))
    rate = 0.8 * max(free.throughput_rps)
    busy = decision_table(model, cands, cond, np.ones(len(cands), bool), rate_hz=rate, headroom=1.0)
    for bw in GRID_MBPS:
        k = int(np.searchsorted(busy.edges_mbps, bw, side="right"))
        lat, rps, ok = brute_force(model, cands, cond, np.ones(len(cands), bool), bw)
        keeps_up = ok & (rps >= rate)
        if keeps_up.any():  # the choice keeps up with the stream wherever some plan can
            assert rps[busy.actions[k]] >= rate
            assert lat[busy.actions[k]] == pytest.approx(np.min(np.where(keeps_up, lat, np.inf)))


def test_the_table_in_force_stays_until_it_is_worse_than_the_margin(setup):
    """Hysteresis: a wobble of the slow state keeps the published table; a real change replaces it."""
    model, cands, cond = setup
    allowed = np.ones(len(cands), bool)
    table = decision_table(model, cands, cond, allowed)
    wobble = cond._replace(cpu_load=np.array([[0.03, 0.02, 0.0]]))  # a shared host's few percent
    assert decision_table(model, cands, wobble, allowed) != table  # without hysteresis: a new table
    assert decision_table(model, cands, wobble, allowed, incumbent=table) is table
    L = model.num_blocks
    no_orin = np.array([cands.plan(i).splits[1] == L for i in range(len(cands))])
    moved = decision_table(model, cands, wobble, no_orin, incumbent=table)  # the orin died
    assert moved is not table and all(no_orin[a] for a in moved.actions)
    loaded = cond._replace(cpu_load=np.array([[0.9, 0.0, 0.0]]))  # the source itself got busy
    assert decision_table(model, cands, loaded, allowed, incumbent=table) is not table


RULE = RuleMessage(3, "pi", "mobilenet_v2", ("pi", "jetson", "orin"), 20, 0.0, "table", (2.0, 20.0),
                   (RulePlan((20, 20)), RulePlan((6, 20), ("int8", "none")), RulePlan((0, 5))))


def frame():
    return Frame(kind="work", request_id="r", client="c", reply_to="tcp://h:1", version=0, hop=0, position=0,
                 shape=(1,))


def test_the_source_picks_by_its_fresh_estimate_and_avoids_offline_nodes():
    estimate = {"mbps": 1.0, "at": time.time()}
    presence = Presence(hold_s=0)
    source = SourceDecider("pi", presence, lambda peer: (estimate["mbps"], estimate["at"]))
    assert source.decide(frame()) == (None, "source pi has no decision rule and no default plan yet", False)
    source.set_rule(RULE)
    for mbps, splits in ((1.0, (20, 20)), (5.0, (6, 20)), (50.0, (0, 5)), (2.0, (6, 20))):
        estimate["mbps"] = mbps
        stamped = source.decide(frame()).frame
        assert stamped.splits == splits and stamped.devices == RULE.devices and stamped.version == 3
    presence.update(Status("orin", "offline", 1.0))
    estimate["mbps"] = 50.0  # the orin's bin: the nearest bin that avoids it
    assert source.decide(frame())[0].splits == (6, 20)
    assert len(source.decisions) == 5 and all(0 <= a < 5 for a in source.ages())


def test_a_rule_with_a_deadline_makes_the_source_drop_what_would_be_late():
    # bin 0: on the pi alone (300 ms of its compute); bin 1: 40 ms here, then 1 Mbit over the uplink
    rows = (RulePlan((20, 20), (), 300.0, at_mbps=1.0, edge_ms=300.0, uplink_bits=0.0),
            RulePlan((3, 20), (), 250.0, at_mbps=8.0, edge_ms=40.0, uplink_bits=1e6))
    rule = RuleMessage(4, "pi", "mobilenet_v2", ("pi", "jetson", "orin"), 20, 0.0, "table", (2.0,), rows,
                       deadline_ms=1000.0)
    assert RuleMessage.decode(rule.encode()) == rule
    assert rows[1].latency_at(4.0) == pytest.approx(250.0 + 125.0)  # 1 Mbit takes 125 ms more at half
    estimate = {"mbps": 4.0}
    source = SourceDecider("pi", Presence(hold_s=0), lambda peer: (estimate["mbps"], time.time()))
    source.set_rule(rule)
    # at 4 Mbit/s each request needs 375 ms alone and leaves 40 ms of compute and 250 ms of uplink
    # ahead of the next: 375, 665, 955 ms predicted are admitted; the fourth (1245 ms) is dropped
    got = [source.decide(frame()) for _ in range(4)]
    assert [g.frame is not None for g in got] == [True, True, True, False]
    assert got[3].dropped and re.search(r"predicted 12[34]\d ms .* > deadline 1000 ms", got[3].why)
    assert source.dropped == 1 and source.decisions[-1].dropped
    estimate["mbps"] = 2.5  # the link drops: the 3 Mbit queued now take 1.2 s to leave
    late = source.decide(frame())
    assert late.dropped and re.search(r"of which 1[23]\d\d ms queued ahead", late.why), late.why
    # device-only: the uplink's backlog is not in its way, the compute's is (3 x 40 ms, then 300 each)
    estimate["mbps"] = 1.0
    got = [source.decide(frame()) for _ in range(3)]  # 420, 720 ms admitted; 1020 ms dropped
    assert [g.frame is not None for g in got] == [True, True, False] and got[0].frame.splits == (20, 20)


def test_a_rule_with_bad_admission_fields_is_refused():
    doc = json.loads(RuleMessage(4, "pi", "m", ("pi", "jetson"), 20, 0.0, "t", (),
                                 (RulePlan((3,), (), 1.0, at_mbps=2.0),)).encode())
    for key, where, value in (("deadline_ms", doc, "soon"), ("at_mbps", doc["plans"][0], -1),
                              ("uplink_bits", doc["plans"][0], True)):
        bad = json.loads(json.dumps(doc))
        (bad if where is doc else bad["plans"][0])[key] = value
        with pytest.raises(SchemaError, match=key):
            RuleMessage.decode(json.dumps(bad))


def test_a_rule_for_another_node_model_or_size_is_refused():
    assert check_rule(RULE, "pi", "mobilenet_v2", 20) == ""
    assert "for source 'pi'" in check_rule(RULE, "jetson", "mobilenet_v2", 20)
    assert "holds 'vgg16'" in check_rule(RULE, "pi", "vgg16", 20)
    assert "has 21" in check_rule(RULE, "pi", "mobilenet_v2", 21)
