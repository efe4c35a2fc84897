"""Plans with a parallel section (Intra-DP's local operation parallelism) in the model and the planner."""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest

from adaptive.errors import PlanError
from adaptive.model.latency import Conditions, SplitModel
from adaptive.model.lop import efficiency_curve, parallel_sections
from adaptive.model.planner import Planner
from adaptive.model.plans import Plan, PlanArray, Section, enumerate_plans, parse_plan, plan_label
from adaptive.model.profiles import model_from_dict, resolve_device, resolve_model
from tests.conftest import TOY_MODEL


@pytest.fixture
def rows_doc():
    """The toy model with row maps: b0, b1 keep 32 rows (1-row windows), b2 halves them, b3 is global."""
    doc = copy.deepcopy(TOY_MODEL)
    shapes = [[1, 8, 32, 32], [1, 4, 32, 32], [1, 4, 16, 16], [1, 100]]
    rows = [(1, 1, 0), (1, 1, 0), (2, 2, 0), None]
    for block, shape, r in zip(doc["blocks"], shapes, rows, strict=True):
        block["output_shape"] = shape
        if r:
            block["rows"] = dict(zip(("kernel", "stride", "padding"), r, strict=True))
    doc["row_efficiency"] = {"edge": [[1.0, 1.0]], "accel": [[1.0, 1.0]], "accel2": [[0.5, 0.6]]}
    return doc


def _array(model: SplitModel, labels: list[str]) -> PlanArray:
    parsed = [parse_plan(label, model.num_blocks, model.num_devices, model.codec_names) for label in labels]
    sections = [p[2] or Section(1, 0.5) for p in parsed]
    return PlanArray(np.array([p[0] for p in parsed]), np.array([p[1] for p in parsed]),
                     np.array([s.stop if p[2] else 0 for p, s in zip(parsed, sections, strict=True)]),
                     np.array([s.share for s in sections]), np.array([s.parts for s in sections]))


def test_labels_and_json_round_trip():
    plan = Plan((5, 12), ("int8", "none"), Section(8, 0.75, 2))
    assert plan.label == "5-8@0.75x2,12/int8,none"
    assert parse_plan(plan.label, 20, 3, ("none", "int8")) == ((5, 12), (1, 0), Section(8, 0.75, 2))
    assert Plan.from_json(plan.to_json()) == plan
    assert plan.to_json()["schema"] == "adaptive.split-plan/v1"
    assert plan_label((3, 7)) == "3,7" and Plan((3, 7)).to_json() == {"schema": "adaptive.split-plan/v1",
                                                                       "splits": [3, 7]}


@pytest.mark.parametrize(("label", "message"), [
    ("5-8@1.5,12", "share must be in"),
    ("5-8@0.5x9,12", "1..4 accelerator parts"),
    ("5-12@0.5,12", "before the next stage's end"),
    ("5-5@0.5,12", "must end after block 5"),
    ("5-8@x,12", "expected splits like"),
])
def test_bad_section_labels_are_refused(label, message):
    with pytest.raises(PlanError, match=message):
        parse_plan(label, 20, 3)


@pytest.mark.parametrize("doc", [
    {"schema": "adaptive.split-plan/v1", "splits": [1], "section": {"stop": "2"}},
    {"schema": "other", "splits": [1]},
    {"schema": "adaptive.split-plan/v1", "splits": [1], "extra": 1},
    "not json",
])
def test_bad_plan_json_is_refused(doc):
    with pytest.raises(PlanError, match="plan:"):
        Plan.from_json(doc)


