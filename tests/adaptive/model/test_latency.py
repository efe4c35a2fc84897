"""The latency and energy model against values worked out by hand (fixtures in conftest.py).

Every expected number below is derived in the comment above it from the fixture coefficients,
so a reader can check it without running anything.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from adaptive.errors import PlanError
from adaptive.model.latency import Conditions, SplitModel
from adaptive.model.planner import Planner
from adaptive.model.plans import Plan, PlanArray


def one(model, splits, cond, codecs=()):
    return Planner(model).evaluate(Plan(tuple(splits), tuple(codecs)), cond)


def test_eq1_to_eq10_single_split_at_reference_bandwidth(toy, edge, accel):
    m = SplitModel(toy, [edge, accel], return_result=False)
    p = one(m, [2], Conditions(bandwidth_mbps=1000))
    # Eq. 1, edge runs b0,b1: 1 + 2 - (0.1*2 + 0.05) = 2.75
    # Eq. 2, accel runs b2,b3 (no codec layers): 0.5 + 0.5 - (0.02*2 + 0.01) = 0.95
    np.testing.assert_allclose(p.exec_ms[0], [2.75, 0.95])
    # Eq. 4, 50 KB into accel: 0.008*50 - 0.4 + 2.0 = 2.0
    np.testing.assert_allclose(p.comm_ms[0], [0.0, 2.0])
    # Eq. 6 edge out: 0.002*50 + 0.3 = 0.4
    # Eq. 7 accel in: 0.0001*50 + 0.5 = 0.505; accel out result: 0.0003*0.4 + 0.1 = 0.10012
    np.testing.assert_allclose(p.proc_ms[0], [0.4, 0.60512])
    # Eq. 9: sum of all of the above
    assert p.latency_ms[0] == pytest.approx(6.70512)
    # Eq. 10: (2.75 + 0.4)*5 + (0.95 + 0.60512 + 2.0)*20 = 86.8524 mJ
    assert p.energy_j[0] == pytest.approx(0.0868524)
    # naive: per-layer sums 3 + 1 plus 50 KB at 1000 Mbit/s = 0.4 ms
    assert p.naive_latency_ms[0] == pytest.approx(4.4)


def test_bandwidth_moves_the_wire_time_plus_propagation(toy, edge, accel):
    m = SplitModel(toy, [edge, accel], return_result=False)
    p = one(m, [2], Conditions(bandwidth_mbps=100, propagation_ms=3.0))
    # Q0' = 0.008 + 8/100 - 8/1000 = 0.08 ms/KB -> 4.0 ms for 50 KB; Q1 = -0.4
    # first packet: T_FP 2.0 (its serialisation is in Q0'); propagation 3.0
    assert p.comm_ms[0, 1] == pytest.approx(4.0 - 0.4 + 2.0 + 3.0)


def test_only_the_wire_time_scales_with_bandwidth(toy, edge, accel):
    """A Q0 above the wire time at B_ref keeps that host cost per KB; it is not multiplied by B_ref / B."""
    slow_host = dataclasses.replace(accel, link=dataclasses.replace(accel.link, per_kb_ms=0.010))
    m = SplitModel(toy, [edge, slow_host], return_result=False)
    # at 2 Mbit/s: Q0' = 0.010 + 4 - 0.008 = 4.002 ms/KB (not 0.010 * 500 = 5.0) -> 200.1 ms for 50 KB
    p = one(m, [2], Conditions(bandwidth_mbps=2))
    assert p.comm_ms[0, 1] == pytest.approx(4.002 * 50 - 0.4 + 2.0)


def test_result_returns_to_first_device(toy, edge, accel):
    m = SplitModel(toy, [edge, accel], return_result=True)
    p = one(m, [2], Conditions(bandwidth_mbps=1000))
    # back to edge, receiver edge: 0.01*0.4 - 0.5 + T_FP 1.0 = 0.504; edge in: 0.001*0.4 + 0.2 = 0.2004
    assert p.comm_ms[0, 0] == pytest.approx(0.504)
    assert p.proc_ms[0, 0] == pytest.approx(0.4 + 0.2004)
    assert p.latency_ms[0] == pytest.approx(6.70512 + 0.504 + 0.2004)
    # at 0.4 Mbit/s a full packet would take 30 ms; the result's 400 bytes take 8:
    # Q0' = 0.01 + 8/0.4 - 8/1000 = 20.002 ms/KB -> 8.0008 ms; Q1 -0.5; T_FP 1.0
    slow = one(m, [2], Conditions(bandwidth_mbps=0.4))
    assert slow.comm_ms[0, 0] == pytest.approx(8.0008 - 0.5 + 1.0)


def test_multi_hop_pipelining_when_a_device_is_skipped(toy, edge, accel, accel2):
    m = SplitModel(toy, [edge, accel, accel2], return_result=False)
    p = one(m, [1, 1], Conditions(bandwidth_mbps=100))
    # 100 KB from edge to accel2 through accel, both links 100 Mbit/s, fragment 1500 B:
    # hop into accel:  Q0' = 0.08, frag = 0.12, bulk = 8 - 0.4 - 0.12 = 7.48, fixed = T_FP 2.0
    # hop into accel2: same bulk 7.48, fixed = 1.5
    # pipelined = max(bulk) + sum(frag + fixed) = 7.48 + (0.12 + 2.0) + (0.12 + 1.5) = 11.22
    # hop by hop = (8 - 0.4 + 2.0) + (8 - 0.4 + 1.5) = 18.7 -> take the smaller
    assert p.comm_ms[0, 2] == pytest.approx(11.22)
    assert p.comm_ms[0, 1] == 0.0
    # the skipped device neither computes nor moves data
    assert p.exec_ms[0, 1] == 0.0 and p.proc_ms[0, 1] == 0.0


def test_multi_hop_never_slower_than_store_and_forward(toy, edge, accel, accel2):
    m = SplitModel(toy, [edge, accel, accel2], return_result=False)
    p = one(m, [2, 2], Conditions(bandwidth_mbps=[100, 1000]))
    # 50 KB; hop 1 (100 Mbit/s): 4.0 - 0.4 + 2.0 = 5.6; hop 2 (1000): 0.4 - 0.4 + 1.5 = 1.5
    # pipelined: bulk max(3.48, -0.012) + (0.12 + 2.0) + (0.012 + 1.5) = 7.112 > 7.1
    assert p.comm_ms[0, 2] == pytest.approx(7.1)


def test_eq2_codec_layers_enter_the_correction(toy, edge, accel, accel2):
    m = SplitModel(toy, [edge, accel, accel2], return_result=False)
    p = one(m, [1, 2], Conditions(bandwidth_mbps=1000), codecs=("ae", "ae"))
    # accel runs b1 with a decoder (input 100 KB) and an encoder (output 50 KB), Eq. 2:
    # dec 0.004*100 + 0.2 = 0.6; enc 0.004*50 + 0.2 = 0.4
    # 0.6 + 0.5 + 0.4 - (0.02*(1 + 2) + 0.01) = 1.43
    assert p.exec_ms[0, 1] == pytest.approx(1.43)
    # edge runs b0 and the encoder, Eq. 1 counts only the s1 = 1 layer:
    # 1.0 + 0.6 - (0.1*1 + 0.05) = 1.45
    assert p.exec_ms[0, 0] == pytest.approx(1.45)
    # compressed size on the wire: 100 KB * 0.1 = 10 KB -> 0.008*10 - 0.4 + 2.0 = 1.68
    assert p.comm_ms[0, 1] == pytest.approx(1.68)


def test_background_load_and_batching(toy, edge, accel):
    m = SplitModel(toy, [edge, accel], return_result=False)
    p = one(m, [2], Conditions(bandwidth_mbps=1000, cpu_load=[0.5, 0.5], clients=3))
    # edge: kappa = 1 (cpu) -> 2.75 / (1 - 0.5) = 5.5
    # accel: kappa = 0.5 -> /(1 - 0.25); batching 1 + 0.25*(3 - 1) = 1.5 -> 0.95*4/3*1.5 = 1.9
    np.testing.assert_allclose(p.exec_ms[0], [5.5, 1.9])
    # energy: the batched execution is shared by the 3 requests
    expected_mj = (5.5 + 0.4) * 5 + (1.9 / 3 + 0.60512 + 2.0) * 20
    assert p.energy_j[0] == pytest.approx(expected_mj / 1e3)


def test_memory_feasibility(toy, edge, accel):
    m = SplitModel(toy, [edge, accel])
    # accel runs b2,b3: params 7 MB + 2 * 1 * max(50, 20, 0.4) KB = 7.1 MB
    ok = one(m, [2], Conditions(bandwidth_mbps=1000, available_mb=[100, 7.1]))
    bad = one(m, [2], Conditions(bandwidth_mbps=1000, available_mb=[100, 7.0]))
    assert ok.memory_mb[0, 1] == pytest.approx(7.1)
    assert ok.feasible[0] and not bad.feasible[0]


def test_empty_stage_costs_nothing_even_with_a_negative_correction(toy_doc, edge, accel):
    from adaptive.model.profiles import model_from_dict

    toy_doc["correction"]["edge"] = {"c0_ms": 0.0, "c1_ms": -5.0}  # would add 5 ms if applied
    m = SplitModel(model_from_dict(toy_doc), [edge, accel], return_result=False)
    p = one(m, [0], Conditions(bandwidth_mbps=1000))
    assert p.exec_ms[0, 0] == 0.0
    # the input (12 KB) still leaves the edge: 0.002*12 + 0.3 = 0.324
    assert p.proc_ms[0, 0] == pytest.approx(0.324)


def test_device_only_has_no_communication(toy, edge, accel):
    m = SplitModel(toy, [edge, accel])
    p = one(m, [4], Conditions(bandwidth_mbps=1))
    # 10 - (0.1*4 + 0.05) = 9.55 and nothing else
    assert p.latency_ms[0] == pytest.approx(9.55)
    assert not p.comm_ms.any() and not p.proc_ms.any()


def test_batched_conditions_match_single_evaluations(toy, edge, accel, accel2):
    from adaptive.model.latency import ConditionBatch

    m = SplitModel(toy, [edge, accel, accel2])
    plans = Planner(m).all_plans()
    bws = [[5.0, 50.0], [100.0, 1.0], [1000.0, 1000.0]]
    batch = ConditionBatch(
        bandwidth_mbps=np.array(bws), propagation_ms=np.zeros((3, 2)),
        cpu_load=np.array([[0.0, 0.1, 0.2], [0.5, 0.0, 0.9], [1.0, 1.0, 1.0]]),
        clients=np.array([1.0, 2.0, 4.0]), available_mb=np.full((3, 3), 1e6))
    out = m.evaluate(plans, batch)
    for i in range(3):
        single = m.evaluate(plans, Conditions(bws[i], cpu_load=batch.cpu_load[i].tolist(),
                                              clients=int(batch.clients[i]), available_mb=[1e6] * 3))
        np.testing.assert_allclose(out.latency_ms[i], single.latency_ms)
        np.testing.assert_allclose(out.energy_j[i], single.energy_j)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"bandwidth_mbps": 0.0}, "bandwidth"),
        ({"bandwidth_mbps": float("nan")}, "bandwidth"),
        ({"bandwidth_mbps": [1.0, 2.0, 3.0]}, "expected 1 or 2 values"),
        ({"bandwidth_mbps": 1.0, "cpu_load": 1.5}, "CPU load"),
        ({"bandwidth_mbps": 1.0, "clients": 0}, "clients"),
        ({"bandwidth_mbps": 1.0, "propagation_ms": -1.0}, "propagation"),
    ],
)
def test_bad_conditions_are_rejected(toy, edge, accel, accel2, kwargs, message):
    m = SplitModel(toy, [edge, accel, accel2])
    with pytest.raises(PlanError, match=message):
        m.evaluate(PlanArray.from_splits([[1, 2]]), Conditions(**kwargs))


def test_bad_plans_are_rejected(toy, edge, accel):
    m = SplitModel(toy, [edge, accel])
    with pytest.raises(PlanError, match=r"0\.\.4"):
        m.evaluate(PlanArray.from_splits([[5]]), Conditions(1.0))
    with pytest.raises(PlanError, match="expected 1 split"):
        m.evaluate(PlanArray.from_splits([[1, 2]]), Conditions(1.0))
    with pytest.raises(PlanError, match="not available"):
        # the 'ae' codec (index 2) is only available at split positions 1 and 2
        m.evaluate(PlanArray(np.array([[3]]), np.array([[2]])), Conditions(1.0))


def test_missing_device_latency_is_a_clear_error(toy, edge):
    from adaptive.errors import ProfileError
    from adaptive.model.profiles import DeviceProfile

    other = DeviceProfile(**{**edge.__dict__, "name": "pi"})
    with pytest.raises(ProfileError, match="no per-block latency for device 'pi'"):
        SplitModel(toy, [other])
