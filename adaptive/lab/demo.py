"""``adaptive demo``: a whole emulated cluster on one machine, in about four minutes.

It starts the embedded MQTT broker; three node processes — a slow ``pi`` edge emulating a
Raspberry Pi 4, a ``jetson`` (Jetson Nano) and a second accelerator ``jetson2`` (AGX Orin) — each
padding its stages to its device's latency and running its monitor agent in-process; the
controller and a closed-loop client. The ``pi``'s uplink replays a real bandwidth trace; the
accelerators share a 1 Gbit/s LAN.

Every phase sees the same stretch of the trace (the replay restarts for each); static plans are
layer plans:

* ``adaptive``: two-level control. The controller publishes its decision rule (the PPO actor
  itself, or a table for a heuristic policy) and the ``pi`` picks every request's plan from it with
  its own fresh uplink estimate. Its plans may carry a parallel section (Intra-DP's local operation
  parallelism): the ``pi`` and the next node that runs a stage compute row bands of the same blocks
  at once while the uplink streams that node's input rows;
* ``adaptive-layers``: the same two-level control restricted to layer plans (the shipped PPO
  policy trained without sections, or the heuristic on layer candidates), from a fresh controller
  as the first phase had;
* ``static-hindsight``: the single plan with the least mean latency over the phase, chosen in
  hindsight on the environment replaying the same series (``uplink.csv``), whose true costs
  integrate each transfer over the changing bandwidth;
* ``static-mean``: the best plan for the phase's mean bandwidth (Neurosurgeon-style);
* ``device-only``.

A static baseline that is the same plan as an earlier one is not run twice: its row points to that
phase. Every result is checked against the whole model run in the demo's process on the same
input. A live terminal view shows bandwidth, plan and latency; at the end a summary table is printed
and a plot, the per-request CSV and a JSON summary are saved.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from adaptive.errors import AdaptiveError
from adaptive.lab.cluster import EDGE_PROBE_INTERVAL_S, Cluster, NodeSpec, ResultCheck

__all__ = ["DemoConfig", "run_demo"]

CHAIN = (("pi", "raspberry-pi-4"), ("jetson", "jetson-nano"), ("jetson2", "jetson-agx-orin"))
DEFAULT_TRACE = "5gophers-5g-car-driving-trace-1-Verizon.csv"


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs.

    Attributes:
        model: Zoo model with a shipped profile (default MobileNetV2).
        policy: ``auto`` (the shipped PPO policy if it was trained for this model and chain, else
            ``hysteresis``), ``ppo[:PATH]``, ``greedy``, ``hysteresis`` or ``static``.
        layers_policy: The policy of the ``adaptive-layers`` phase: ``auto`` (the shipped PPO policy
            trained on layer plans for the shipped one, else the same heuristic on layer candidates;
            a PPO policy of layer plans only is its own twin), or a spec as ``policy``.
        trace: Bandwidth trace CSV for the ``pi`` uplink (default: a shipped 5G driving trace).
        trace_median_mbps: The trace is scaled to this median, Mbit/s.
        duration_s: Three times the length of a phase, s (five phases when the three static
            baselines are distinct plans).
        out: Directory for the plot, CSV and JSON.
        view: Show the live terminal view.
        cluster: Cluster id.
    """

    model: str = "mobilenet_v2"
    policy: str = "auto"
    layers_policy: str = "auto"
    trace: str | None = None
    trace_median_mbps: float = 8.0
    duration_s: float = 120.0
    out: str = "runs/demo"
    view: bool = True
    cluster: str = "demo"


def _trace_path(cfg: DemoConfig) -> Path:
    if cfg.trace:
        return Path(cfg.trace)
    return Path(str(resources.files("envs.data").joinpath("traces", DEFAULT_TRACE)))


def _nodes(cfg: DemoConfig, trace: Path) -> list[NodeSpec]:
    """The demo's chain: the pi's uplink replays the trace, the accelerators share a 1 Gbit/s LAN."""
    nodes = []
    for i, (name, device) in enumerate(CHAIN):
        nxt = CHAIN[i + 1][0] if i + 1 < len(CHAIN) else None
        if i == 0:
            # the pi probes its uplink 4 times a second: on a device-only plan it sends no activations,
            # and probes are then how it sees the link come back
            nodes.append(NodeSpec(name, device, nxt, probe_interval_s=EDGE_PROBE_INTERVAL_S, extra=(
                "--uplink-trace", str(trace), "--trace-median-mbps", str(cfg.trace_median_mbps))))
        else:
            nodes.append(NodeSpec(name, device, nxt, extra=("--uplink-mbps", "1000")))
    return nodes


