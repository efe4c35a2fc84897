"""Cost of one source-side decision: the policy rule (the PPO actor in numpy) and the table rule.

The source node decides every request's plan itself (``adaptive.runtime.source``). This times what
it does per request, in one process, side by side, median of ``--repeats`` runs of ``--n``
decisions: for a ``policy`` rule, completing the observation (uplink history, interpolated
predictions, plan in force, dwell), the mask and the actor's forward pass; for a ``table`` rule,
the bin lookup. The rules are built as the controller builds them, for the shipped PPO policy on
its chain. The decisions alternate between two uplink estimates so that the history moves.

The target is a per-request cost of at most 1 ms on the Raspberry Pi 4 profile's CPU. This machine
is not a Pi, so its time is scaled by how much slower the shipped profiles say a Pi 4 is than this
machine (``xeon-vm``) on the same model (MobileNetV2: the sum of per-layer latencies): a stand-in
for the Pi's CPU, and a conservative one for interpreted Python, which the Pi runs relatively faster
than vectorised convolutions.

Usage: python benchmarks/bench_source_decision.py [--n 20000] [--repeats 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from importlib import resources
from pathlib import Path

import numpy as np

from adaptive.model.decision import actor_rule, decision_table, grid_choices
from adaptive.model.latency import ConditionBatch, SplitModel
from adaptive.model.profiles import resolve_device, resolve_model
from adaptive.protocol.rules import RuleMessage, RulePlan
from adaptive.runtime.source import ActorRunner
from agents.ppo import load_actor

DEVICES = ("pi", "jetson", "jetson2")


def rules() -> tuple[RuleMessage, RuleMessage]:
    net, spec = load_actor(Path(str(resources.files("agents.trained").joinpath("ppo_default.zip"))))
    model = SplitModel(resolve_model(spec.model_profile), [resolve_device(d) for d in spec.devices])
    cands, obs_spec = spec.candidates(), spec.observation
    D, P = obs_spec.num_devices, obs_spec.num_plans
    mem = np.array([d.memory_mb for d in model.devices])
    cond = ConditionBatch(np.array([[8.0, 1000.0]]), np.zeros((1, D - 1)), np.full((1, D), 0.1), np.ones(1),
                          mem[None] * 0.6)
    allowed = np.ones(P, bool)
    pred, ok = grid_choices(model, cands, cond, allowed)
    latency = np.where(pred.feasible, pred.latency_ms, np.inf)
    rows = tuple(RulePlan(p.splits, p.codecs, section=p.section.wire if p.section else None)
                 for p in (cands.plan(a) for a in range(P)))
    actor = actor_rule(latency, ok, obs_spec, np.zeros(obs_spec.size), net.step_s or 0.25, net.to_json())
    policy = RuleMessage(1, "pi", "mobilenet_v2", DEVICES, model.num_blocks, 0.0, "ppo", (), rows, "policy",
                         actor)
    table = decision_table(model, cands, cond, allowed)
    bins = tuple(RulePlan(p.splits, p.codecs, section=p.section.wire if p.section else None)
                 for p in (cands.plan(a) for a in table.actions))
    table_rule = RuleMessage(2, "pi", "mobilenet_v2", DEVICES, model.num_blocks, 0.0, "greedy",
                             tuple(table.edges_mbps), bins)
    return RuleMessage.decode(policy.encode()), table_rule


def time_policy(rule: RuleMessage, n: int) -> float:
    runner = ActorRunner(rule)
    alive = lambda node: True  # noqa: E731
    now = time.time()
    t0 = time.perf_counter()
    for i in range(n):
        runner.decide(now + i * 0.1, 4.0 if i % 8 < 4 else 20.0, alive)
        rule.plan(runner.current)
    return (time.perf_counter() - t0) / n


def time_table(rule: RuleMessage, n: int) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        rule.plan(rule.index(4.0 if i % 8 < 4 else 20.0))
    return (time.perf_counter() - t0) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    policy, table = rules()
    runs = [(time_policy(policy, args.n), time_table(table, args.n)) for _ in range(args.repeats)]
    actor_s = statistics.median(r[0] for r in runs)
    table_s = statistics.median(r[1] for r in runs)
    profile = resolve_model("mobilenet_v2")
    scale = float(np.sum(profile.latency_ms["raspberry-pi-4"]) / np.sum(profile.latency_ms["xeon-vm"]))
    result = {"policy_rule_us": actor_s * 1e6, "table_rule_us": table_s * 1e6, "pi4_scale": scale,
              "policy_rule_pi4_ms": actor_s * scale * 1e3, "table_rule_pi4_ms": table_s * scale * 1e3,
              "policy_rule_bytes": len(policy.encode()), "n": args.n, "repeats": args.repeats}
    if args.json:
        print(json.dumps(result, indent=1))
        return
    print(f"per-request decision at the source, median of {args.repeats} x {args.n:,}; "
          f"Pi 4 = this machine x {scale:.1f} (profiles)")
    print(f"  policy rule (PPO actor, {result['policy_rule_bytes'] / 1e3:.0f} kB message)"
          f"   {actor_s * 1e6:7.1f} us here   {actor_s * scale * 1e3:6.3f} ms on a Pi 4 (target <= 1 ms)")
    print(f"  table rule                                 {table_s * 1e6:7.1f} us here   "
          f"{table_s * scale * 1e3:6.3f} ms on a Pi 4")


if __name__ == "__main__":
    main()
