"""The parts both controllers are built from, each on its own: no broker, no nodes."""

from __future__ import annotations

import dataclasses
import threading
import time

import numpy as np
import pytest

from adaptive.control.calibration import Calibration, RequestRates
from adaptive.control.channel import ControlChannel
from adaptive.control.loop import ControlLoop
from adaptive.errors import AdaptiveError
from adaptive.model.decision import GRID_MBPS, bandwidth_bins
from adaptive.model.latency import SplitModel
from adaptive.model.observation import candidate_plans
from adaptive.model.profiles import resolve_device, resolve_model
from adaptive.protocol.messages import Ack, StageTiming, StatsMessage
from adaptive.protocol.rules import RuleMessage, RulePlan
from monitor.transport import BrokerAddress

NOWHERE = BrokerAddress("127.0.0.1", 1)  # never started: nothing connects
MODEL = "resnet20_cifar"


@pytest.fixture(scope="module")
def model():
    return SplitModel(resolve_model(MODEL), [resolve_device("raspberry-pi-4"), resolve_device("jetson-nano")])


def stats(node, start, stop, exec_ms, batch=1, count=4, ts=None):
    return StatsMessage(node, ts or time.time(), (StageTiming(1, start, stop, batch, count, exec_ms),), ())


def test_calibration_converges_to_the_measured_ratio_and_asks_for_a_rebuild_once_it_drifts(model):
    L = model.num_blocks
    cal = Calibration({"pi": (model, 0), "jetson": (model, 1)}, weight=0.3)
    predicted = float(model.exec_base(1, np.array([0]), np.array([L]))[0])
    assert cal.update(stats("jetson", 0, L, 3 * predicted))  # 1 -> 1.6: far past the 2% drift
    cal.built()
    for _ in range(30):
        cal.update(stats("jetson", 0, L, 3 * predicted))
    assert cal.snapshot()["jetson"] == pytest.approx(3.0, rel=1e-3)
    assert cal.snapshot()["pi"] == 1.0  # nobody measured it
    cal.built()
    assert not cal.update(stats("jetson", 0, L, 3 * predicted))  # at its value: no rebuild
    assert not cal.update(stats("ghost", 0, L, 1.0))  # a node it does not know moves nothing
    assert not cal.update(stats("jetson", 0, 0, 5.0))  # an empty stage is too small to compare
    # blocks past the model's end (another model, or a forged report) teach nothing and raise nothing
    assert not cal.update(stats("jetson", 0, L + 7, 1e4)) and not cal.update(stats("pi", L + 1, L + 3, 1e4))
    assert cal.snapshot()["jetson"] == pytest.approx(3.0, rel=1e-3) and cal.snapshot()["pi"] == 1.0
    cal.adopt({"pi": 2.5, "ghost": 9.0, "jetson": -1})
    assert cal.snapshot() == pytest.approx({"pi": 2.5, "jetson": 3.0}, rel=1e-3)


def test_calibration_learns_from_a_sections_bands_on_both_sides():
    """A node's bands of a parallel section count as its compute, against the profile's part times."""
    chain = SplitModel(resolve_model("mobilenet_v2"),
                       [resolve_device(d) for d in ("raspberry-pi-4", "jetson-nano")])
    cfg = chain.section_costs.config(0, 5, 0.5, 2)
    edge_ms, accel_ms = float(cfg.edge_ms[0]), float(cfg.part_ms[1, :2].sum())
    assert edge_ms > 1.0 and accel_ms > 0.5
    cal = Calibration({"pi": (chain, 0), "jetson": (chain, 1)}, weight=1.0)

    def band(node, ms, section=(5, 0.5, 2)):
        return StatsMessage(node, time.time(), (StageTiming(1, 0, section[0], 1, 3, ms, section),), ())

    cal.update(band("pi", 2.0 * edge_ms))
    cal.update(band("jetson", 4.0 * accel_ms))
    assert cal.snapshot() == pytest.approx({"pi": 2.0, "jetson": 4.0})
    L = chain.num_blocks
    assert not cal.update(band("pi", 1.0, section=(L, 0.5, 2)))  # the classifier is no section: ignored
    assert cal.snapshot()["pi"] == pytest.approx(2.0)
    # a source that reports its stage and then its band started one request, not two
    rates = RequestRates(["pi"])
    both = StatsMessage("pi", 100.0, (StageTiming(1, 0, 2, 1, 4, 3.0),
                                      StageTiming(1, 2, 5, 1, 4, 2.0, (5, 0.5, 1))))
    rates.update(both)
    assert rates.rate("pi", now=100.5) == pytest.approx(4.0)


