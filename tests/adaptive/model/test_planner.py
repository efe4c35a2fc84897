"""Planner and model invariants on random small problems (hypothesis).

Brute force here means: every split vector from itertools, each evaluated by the plain-loop
reference model in ``reference.py`` — independent of the vectorised model and the planner.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from adaptive.errors import PlanError
from adaptive.model.latency import Conditions, SplitModel
from adaptive.model.planner import Constraints, Planner
from adaptive.model.plans import PlanArray, enumerate_plans
from adaptive.model.profiles import device_from_dict, model_from_dict
from tests.adaptive.model.reference import reference

finite = {"allow_nan": False, "allow_infinity": False}


@st.composite
def problems(draw, max_devices=4, max_blocks=7, codecs=False):
    n_dev = draw(st.integers(1, max_devices))
    n_blk = draw(st.integers(1, max_blocks))
    devices = []
    for i in range(n_dev):
        devices.append(device_from_dict({
            "schema": "adaptive.device/v1", "name": f"d{i}",
            "accelerator": draw(st.sampled_from(["cpu", "gpu"])),
            "memory_mb": draw(st.floats(1.0, 100.0, **finite)),
            "power_w": {"active": draw(st.floats(1.0, 30.0, **finite)), "idle": 0.5},
            "link": {"first_packet_ms": draw(st.floats(0.0, 3.0, **finite)),
                     "per_kb_ms": draw(st.floats(1e-4, 0.05, **finite)),
                     "offset_ms": draw(st.floats(-0.5, 0.5, **finite)),
                     "ref_bandwidth_mbps": draw(st.sampled_from([100.0, 1000.0]))},
            "data_movement": {
                "inbound": {"per_kb_ms": draw(st.floats(0, 1e-3, **finite)),
                            "offset_ms": draw(st.floats(0, 1, **finite))},
                "outbound": {"per_kb_ms": draw(st.floats(0, 1e-3, **finite)),
                             "offset_ms": draw(st.floats(0, 1, **finite))}},
            "batching": {"per_extra_item": draw(st.floats(0.0, 1.0, **finite))},
        }))
    lat = st.lists(st.floats(0.01, 30.0, **finite), min_size=n_blk, max_size=n_blk)
    doc = {
        "schema": "adaptive.model/v1", "model": "random", "input_shape": [1],
        "input_bytes": draw(st.integers(100, 300_000)), "result_bytes": draw(st.integers(0, 4000)),
        "blocks": [{"name": f"b{i}", "output_bytes": draw(st.integers(0, 600_000)),
                    "param_bytes": draw(st.integers(0, 20_000_000))} for i in range(n_blk)],
        "latency_ms": {d.name: draw(lat) for d in devices},
        "correction": {d.name: {"c0_ms": draw(st.floats(-0.2, 0.5, **finite)),
                                "c1_ms": draw(st.floats(-1.0, 1.0, **finite))} for d in devices},
    }
    if codecs:
        doc["codecs"] = {
            "fp16": {"bytes_ratio": 0.5, "encode": {"default": {"per_kb_ms": 1e-3, "offset_ms": 0.05}},
                     "decode": {"default": {"per_kb_ms": 1e-3, "offset_ms": 0.05}}},
            "ae": {"bytes_ratio": 0.1, "layers": 1,
                   "splits": draw(st.lists(st.integers(0, n_blk), min_size=1, max_size=3)),
                   "encode": {"default": {"per_kb_ms": 4e-3, "offset_ms": 0.3}},
                   "decode": {"default": {"per_kb_ms": 4e-3, "offset_ms": 0.3}}},
        }
    model = model_from_dict(doc)
    m = n_dev - 1
    cond = dict(
        bw=draw(st.lists(st.floats(0.5, 2000.0, **finite), min_size=max(m, 1), max_size=max(m, 1))),
        prop=draw(st.floats(0.0, 5.0, **finite)),
        load=draw(st.lists(st.floats(0.0, 1.0, **finite), min_size=n_dev, max_size=n_dev)),
        clients=draw(st.integers(1, 6)),
        avail=draw(st.lists(st.floats(0.5, 60.0, **finite), min_size=n_dev, max_size=n_dev)),
        return_result=draw(st.booleans()),
        idle_energy=draw(st.booleans()),
    )
    return model, devices, cond


def build(model, devices, cond):
    sm = SplitModel(model, devices, return_result=cond["return_result"],
                    idle_energy=cond["idle_energy"])
    c = Conditions(cond["bw"], cond["prop"], cond["load"], cond["clients"], cond["avail"])
    return sm, c


def ref(model, devices, cond, splits, codecs=()):
    return reference(model, devices, list(splits), list(codecs), bw=cond["bw"], prop=cond["prop"],
                     load=cond["load"], clients=cond["clients"], avail=cond["avail"],
                     return_result=cond["return_result"], idle_energy=cond["idle_energy"])


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(problems(codecs=True))
def test_vectorised_model_matches_reference_on_every_plan(problem):
    model, devices, cond = problem
    sm, c = build(model, devices, cond)
    planner = Planner(sm)
    plans = planner.all_plans()
    pred = sm.evaluate(plans, c)
    for i in range(len(plans)):
        p = planner.to_plan(plans, i)
        lat, en, ok = ref(model, devices, cond, p.splits, p.codecs)
        assert pred.latency_ms[i] == pytest.approx(lat, rel=1e-9, abs=1e-9)
        assert pred.energy_j[i] == pytest.approx(en, rel=1e-9, abs=1e-12)
        assert bool(pred.feasible[i]) == ok


@SETTINGS
@given(problems(), st.sampled_from(["latency", "energy"]))
def test_planner_equals_brute_force(problem, objective):
    model, devices, cond = problem
    sm, c = build(model, devices, cond)
    L, M = model.num_blocks, len(devices) - 1
    brute = []
    for splits in itertools.combinations_with_replacement(range(L + 1), M):
        lat, en, ok = ref(model, devices, cond, splits)
        if ok:
            brute.append(lat if objective == "latency" else en)
    planner = Planner(sm)
    for method in ("dp", "enumeration"):
        if not brute:
            with pytest.raises(PlanError, match="no plan satisfies"):
                planner.best(c, objective, method=method)
            continue
        r = planner.best(c, objective, method=method)
        got = r.latency_ms if objective == "latency" else r.energy_j
        assert got == pytest.approx(min(brute), rel=1e-9, abs=1e-12)


@SETTINGS
@given(problems(codecs=True), st.floats(0.0, 5.0, **finite), st.integers(0, 3))
def test_dp_equals_enumeration_with_codecs_weights_and_edge_minimum(problem, weight, min_edge):
    model, devices, cond = problem
    sm, c = build(model, devices, cond)
    planner = Planner(sm)
    kw = {"energy_weight": weight, "constraints": Constraints(min_edge_blocks=min_edge)}
    try:
        a = planner.best(c, "weighted", method="dp", **kw)
    except PlanError:
        with pytest.raises(PlanError):
            planner.best(c, "weighted", method="enumeration", **kw)
        return
    b = planner.best(c, "weighted", method="enumeration", **kw)
    if len(devices) > 1:
        assert a.plan.splits[0] >= min(min_edge, model.num_blocks)
    refs = planner._references(sm.conditions(c))
    score = lambda r: r.latency_ms / refs[0] + weight * r.energy_j / refs[1]  # noqa: E731
    assert score(a) == pytest.approx(score(b), rel=1e-9, abs=1e-12)


@SETTINGS
@given(problems(codecs=True), st.data())
def test_more_bandwidth_never_increases_a_plans_latency(problem, data):
    model, devices, cond = problem
    assume(len(devices) > 1)
    sm, c = build(model, devices, cond)
    plans = Planner(sm).all_plans()
    factors = data.draw(st.lists(st.floats(1.0, 50.0, **finite), min_size=len(cond["bw"]),
                                 max_size=len(cond["bw"])))
    faster = Conditions([b * f for b, f in zip(cond["bw"], factors, strict=True)], cond["prop"], cond["load"],
                        cond["clients"], cond["avail"])
    before = sm.evaluate(plans, c).latency_ms
    after = sm.evaluate(plans, faster).latency_ms
    assert np.all(after <= before + 1e-9)


@SETTINGS
@given(problems(max_devices=2), st.lists(st.floats(0.5, 5000.0, **finite), min_size=2, max_size=6))
def test_two_devices_activation_at_optimal_split_never_shrinks_as_bandwidth_grows(problem, bws):
    model, devices, cond = problem
    assume(len(devices) == 2)
    cond = {**cond, "avail": [1e9, 1e9]}  # memory limits would change the feasible set
    sm, _ = build(model, devices, cond)
    planner = Planner(sm, use_codecs=False)
    sent = []
    for bw in sorted(bws):
        r = planner.best(Conditions(bw, cond["prop"], cond["load"], cond["clients"], cond["avail"]))
        s = r.plan.splits[0]
        sent.append(0.0 if s == model.num_blocks else float(sm.split_bytes[s]))
    assert all(b >= a - 1e-9 for a, b in itertools.pairwise(sent)), sent


@settings(max_examples=60, deadline=None)
@given(problems(max_devices=3))
def test_device_only_and_full_offload_are_ordinary_plans(problem):
    model, devices, cond = problem
    sm, c = build(model, devices, cond)
    L, M = model.num_blocks, len(devices) - 1
    plans = enumerate_plans(L, len(devices))
    rows = {tuple(r) for r in plans.splits.tolist()}
    assert (L,) * M in rows and (0,) * M in rows
    pred = sm.evaluate(PlanArray.from_splits([[L] * M, [0] * M]), c)
    for i, splits in enumerate([[L] * M, [0] * M]):
        lat, _en, _ok = ref(model, devices, cond, splits)
        assert pred.latency_ms[i] == pytest.approx(lat, rel=1e-9, abs=1e-9)
    # device-only: d0 computes everything and nothing moves
    assert not pred.comm_ms[0].any() and not pred.proc_ms[0].any()


@settings(max_examples=60, deadline=None)
@given(problems(max_devices=3, codecs=True))
def test_pareto_front_is_exactly_the_non_dominated_set(problem):
    model, devices, cond = problem
    sm, c = build(model, devices, cond)
    planner = Planner(sm)
    plans = planner.all_plans()
    pred = sm.evaluate(plans, c)
    ok = pred.feasible
    assume(ok.any())
    _front, fpred = planner.pareto(c)
    lat, en = pred.latency_ms[ok], pred.energy_j[ok]
    for fl, fe in zip(fpred.latency_ms, fpred.energy_j, strict=True):
        dominated = (lat <= fl) & (en <= fe) & ((lat < fl - 1e-12) | (en < fe - 1e-12))
        assert not dominated.any()
    # every feasible plan is dominated by or equal to a front member
    for pl, pe in zip(lat, en, strict=True):
        assert np.any((fpred.latency_ms <= pl + 1e-12) & (fpred.energy_j <= pe + 1e-12))
    assert np.all(np.diff(fpred.latency_ms) > 0) and np.all(np.diff(fpred.energy_j) < 0)


def test_constraints_slo_and_energy_budget(toy, edge, accel):
    sm = SplitModel(toy, [edge, accel])
    planner = Planner(sm)
    c = Conditions(bandwidth_mbps=50)
    pred = sm.evaluate(planner.all_plans(), c)
    fastest = planner.best(c, "latency")
    frugal = planner.best(c, "energy")
    assert fastest.latency_ms == pytest.approx(pred.latency_ms.min())
    assert frugal.energy_j == pytest.approx(pred.energy_j.min())
    # energy-optimal plan under an SLO between the two optima
    slo = (fastest.latency_ms + frugal.latency_ms) / 2
    r = planner.best(c, "energy", constraints=Constraints(slo_ms=slo))
    ok = pred.latency_ms <= slo
    assert r.method == "enumeration" and r.latency_ms <= slo
    assert r.energy_j == pytest.approx(pred.energy_j[ok].min())
    with pytest.raises(PlanError, match="SLO"):
        planner.best(c, "latency", constraints=Constraints(slo_ms=1e-3))


def test_throughput_objective_minimises_the_bottleneck(toy, edge, accel, accel2):
    sm = SplitModel(toy, [edge, accel, accel2])
    planner = Planner(sm)
    c = Conditions(bandwidth_mbps=[30, 300])
    pred = sm.evaluate(planner.all_plans(), c)
    r = planner.best(c, "throughput")
    assert 1e3 / r.throughput_rps == pytest.approx(pred.bottleneck_ms.min())


def test_plan_table_moves_split_toward_input_as_bandwidth_rises(toy, edge, accel):
    planner = Planner(SplitModel(toy, [edge, accel]), use_codecs=False)
    rows = planner.table([0.5, 5, 50, 500, 5000], Conditions(bandwidth_mbps=1))
    splits = [r.plan.splits[0] for r in rows]
    assert splits == sorted(splits, reverse=True)
    assert splits[0] == toy.num_blocks and splits[-1] < splits[0]


def test_shipped_vgg16_moves_split_toward_input_as_bandwidth_rises():
    """Seed 000 Fig. 13a: from 100 to 400 Mbit/s the optimal VGG16 split moves 7 -> 4 -> 2."""
    from adaptive.model.profiles import resolve_device, resolve_model

    for model, chain in (("vgg16", ["jetson-orin-nano", "jetson-agx-orin"]),
                         ("vgg16_cifar", ["raspberry-pi-4", "jetson-agx-orin"])):
        planner = Planner(SplitModel(resolve_model(model), [resolve_device(d) for d in chain]))
        rows = planner.table(np.arange(5, 405, 10), Conditions(bandwidth_mbps=1),
                             constraints=Constraints(min_edge_blocks=1))
        splits = [r.plan.splits[0] for r in rows]
        assert splits == sorted(splits, reverse=True), (model, splits)
        assert len(set(splits)) >= 3, (model, splits)  # it actually moves, more than once