def test_schedule_by_hand(rows_doc, edge, accel):
    """Two devices at the reference bandwidth, no halo, linear efficiency: every term by hand."""
    model = SplitModel(model_from_dict(rows_doc), [edge, accel], return_result=False)
    assert parallel_sections(model.profile) == [(0, 3)]
    pred = model.evaluate(_array(model, ["0-2@0.5"]), Conditions(bandwidth_mbps=1000))
    # chunk: 16 of 32 input rows = 6000 B; join: 16 of 32 rows of b1's 50000 B = 25000 B
    chunk_comm, join_comm = 0.008 * 6 - 0.4 + 2.0, 0.008 * 25 - 0.4 + 2.0
    ready = 0.002 * 6 + 0.3
    sent = ready + chunk_comm
    done = sent + (0.0001 * 6 + 0.5) + 0.5 * (0.5 + 0.5)  # deserialise, then half of b0 and b1 on accel
    edge_ready = ready + 0.5 * (1.0 + 2.0) + (0.002 * 25 + 0.3)
    section = max(max(edge_ready, sent) + join_comm, done) + (0.0001 * 25 + 0.5)
    rest = (0.5 + 0.5 - (0.02 * 2 + 0.01)) + (0.0003 * 0.4 + 0.1)  # accel runs b2, b3; moves the result out
    assert pred.latency_ms[0] == pytest.approx(section + rest, abs=1e-9)
    busy_edge = 0.5 * 3.0 + ready + 0.002 * 25 + 0.3
    busy_accel = 0.5 + 0.95 + (0.5006 + 0.5025 + 0.10012) + chunk_comm + join_comm
    assert pred.energy_j[0] == pytest.approx((busy_edge * 5 + busy_accel * 20) / 1e3, abs=1e-9)
    assert pred.latency_ms[0] < busy_edge + busy_accel  # the two sides overlap


def test_parts_halo_and_efficiency_curve(rows_doc, edge, accel2):
    model = SplitModel(model_from_dict(rows_doc), [edge, accel2])
    costs = model.section_costs
    one, two = costs.config(0, 3, 0.5, 1), costs.config(0, 3, 0.5, 2)
    # b2 reads 2 rows per output row: the accelerator's 8 of 16 rows read input rows [0, 16)
    assert one.chunk_bytes[0] == pytest.approx(16 * 12_000 / 32)
    assert two.chunk_bytes[:2].sum() == pytest.approx(one.chunk_bytes[0])  # no row is sent twice
    xs, ys, op_ms = efficiency_curve(model.profile, model.devices[1])
    assert list(xs) == [0.0, 0.5, 1.0] and list(ys) == [0.0, 0.6, 1.0] and op_ms == 0.0  # gpu default
    # accel2 at rho = 0.25 costs 0.3 of the block (interpolated), each of its 4 blocks 0.25 ms
    assert two.part_ms[1, 0] == pytest.approx(3 * 0.25 * 0.3)
    with pytest.raises(PlanError, match="not inside one parallel section"):
        costs.config(1, 4, 0.5, 1)
    # a fixed cost per operator: 2 operators at 0.1 ms of each 0.25 ms block, the rest scales
    fixed = copy.deepcopy(rows_doc)
    for block in fixed["blocks"]:
        block["ops"] = 2
    fixed["row_op_ms"] = {"accel2": 0.1}
    two = SplitModel(model_from_dict(fixed), [edge, accel2]).section_costs.config(0, 3, 0.5, 2)
    assert two.part_ms[1, 0] == pytest.approx(3 * (0.2 + 0.05 * 0.3))


def test_layer_plans_are_unchanged_and_sections_validated(rows_doc, edge, accel, accel2):
    model = SplitModel(model_from_dict(rows_doc), [edge, accel, accel2])
    layer = enumerate_plans(model.num_blocks, 3)
    cond = Conditions(bandwidth_mbps=[20, 50], cpu_load=0.3)
    plain = model.evaluate(layer, cond)
    mixed = PlanArray(layer.splits, layer.codecs, np.zeros(len(layer), np.int64), np.zeros(len(layer)),
                      np.ones(len(layer), np.int64))
    for a, b in zip(plain, model.evaluate(mixed, cond), strict=True):
        np.testing.assert_array_equal(a, b)
    barrier = copy.deepcopy(rows_doc)
    del barrier["blocks"][1]["rows"]  # b1 becomes a barrier: sections [0, 1) and [2, 3)
    cut = SplitModel(model_from_dict(barrier), [edge, accel, accel2])
    assert parallel_sections(cut.profile) == [(0, 1), (2, 3)]
    with pytest.raises(PlanError, match="not inside one parallel section"):
        cut.evaluate(_array(cut, ["0-2@0.5,4"]), cond)
    with pytest.raises(PlanError, match="codec ae is not available at the section's end"):
        model.evaluate(_array(model, ["1-3@0.5,4/ae,none"]), cond)