def test_request_rates_follow_the_sources_and_go_stale():
    rates = RequestRates(["pi"], stale_s=3.0)
    rates.update(stats("pi", 0, 3, 1.0, count=5, ts=100.0))
    rates.update(stats("jetson", 0, 3, 1.0, count=50, ts=100.0))  # not a source: ignored
    assert rates.rate("pi", now=101.0) == pytest.approx(5.0)
    assert rates.rate("jetson", now=101.0) == 0.0
    assert rates.rate("pi", now=104.0) == 0.0


def test_the_channel_starts_an_epoch_past_any_left_on_the_broker_and_routes_only_its_own_acks():
    acks, seen = [], []
    ch = ControlChannel(NOWHERE, "c", on_ack=acks.append, on_stats=seen.append)
    later = ch.epoch + 5_000  # an earlier controller whose clock ran 5 s ahead of ours
    rule = RuleMessage(41, "pi", MODEL, ("pi", "jetson"), 11, 1.0, "table", (), (RulePlan((3,), ()),),
                       epoch=later)
    ch.handle("adaptive/c/node/pi/rule", rule.encode())  # its retained rule
    assert ch.epoch == later + 1 and ch.next_version() == 1
    forged = RuleMessage(1, "pi", MODEL, ("pi", "jetson"), 11, 1.0, "table", (), (RulePlan((3,), ()),),
                         epoch=int(time.time() * 1e3) + 10**12)  # from 30 years ahead: not learned
    ch.handle("adaptive/c/node/pi/rule", forged.encode())
    assert ch.epoch == later + 1
    ch.handle("adaptive/c/node/pi/ack", Ack("jetson", 1, True, 1.0, epoch=ch.epoch).encode())  # another's
    ch.handle("adaptive/c/node/pi/ack", b"\xff not json")
    ch.handle("adaptive/c/node/pi/ack", Ack("pi", 1, True, 1.0, epoch=later).encode())  # for the earlier one
    ch.handle("adaptive/c/node/pi/stats", stats("jetson", 0, 1, 1.0).encode())
    assert acks == [] and seen == []
    ch.handle("adaptive/c/node/pi/ack", Ack("pi", 1, True, 1.0, epoch=ch.epoch).encode())
    assert [a.version for a in acks] == [1]


def test_the_channel_stamps_signs_and_puts_its_own_back_over_a_foreign_message(tmp_path):
    from adaptive.runtime.signing import Signer, Verifier, generate_signing_key

    secret = generate_signing_key(tmp_path, "controller")
    ch = ControlChannel(NOWHERE, "c", on_ack=lambda a: None, on_stats=lambda s: None, signer=Signer(secret))
    sent = []
    ch.transport.publish = sent.append  # what the channel hands to the broker session
    rule = ch.publish_rule(RuleMessage(ch.next_version(), "pi", MODEL, ("pi", "j"), 11, 1.0, "t", (),
                                       (RulePlan((3,), ()),)))
    assert rule.epoch == ch.epoch and len(sent) == 1
    body = Verifier(tmp_path / "controller.ed25519.pub").open(sent[0].topic, sent[0].payload)
    assert RuleMessage.decode(body) == rule
    ch.handle(sent[0].topic, sent[0].payload)  # the broker echoes ours: nothing to do
    assert ch.foreign == 0 and len(sent) == 1
    pinned = dataclasses.replace(rule, version=10**9)
    ch.handle(sent[0].topic, pinned.encode())  # someone else's on our topic: ours goes back, once per 5 s
    ch.handle(sent[0].topic, pinned.encode())
    assert ch.foreign == 2 and [m.payload for m in sent] == [sent[0].payload] * 2


