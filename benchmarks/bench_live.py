"""Live system benchmarks: reaction time, runtime overhead, and measured vs predicted latency.

Nodes run as separate processes (``python -m adaptive node``) on real sockets with the embedded
broker; the ``pi`` node pads its stages to the Raspberry Pi 4 profile and its uplink is emulated;
the accelerator is this machine itself (``xeon-vm``, measured by ``adaptive profile model``), since
one machine can emulate slower devices but not faster ones.

* ``source``: two-level control. The controller publishes a table rule to the ``pi`` (run in this
  process), which picks each request's plan from it and its own uplink estimate; the uplink steps
  below the table's lowest edge and above its highest, 16 times, under open-loop load; time from
  the change to the first request that ran the rule's plan for the new rate, and the age of the
  estimate behind every decision.
* ``reaction``: the pi's uplink drops from 30 to 2 Mbit/s and back, repeatedly, under closed-loop
  load; time from the change to the new plan acked by every node (1 Hz telemetry, 1 s probes): the
  controller-only path, for comparison.
* ``calibration``: the accelerator emulates a Jetson Nano 2x slower than its profile; time under
  closed-loop load until the controller's fitted scale stays within 10% (5%) of 2.
* ``overhead``: per-request latency through the runtime minus the same stages executed in-process
  plus the model's predicted transfer time.
* ``accuracy``: median measured end-to-end latency per split vs the model's prediction, MAPE, for
  two models; once with the pi emulated (its stage padded to the Pi 4 profile, so the error is the
  host's compute, the transfers and the runtime) and once with both nodes computing for real on
  this machine (no padding: the ``xeon-vm`` profile must predict both stages).

Usage: python benchmarks/bench_live.py [--what source,reaction,calibration,overhead,accuracy] [--json]
(--json prints every sample; the default prints the summary figures.)
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from adaptive.lab.cluster import Cluster as LabCluster
from adaptive.lab.cluster import NodeSpec
from adaptive.lab.ports import free_port
from adaptive.model.latency import Conditions, SplitModel
from adaptive.model.plans import PlanArray
from adaptive.model.profiles import resolve_device, resolve_model
from adaptive.nn.zoo import default_input_shape
from adaptive.protocol.messages import Message, PlanMessage, plan_topic
from adaptive.runtime.client import InferenceClient, plan_label
from monitor.transport import MqttTransport

CLUSTER = "bench"


class Cluster:
    """pi (emulated Raspberry Pi 4, shaped uplink) + host accelerator, on a lab cluster."""

    def __init__(self, model: str, uplink_mbps: float, monitors: bool = False,
                 pi_device: str = "raspberry-pi-4", host_emulate: str | None = None,
                 host_slowdown: float = 1.0) -> None:
        self.model = model
        nodes = [
            # a device this machine is not is emulated: its stages padded to the profile
            NodeSpec("pi", pi_device, "host" if monitors else None, emulate=pi_device != "xeon-vm",
                     monitor=monitors, extra=("--uplink-mbps", str(uplink_mbps))),
            NodeSpec("host", host_emulate or "xeon-vm", emulate=host_emulate is not None, monitor=monitors,
                     extra=("--uplink-mbps", "1000", "--slowdown", str(host_slowdown))),
        ]
        self.lab = LabCluster(model, nodes, cluster=CLUSTER).start(60.0)
        self.url = self.lab.address
        self.control = self.lab.control
        self.version = 0

    def publish(self, splits: tuple[int, ...], codecs: tuple[str, ...] = ()) -> None:
        """Publish the next plan version (retained, QoS 1)."""
        self.version += 1
        msg = PlanMessage(self.version, self.model, ("pi", "host"), splits, time.time(), "bench", None,
                          codecs)
        self.control.publish(Message(plan_topic(CLUSTER), msg.encode(), 1, True))

    def close(self) -> None:
        """Stop the nodes and the broker."""
        self.lab.close()


def latency_of(cluster: Cluster, splits: tuple[int, ...], n: int,
               codecs: tuple[str, ...] = ()) -> list[float]:
    cluster.publish(splits, codecs)
    time.sleep(0.5)
    with InferenceClient(f"bench{cluster.version}", cluster.url, CLUSTER, default_input_shape(cluster.model),
                         timeout_s=30, source_decides=False) as client:
        while client.plan is None or client.plan.version < cluster.version:
            time.sleep(0.02)
        client.run(0.1, concurrency=1)  # warm-up: sockets, first-run allocations
        client.records.clear()
        while len(client.records) < n:
            client.run(0.2, concurrency=1)
        return [r.latency_ms for r in client.records if r.outcome == "ok"]


def accuracy(model: str, bw: float, pi_device: str = "raspberry-pi-4") -> dict[str, Any]:
    sm = SplitModel(resolve_model(model), [resolve_device(pi_device), resolve_device("xeon-vm")])
    L = sm.num_blocks
    splits = sorted({0, L, *np.linspace(1, L - 1, 5).round().astype(int).tolist()})
    pred = sm.evaluate(PlanArray.from_splits([[s] for s in splits]), Conditions(bandwidth_mbps=bw))
    cluster = Cluster(model, bw, pi_device=pi_device)
    rows = []
    try:
        for s, p in zip(splits, pred.latency_ms, strict=True):
            measured = statistics.median(latency_of(cluster, (s,), 15))
            rows.append({"split": s, "predicted_ms": round(float(p), 2), "measured_ms": round(measured, 2),
                         "error_pct": round((float(p) / measured - 1) * 100, 1)})
    finally:
        cluster.close()
    mape = float(np.mean([abs(r["error_pct"]) for r in rows]))
    return {"model": model, "first_device": pi_device, "bandwidth_mbps": bw, "rows": rows,
            "mape_pct": round(mape, 1)}


def overhead(model: str, bw: float) -> dict[str, Any]:
    """Runtime latency minus (stages executed in-process + predicted transfer and result return).

    The pi's stage is padded to its profile latency by the runtime (its real compute runs inside
    that time), so the in-process baseline takes the padded time for it and measures the host's.
    """
    import torch

    from adaptive.nn.partition import partition
    from adaptive.nn.zoo import build_model

    torch.set_num_threads(1)
    part = partition(build_model(model), default_input_shape(model), name=model)
    sm = SplitModel(resolve_model(model), [resolve_device("raspberry-pi-4"), resolve_device("xeon-vm")])
    L = part.num_blocks
    s = L // 2
    x = torch.randn(default_input_shape(model))
    pi_ms = float(sum(resolve_model(model).latency_for("raspberry-pi-4")[:s]))  # the pi's padded stage
    with torch.inference_mode():
        mid = part.run(0, s, x)
        times = []
        for _ in range(20):
            t0 = time.perf_counter()
            part.run(s, L, mid)
            times.append((time.perf_counter() - t0) * 1e3)
        host = statistics.median(times[5:])  # the host's stage, measured in-process
    pred = sm.evaluate(PlanArray.from_splits([[s]]), Conditions(bandwidth_mbps=bw))
    transfer = float(pred.comm_ms[0].sum())
    cluster = Cluster(model, bw)
    try:
        measured = statistics.median(latency_of(cluster, (s,), 30))
    finally:
        cluster.close()
    in_process = pi_ms + host + transfer
    return {"model": model, "split": s, "bandwidth_mbps": bw, "measured_ms": round(measured, 2),
            "in_process_plus_transfer_ms": round(in_process, 2),
            "overhead_ms": round(measured - in_process, 2),
            "overhead_pct": round((measured / in_process - 1) * 100, 1)}


def reaction(model: str = "mobilenet_v2", cycles: int = 8) -> dict[str, Any]:
    from adaptive.control.controller import Controller, ControllerConfig
    from agents.wiring import build_policy

    rng = np.random.default_rng(0)
    cluster = Cluster(model, 30.0, monitors=True)
    cfg = ControllerConfig.from_dict({"model_profile": model, "cluster": CLUSTER, "interval_s": 1.0,
                                      "min_dwell_s": 0.0, "stale_after_s": 3.0,
                                      "chain": [{"node": "pi", "device": "raspberry-pi-4"},
                                                {"node": "host", "device": "xeon-vm"}]})
    policy, cands, spec, name, on_model = build_policy("greedy", cfg)
    ctl = Controller(cfg, cluster.url, policy, candidates=cands, obs_spec=spec, policy_name=name,
                     on_model=on_model).start()
    samples = []
    try:
        shape = default_input_shape(model)
        with InferenceClient("react", cluster.url, CLUSTER, shape, timeout_s=30) as client:
            stop = threading.Event()

            def keep_loading() -> None:
                while not stop.is_set():
                    client.run(0.5, concurrency=1)

            load = threading.Thread(target=keep_loading, daemon=True)
            load.start()
            time.sleep(8)
            for i in range(cycles * 2):
                rate = 2.0 if i % 2 == 0 else 30.0
                time.sleep(rng.uniform(0, cfg.interval_s))  # no phase lock with the 1 Hz loops
                before = ctl.decisions[-1].version if ctl.decisions else 0
                t0 = time.time()
                _set_uplink(cluster, rate)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline:
                    d = ctl.decisions[-1] if ctl.decisions else None
                    if d is not None and d.version > before and d.applied_at is not None:
                        samples.append({"to_mbps": rate, "decided_s": round(d.issued_at - t0, 2),
                                        "applied_s": round(d.applied_at - t0, 2),
                                        "plan": str(cands.plan(d.action))})
                        break
                    time.sleep(0.05)
                else:
                    samples.append({"to_mbps": rate, "decided_s": None, "applied_s": None})
                time.sleep(6)
            stop.set()
            load.join()
    finally:
        ctl.close()
        cluster.close()
    applied = [s["applied_s"] for s in samples if s["applied_s"] is not None]
    return {"samples": samples, "median_s": round(statistics.median(applied), 2) if applied else None,
            "p90_s": round(float(np.percentile(applied, 90)), 2) if applied else None,
            "max_s": max(applied) if applied else None,
            "missed": sum(s["applied_s"] is None for s in samples)}


def source_reaction(model: str = "mobilenet_v2", steps: int = 16, rate_hz: float = 2.0,
                    probe_interval_s: float = 0.25, low: float = 2.0, high: float = 30.0) -> dict[str, Any]:
    """Two-level control: a bandwidth step to the first request that runs the right new plan.

    Every part is its own process, started with the CLI as a user would: the ``pi`` (emulating a
    Raspberry Pi 4, its monitor probing every ``probe_interval_s``, metrics on), the accelerator
    (this machine), ``adaptive controller`` publishing a table rule, and ``adaptive client`` sending
    ``rate_hz`` requests open loop to a CSV (below what device-only sustains on a Pi 4, so no plan
    the table picks builds a queue). This process only steps the uplink between ``low`` and
    ``high`` Mbit/s, ``steps`` times at random phase, and watches the retained rule. A step's
    reaction is the time from the change to the send time of the first request that ran the plan
    the rule in force gave for the new rate; the estimate ages come from the pi's
    ``adaptive_node_estimate_age_seconds`` histogram.
    """
    import tempfile
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from adaptive.protocol.rules import RuleMessage, rule_topic

    rng = np.random.default_rng(1)
    tmp = Path(tempfile.mkdtemp(prefix="source-"))
    metrics_port = free_port()
    config = tmp / "controller.yaml"
    config.write_text(f"model_profile: {model}\ncluster: {CLUSTER}\ninterval_s: 1.0\nsource_rule: true\n"
                      "chain:\n  - {node: pi, device: raspberry-pi-4}\n  - {node: host, device: xeon-vm}\n")
    duration = 10 + steps * 6.5
    records_csv = tmp / "requests.csv"
    nodes = [NodeSpec("pi", "raspberry-pi-4", "host", probe_interval_s=probe_interval_s, interval_s=0.5,
                      extra=("--uplink-mbps", str(high), "--metrics-port", str(metrics_port))),
             NodeSpec("host", "xeon-vm", emulate=False, interval_s=0.5, extra=("--uplink-mbps", "1000"))]
    rules: list[tuple[float, RuleMessage]] = []
    marks: list[tuple[float, float]] = []
    with LabCluster(model, nodes, cluster=CLUSTER) as lab:
        lab.start(90.0)
        lab.spawn("controller", [sys.executable, "-m", "adaptive", "controller", "--broker", lab.url,
                                 "--config", str(config), "--policy", "greedy"])
        control = MqttTransport(lab.address, "bench-source", subscriptions=[(rule_topic(CLUSTER, "pi"), 1)],
                                on_message=lambda t, p: rules.append((time.time(), RuleMessage.decode(p))))
        control.start()
        try:
            deadline = time.monotonic() + 90
            while not rules and time.monotonic() < deadline:
                time.sleep(0.2)
            if not rules:
                raise RuntimeError("the pi got no decision rule (is the controller running?)")
            client = lab.spawn("client", [sys.executable, "-m", "adaptive", "client", "--broker", lab.url,
                                          "--cluster", CLUSTER, "--model", model, "--rate", f"{rate_hz:g}",
                                          "--duration", f"{duration:g}", "--out", str(records_csv),
                                          "--timeout", "30"])
            while (not records_csv.exists() or records_csv.stat().st_size < 300) and client.poll() is None:
                time.sleep(0.2)
            time.sleep(5)
            for i in range(steps):
                rate = low if i % 2 == 0 else high
                time.sleep(rng.uniform(0, 1.0))
                marks.append((time.time(), rate))
                lab.emulate({"uplink_mbps": rate})
                time.sleep(5)
            client.wait(timeout=duration + 120)
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as page:
                scrape = page.read().decode()
        finally:
            control.close()
    with records_csv.open() as f:
        records = list(csv.DictReader(f))
    samples = []
    for t0, rate in marks:
        rule = next(r for at, r in reversed(rules) if at <= t0)  # the rule in force at the step
        row = rule.plans[rule.index(rate)]
        want = plan_label(row.splits, row.codecs)
        hits = [float(r["sent_at"]) for r in records if float(r["sent_at"]) >= t0 and r["plan"] == want
                and r["outcome"] == "ok"]
        samples.append({"to_mbps": rate, "plan": want,
                        "reaction_s": round(min(hits) - t0, 3) if hits else None})
    got = [s["reaction_s"] for s in samples if s["reaction_s"] is not None]
    buckets = [(float(s.labels["le"]), s.value) for fam in text_string_to_metric_families(scrape)
               for s in fam.samples if s.name == "adaptive_node_estimate_age_seconds_bucket"]
    return {"model": model, "rate_hz": rate_hz, "probe_interval_s": probe_interval_s, "low_mbps": low,
            "high_mbps": high, "samples": samples,
            "median_s": round(statistics.median(got), 3) if got else None,
            "p90_s": round(float(np.percentile(got, 90)), 3) if got else None,
            "missed": sum(s["reaction_s"] is None for s in samples),
            "age_median_s": _bucket_quantile(buckets, 0.5), "age_p90_s": _bucket_quantile(buckets, 0.9),
            "decisions": int(buckets[-1][1]) if buckets else 0,
            "rule_versions": len({r.version for _, r in rules}),
            "requests": len(records), "not_ok": sum(r["outcome"] != "ok" for r in records)}


def _bucket_quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile from a Prometheus histogram's cumulative buckets, linear within a bucket."""
    if not buckets or buckets[-1][1] == 0:
        return None
    target, lower, below = q * buckets[-1][1], 0.0, 0.0
    for le, count in buckets:
        if count >= target:
            if le == float("inf"):
                return lower
            return round(lower + (le - lower) * (target - below) / max(count - below, 1e-9), 3)
        lower, below = le, count
    return None