def _brute_force(model: SplitModel, cond: Conditions, objective: str) -> float:
    """Every layer plan and every plan with a section of the planner's grid, through the full model."""
    layer = enumerate_plans(model.num_blocks, model.num_devices, model.codec_allowed)
    (start, stop, share, parts), _ = model.section_costs.grid()
    rows = []
    for p in range(len(layer)):
        for n in np.flatnonzero(start == layer.splits[p, 0]):
            plan = Plan(tuple(layer.splits[p]), (), Section(int(stop[n]), float(share[n]), int(parts[n])))
            try:
                model.check_plans(PlanArray(layer.splits[p : p + 1], layer.codecs[p : p + 1],
                                            np.array([stop[n]]), np.array([share[n]]), np.array([parts[n]])))
            except PlanError:
                continue
            rows.append((p, plan.section))
    lop = PlanArray(layer.splits[[r[0] for r in rows]], layer.codecs[[r[0] for r in rows]],
                    np.array([r[1].stop for r in rows]), np.array([r[1].share for r in rows]),
                    np.array([r[1].parts for r in rows]))
    pred = model.evaluate(PlanArray.concat([layer, lop]), cond)
    value = pred.latency_ms if objective == "latency" else pred.energy_j
    return float(np.min(np.where(pred.feasible, value, np.inf)))


@pytest.mark.parametrize("objective", ["latency", "energy"])
@pytest.mark.parametrize(("bw", "load"), [(2.0, 0.0), (20.0, 0.5), (200.0, 0.0), (5.0, 0.9)])
def test_planner_finds_the_brute_force_optimum(rows_doc, edge, accel, accel2, objective, bw, load):
    model = SplitModel(model_from_dict(rows_doc), [edge, accel, accel2])
    cond = Conditions(bandwidth_mbps=bw, cpu_load=[load, 0.0, 0.0])
    result = Planner(model, parallel=True).best(cond, objective)
    found = result.latency_ms if objective == "latency" else result.energy_j
    assert found == pytest.approx(_brute_force(model, cond, objective), rel=1e-9)
    layer = Planner(model).best(cond, objective)
    assert found <= (layer.latency_ms if objective == "latency" else layer.energy_j) + 1e-12


def test_table_matches_best_and_a_model_without_sections_gets_layer_plans(rows_doc, toy, edge, accel, accel2):
    model = SplitModel(model_from_dict(rows_doc), [edge, accel, accel2])
    planner = Planner(model, parallel=True)
    grid = [0.5, 3.0, 30.0, 300.0]
    table = planner.table(grid, Conditions(bandwidth_mbps=1.0, clients=2))
    for bw, row in zip(grid, table, strict=True):
        best = planner.best(Conditions(bandwidth_mbps=bw, clients=2))
        assert row.plan == best.plan and row.latency_ms == pytest.approx(best.latency_ms)
    flat = Planner(SplitModel(toy, [edge, accel]), parallel=True)
    assert not flat.parallel
    assert flat.best(Conditions(bandwidth_mbps=10)).plan.section is None


def test_mobilenet_v2_sections_never_worse_often_better():
    """The issue's figure: Raspberry Pi 4 -> Jetson Nano -> AGX Orin, 1-100 Mbit/s (docs/model.md table)."""
    model = SplitModel(resolve_model("mobilenet_v2"),
                       [resolve_device(d) for d in ("raspberry-pi-4", "jetson-nano", "jetson-agx-orin")])
    grid = np.geomspace(1, 100, 97)
    planner = Planner(model, parallel=True)
    lop = np.array([r.latency_ms for r in planner.table(grid, Conditions(bandwidth_mbps=1))])
    layer = np.array([r.latency_ms for r in planner.layer_table(grid, Conditions(bandwidth_mbps=1))])
    assert np.all(lop <= layer + 1e-9)
    assert np.max(1 - lop / layer) >= 0.15
    assert lop[0] == pytest.approx(layer[0])  # at 1 Mbit/s nothing pays but the device alone