def test_wait_rules_returns_the_sources_still_behind():
    ch = ControlChannel(NOWHERE, "c", on_ack=lambda a: None, on_stats=lambda s: None)
    plans = (RulePlan((3,), ()),)
    for source in ("pi1", "pi2"):
        ch.publish_rule(RuleMessage(ch.next_version(), source, MODEL, (source, "j"), 11, 1.0, "t", (), plans))
    assert ch.wait_rules(0.05) == ["pi1", "pi2"]
    # an ack from another thread (the transport's) while the caller waits
    threading.Timer(0.05, ch.handle, ("adaptive/c/node/pi1/ack", Ack("pi1", 1, True, 1.0).encode())).start()
    assert ch.wait_rules(0.5) == ["pi2"]
    ch.handle("adaptive/c/node/pi2/ack", Ack("pi2", 1, True, 1.0).encode())  # an older version: still behind
    assert ch.wait_rules(0.01) == ["pi2"]
    ch.handle("adaptive/c/node/pi2/ack", Ack("pi2", 2, True, 1.0).encode())
    assert ch.wait_rules(2.0) == []
    assert [r.source for r in ch.rules] == ["pi1", "pi2"]


def test_bandwidth_bins_are_the_runs_of_equal_choices(model):
    rng = np.random.default_rng(0)
    choice = np.repeat(rng.integers(0, 5, 12), rng.integers(1, 15, 12))[: len(GRID_MBPS)]
    grid = GRID_MBPS[: len(choice)]
    bins = bandwidth_bins(grid, choice)
    # looking every grid point up in the bins gives back its choice
    looked_up = np.asarray(bins.actions)[np.searchsorted(bins.edges_mbps, grid, side="right")]
    assert np.array_equal(looked_up, choice)
    assert all(a != b for a, b in zip(bins.actions, bins.actions[1:], strict=False))
    assert all(choice[m] == a for m, a in zip(bins.mids, bins.actions, strict=True))


def test_candidates_avoiding_a_dead_node_give_it_no_blocks(model):
    cands = candidate_plans(model)
    ok = cands.avoiding([1], model.num_blocks)
    splits = cands.plans.splits[:, 0]
    assert np.array_equal(ok, splits == model.num_blocks)  # only device-only plans keep the jetson idle
    assert cands.avoiding([0], model.num_blocks).all()  # the input's node is never avoided


def test_the_loop_ticks_on_schedule_survives_a_refused_decision_and_stops():
    ticks = []

    def tick():
        ticks.append(time.monotonic())
        if len(ticks) == 2:
            raise AdaptiveError("no decision now")

    loop = ControlLoop(tick, 0.02)
    loop.start()
    time.sleep(0.2)
    loop.close()
    n = len(ticks)
    assert n >= 4 and loop.closed and not loop.running
    time.sleep(0.05)
    assert len(ticks) == n


def test_collector_uplink_prefers_passive_estimates_and_ages_them():
    from adaptive.control.telemetry import Collector, NodeView
    from adaptive.protocol.messages import LinkEstimate, Telemetry

    def view(link):
        t = Telemetry(node="pi", ts=100.0, seq=1, cpu_percent=0.0, per_core=(), load1=0.0, total_mb=1.0,
                      available_mb=1.0, mem_percent=0.0, tx_bps=0.0, rx_bps=0.0, links={"j": link})
        return NodeView("pi", telemetry=t)

    assert Collector.uplink(view(LinkEstimate(20.0, 1.0, 98.0, 5.0)), "j", 101.0) == (5.0, 1.0)
    assert Collector.uplink(view(LinkEstimate(20.0, 1.0, 98.0, None)), "j", 101.0) == (20.0, 3.0)
    assert Collector.uplink(view(LinkEstimate(None, None, None, None)), "j", 101.0) == (None, None)
    assert Collector.uplink(None, "j", 101.0) == (None, None)
