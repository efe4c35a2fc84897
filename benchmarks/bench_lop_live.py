"""Parallel sections live, across processes: the model's prediction against what requests take.

Three ``adaptive node --emulate`` processes (Raspberry Pi 4 -> Jetson Nano -> Jetson AGX Orin, with
monitors; the links between the accelerators are loopback, unshaped), MobileNetV2, the pi's uplink
pinned in turn at each ``--bandwidths`` rate by the cluster's emulation message. At each rate the
planner's best layer plan and best plan with a parallel section are sent, ``--requests`` requests
each, one at a time (each request carries its plan), from a client in this process. Prints each
plan's predicted latency (the shipped profiles, as the controller starts), the live median, and
the error of each.

Emulated devices pad their stages and parts to their profiles. This machine cannot pad down: it
runs MobileNetV2's tail 12-17x slower than the AGX Orin's profile, so the Orin node runs
``--orin-slowdown`` times slower than its profile (default 15, as ``intradp-lop``'s live block), and
the model and the planner price it so. ``--orin-slowdown 1`` compares against the profile as
shipped, which the host cannot keep up with.

Usage: python benchmarks/bench_lop_live.py [--bandwidths 4,10,20] [--requests 10] [--orin-slowdown 15]
           [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from adaptive.lab.cluster import Cluster, NodeSpec
from adaptive.model.latency import Conditions, SplitModel
from adaptive.model.planner import Planner
from adaptive.model.profiles import resolve_device, resolve_model, scaled_profiles
from adaptive.protocol.messages import Message, PlanMessage, plan_topic
from adaptive.runtime.client import InferenceClient

MODEL = "mobilenet_v2"
CHAIN = [("pi", "raspberry-pi-4"), ("jetson", "jetson-nano"), ("jetson2", "jetson-agx-orin")]


def _live_ms(client: InferenceClient, plan: PlanMessage, x: np.ndarray, n: int) -> tuple[float, int]:
    """Median latency of ``n`` requests on ``plan``, one at a time, and how many failed."""
    before = len(client.records)
    for _ in range(n):
        client.send(x, plan=plan)
        deadline = time.monotonic() + 30
        while client.outstanding() and time.monotonic() < deadline:
            time.sleep(0.005)
    records = client.records[before:]
    ok = [r.latency_ms for r in records if r.outcome == "ok"]
    return (statistics.median(ok) if ok else float("nan")), len(records) - len(ok)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bandwidths", default="4,10,20", help="uplink rates, Mbit/s")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--orin-slowdown", type=float, default=15.0,
                        help="the AGX Orin node and its model this many times slower than its profile")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rates = [float(b) for b in args.bandwidths.split(",")]
    scales = [1.0, 1.0, args.orin_slowdown]
    model = SplitModel(*scaled_profiles(resolve_model(MODEL), [resolve_device(d) for _, d in CHAIN], scales,
                                        [n for n, _ in CHAIN]))
    planner = Planner(model, parallel=True)
    # only the pi's uplink is shaped: the emulation message pins every shaped link
    nodes = [NodeSpec(n, d, CHAIN[i + 1][0] if i + 1 < len(CHAIN) else None,
                      extra=(*(("--uplink-mbps", str(rates[0])) if i == 0 else ()), "--slowdown", f"{k:g}"))
             for i, ((n, d), k) in enumerate(zip(CHAIN, scales, strict=True))]
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224)).astype(np.float32)
    rows = []
    with tempfile.TemporaryDirectory() as logs, \
            Cluster(MODEL, nodes, cluster="loplive", logs=Path(logs)) as lab:
        lab.start(120.0)
        L, devices = model.num_blocks, tuple(n for n, _ in CHAIN)
        default = PlanMessage(1, MODEL, devices, (L, L), time.time(), "bench", num_blocks=L)
        lab.control.publish(Message(plan_topic("loplive"), default.encode(), 1, True))  # for the client
        with InferenceClient("bench", lab.address, "loplive", x.shape, timeout_s=30) as client:
            for bw in rates:
                lab.emulate({"uplink_mbps": bw})
                time.sleep(1.0)
                cond = Conditions(bandwidth_mbps=[bw, 1000.0])
                for kind, result in (("layer", planner.best_layer(cond)), ("section", planner.best(cond))):
                    p = result.plan
                    msg = PlanMessage(1, MODEL, devices, p.splits, time.time(), "bench", None, p.codecs, L,
                                      section=p.section.wire if p.section else None)
                    _live_ms(client, msg, x, 2)  # warm-up: links open, first allocations
                    live, failed = _live_ms(client, msg, x, args.requests)
                    rows.append({"mbps": bw, "kind": kind, "plan": p.label,
                                 "predicted_ms": result.latency_ms, "live_ms": live, "failed": failed})
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{MODEL} on {' -> '.join(d for _, d in CHAIN)}, emulated node processes (the Orin "
          f"{args.orin_slowdown:g}x its profile, in the model too); median of {args.requests} requests")
    print(f"{'Mbit/s':>7}  {'kind':<8}{'plan':<24}{'model ms':>10}{'live ms':>9}{'error':>8}{'failed':>7}")
    for r in rows:
        err = r["live_ms"] / r["predicted_ms"] - 1
        print(f"{r['mbps']:>7g}  {r['kind']:<8}{r['plan']:<24}{r['predicted_ms']:>10.1f}{r['live_ms']:>9.1f}"
              f"{err:>8.1%}{r['failed']:>7}")
    for kind in ("layer", "section"):
        errors = [abs(r["live_ms"] / r["predicted_ms"] - 1) for r in rows if r["kind"] == kind]
        print(f"{kind} plans: MAPE {100 * statistics.mean(errors):.1f}% over {len(errors)} rates")


if __name__ == "__main__":
    main()