def test_concat_keeps_sections():
    a = PlanArray.from_splits([[1], [2]])
    b = PlanArray(np.array([[0]]), np.array([[0]]), np.array([2]), np.array([0.25]), np.array([3]))
    both = PlanArray.concat([a, b])
    assert both.section_of(0) is None and both.section_of(2) == Section(2, 0.25, 3)
    assert list(itertools.chain(both.stop)) == [0, 0, 2]


def test_per_plan_bandwidth_equals_each_plan_under_its_own_rate():
    """A (B, P, M) bandwidth gives each plan its own rate (the env's transfers integrated over a trace)."""
    from adaptive.model.latency import ConditionBatch
    from adaptive.model.observation import candidate_plans

    model = SplitModel(resolve_model("mobilenet_v2"),
                       [resolve_device(d) for d in ("raspberry-pi-4", "jetson-nano", "jetson-agx-orin")])
    plans = candidate_plans(model, parallel=True).plans
    assert plans.has_sections
    rng = np.random.default_rng(0)
    B, P = 6, len(plans)
    bw = rng.uniform(0.5, 200.0, (B, P, 2))
    rest = (np.full((B, 2), 0.5), rng.uniform(0, 0.9, (B, 3)), rng.integers(1, 4, B).astype(float),
            np.full((B, 3), 4000.0))
    joint = model.evaluate(plans, ConditionBatch(bw, *rest))
    for p in range(P):
        alone = model.evaluate(plans, ConditionBatch(bw[:, p], *rest))
        for field in ("latency_ms", "energy_j", "comm_ms", "naive_latency_ms", "bottleneck_ms"):
            np.testing.assert_allclose(getattr(joint, field)[:, p], getattr(alone, field)[:, p], rtol=1e-12)
    first_rate = model.evaluate(plans, ConditionBatch(bw[:, 0], *rest))
    assert not np.allclose(joint.latency_ms, first_rate.latency_ms)


def test_a_sectioned_plan_is_included_only_among_parallel_candidates():
    from adaptive.model.observation import candidate_plans

    model = SplitModel(resolve_model("mobilenet_v2"),
                       [resolve_device(d) for d in ("raspberry-pi-4", "jetson-nano", "jetson-agx-orin")])
    with_it = candidate_plans(model, include=["0-5@0.5,0/none,int8"], parallel=True)
    assert with_it.index(Plan((0, 0), ("none", "int8"), Section(5, 0.5, 1))) >= 0
    with pytest.raises(PlanError, match="only with parallel: true"):
        candidate_plans(model, include=["0-5@0.5,0/none,int8"], parallel=False)


def test_scaled_devices_scale_their_parts_too():
    """A device slowed k times (calibration, device_scales) computes every band k times slower, as an
    emulated node with --slowdown k pads it: its row curve and operators' fixed cost come along."""
    from adaptive.model.profiles import scaled_profiles

    profile = resolve_model("mobilenet_v2")
    devices = [resolve_device(d) for d in ("raspberry-pi-4", "jetson-nano", "jetson-agx-orin")]
    base = SplitModel(profile, devices).section_costs.config(0, 5, 0.5, 2)
    scaled = SplitModel(*scaled_profiles(profile, devices, [3.0, 1.0, 7.0], ["pi", "nano", "orin"]))
    cfg = scaled.section_costs.config(0, 5, 0.5, 2)
    assert cfg.edge_ms[0] == pytest.approx(3.0 * base.edge_ms[0])  # the Pi's fixed cost per operator too
    np.testing.assert_allclose(cfg.part_ms[2], 7.0 * base.part_ms[2])
    np.testing.assert_allclose(cfg.part_ms[1], base.part_ms[1])