def _controller_config(cfg: DemoConfig, parallel: bool = True) -> Any:
    from adaptive.control.controller import ControllerConfig

    return ControllerConfig.from_dict({
        "parallel": parallel,
        "model_profile": cfg.model, "cluster": cfg.cluster,
        "chain": [{"node": n, "device": d} for n, d in CHAIN],
        "interval_s": 1.0, "min_dwell_s": 2.0, "stale_after_s": 3.0, "source_rule": "auto",
        # the client is closed-loop (one request at a time): it never queues, so no plan is ruled out
        # for its request rate
        "rate_headroom": 0.0,
    })


PolicyBuilder = Callable[[str, Any], tuple[Any, Any, Any, str, Any]]
StaticChooser = Callable[[str, list[str], str, float], dict[str, tuple[tuple[int, ...], tuple[str, ...]]]]
PHASES = ("adaptive", "adaptive-layers", "static-hindsight", "static-mean", "device-only")
ADAPTIVE = ("adaptive", "adaptive-layers")


def run_demo(cfg: DemoConfig, build_policy: PolicyBuilder, static_plans: StaticChooser) -> dict[str, Any]:
    """Run the demo; return the summary (also written to ``<out>/summary.json``).

    ``build_policy(spec, controller_config)`` wires the controller's policy and
    ``static_plans(model, devices, uplink_csv, window_s)`` picks the static baselines on the
    replayed window (the CLI passes :func:`agents.wiring.build_policy` and
    :func:`agents.wiring.static_plans`), so the demo does not import ``agents`` or ``envs``.
    """
    from adaptive.model.profiles import resolve_model
    from adaptive.runtime.node import load_trace_series

    profile = resolve_model(cfg.model)  # fail fast: a shipped profile covering every demo device
    missing = [d for _, d in CHAIN if d not in profile.latency_ms]
    if missing:
        raise AdaptiveError(f"model profile {cfg.model} has no latencies for {missing}; the demo emulates "
                            f"{[d for _, d in CHAIN]}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    trace_file = _trace_path(cfg)
    series = load_trace_series(trace_file, 1.0, cfg.trace_median_mbps)
    uplink_csv = out / "uplink.csv"  # what the pi's emulated uplink replays, for the static choices
    uplink_csv.write_text("time_s,bandwidth_mbps\n" + "".join(f"{t},{v:.4f}\n" for t, v in enumerate(series)))
    spec = _policy_spec(cfg)
    ctl_cfg = _controller_config(cfg)
    wirings = {"adaptive": (build_policy(spec, ctl_cfg), ctl_cfg)}
    layers_spec = _layers_spec(cfg, spec, wirings["adaptive"][0][1])
    if layers_spec is not None:
        layer_cfg = _controller_config(cfg, parallel=False)
        wirings["adaptive-layers"] = (build_policy(layers_spec, layer_cfg), layer_cfg)
    demo = _Demo(cfg, series, wirings)
    with Cluster(cfg.model, _nodes(cfg, trace_file), cluster=cfg.cluster, logs=out) as lab:
        lab.start(90.0)
        demo.run(lab, lambda window_s: static_plans(cfg.model, [d for _, d in CHAIN],
                                                             str(uplink_csv), window_s))
    return demo.summary(trace_file, out)


class _Demo:
    """The demo's phases on a started cluster, and what they measured."""

    def __init__(self, cfg: DemoConfig, series: Any, wirings: dict[str, tuple[Any, Any]]) -> None:
        self.cfg = cfg
        self.series = series
        self.wirings = wirings  # adaptive phase -> (policy wiring, controller config)
        self.policy_name = wirings["adaptive"][0][3]
        self.phase_s = cfg.duration_s / 3
        self.phases: list[dict[str, Any]] = []
        self.records: list[tuple[str, Any]] = []
        self.scales: list[float] = []
        self.timeline: list[tuple[float, str, float, float, str, float]] = []
        self.rule_kind: str | None = None
        self.controller: Any = None
        self.client: Any = None
        self.check: ResultCheck | None = None  # every result against the whole model
        self.view: _View | None = None

    def run(self, lab: Cluster, choose_static: Callable[[float], dict[str, Any]]) -> None:
        """Every phase in turn: the adaptive ones, then the static baselines on the same window."""
        try:
            self.view = _View(self.cfg) if self.cfg.view else None
            fixed: dict[str, Any] = {}  # the static phases' plans, chosen once the adaptive ones are over
            for phase in PHASES:
                if phase == "static-hindsight":  # the adaptive phases are over
                    L = self.controller.model.num_blocks
                    fixed.update(choose_static(self.phase_s))
                    fixed["device-only"] = ((L,) * (len(CHAIN) - 1), ())
                if phase in ADAPTIVE:  # no layer-plan twin: the adaptive policy has layer plans only
                    same = None if phase in self.wirings else "adaptive"
                else:  # a static plan an earlier phase ran
                    same = next((p["phase"] for p in self.phases if p.get("fixed") == fixed[phase]), None)
                if same is not None:
                    self.phases.append({**next(p for p in self.phases if p["phase"] == same), "phase": phase,
                                        "same_as": same})
                    continue
                if phase in ADAPTIVE:
                    self._start_controller(lab, phase)
                self._phase(lab, phase, fixed.get(phase))
                if phase == "adaptive":  # what the first controller calibrated over its phase
                    self.scales = [round(self.controller.scales[n], 3) for n, _ in CHAIN]
        finally:
            if self.view is not None:
                self.view.close()
            if self.controller is not None and not self.controller.closed:
                self.controller.close()

    def _start_controller(self, lab: Cluster, phase: str) -> None:
        """A fresh controller with the phase's policy; the pi decides each request from its rule."""
        from adaptive.control.controller import Controller

        if self.controller is not None and not self.controller.closed:
            self.controller.close()
        (policy, candidates, obs_spec, name, on_model), ctl_cfg = self.wirings[phase]
        self.controller = Controller(ctl_cfg, lab.address, policy, candidates=candidates, obs_spec=obs_spec,
                                     policy_name=name, on_model=on_model).start()
        self.controller.step()  # the first plan and rule, before any request
        if phase == "adaptive":
            self.rule_kind = self.controller.rule_kind
        late = self.controller.wait_rules(10.0)
        if late:
            raise AdaptiveError(f"{', '.join(late)} did not apply the {phase} phase's first rule in 10 s")
        if self.client is None:  # plan-less requests: the pi stamps each one from its rule
            from adaptive.nn.zoo import default_input_shape

            self.check = ResultCheck(self.cfg.model, default_input_shape(self.cfg.model))
            self.client = lab.client("demo", timeout_s=30.0, source_decides=True, on_result=self.check)

    def _phase(self, lab: Cluster, phase: str, plan: tuple[tuple[int, ...], tuple[str, ...]] | None) -> None:
        """One phase: restart the uplink's replay, pin the phase's plan if it has one, drive the client."""
        from adaptive.protocol.messages import Message, plan_topic

        start = time.time()
        lab.start_trace(start)
        if plan is not None:
            if not self.controller.closed:
                self.controller.close()  # fixed plans from here on
            self.client.source_decides = False  # every request stamped with the phase's plan
            msg = self.controller.fixed_plan(plan[0], plan[1], phase)
            lab.control.publish(Message(plan_topic(self.cfg.cluster), msg.encode(), 1, True))
            deadline = time.monotonic() + 5
            while (self.client.plan is None or self.client.plan.rank < msg.rank) \
                    and time.monotonic() < deadline:
                time.sleep(0.05)
        done = len(self.client.records)
        end = start + self.phase_s
        while time.time() < end:
            self.client.run(min(1.0, max(end - time.time(), 0.05)), concurrency=1, inputs=self.check.inputs)
            self._tick(lab, phase, start, done)
        phase_records = self.client.records[done:]
        self.records += [(phase, r) for r in phase_records]
        self.phases.append({**_summarise(phase, phase_records), "fixed": plan, "started_at": round(start, 3)})
        if self.view is not None:
            self.view.finish(self.phases[-1])

    def _tick(self, lab: Cluster, phase: str, start: float, done: int) -> None:
        """One point of the timeline (and the live view) after a second of requests."""
        now = time.time()
        recent = [r for r in self.client.records[-5:] if r.latency_ms is not None]
        true_bw = self.series[int(now - start) % len(self.series)]
        est = _estimate(lab.collector)
        shown = f"[{recent[-1].plan}]" if recent else ""
        median = float(np.median([r.latency_ms for r in recent])) if recent else float("nan")
        self.timeline.append((now - start, phase, true_bw, est, shown, median))
        if self.view is not None:
            self.view.update(phase, now - start, self.phase_s, true_bw, est, shown,
                             self.client.records[done:])

    def summary(self, trace_file: Path, out: Path) -> dict[str, Any]:
        """The summary; writes it, every request and the plot to ``out``."""
        from adaptive.runtime.client import write_records

        phases = self.phases
        base = next(p for p in phases if p["phase"] == "device-only")["mean_ms"]
        for p in phases:
            p["speedup_vs_device_only"] = round(base / p["mean_ms"], 3) if p["mean_ms"] else None
            fixed_plan = p.pop("fixed")
            if fixed_plan is not None:
                p["plan"] = {"splits": list(fixed_plan[0]), "codecs": list(fixed_plan[1])}
        by = {p["phase"]: p for p in phases}
        better = min(("static-hindsight", "static-mean"), key=lambda k: by[k]["mean_ms"] or float("inf"))
        summary = {
            "model": self.cfg.model, "policy": self.policy_name, "rule": self.rule_kind,
            "layers_policy": self.wirings.get("adaptive-layers", self.wirings["adaptive"])[0][3],
            "device_scales": self.scales, "trace": trace_file.name,
            "trace_median_mbps": self.cfg.trace_median_mbps, "phase_s": self.phase_s, "phases": phases,
            "better_static": better,
            "adaptive_vs_better_static": _ratio(by["adaptive"], by[better]),
            "adaptive_vs_layers": _ratio(by["adaptive"], by["adaptive-layers"]),
            "layers_vs_better_static": _ratio(by["adaptive-layers"], by[better]),
            "results": self.check.summary() if self.check is not None else {},
        }
        write_records([r for _, r in self.records], out / "requests.csv")  # one row per request, all phases
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        _plot(self.timeline, self.records, self.series[: int(np.ceil(self.phase_s))], out / "demo.png",
              self.cfg, self.policy_name)
        return summary


def _policy_spec(cfg: DemoConfig) -> str:
    """``auto``: the shipped PPO policy when its sidecar matches the demo's model and chain."""
    if cfg.policy != "auto":
        return cfg.policy
    from adaptive.model.observation import PolicySpec

    sidecar = PolicySpec.load(Path(str(resources.files("agents.trained").joinpath("ppo_default.json"))))
    match = sidecar.model_profile == cfg.model and list(sidecar.devices) == [d for _, d in CHAIN]
    return "ppo" if match else "hysteresis"


def _layers_spec(cfg: DemoConfig, spec: str, candidates: Any) -> str | None:
    """The ``adaptive-layers`` phase's policy spec; None: the adaptive policy has layer plans only."""
    if cfg.layers_policy != "auto":
        return cfg.layers_policy
    if not spec.startswith("ppo"):
        return spec  # the same heuristic, on the layer candidates of a controller without sections
    if not candidates.plans.has_sections:
        return None
    return "ppo:" + str(resources.files("agents.trained").joinpath("ppo_layers.zip"))


def _ratio(a: dict[str, Any], b: dict[str, Any]) -> float | None:
    return round(a["mean_ms"] / b["mean_ms"], 3) if a["mean_ms"] and b["mean_ms"] else None


def _estimate(collector: Any) -> float:
    """The pi's newest estimate of its uplink, as the controller reads it (passive, else probes)."""
    view = collector.nodes().get(CHAIN[0][0])
    link = view.telemetry.links.get(CHAIN[1][0]) if view is not None and view.telemetry else None
    value = (link.passive_mbps or link.bandwidth_mbps) if link is not None else None
    return float(value) if value else float("nan")


def _summarise(phase: str, records: list[Any]) -> dict[str, Any]:
    lat = np.array([r.latency_ms for r in records if r.outcome == "ok"])
    return {
        "phase": phase,
        "requests": len(records),
        "ok": int(sum(r.outcome == "ok" for r in records)),
        "errors": int(sum(r.outcome == "error" for r in records)),
        "timeouts": int(sum(r.outcome == "timeout" for r in records)),
        "mean_ms": round(float(lat.mean()), 2) if lat.size else None,
        "median_ms": round(float(np.median(lat)), 2) if lat.size else None,
        "p95_ms": round(float(np.percentile(lat, 95)), 2) if lat.size else None,
        "plans": len({r.plan for r in records if r.outcome == "ok"}),
    }


class _View:
    """The live terminal view (rich): one row per phase, the running one updated 4 times a second."""

    def __init__(self, cfg: DemoConfig) -> None:
        from rich.console import Console
        from rich.live import Live

        self.console = Console()
        self.live = Live(console=self.console, refresh_per_second=4, transient=False)
        self.live.start()
        self.cfg = cfg
        self.finished: list[dict[str, Any]] = []

    def finish(self, summary: dict[str, Any]) -> None:
        """Keep a finished phase's row."""
        self.finished.append(summary)

    def update(
        self, phase: str, t: float, total: float, bw: float, est: float, plan: str, records: list[Any]
    ) -> None:
        """Redraw with the running phase's state."""
        from rich.table import Table

        table = Table(
            title=f"adaptive demo: {self.cfg.model}, pi -> jetson -> jetson2",
            caption="bandwidth in Mbit/s; latency in ms",
        )
        for col, justify in (
            ("phase", "left"),
            ("time, s", "right"),
            ("pi uplink", "right"),
            ("estimate", "right"),
            ("plan", "left"),
            ("last 5", "right"),
            ("mean", "right"),
            ("ok/err/t.o.", "right"),
        ):
            table.add_column(col, justify=justify)  # type: ignore[arg-type]
        for done in self.finished:
            table.add_row(
                done["phase"],
                "done",
                "",
                "",
                f"{done['plans']} plan(s)",
                "",
                f"{done['mean_ms']:.0f}" if done["mean_ms"] is not None else "-",
                f"{done['ok']}/{done['errors']}/{done['timeouts']}",
                style="dim",
            )
        ok = [r.latency_ms for r in records if r.outcome == "ok"]
        plan_text = plan or "-"
        table.add_row(
            phase,
            f"{t:.0f}/{total:.0f}",
            f"{bw:.2f}",
            f"{est:.2f}" if est == est else "-",
            plan_text,
            f"{np.median(ok[-5:]):.0f}" if ok else "-",
            f"{np.mean(ok):.0f}" if ok else "-",
            f"{sum(r.outcome == 'ok' for r in records)}/{sum(r.outcome == 'error' for r in records)}/"
            f"{sum(r.outcome == 'timeout' for r in records)}",
            style="bold",
        )
        self.live.update(table)

    def close(self) -> None:
        """Stop refreshing (the last table stays on screen)."""
        self.live.stop()


def _plot(timeline: list[Any], records: list[Any], trace: Any, path: Path, cfg: DemoConfig,
          policy: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    colors = {"adaptive": "tab:green", "adaptive-layers": "tab:cyan", "static-hindsight": "tab:purple",
              "static-mean": "tab:orange", "device-only": "tab:gray"}
    adaptive = [x for x in timeline if x[1] == "adaptive"]
    axes[0].step(np.arange(len(trace) + 1), [*trace, trace[-1]], where="post", color="black",
                 label="pi uplink (trace)")
    axes[0].plot(
        [x[0] for x in adaptive], [x[3] for x in adaptive], color="tab:blue", label="estimated (monitor)"
    )
    axes[0].set_ylabel("Mbit/s")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    for phase in PHASES:
        rs = [r for p, r in records if p == phase and r.outcome == "ok"]
        if rs:
            t0 = min(r.sent_at for r in rs)
            axes[1].plot(
                [r.sent_at - t0 for r in rs],
                [r.latency_ms for r in rs],
                ".",
                ms=3,
                color=colors[phase],
                label=phase,
            )
    axes[1].set_ylabel("latency, ms")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=8)
    ran = {phase: [r for p, r in records if p == phase and r.outcome == "ok"] for phase in ADAPTIVE}
    labels = sorted({r.plan for rs in ran.values() for r in rs},
                    key=lambda text: ([int(x) for x in text.split("/")[0].split(",") if x.isdigit()], text))
    for phase, rs in ran.items():
        if rs:
            t0 = min(r.sent_at for r in rs)
            axes[2].plot([r.sent_at - t0 for r in rs], [labels.index(r.plan) for r in rs],
                         "." if phase == "adaptive" else "x", ms=3, color=colors[phase], label=phase)
    axes[2].set_yticks(range(len(labels)), [f"[{x}]" for x in labels], fontsize=7)
    axes[2].set_ylabel("plan (adaptive phases)")
    if any(ran.values()):
        axes[2].legend(fontsize=8)
    axes[2].set_xlabel("time in phase, s")
    axes[0].set_title(f"adaptive demo: {cfg.model}, policy {policy}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
