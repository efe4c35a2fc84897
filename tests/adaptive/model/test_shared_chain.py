"""The shared-chain model: it reduces to the single-chain model, and its queues and drops add up."""

from __future__ import annotations

import numpy as np
import pytest

from adaptive.errors import PlanError
from adaptive.model.latency import Conditions, SplitModel
from adaptive.model.observation import candidate_plans
from adaptive.model.plans import PlanArray
from adaptive.model.profiles import resolve_device, resolve_model
from adaptive.model.shared_chain import SharedChain

CHAIN = ["raspberry-pi-4", "jetson-nano", "jetson-agx-orin"]


@pytest.fixture(scope="module")
def setup():
    profile = resolve_model("mobilenet_v2")
    devices = [resolve_device(d) for d in CHAIN]
    model = SplitModel(profile, devices)
    plans = candidate_plans(model, max_plans=32).plans
    return model, plans, SharedChain(profile, [devices[0]] * 4, devices[1:], plans)


def run(chain, plans, active, rate, bw, edge_load=0.0, accel_load=0.0, deadline=1e9, state=None):
    E, K = 1, chain.num_clients
    shape = (E, K)
    state = chain.initial_state(E) if state is None else state
    arr = lambda x, like=shape: np.broadcast_to(np.asarray(x, float), like)  # noqa: E731
    return chain.step(state, np.broadcast_to(plans, shape), np.broadcast_to(active, shape), arr(rate),
                      arr(bw), arr(edge_load), arr(accel_load, (E, chain.num_devices - 1)), 0.25, deadline)


def test_one_client_without_contention_is_the_single_chain_model(setup):
    model, plans, chain = setup
    rng = np.random.default_rng(1)
    one = np.array([True, False, False, False])
    for bw in [*rng.uniform(0.05, 800, 20), chain.grid[700]]:
        load = float(rng.uniform(0, 0.9))
        ref = model.evaluate(plans, Conditions(bandwidth_mbps=[bw, 1000.0], cpu_load=[load, 0.3, 0.1]))
        for p in range(len(plans)):
            _, out = run(chain, [p, 0, 0, 0], one, 1e-3, bw, load, [0.3, 0.1])
            assert out.service_ms[0, 0] == pytest.approx(ref.latency_ms[p], rel=1e-9)
            assert out.latency_ms[0, 0] == pytest.approx(ref.latency_ms[p], rel=1e-9)  # nothing queued
            assert out.energy_j[0, 0] == pytest.approx(ref.energy_j[p], rel=1e-9)


def test_link_delays_are_the_single_chain_model_propagation(setup):
    model, plans, _ = setup
    profile, devices = model.profile, model.devices
    delayed = SharedChain(profile, [devices[0]] * 4, devices[1:], plans, link_delay_ms=[2.5, 250.0])
    one = np.array([True, False, False, False])
    ref = model.evaluate(plans, Conditions(bandwidth_mbps=[12.0, 1000.0], propagation_ms=[2.5, 250.0]))
    for p in range(len(plans)):
        _, out = run(delayed, [p, 0, 0, 0], one, 1e-3, 12.0)
        assert out.service_ms[0, 0] == pytest.approx(ref.latency_ms[p], rel=1e-9)
    crosses_wan = (plans.splits[:, 1] < model.num_blocks) & (delayed.uses[:, 2])  # the tail runs on the Orin
    assert crosses_wan.any()
    with pytest.raises(PlanError, match="link_delay_ms must be 2 numbers"):
        SharedChain(profile, [devices[0]], devices[1:], plans, link_delay_ms=[1.0, 2.0, 3.0])


def test_clients_on_one_plan_batch_like_the_clients_count(setup):
    model, plans, chain = setup
    three = np.array([True, True, True, False])
    ref = model.evaluate(plans, Conditions(bandwidth_mbps=[20.0, 1000.0], cpu_load=0.1, clients=3))
    for p in range(len(plans)):
        _, out = run(chain, p, three, 1e-3, 20.0, 0.1, 0.1)
        assert out.service_ms[0, 0] == pytest.approx(ref.latency_ms[p], rel=1e-9)
        assert out.energy_j[0, 0] == pytest.approx(ref.energy_j[p], rel=1e-9)
        runs_there = chain.uses[p, 1:]
        assert out.batch[0].tolist() == [3.0 if u else 0.0 for u in runs_there]


def test_an_overloaded_edge_queues_the_excess_work(setup):
    _, _, chain = setup
    service = chain.exec_ms[0, 0, 0] + chain.proc_ms[0, 0, 0]  # device-only on the Pi, ms
    rate = 2.0 * 1e3 / service  # twice what the Pi can serve
    state, out = run(chain, 0, [True, False, False, False], rate, 10.0)
    frames = rate * 0.25
    assert state.edge_ms[0, 0] == pytest.approx(frames * service - 250.0)
    assert out.latency_ms[0, 0] == pytest.approx(service + state.edge_ms[0, 0] / 2)
    state, out = run(chain, 0, [True, False, False, False], rate, 10.0, state=state)
    assert state.edge_ms[0, 0] == pytest.approx(2 * (frames * service - 250.0))