def calibration(model: str = "mobilenet_v2", slowdown: float = 2.0) -> dict[str, Any]:
    """How fast online calibration finds an accelerator ``slowdown`` times slower than its profile.

    The host node emulates a Jetson Nano (stages padded to the profile's latencies) times
    ``slowdown``, so the true scale is exactly ``slowdown``; the controller believes the profile.
    Closed-loop load starts once the first plan (everything on the accelerator) is applied.
    """
    from adaptive.control.controller import Controller, ControllerConfig
    from agents.wiring import build_policy

    cluster = Cluster(model, 20.0, monitors=True, host_emulate="jetson-nano", host_slowdown=slowdown)
    cfg = ControllerConfig.from_dict({"model_profile": model, "cluster": CLUSTER, "interval_s": 1.0,
                                      "chain": [{"node": "pi", "device": "raspberry-pi-4"},
                                                {"node": "host", "device": "jetson-nano"}]})
    policy, cands, spec, name, on_model = build_policy("static", cfg)
    policy.choice = next(i for i in range(len(cands)) if cands.plan(i).splits == (0,)
                         and all(c == "none" for c in cands.plan(i).codecs))
    ctl = Controller(cfg, cluster.url, policy, candidates=cands, obs_spec=spec, policy_name=name,
                     on_model=on_model).start()
    try:
        deadline = time.monotonic() + 20
        while not (ctl.decisions and ctl.decisions[-1].applied_at) and time.monotonic() < deadline:
            time.sleep(0.05)
        with InferenceClient("cal", cluster.url, CLUSTER, default_input_shape(model), timeout_s=30,
                             source_decides=False) as client:
            start = time.time()
            client.run(20.0, concurrency=1)
        history = [(round(t - start, 2), round(s["host"], 3)) for t, s in ctl.scale_history if t >= start]
    finally:
        ctl.close()
        cluster.close()

    def settled(tol: float) -> float | None:
        return next((t for i, (t, _) in enumerate(history)
                     if all(abs(v / slowdown - 1) < tol for _, v in history[i:])), None)

    return {"model": model, "true_scale": slowdown, "final_scale": history[-1][1] if history else 1.0,
            "within_10pct_s": settled(0.10), "within_5pct_s": settled(0.05), "history": history}


