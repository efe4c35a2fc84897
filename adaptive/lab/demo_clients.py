"""``adaptive demo --clients N``: N clients, each on its own emulated Raspberry Pi, share a Jetson Nano.

It starts the embedded broker; N edge node processes ``pi1..piN`` emulating a Raspberry Pi 4,
each with its own uplink replaying its own real bandwidth trace, and one ``jetson`` (Jetson Nano)
that batches requests of the same stage from different clients; every node runs its monitor
in-process. Each client sends ``rate_rps`` frames per second, open loop, to its own pi.

The policies run one after another on the same stretch of the traces (the replay restarts for
each phase), each with its own :class:`adaptive.control.shared_controller.SharedController`, which decides
jointly and publishes every pi its own rule (the calibration carries over from phase to phase):

* ``ppo``: the shipped multi-client policy (``adaptive/MultiClient-v0``);
* ``coordinated``: best responses over the shared accelerator's batch and queue;
* ``static``: the one plan every client keeps, chosen in hindsight on the environment replaying
  the same traces with the devices as calibrated.

A frame whose result arrives after the deadline (1 s) counts as dropped, as seed 004 counts frame
drops. At the end the demo prints a table per client and policy: requests, dropped, mean and
p95 latency, and the mean latency the model predicts for what ran (each second's plans and true
bandwidths, queues carried over), with the error between the two. It saves the per-request CSV,
a JSON summary and a plot.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from adaptive.errors import AdaptiveError
from adaptive.lab.cluster import EDGE_PROBE_INTERVAL_S, Cluster, NodeSpec, ResultCheck

__all__ = ["ClientsDemoConfig", "run_clients_demo"]

TRACES = (
    "5gophers-5g-car-driving-trace-1-Verizon.csv",
    "5gophers-5g-car-driving-trace-1-TMobile.csv",
    "norway-3g-bus.ljansbakken-oslo-report.2010-09-30_1114CEST.csv",
    "5gophers-5g-walking-trace.csv",
    "norway-3g-car.aarnes-elverum-report.2011-02-10_1611CET.csv",
    "5gophers-5g-car-driving-trace-1-Sprint.csv",
    "norway-3g-tram.jernbanetorget-ljabru-report.2010-12-16_1100CET.csv",
    "norway-3g-train.oslo-vestby-report.2011-02-11_1618CET.csv",
)
EDGE, ACCEL = "raspberry-pi-4", "jetson-nano"


@dataclass(frozen=True)
class ClientsDemoConfig:
    """What the demo runs.

    Attributes:
        clients: Clients, each on its own pi (2 to 8).
        model: Zoo model with a shipped profile.
        policies: Joint policies to run in turn (``ppo[:PATH]``, ``coordinated``, ``greedy``,
            ``hysteresis``, ``device-only``, ``static``).
        rate_rps: Frames per second each client sends.
        deadline_ms: A frame answered later than this counts as dropped, ms.
        trace_median_mbps: Each pi's trace is scaled to this median, Mbit/s.
        duration_s: Seconds per policy.
        batch_window_ms: The jetson waits this long for more requests of the same stage.
        out: Directory for the plot, CSV and JSON.
        view: Show the live terminal view.
        cluster: Cluster id.
    """

    clients: int = 3
    model: str = "mobilenet_v2"
    policies: tuple[str, ...] = ("ppo", "coordinated", "static")
    rate_rps: float = 3.0
    deadline_ms: float = 1000.0
    trace_median_mbps: float = 8.0
    duration_s: float = 60.0
    batch_window_ms: float = 10.0
    out: str = "runs/demo-clients"
    view: bool = True
    cluster: str = "demo-clients"


MultiBuilder = Callable[..., Any]
StaticMulti = Callable[..., int]


def _nodes(cfg: ClientsDemoConfig, pis: list[str], traces: list[Path]) -> list[NodeSpec]:
    """Each pi's uplink replays its own trace; the jetson batches what arrives within the window."""
    nodes = [NodeSpec(pi, EDGE, "jetson", probe_interval_s=EDGE_PROBE_INTERVAL_S,
                      extra=("--uplink-trace", str(trace), "--trace-median-mbps", str(cfg.trace_median_mbps)))
             for pi, trace in zip(pis, traces, strict=True)]
    return [*nodes, NodeSpec("jetson", ACCEL, extra=("--uplink-mbps", "1000", "--batch-window-ms",
                                                     f"{cfg.batch_window_ms:g}"))]


