"""``adaptive demo``: a whole emulated cluster on one machine, in about three minutes.

It starts the embedded MQTT broker; three node processes — a slow ``pi`` edge emulating a
Raspberry Pi 4, a ``jetson`` (Jetson Nano) and a second accelerator ``jetson2`` (AGX Orin) — each
padding its stages to its device's latency and running its monitor agent in-process; the
controller and a closed-loop client. The ``pi``'s uplink replays a real bandwidth trace; the
accelerators share a 1 Gbit/s LAN.

Every phase sees the same stretch of the trace (the replay restarts for each):

* ``adaptive``: two-level control. The controller publishes its decision rule (the PPO actor
  itself, or a table for a heuristic policy) and the ``pi`` picks every request's plan from it with
  its own fresh uplink estimate;
* ``static-hindsight``: the single plan with the least mean latency over the phase, chosen in
  hindsight on the environment replaying the same series (``uplink.csv``), whose true costs
  integrate each transfer over the changing bandwidth;
* ``static-mean``: the best plan for the phase's mean bandwidth (Neurosurgeon-style);
* ``device-only``.

A static baseline that is the same plan as an earlier one is not run twice: its row points to that
phase. A live terminal view shows bandwidth, plan and latency; at the end a summary table is
printed and a plot, the per-request CSV and a JSON summary are saved.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from adaptive.errors import AdaptiveError
from monitor.ports import free_port

__all__ = ["EDGE_PROBE_INTERVAL_S", "DemoConfig", "node_command", "run_demo", "stop_processes", "wait_online"]

CHAIN = (("pi", "raspberry-pi-4"), ("jetson", "jetson-nano"), ("jetson2", "jetson-agx-orin"))
DEFAULT_TRACE = "5gophers-5g-car-driving-trace-1-Verizon.csv"


@dataclass(frozen=True)
class DemoConfig:
    """What the demo runs.

    Attributes:
        model: Zoo model with a shipped profile (default MobileNetV2).
        policy: ``auto`` (the shipped PPO policy if it was trained for this model and chain, else
            ``hysteresis``), ``ppo[:PATH]``, ``greedy``, ``hysteresis`` or ``static``.
        trace: Bandwidth trace CSV for the ``pi`` uplink (default: a shipped 5G driving trace).
        trace_median_mbps: The trace is scaled to this median, Mbit/s.
        duration_s: Three times the length of a phase, s (a fourth phase runs when the three
            static baselines are distinct plans).
        out: Directory for the plot, CSV and JSON.
        view: Show the live terminal view.
        cluster: Cluster id.
    """

    model: str = "mobilenet_v2"
    policy: str = "auto"
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


# A source decides each frame on its own uplink estimate, so an edge probes its uplink every 0.25 s
# (on a slow link less often, within the monitor's 5% share; while the node's own activations
# measure the link, it is not probed).
EDGE_PROBE_INTERVAL_S = 0.25


def node_command(chain: Sequence[tuple[str, str]], i: int, broker_url: str, cluster: str, model: str,
                 probe_ports: dict[str, int], uplink: Sequence[str], interval_s: float = 1.0,
                 probe_interval_s: float = 1.0, next_host: str = "127.0.0.1") -> list[str]:
    """``adaptive node`` arguments for node ``i`` of a chain emulated on this machine.

    The node emulates its device from the model's shipped profile and runs its monitor, which
    probes the next node's probe sink (at ``next_host``); ``uplink`` adds the emulated-uplink
    options (e.g. ``["--uplink-mbps", "1000"]``).
    """
    name, device = chain[i]
    args = [sys.executable, "-m", "adaptive", "node", "--node", name, "--broker", broker_url,
            "--cluster", cluster, "--model", model, "--device", device, "--emulate", device, "--monitor",
            "--probe-port", str(probe_ports[name]), "--probe-interval", f"{probe_interval_s:g}",
            "--interval", f"{interval_s:g}", *uplink]
    if i + 1 < len(chain):
        nxt = chain[i + 1][0]
        args += ["--peers", f"{nxt}={next_host}:{probe_ports[nxt]}"]
    return args


def _spawn_nodes(cfg: DemoConfig, broker_url: str, trace: Path, logs: Path) -> list[subprocess.Popen]:
    probe = {name: free_port() for name, _ in CHAIN}
    procs = []
    for i, (name, _) in enumerate(CHAIN):
        uplink = (["--uplink-trace", str(trace), "--trace-median-mbps", str(cfg.trace_median_mbps)] if i == 0
                  else ["--uplink-mbps", "1000"])
        log = (logs / f"node-{name}.log").open("w")
        # the pi probes its uplink 4 times a second: on a device-only plan it sends no activations,
        # and probes are then how it sees the link come back
        args = node_command(CHAIN, i, broker_url, cfg.cluster, cfg.model, probe, uplink,
                            probe_interval_s=EDGE_PROBE_INTERVAL_S if i == 0 else 1.0)
        procs.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT))
    return procs


def wait_online(collector: Any, procs: list[subprocess.Popen], names: Sequence[str],
                timeout_s: float = 90.0) -> None:
    """Wait until every node announced its data endpoint and sent telemetry; fail if one exits."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise AdaptiveError(f"a node process exited with code {p.returncode} (see its log)")
        views = collector.nodes()
        if all(
            n in views and views[n].status and views[n].status.data_endpoint and views[n].telemetry_count > 0
            for n in names
        ):
            return
        time.sleep(0.2)
    raise AdaptiveError(f"nodes did not come online within {timeout_s:g} s")


