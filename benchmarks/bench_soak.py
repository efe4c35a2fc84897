"""Soak: the live system for a long run, with plan switches every few seconds and node kills.

Processes, all real: an MQTT broker (Mosquitto if installed, else the embedded one), three node
runtimes with in-process monitors (``pi`` emulating a Raspberry Pi 4 with an emulated uplink,
``jetson`` and ``jetson2``), the controller (greedy policy) and an open-loop client writing its
records to disk, with two-level control: the controller publishes a table rule and the ``pi`` picks
each request's plan from it. Every ``--switch-every`` seconds the pi's uplink flips between
``--low`` and ``--high`` Mbit/s, so the split moves; every ``--kill-every`` seconds the accelerator
that ran most of the latest requests is killed with SIGKILL and started again.

It reports lost requests (anything not answered ``ok``, and anything sent but not on disk), the RSS
growth of every process from the end of its warm-up to the end of its life, and p99 latency per
window. Usage:

    python benchmarks/bench_soak.py [--minutes 30] [--kill-every 300] [--rate 5] [--out runs/soak]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import psutil

from adaptive.lab.cluster import Cluster, NodeSpec

CLUSTER, MODEL = "soak", "resnet20_cifar"
CHAIN = [("pi", "raspberry-pi-4"), ("jetson", "jetson-nano"), ("jetson2", "jetson-agx-orin")]


class Proc:
    """A process and its RSS samples (one incarnation)."""

    def __init__(self, name: str, popen: subprocess.Popen) -> None:
        self.name, self.popen, self.started = name, popen, time.monotonic()
        self.samples: list[tuple[float, float]] = []  # (seconds since start, RSS MB)

    def sample(self) -> None:
        """Record the current RSS."""
        try:
            rss = psutil.Process(self.popen.pid).memory_info().rss / 2**20
        except psutil.Error:
            return
        self.samples.append((time.monotonic() - self.started, rss))

    def growth(self, warmup_s: float) -> tuple[float, float, float] | None:
        """(RSS at the end of warm-up, at the end, growth %), None if it did not outlive its warm-up."""
        later = [(t, r) for t, r in self.samples if t >= warmup_s]
        if len(later) < 2:
            return None
        base, end = later[0][1], later[-1][1]
        return base, end, 100 * (end / base - 1)


def busiest_accelerator(records: Path) -> str | None:
    """The accelerator that ran the most of the last 20 requests on disk (the source picks the plans)."""
    with records.open() as f:
        last = list(csv.DictReader(f))[-20:]
    counts = Counter(h.split(":")[0] for r in last for h in r["hops"].split() if not h.startswith("pi:"))
    return counts.most_common(1)[0][0] if counts else None


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--kill-every", type=float, default=300.0, help="seconds between node kills")
    ap.add_argument("--switch-every", type=float, default=4.0, help="seconds between uplink flips")
    ap.add_argument("--low", type=float, default=2.0)
    ap.add_argument("--high", type=float, default=50.0)
    ap.add_argument("--rate", type=float, default=5.0, help="requests per second")
    ap.add_argument("--warmup", type=float, default=60.0, help="seconds before RSS growth is measured")
    ap.add_argument("--window", type=float, default=300.0, help="seconds per p99 window")
    ap.add_argument("--out", default="runs/soak")
    return ap.parse_args()


def start(args: argparse.Namespace, out: Path,
          duration: float) -> tuple[Cluster, dict[str, Proc], list[Proc]]:
    """The cluster, then the controller and the client as processes of it."""
    nodes = [NodeSpec(name, device, CHAIN[i + 1][0] if i + 1 < len(CHAIN) else None,
                      extra=("--uplink-mbps", str(args.high) if i == 0 else "1000"))
             for i, (name, device) in enumerate(CHAIN)]
    lab = Cluster(MODEL, nodes, cluster=CLUSTER, logs=out, signing=True,
                  broker="mosquitto" if shutil.which("mosquitto") else "embedded").start(120.0)
    config = out / "controller.yaml"
    config.write_text(
        f"model_profile: {MODEL}\ncluster: {CLUSTER}\ninterval_s: 0.5\nmin_dwell_s: 1\nsource_rule: true\n"
        "chain:\n" + "".join(f"  - {{node: {n}, device: {d}}}\n" for n, d in CHAIN)
    )
    lab.spawn("controller", lab.controller_args(config, "greedy"))  # it signs; the nodes take only that
    lab.spawn("client", [sys.executable, "-m", "adaptive", "client", "--broker", lab.url, "--cluster",
                         CLUSTER, "--model", MODEL, "--rate", str(args.rate), "--duration", str(duration),
                         "--out", str(out / "requests.csv"), "--timeout", "20", "--wait", "180"])
    live = {name: Proc(name, p) for name, p in lab.processes.items()}
    if lab.broker_process is not None:
        live["broker"] = Proc("broker", lab.broker_process)
    return lab, live, list(live.values())


def soak(args: argparse.Namespace, lab: Cluster, live: dict[str, Proc], procs: list[Proc],
         records: Path, duration: float) -> list[tuple[float, str]]:
    """Flip the uplink, kill and restart the busiest accelerator, sample RSS, until the client is done."""
    client = live["client"]
    while not records.exists() or records.stat().st_size < 200:  # serving
        if client.popen.poll() is not None:
            raise SystemExit(f"client exited early; see {records.parent}/client.log")
        time.sleep(0.5)
    t0 = time.monotonic()
    kills: list[tuple[float, str]] = []
    next_switch, next_kill, next_sample, high = t0, t0 + args.kill_every, t0, True
    print(f"soak: {args.minutes:g} min, uplink {args.low:g}<->{args.high:g} Mbit/s "
          f"every {args.switch_every:g} s, a kill every {args.kill_every:g} s; logs in {records.parent}",
          flush=True)
    while client.popen.poll() is None:
        now = time.monotonic()
        if now >= next_switch:
            high = not high
            lab.emulate({"uplink_mbps": args.high if high else args.low})
            next_switch += args.switch_every
        if now >= next_kill and now - t0 < duration - 30:
            victim = busiest_accelerator(records) or "jetson"
            lab.kill(victim)
            kills.append((now - t0, victim))
            print(f"  {now - t0:7.0f} s: killed {victim}, restarting", flush=True)
            live[victim] = Proc(victim, lab.spawn_node(victim))
            procs.append(live[victim])
            next_kill += args.kill_every
        if now >= next_sample:
            for p in live.values():
                p.sample()
            next_sample += 5.0
        time.sleep(0.1)
    return kills


def report(args: argparse.Namespace, out: Path, procs: list[Proc], kills: list[tuple[float, str]],
           duration: float) -> dict:
    """Lost requests, p99 per window and RSS growth per process, from the records on disk."""
    with (out / "requests.csv").open() as f:
        rows = list(csv.DictReader(f))
    summary_line = (out / "client.log").read_text().strip().splitlines()[-1]
    sent = int(summary_line.split()[0]) if summary_line.split()[0].isdigit() else None
    ok = [r for r in rows if r["outcome"] == "ok"]
    lost = len(rows) - len(ok) + ((sent - len(rows)) if sent is not None else 0)
    start = min(float(r["sent_at"]) for r in rows)
    windows = []
    for w in range(int(np.ceil(duration / args.window))):
        lo, hi = w * args.window, (w + 1) * args.window
        lat = [float(r["latency_ms"]) for r in ok if lo <= float(r["sent_at"]) - start < hi]
        if lat:
            windows.append({"window": w, "from_s": w * args.window, "requests": len(lat),
                            "median_ms": round(float(np.median(lat)), 1),
                            "p99_ms": round(float(np.percentile(lat, 99)), 1)})
    memory = []
    for p in procs:
        g = p.growth(args.warmup)
        if g is not None:
            memory.append({"process": p.name, "lived_s": round(p.samples[-1][0]),
                           "rss_after_warmup_mb": round(g[0], 1), "rss_end_mb": round(g[1], 1),
                           "growth_pct": round(g[2], 2)})
    return {
        "minutes": args.minutes, "rate_hz": args.rate, "requests": len(rows), "sent": sent, "lost": lost,
        "retried": sum(int(r["retries"]) > 0 for r in rows), "kills": kills,
        "plan_versions": len({r["version"] for r in rows}), "windows": windows, "memory": memory,
        "max_rss_growth_pct": max(m["growth_pct"] for m in memory) if memory else None,
    }


def main() -> int:
    args = parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    duration = args.minutes * 60
    lab, live, procs = start(args, out, duration)
    try:
        kills = soak(args, lab, live, procs, out / "requests.csv", duration)
    finally:
        lab.close()
    result = report(args, out, procs, kills, duration)
    (out / "soak.json").write_text(json.dumps(result, indent=1))
    print(f"\n{result['requests']} requests on disk ({result['sent']} sent), lost {result['lost']}, "
          f"retried {result['retried']}, {result['plan_versions']} plan versions, {len(kills)} kills")
    print(f"{'window':>8}{'requests':>10}{'median ms':>11}{'p99 ms':>9}")
    for w in result["windows"]:
        print(f"{w['from_s'] / 60:>6.1f}m{w['requests']:>10}{w['median_ms']:>11}{w['p99_ms']:>9}")
    print(f"{'process':<12}{'lived s':>8}{'RSS MB after warm-up':>22}{'at end':>8}{'growth':>8}")
    for m in result["memory"]:
        print(f"{m['process']:<12}{m['lived_s']:>8}{m['rss_after_warmup_mb']:>22}{m['rss_end_mb']:>8}"
              f"{m['growth_pct']:>7.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