def run_clients_demo(cfg: ClientsDemoConfig, build_multi_policy: MultiBuilder,
                     static_multi_plan: StaticMulti) -> dict[str, Any]:
    """Run the demo; return the summary (also written to ``<out>/summary.json``).

    ``build_multi_policy(spec, controller_config, static_plan=...)`` wires each joint policy and
    ``static_multi_plan(model, devices, uplink_csvs, rate_rps, window_s, device_scales)`` picks
    the static plan (the CLI passes :func:`agents.wiring.build_multi_policy` and
    :func:`agents.wiring.static_multi_plan`), so the demo does not import ``agents`` or ``envs``.
    """
    from adaptive.control.controller import ControllerConfig
    from adaptive.model.profiles import resolve_model
    from adaptive.runtime.node import load_trace_series

    if not 2 <= cfg.clients <= len(TRACES):
        raise AdaptiveError(f"--clients must be 2..{len(TRACES)}, found {cfg.clients}")
    profile = resolve_model(cfg.model)
    missing = [d for d in (EDGE, ACCEL) if d not in profile.latency_ms]
    if missing:
        raise AdaptiveError(f"model profile {cfg.model} has no latencies for {missing}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    pis = [f"pi{k + 1}" for k in range(cfg.clients)]
    traces = [Path(str(resources.files("envs.data").joinpath("traces", t))) for t in TRACES[: cfg.clients]]
    series = [load_trace_series(t, 1.0, cfg.trace_median_mbps) for t in traces]
    csvs = []
    for pi, s in zip(pis, series, strict=True):
        path = out / f"uplink-{pi}.csv"  # what each pi's emulated uplink replays
        path.write_text("time_s,bandwidth_mbps\n" + "".join(f"{t},{v:.4f}\n" for t, v in enumerate(s)))
        csvs.append(str(path))
    ctl_cfg = ControllerConfig.from_dict({
        "model_profile": cfg.model, "cluster": cfg.cluster,
        "chain": [{"node": pis[0], "device": EDGE}, {"node": "jetson", "device": ACCEL}],
        "sources": [{"node": p, "device": EDGE} for p in pis[1:]],
        # the joint policies choose among layer plans (adaptive/MultiClient-v0 has no sections)
        "interval_s": 1.0, "stale_after_s": 3.0, "source_rule": "table", "parallel": False})
    for spec in cfg.policies:  # a bad policy fails here, before anything starts
        if spec != "static":
            build_multi_policy(spec, ctl_cfg)
    demo = _ClientsDemo(cfg, pis, series, ctl_cfg)
    with Cluster(cfg.model, _nodes(cfg, pis, traces), cluster=cfg.cluster, logs=out) as lab:
        lab.start(120.0)
        demo.run(lab, build_multi_policy, lambda scales: static_multi_plan(
            cfg.model, [EDGE, ACCEL], csvs, cfg.rate_rps, cfg.duration_s, scales))
    return demo.summary(traces, out)


class _ClientsDemo:
    """The clients demo's policies on a started cluster, and what they measured."""

    def __init__(self, cfg: ClientsDemoConfig, pis: list[str], series: list[Any], ctl_cfg: Any) -> None:
        self.cfg = cfg
        self.pis = pis
        self.series = series
        self.ctl_cfg = ctl_cfg
        self.phases: list[dict[str, Any]] = []
        self.records: list[tuple[str, str, Any]] = []  # (phase, pi, record)
        self.scales: dict[str, float] | None = None
        self.check: ResultCheck | None = None
        self.view: _View | None = None

    def run(self, lab: Cluster, build_multi_policy: MultiBuilder,
            choose_static: Callable[[list[float] | None], int]) -> None:
        """Each policy in turn, every pi's client sending open loop."""
        from adaptive.nn.zoo import default_input_shape

        self.check = ResultCheck(self.cfg.model, default_input_shape(self.cfg.model))
        clients = [lab.client(f"c{k + 1}", timeout_s=30.0, source=pi, on_result=self.check)
                   for k, pi in enumerate(self.pis)]
        self.view = _View(self.cfg, self.pis) if self.cfg.view else None
        try:
            for spec in self.cfg.policies:
                static = None
                if spec == "static":
                    device_scales = None if self.scales is None else [
                        float(np.mean([self.scales[p] for p in self.pis])), self.scales["jetson"]]
                    static = choose_static(device_scales)
                wiring = build_multi_policy(spec, self.ctl_cfg, static_plan=static)
                self._phase(lab, clients, wiring, static)
        finally:
            if self.view is not None:
                self.view.close()

    def _phase(self, lab: Cluster, clients: list[Any], wiring: Any, static: int | None) -> None:
        """One policy: its controller, the uplinks' replay from the start, every client driven."""
        from adaptive.control.shared_controller import SharedController

        cfg, check = self.cfg, self.check
        controller = SharedController(self.ctl_cfg, lab.address, wiring.policy, spec=wiring.spec,
                                      candidates=wiring.candidates, deadline_ms=wiring.deadline_ms,
                                      step_s=wiring.step_s, policy_name=wiring.name,
                                      on_shared=wiring.on_shared)
        if self.scales is not None:  # what the earlier phases measured
            controller.adopt_scales(self.scales)
        controller.start()
        try:
            start = time.time()
            lab.start_trace(start)
            controller.step()  # every pi's first rule, before its first frame
            done = [len(c.records) for c in clients]
            asked = [c.requests for c in clients]
            runners = [threading.Thread(target=_drive, args=(c, check, cfg.rate_rps, cfg.duration_s),
                                        daemon=True) for c in clients]
            for r in runners:
                r.start()
            while any(r.is_alive() for r in runners):
                if self.view is not None:
                    now = time.time() - start
                    bw = [s[int(now) % len(s)] for s in self.series]
                    self.view.update(wiring.name, now, cfg.duration_s, bw,
                                     [c.records[d:] for c, d in zip(clients, done, strict=True)])
                time.sleep(0.5)
            for r in runners:
                r.join()
            self.scales = {n: float(controller.scales[n]) for n in [*self.pis, "jetson"]}
            shared, rules = controller.shared, len(controller.rules)
        finally:
            controller.close()
        per = [c.records[d:] for c, d in zip(clients, done, strict=True)]
        for pi, rs in zip(self.pis, per, strict=True):
            self.records += [(wiring.name, pi, r) for r in rs]
        predicted = _predict(shared, wiring.candidates, per, self.series, start, cfg)
        rows = [_summarise(pi, rs, cfg.deadline_ms, pred, c.requests - a)
                for pi, rs, pred, c, a in zip(self.pis, per, predicted, clients, asked, strict=True)]
        self.phases.append({"policy": wiring.name, "started_at": round(start, 3), "rules": rules,
                            "static_plan": None if static is None else _plan_text(wiring.candidates, static),
                            "clients": rows, **_totals(rows)})
        if self.view is not None:
            self.view.finish(self.phases[-1])

    def summary(self, traces: list[Path], out: Path) -> dict[str, Any]:
        """The summary; writes it, every request and the plot to ``out``."""
        from adaptive.runtime.client import write_records

        cfg, phases = self.cfg, self.phases
        summary = {"model": cfg.model, "clients": cfg.clients, "edge": EDGE, "accelerator": ACCEL,
                   "rate_rps": cfg.rate_rps, "deadline_ms": cfg.deadline_ms, "phase_s": cfg.duration_s,
                   "traces": [t.name for t in traces], "trace_median_mbps": cfg.trace_median_mbps,
                   "batch_window_ms": cfg.batch_window_ms,
                   "device_scales": {n: round(v, 3) for n, v in (self.scales or {}).items()},
                   "phases": phases, "results": self.check.summary() if self.check is not None else {}}
        errors = [abs(c["error_pct"]) for p in phases for c in p["clients"] if c["error_pct"] is not None]
        summary["mape_pct"] = round(float(np.mean(errors)), 2) if errors else None
        write_records([r for _, _, r in self.records], out / "requests.csv")
        with (out / "requests-by-client.csv").open("w") as fh:  # the same rows with their phase and pi
            fh.write("policy,pi,id,sent_at,latency_ms,outcome,plan\n")
            for phase, pi, r in self.records:
                latency = "" if r.latency_ms is None else r.latency_ms
                fh.write(f"{phase},{pi},{r.id},{r.sent_at:.3f},{latency},{r.outcome},{r.plan}\n")
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        _plot(self.records, self.series, phases, out / "demo-clients.png", cfg, self.pis)
        return summary


def _drive(client: Any, check: ResultCheck, rate_rps: float, duration_s: float) -> None:
    """Open loop at ``rate_rps`` for ``duration_s``, cycling the checked inputs; then wait for answers."""
    period, next_at = 1.0 / rate_rps, time.monotonic()
    end = next_at + duration_s
    while time.monotonic() < end:
        client.send(check.inputs[check.index(client.requests)])  # request ids count up from 0, as this does
        next_at += period
        time.sleep(max(0.0, next_at - time.monotonic()))
    deadline = time.monotonic() + client.timeout_s + 1
    while client.outstanding() and time.monotonic() < deadline:
        time.sleep(0.05)


def _plan_text(candidates: Any, index: int) -> str:
    from adaptive.runtime.client import plan_label

    plan = candidates.plan(index)
    return plan_label(plan.splits, plan.codecs)


def _predict(shared: Any, candidates: Any, per: list[list[Any]], series: list[tuple[float, ...]],
             start: float, cfg: ClientsDemoConfig, dt_s: float = 0.25) -> list[float | None]:
    """Each client's mean latency the model predicts for what ran, request-weighted, ms.

    Per step of ``dt_s``: each client's plan is the one its requests of that step ran (the last
    one before, where it sent none), its uplink the trace's true value; the queues carry over.
    """
    from adaptive.runtime.client import plan_label

    plans_of = (candidates.plan(i) for i in range(len(candidates)))
    index = {plan_label(p.splits, p.codecs): i for i, p in enumerate(plans_of)}
    K = shared.num_clients
    T = int(np.ceil(cfg.duration_s / dt_s))
    plans = np.zeros((T, K), np.int64)
    sent = np.zeros((T, K))
    for k, rs in enumerate(per):
        last = None
        steps = {}
        for r in rs:
            if r.outcome == "ok" and r.plan in index:
                steps[min(int((r.sent_at - start) / dt_s), T - 1)] = index[r.plan]
        for r in rs:
            t = int((r.sent_at - start) / dt_s)
            if 0 <= t < T:
                sent[t, k] += 1
        for t in range(T):
            last = steps.get(t, last)
            plans[t, k] = last if last is not None else 0
    active = np.zeros(K, bool)
    active[: len(per)] = True
    state = shared.initial_state(1)
    num, den = np.zeros(K), np.zeros(K)
    for t in range(T):
        bw = np.ones(K)
        bw[: len(per)] = [s[int(t * dt_s) % len(s)] for s in series]
        state, outcome = shared.step(state, plans[t][None], active[None],
                                     np.where(active, cfg.rate_rps, 0.0)[None], bw[None], np.zeros((1, K)),
                                     np.zeros((1, shared.num_devices - 1)), dt_s, np.inf)
        lat = outcome.latency_ms[0]
        ok = np.isfinite(lat) & (sent[t] > 0)
        num[ok] += sent[t][ok] * lat[ok]
        den[ok] += sent[t][ok]
    return [float(num[k] / den[k]) if den[k] else None for k in range(len(per))]


def _summarise(pi: str, records: list[Any], deadline_ms: float, predicted: float | None,
               requests: int) -> dict[str, Any]:
    """One client's row; ``requests``: how many it sent (each must have ended as one record)."""
    ok = [r for r in records if r.outcome == "ok"]
    lat = np.array([r.latency_ms for r in ok])
    late = int((lat > deadline_ms).sum()) if lat.size else 0
    mean = float(lat.mean()) if lat.size else None
    plans: dict[str, int] = {}
    for r in ok:
        plans[r.plan] = plans.get(r.plan, 0) + 1
    return {
        "pi": pi, "requests": requests, "records": len(records), "lost": requests - len(records),
        "ok": len(ok),
        "errors": sum(r.outcome == "error" for r in records),
        "timeouts": sum(r.outcome == "timeout" for r in records),
        "dropped": late + len(records) - len(ok), "drop_rate": round((late + len(records) - len(ok))
                                                                      / max(len(records), 1), 4),
        "mean_ms": round(mean, 2) if mean is not None else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 2) if lat.size else None,
        "predicted_ms": round(predicted, 2) if predicted is not None else None,
        "error_pct": round(100 * (predicted - mean) / mean, 2) if predicted and mean else None,
        "plans": dict(sorted(plans.items(), key=lambda kv: -kv[1])),
    }