def stop_processes(procs: list[subprocess.Popen], timeout_s: float = 10.0) -> None:
    """Terminate the node processes, killing any that do not exit within ``timeout_s``."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()


PolicyBuilder = Callable[[str, Any], tuple[Any, Any, Any, str, Any]]
StaticChooser = Callable[[str, list[str], str, float], dict[str, tuple[tuple[int, ...], tuple[str, ...]]]]


def run_demo(cfg: DemoConfig, build_policy: PolicyBuilder, static_plans: StaticChooser) -> dict[str, Any]:
    """Run the demo; return the summary (also written to ``<out>/summary.json``).

    ``build_policy(spec, controller_config)`` wires the controller's policy and
    ``static_plans(model, devices, uplink_csv, window_s)`` picks the static baselines on the
    replayed window (the CLI passes :func:`agents.live.build_policy` and
    :func:`agents.live.static_plans`), so the demo does not import ``agents`` or ``envs``.
    """
    from adaptive.broker import EmbeddedBroker
    from adaptive.controller import Controller, ControllerConfig
    from adaptive.profiles import resolve_model
    from adaptive.runtime.client import InferenceClient, write_records
    from adaptive.runtime.node import load_trace_series
    from adaptive.zoo import default_input_shape
    from monitor.collector import Collector
    from monitor.schema import Message, PlanMessage, plan_topic
    from monitor.transport import MqttTransport, parse_broker_url

    profile = resolve_model(cfg.model)  # fail fast: a shipped profile covering every demo device
    missing = [d for _, d in CHAIN if d not in profile.latency_ms]
    if missing:
        raise AdaptiveError(f"model profile {cfg.model} has no latencies for {missing}; the demo emulates "
                            f"{[d for _, d in CHAIN]}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    trace_file = _trace_path(cfg)
    series = load_trace_series(trace_file, 1.0, cfg.trace_median_mbps)
    phase_s = cfg.duration_s / 3
    uplink_csv = out / "uplink.csv"  # what the pi's emulated uplink replays, for the static choices
    uplink_csv.write_text("time_s,bandwidth_mbps\n" + "".join(f"{t},{v:.4f}\n" for t, v in enumerate(series)))
    broker = EmbeddedBroker("127.0.0.1", free_port()).start()
    url = parse_broker_url(broker.url)
    procs = _spawn_nodes(cfg, broker.url, trace_file, out)
    ctl_cfg = ControllerConfig.from_dict(
        {
            "model_profile": cfg.model,
            "cluster": cfg.cluster,
            "chain": [{"node": n, "device": d} for n, d in CHAIN],
            "interval_s": 1.0,
            "min_dwell_s": 2.0,
            "stale_after_s": 3.0,
            "source_rule": "auto",
            # the client is closed-loop (one request at a time): it never queues, so no plan is
            # ruled out for its request rate
            "rate_headroom": 0.0,
        }
    )
    policy, candidates, obs_spec, name, on_model = build_policy(_policy_spec(cfg), ctl_cfg)
    control = MqttTransport(url, f"demo-{cfg.cluster}")
    phases: list[dict[str, Any]] = []
    records: list[Any] = []
    scales: list[float] = []
    timeline: list[tuple[float, str, float, float, str, float]] = []
    controller = client = view = None
    try:
        control.start()
        with Collector(url, cfg.cluster) as collector:
            wait_online(collector, procs, [n for n, _ in CHAIN])
            controller = Controller(
                ctl_cfg,
                url,
                policy,
                candidates=candidates,
                obs_spec=obs_spec,
                policy_name=name,
                on_model=on_model,
            ).start()
            controller.step()  # the first plan and rule, before any request
            client = InferenceClient(  # plan-less requests: the pi stamps each one from its rule
                "demo", url, cfg.cluster, default_input_shape(cfg.model), timeout_s=30.0, source_decides=True
            ).start()
            view = _View(cfg) if cfg.view else None
            L = controller.model.num_blocks
            fixed: dict[str, Any] = {"static-hindsight": None, "static-mean": None,
                                     "device-only": ((L,) * (len(CHAIN) - 1), ())}
            for phase in ("adaptive", *fixed):
                if phase == "static-hindsight":  # the adaptive phase is over: keep what it measured
                    scales = [round(controller.scales[n], 3) for n, _ in CHAIN]
                    fixed.update(static_plans(cfg.model, [d for _, d in CHAIN], str(uplink_csv), phase_s))
                same = next((p["phase"] for p in phases if p.get("fixed") == fixed.get(phase)), None)
                if phase != "adaptive" and same is not None:
                    phases.append({**next(p for p in phases if p["phase"] == same), "phase": phase,
                                   "same_as": same})
                    continue
                start = time.time()
                control.publish(
                    Message(
                        f"adaptive/{cfg.cluster}/emulation",
                        json.dumps({"v": 1, "trace_start": start}).encode(),
                        1,
                    )
                )
                if phase != "adaptive":
                    if not controller._stop.is_set():
                        controller.close()  # fixed plans from here on
                    client.source_decides = False  # every request stamped with the phase's plan
                    splits, codecs = fixed[phase]
                    controller.version += 1
                    msg = PlanMessage(
                        controller.version,
                        controller.profile.model,
                        tuple(n for n, _ in CHAIN),
                        splits,
                        round(time.time(), 3),
                        phase,
                        None,
                        codecs,
                        L,
                    )
                    control.publish(Message(plan_topic(cfg.cluster), msg.encode(), 1, True))
                    deadline = time.monotonic() + 5
                    while (
                        client.plan is None or client.plan.version < controller.version
                    ) and time.monotonic() < deadline:
                        time.sleep(0.05)
                done = len(client.records)
                end = start + phase_s
                while time.time() < end:
                    client.run(min(1.0, max(end - time.time(), 0.05)), concurrency=1)
                    now = time.time()
                    recent = [r for r in client.records[-5:] if r.latency_ms is not None]
                    true_bw = series[int(now - start) % len(series)]
                    est = _estimate(collector)
                    shown = f"[{recent[-1].plan}]" if recent else ""
                    timeline.append(
                        (
                            now - start,
                            phase,
                            true_bw,
                            est,
                            shown,
                            float(np.median([r.latency_ms for r in recent])) if recent else float("nan"),
                        )
                    )
                    if view is not None:
                        view.update(phase, now - start, phase_s, true_bw, est, shown, client.records[done:])
                phase_records = client.records[done:]
                records += [(phase, r) for r in phase_records]
                phases.append({**_summarise(phase, phase_records), "fixed": fixed.get(phase),
                               "started_at": round(start, 3)})
                if view is not None:
                    view.finish(phases[-1])
    finally:
        if view is not None:
            view.close()
        if client is not None:
            client.close()
        if controller is not None and not controller._stop.is_set():
            controller.close()
        control.close()
        stop_processes(procs)
        broker.close()
    base = next(p for p in phases if p["phase"] == "device-only")["mean_ms"]
    for p in phases:
        p["speedup_vs_device_only"] = round(base / p["mean_ms"], 3) if p["mean_ms"] else None
        fixed_plan = p.pop("fixed")
        if fixed_plan is not None:
            p["plan"] = {"splits": list(fixed_plan[0]), "codecs": list(fixed_plan[1])}
    by = {p["phase"]: p for p in phases}
    better = min(("static-hindsight", "static-mean"), key=lambda k: by[k]["mean_ms"] or float("inf"))
    ratio = by["adaptive"]["mean_ms"] / by[better]["mean_ms"] if by[better]["mean_ms"] else None
    summary = {
        "model": cfg.model,
        "policy": name,
        "rule": controller.rule_kind if controller is not None else None,
        "device_scales": scales,
        "trace": trace_file.name,
        "trace_median_mbps": cfg.trace_median_mbps,
        "phase_s": phase_s,
        "phases": phases,
        "better_static": better,
        "adaptive_vs_better_static": round(ratio, 3) if ratio else None,
    }
    write_records([r for _, r in records], out / "requests.csv")  # one row per request, all phases
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    _plot(timeline, records, series[: int(np.ceil(phase_s))], out / "demo.png", cfg, name)
    return summary


def _policy_spec(cfg: DemoConfig) -> str:
    """``auto``: the shipped PPO policy when its sidecar matches the demo's model and chain."""
    if cfg.policy != "auto":
        return cfg.policy
    from adaptive.observation import PolicySpec

    sidecar = PolicySpec.load(Path(str(resources.files("agents.trained").joinpath("ppo_default.json"))))
    match = sidecar.model_profile == cfg.model and list(sidecar.devices) == [d for _, d in CHAIN]
    return "ppo" if match else "hysteresis"


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
    phases = ("adaptive", "static-hindsight", "static-mean", "device-only")
    colors = {"adaptive": "tab:green", "static-hindsight": "tab:purple", "static-mean": "tab:orange",
              "device-only": "tab:gray"}
    adaptive = [x for x in timeline if x[1] == "adaptive"]
    axes[0].step(np.arange(len(trace) + 1), [*trace, trace[-1]], where="post", color="black",
                 label="pi uplink (trace)")
    axes[0].plot(
        [x[0] for x in adaptive], [x[3] for x in adaptive], color="tab:blue", label="estimated (monitor)"
    )
    axes[0].set_ylabel("Mbit/s")
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    for phase in phases:
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
    ran = [r for p, r in records if p == "adaptive" and r.outcome == "ok"]
    labels = sorted({r.plan for r in ran},
                    key=lambda text: ([int(x) for x in text.split("/")[0].split(",") if x], text))
    if ran:
        t0 = min(r.sent_at for r in ran)
        axes[2].plot([r.sent_at - t0 for r in ran], [labels.index(r.plan) for r in ran], ".", ms=3,
                     color="tab:green")
    axes[2].set_yticks(range(len(labels)), [f"[{x}]" for x in labels], fontsize=7)
    axes[2].set_ylabel("plan (adaptive)")
    axes[2].set_xlabel("time in phase, s")
    axes[0].set_title(f"adaptive demo: {cfg.model}, policy {policy}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