def test_an_uplink_queue_drains_at_its_bandwidth(setup):
    _, _, chain = setup
    full = 1  # candidate 1 offloads the raw input
    bits = chain.uplink_bits[full]
    state, _ = run(chain, full, [True, False, False, False], 40.0, 5.0)  # 10 frames into 1.25 Mbit per step
    assert state.uplink_bits[0, 0] == pytest.approx(10 * bits - 5e6 * 0.25)
    state, out = run(chain, full, [True, False, False, False], 0.0, 5.0, state=state)  # nothing new
    assert state.uplink_bits[0, 0] == pytest.approx(max(10 * bits - 2 * 1.25e6, 0.0))
    assert out.offered[0, 0] == 0 and np.isnan(out.latency_ms[0, 0])


def test_a_link_between_accelerators_is_busy_for_its_transfer_not_its_propagation(setup):
    model, _, _ = setup
    profile, devices = model.profile, model.devices
    split = PlanArray(np.array([[3, 10]]), np.zeros((1, 2), np.int64))  # Pi, then Nano, then Orin
    wan = SharedChain(profile, [devices[0]] * 4, devices[1:], split, link_delay_ms=[0.0, 1000.0])
    nowan = SharedChain(profile, [devices[0]] * 4, devices[1:], split, link_delay_ms=[0.0, 0.0])
    p = 0
    assert wan._accel_hop[p, 0]  # it sends from the Nano to the Orin
    one = [True, False, False, False]
    # 8 frames a second: each keeps the 1000 Mbit/s link busy a few ms, and propagates 1 s on it
    state, out = run(wan, p, one, 8.0, 100.0)
    ref_state, ref = run(nowan, p, one, 8.0, 100.0)
    assert out.service_ms[0, 0] == pytest.approx(ref.service_ms[0, 0] + 2000.0)  # there and back
    assert np.all(state.link_ms == 0) and np.array_equal(state.link_ms, ref_state.link_ms)  # no queue
    assert out.latency_ms[0, 0] == pytest.approx(ref.latency_ms[0, 0] + 2000.0)


def test_frames_past_their_deadline_are_dropped_not_queued(setup):
    _, _, chain = setup
    active = np.array([True, True, False, False])
    state, out = run(chain, 1, active, 8.0, 2.0, deadline=500.0)  # full offload at 2 Mbit/s: > 2 s
    assert out.service_ms[0, 0] > 500.0
    assert not out.admitted[0].any()
    assert out.dropped[0].tolist() == [2.0, 2.0, 0.0, 0.0]  # every offered frame, counted once
    assert np.all(state.uplink_bits == 0) and np.all(np.isnan(out.latency_ms))
    _, out = run(chain, 0, active, 2.0, 2.0, deadline=500.0)  # device-only meets it
    assert out.admitted[0].tolist() == [True, True, False, False]
    assert np.all(out.dropped == 0)


def test_a_chain_needs_clients_and_accelerators(setup):
    model, plans, _ = setup
    with pytest.raises(PlanError, match="edge"):
        SharedChain(model.profile, [], model.devices[1:], plans)
    with pytest.raises(PlanError, match="accelerator"):
        SharedChain(model.profile, model.devices[:1], [], plans)


def test_parallel_sections_alone_are_the_single_chain_model(setup):
    """Sectioned plans: within 0.1% without background load (a grid interval holding the bandwidth where
    the schedule's critical path changes is interpolated across the kink); within 2% with it (overlap
    tabulated by edge load)."""
    model, _, _ = setup
    plans = candidate_plans(model, max_plans=32, parallel=True).plans
    assert plans.has_sections
    devices = model.devices
    chain = SharedChain(model.profile, [devices[0]] * 4, devices[1:], plans)
    rng = np.random.default_rng(2)
    one = np.array([True, False, False, False])
    for bw in rng.uniform(0.5, 200, 8):
        loaded = float(rng.uniform(0, 0.9))
        for edge_load, accel_load, rel in ((0.0, [0.0, 0.0], 1e-3), (loaded, [0.3, 0.1], 0.02)):
            ref = model.evaluate(plans, Conditions(bandwidth_mbps=[bw, 1000.0],
                                                   cpu_load=[edge_load, *accel_load]))
            alone = chain.alone_ms(np.full((1, 4), bw), np.full((1, 4), edge_load), np.array([accel_load]))
            np.testing.assert_allclose(alone[0, 0], ref.latency_ms, rtol=rel)
            for p in range(len(plans)):
                _, out = run(chain, [p, 0, 0, 0], one, 1e-3, bw, edge_load, accel_load)
                assert out.latency_ms[0, 0] == pytest.approx(ref.latency_ms[p], rel=rel)