def _totals(rows: list[dict[str, Any]]) -> dict[str, Any]:
    n = sum(r["requests"] for r in rows)
    ok = sum(r["ok"] for r in rows)
    mean = sum((r["mean_ms"] or 0) * r["ok"] for r in rows) / ok if ok else None
    return {"requests": n, "lost": sum(r["lost"] for r in rows),
            "dropped": sum(r["dropped"] for r in rows),
            "drop_rate": round(sum(r["dropped"] for r in rows) / max(n, 1), 4),
            "mean_ms": round(mean, 2) if mean is not None else None}


class _View:
    """The live terminal view (rich): a row per client of the running policy, and the finished ones."""

    def __init__(self, cfg: ClientsDemoConfig, pis: list[str]) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console()
        self.live = Live(console=self.console, refresh_per_second=2, transient=False)
        self.live.start()
        self.cfg, self.pis = cfg, pis
        self.finished: list[dict[str, Any]] = []

    def finish(self, phase: dict[str, Any]) -> None:
        """Keep a finished policy's totals."""
        self.finished.append(phase)

    def update(self, policy: str, t: float, total: float, bw: list[float], per: list[list[Any]]) -> None:
        """Redraw with the running policy's clients."""
        from rich.table import Table

        table = Table(title=f"adaptive demo: {self.cfg.clients} clients share a jetson, "
                            f"{self.cfg.rate_rps:g} frames/s each",
                      caption="uplink in Mbit/s; latency in ms; dropped: later than "
                              f"{self.cfg.deadline_ms:g} ms or lost")
        for col, justify in (("policy", "left"), ("client", "left"), ("uplink", "right"), ("plan", "left"),
                             ("last 5", "right"), ("mean", "right"), ("frames", "right"),
                             ("dropped", "right")):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for done in self.finished:
            table.add_row(done["policy"], "all", "", "", "", _fmt(done["mean_ms"]), str(done["requests"]),
                          str(done["dropped"]), style="dim")
        for k, (pi, rs) in enumerate(zip(self.pis, per, strict=True)):
            ok = [r for r in rs if r.outcome == "ok"]
            lat = [r.latency_ms for r in ok]
            dropped = sum(r.outcome != "ok" for r in rs) + sum(x > self.cfg.deadline_ms for x in lat)
            table.add_row(f"{policy} {t:.0f}/{total:.0f} s" if k == 0 else "", pi, f"{bw[k]:.1f}",
                          ok[-1].plan if ok else "-", _fmt(np.median(lat[-5:]) if lat else None),
                          _fmt(np.mean(lat) if lat else None), str(len(rs)), str(dropped), style="bold")
        self.live.update(table)

    def close(self) -> None:
        """Stop refreshing (the last table stays on screen)."""
        self.live.stop()


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _plot(records: list[tuple[str, str, Any]], series: list[tuple[float, ...]], phases: list[dict[str, Any]],
          path: Path, cfg: ClientsDemoConfig, pis: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    policies = [p["policy"] for p in phases]
    fig, axes = plt.subplots(len(policies) + 1, 1, figsize=(10, 2.6 * (len(policies) + 1)), sharex=True)
    colors = plt.get_cmap("tab10")
    T = int(np.ceil(cfg.duration_s))
    for k, s in enumerate(series):
        shown = [s[t % len(s)] for t in range(T + 1)]
        axes[0].step(np.arange(T + 1), shown, where="post", color=colors(k), label=f"{pis[k]} uplink")
    axes[0].set_ylabel("Mbit/s")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=7, ncol=min(len(pis), 4))
    axes[0].set_title(f"{cfg.clients} clients on their own Raspberry Pi 4 share a Jetson Nano "
                      f"({cfg.model}, {cfg.rate_rps:g} frames/s each)")
    for ax, phase in zip(axes[1:], phases, strict=True):
        t0 = phase["started_at"]
        for k, pi in enumerate(pis):
            rs = [r for p, c, r in records if p == phase["policy"] and c == pi and r.outcome == "ok"]
            ax.plot([r.sent_at - t0 for r in rs], [r.latency_ms for r in rs], ".", ms=3, color=colors(k),
                    label=pi)
        ax.axhline(cfg.deadline_ms, color="black", lw=0.8, ls="--")
        ax.set_ylabel(f"{phase['policy']}\nlatency, ms")
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.text(0.99, 0.95, f"mean {_fmt(phase['mean_ms'])} ms, dropped {100 * phase['drop_rate']:.1f}%",
                transform=ax.transAxes, ha="right", va="top", fontsize=8)
    axes[-1].set_xlabel("time in phase, s")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