def _set_uplink(cluster: Cluster, rate: float) -> None:
    """Pin the pi's emulated uplink to ``rate`` Mbit/s (the node's emulation control topic)."""
    cluster.lab.emulate({"uplink_mbps": rate})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--what", default="source,reaction,calibration,overhead,accuracy")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    out: dict[str, Any] = {}
    what = args.what.split(",")
    if "source" in what:
        out["source"] = [source_reaction("resnet20_cifar", rate_hz=10.0, low=1.0, high=30.0),
                         source_reaction("mobilenet_v2", rate_hz=2.0, low=2.0, high=30.0)]
    if "reaction" in what:
        out["reaction"] = reaction()
    if "calibration" in what:
        out["calibration"] = calibration()
    if "overhead" in what:
        out["overhead"] = [overhead("mobilenet_v2", 20.0), overhead("vgg16_cifar", 20.0)]
    if "accuracy" in what:
        out["accuracy"] = [accuracy(m, 20.0, first) for first in ("raspberry-pi-4", "xeon-vm")
                           for m in ("mobilenet_v2", "vgg16_cifar")]
    if args.json:
        print(json.dumps(out, indent=1))
        return
    for r in out.get("source", []):
        print(f"source reaction, {r['model']} (uplink step {r['low_mbps']}<->{r['high_mbps']} Mbit/s -> "
              f"first request on the rule's new plan), {len(r['samples'])} steps, {r['rate_hz']:g} req/s: "
              f"median {r['median_s']} s, p90 {r['p90_s']} s, missed {r['missed']}; estimate age at "
              f"decision: "
              f"median {r['age_median_s']} s, p90 {r['age_p90_s']} s (from histogram buckets, "
              f"{r['decisions']} decisions); {r['rule_versions']} rule versions; {r['requests']} requests, "
              f"{r['not_ok']} not ok")
    if "reaction" in out:
        r = out["reaction"]
        print(f"reaction (bandwidth step -> new plan acked by all nodes), {len(r['samples'])} steps: "
              f"median {r['median_s']} s, p90 {r['p90_s']} s, max {r['max_s']} s, missed {r['missed']}")
    if "calibration" in out:
        c = out["calibration"]
        print(f"calibration: accelerator {c['true_scale']:g}x slower than its profile; fitted scale within "
              f"10% after {c['within_10pct_s']} s of load, within 5% after {c['within_5pct_s']} s, "
              f"final {c['final_scale']}")
    for o in out.get("overhead", []):
        print(f"overhead {o['model']} split {o['split']} at {o['bandwidth_mbps']:g} Mbit/s: runtime "
              f"{o['measured_ms']} ms vs in-process + predicted transfer "
              f"{o['in_process_plus_transfer_ms']} ms "
              f"({o['overhead_ms']:+} ms, {o['overhead_pct']:+}%)")
    for a in out.get("accuracy", []):
        rows = ", ".join(f"{r['split']}: {r['measured_ms']:.0f}/{r['predicted_ms']:.0f}" for r in a["rows"])
        print(f"accuracy {a['model']} on {a['first_device']} -> xeon-vm at {a['bandwidth_mbps']:g} Mbit/s: "
              f"MAPE {a['mape_pct']}% (split: measured/predicted ms {rows})")


if __name__ == "__main__":
    main()
