"""``adaptive experiment run --mode live``: a scenario on real processes on this machine.

What runs: the embedded MQTT broker; one node process per client (its edge device) and per
accelerator, each running its monitor and the real PyTorch stages of the model, padded to its
device's profiled time times the scenario's ``device_scales`` (``adaptive node --emulate
--slowdown``); activations cross real sockets. Each edge's uplink is the node's application-level
shaper replaying the scenario's uplink for that client (one value per ``dt_s``), with the
scenario's propagation delays; the links between accelerators run at ``accel_link_mbps``. One
client per scenario client enters at its own edge, sending ``rate_rps`` frames per second open
loop from ``join_s`` to ``leave_s``; the source node picks each frame's plan from the rule the
controller gave it (:class:`adaptive.control.shared_controller.SharedController`, which decides jointly).

The policies run one after another, each on the whole schedule from its start (the uplink replay
restarts); the calibration of the devices carries over. Each request's record is binned into the
rows the simulation writes (a row per step and present client), so one summary, one set of
figures and one report serve both modes. A frame answered later than its client's deadline is
counted as dropped, and its latency is left out of the mean, as the simulation leaves out the
frames it drops.

With ``shaping="netns"`` (root; ``--shaping netns``) each edge node runs in its own network
namespace, joined to the root namespace by a veth pair whose egress from the namespace is a
``tbf`` qdisc: the client's uplink is a real kernel-shaped link, changed live with ``tc qdisc
change`` as the scenario's schedule says (:class:`adaptive.lab.netns.RateSchedule`), and the edge's
monitor measures it as it would a real one. The rest (broker, accelerators, the clients' own
processes) stays in the root namespace. Uplink propagation delays need ``netem``, which this
kernel lacks: a scenario with one is refused in this mode.

Not emulated live: background CPU load (an emulated node reports an idle device, and
nothing here loads it; a scenario with a load is refused) and ``clairvoyant`` (it needs the
future).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from adaptive.errors import AdaptiveError
from adaptive.experiments.scenario import Scenario
from adaptive.lab.cluster import EDGE_PROBE_INTERVAL_S, Cluster, NodeSpec, ResultCheck

__all__ = ["LIVE_POLICIES", "LiveProgress", "check_live", "run_live"]

log = logging.getLogger(__name__)

LIVE_POLICIES = (
    "ppo",
    "coordinated",
    "greedy",
    "hysteresis",
    "device-only",
    "full-offload",
    "static-hindsight",
)


@dataclass
class LiveProgress:
    """Where a live run is, for a progress display.

    Attributes:
        policy: The policy running.
        repeat: Its repeat, from 0.
        elapsed_s: Seconds into its schedule.
        duration_s: The schedule's length, s.
        sent: Frames sent by all clients in this phase.
        answered: Of those, answered (ok, error or timeout).
        done: Phases finished, of ``phases``.
        phases: Policies times repeats.
    """

    policy: str = ""
    repeat: int = 0
    elapsed_s: float = 0.0
    duration_s: float = 0.0
    sent: int = 0
    answered: int = 0
    done: int = 0
    phases: int = 0


def check_live(scenario: Scenario, shaping: str = "app") -> None:
    """Refuse, in one line, what a live run cannot do with ``scenario`` (and ``shaping``)."""
    if shaping not in ("app", "netns"):
        raise AdaptiveError(f"--shaping must be app or netns, found '{shaping}'")
    if shaping == "netns":
        from adaptive.lab.netns import netns_available

        if not netns_available():
            raise AdaptiveError("--shaping netns needs root, iproute2 and tc")
        if scenario.link_delay_ms and scenario.link_delay_ms[0] > 0:
            raise AdaptiveError(
                f"{scenario.source}: link_delay_ms: --shaping netns cannot delay the uplinks (no netem "
                "on this kernel); use the default application-level shaping"
            )
        if len(scenario.clients) > 16:
            raise AdaptiveError("--shaping netns takes at most 16 clients")
    for c in scenario.clients:
        if any(v != 0 for _, v in c.load.steps):
            raise AdaptiveError(
                f"{scenario.source}: clients '{c.name}' load: live runs do not emulate background "
                "load (use --mode sim, or give the scenario a live: block without loads)"
            )
    for a in scenario.accelerators:
        if any(v != 0 for _, v in a.load.steps):
            raise AdaptiveError(
                f"{scenario.source}: accelerators '{a.name}' load: live runs do not emulate "
                "background load (use --mode sim, or give the scenario a live: block without loads)"
            )
    for spec in scenario.policies:
        if spec.partition(":")[0] not in (*LIVE_POLICIES, "plan"):
            raise AdaptiveError(
                f"{scenario.source}: policy '{spec}' cannot run live (live: ppo[:PATH], plan:SPLITS, "
                f"{', '.join(LIVE_POLICIES[1:])})"
            )
    from adaptive.model.profiles import resolve_model

    profile = resolve_model(scenario.model)
    devices = [scenario.edge_device, *(a.device for a in scenario.accelerators)]
    missing = [d for d in devices if d not in profile.latency_ms]
    if missing:
        raise AdaptiveError(f"{scenario.source}: model profile {scenario.model} has no latencies "
                            f"for {missing}")


def run_live(
    scenario: Scenario,
    out: Path,
    *,
    repeats: int = 1,
    on_progress: Callable[[LiveProgress], None] | None = None,
    cluster: str = "experiment",
    batch_window_ms: float | None = None,
    shaping: str = "app",
) -> dict[str, Any]:
    """Run every policy of ``scenario`` live; return ``{"rows", "runs", "requests", "live"}``.

    ``rows`` are the simulation's rows (:func:`adaptive.experiments.simulate.simulate`); ``requests`` one
    entry per request; ``live`` what the run measured besides: the devices' scales as the
    controller calibrated them, the results checked against the whole model, requests lost, and
    whether the run was interrupted (Ctrl-C stops every process and keeps what was recorded).
    Node logs go to ``out``. ``shaping``: ``app`` (each edge's uplink emulated by its node) or
    ``netns`` (kernel-shaped links; root). ``batch_window_ms``: how long an accelerator waits to
    batch requests of several clients; by default 10 ms with several clients and none with one (a
    lone client's request would wait for a batch that never forms, a delay the model does not have).
    """
    check_live(scenario, shaping)
    if batch_window_ms is None:
        batch_window_ms = 10.0 if len(scenario.clients) > 1 else 0.0
    if repeats < 1:
        raise AdaptiveError("--repeats must be >= 1")
    out.mkdir(parents=True, exist_ok=True)
    run = _LiveRun(scenario, cluster, on_progress, repeats)
    uplinks = run.write_uplinks(out)
    links: dict[str, Any] = {}  # netns: each edge's namespace and kernel-shaped uplink
    try:
        if shaping == "netns":
            links = _shaped_links(scenario, run.cond)
        nodes = _nodes(scenario, run.declared, uplinks, links, batch_window_ms)
        with Cluster(scenario.model, nodes, cluster=cluster, logs=out,
                     broker_bind="0.0.0.0" if links else "127.0.0.1") as lab:
            lab.start(120.0)
            run.run(lab, links)
    except KeyboardInterrupt:
        run.interrupted = True
    finally:
        run.stop.set()
        for link in links.values():
            link.close()
    return run.result(batch_window_ms, shaping)


def _shaped_links(s: Scenario, cond: dict[str, np.ndarray]) -> dict[str, Any]:
    """A namespace per edge, its uplink a kernel-shaped veth pair at the schedule's first rate."""
    from adaptive.lab.netns import ShapedLink

    links: dict[str, Any] = {}
    try:
        for k, c in enumerate(s.clients):
            # a client runs on its edge device: its results from the edge skip the uplink
            links[c.name] = ShapedLink(f"adpx{k}", float(cond["bw"][0, k]), subnet=f"10.232.{k}",
                                       uplink_only=True, default_route=True,
                                       local_subnet=f"10.233.{k}").start()
    except BaseException:
        for link in links.values():
            link.close()
        raise
    return links


def _nodes(s: Scenario, declared: dict[str, float], uplinks: list[Path], links: dict[str, Any],
           batch_window_ms: float) -> list[NodeSpec]:
    """Every edge (its uplink emulated, or in its namespace) and every accelerator of the scenario."""
    accels = [a.name for a in s.accelerators]
    delays = list(s.link_delay_ms) or [0.0] * len(accels)
    # where every node and client reaches the root namespace's processes
    root_ip = links[s.clients[0].name].host_ip if links else "127.0.0.1"
    nodes = []
    for k, c in enumerate(s.clients):
        link = links.get(c.name)
        # in a namespace, the kernel shapes its uplink and its client sends it frames over the unshaped pair
        if link is not None:
            extra: tuple[str, ...] = ("--bind", "0.0.0.0", "--advertise", link.local_peer_ip)
        else:
            extra = ("--uplink-trace", str(uplinks[k]), "--trace-dt", f"{s.dt_s:g}",
                     "--uplink-delay-ms", f"{delays[0]:g}")
        nodes.append(NodeSpec(c.name, s.edge_device, accels[0], probe_interval_s=EDGE_PROBE_INTERVAL_S,
                              extra=(*extra, "--slowdown", f"{declared[c.name]:g}"), netns=link,
                              broker_host=link.host_ip if link is not None else "127.0.0.1",
                              next_host=root_ip))
    here = ("--bind", "0.0.0.0", "--advertise", root_ip) if links else ()
    for i, a in enumerate(s.accelerators, start=1):
        # a result goes back over every link between this node and the source (the model's return
        # path): its propagation delays
        extra = ("--uplink-mbps", f"{s.accel_link_mbps:g}",
                 "--uplink-delay-ms", f"{delays[i] if i < len(delays) else 0.0:g}",
                 "--batch-window-ms", f"{batch_window_ms:g}", "--result-delay-ms", f"{sum(delays[:i]):g}")
        nodes.append(NodeSpec(a.name, a.device, accels[i] if i < len(accels) else None,
                              extra=(*extra, *here, "--slowdown", f"{declared[a.name]:g}"),
                              next_host=root_ip))
    return nodes


SETTLE_S = 2.0  # links at their first rate before each policy: two probe pauses at least
RULE_WAIT_S = 0.5  # then the sources apply the policy's first rule (acked in a few ms here)


class _LiveRun:
    """A scenario's policies, one after another, on a started cluster; what they measured."""

    def __init__(self, s: Scenario, cluster: str, on_progress: Callable[[LiveProgress], None] | None,
                 repeats: int) -> None:
        from adaptive.control.controller import ControllerConfig
        from agents.wiring import build_multi_policy

        self.s, self.cond, self.repeats, self.on_progress = s, s.conditions(), repeats, on_progress
        edges, accels = [c.name for c in s.clients], [a.name for a in s.accelerators]
        scales = list(s.device_scales) or [1.0] * (1 + len(accels))
        self.declared = {n: scales[0] for n in edges} | {a: scales[1 + i] for i, a in enumerate(accels)}
        self.ctl_cfg = ControllerConfig.from_dict({
            "model_profile": s.model, "cluster": cluster,
            "chain": [{"node": edges[0], "device": s.edge_device},
                      *({"node": a.name, "device": a.device} for a in s.accelerators)],
            "sources": [{"node": n, "device": s.edge_device} for n in edges[1:]],
            "interval_s": 1.0, "stale_after_s": 3.0, "source_rule": "table", "parallel": s.parallel})
        self.env_overrides = {
            "min_edge_blocks": s.min_edge_blocks, "codecs": list(s.codecs),
            "link_delay_ms": list(s.link_delay_ms), "deadline_ms": s.clients[0].deadline_ms,
            "accel_link_mbps": s.accel_link_mbps, "device_scales": scales,
        }
        self.statics: dict[str, int] = {}
        for spec in s.policies:  # a bad policy fails here, before anything starts
            if spec.removesuffix(":layers") == "static-hindsight" or spec.startswith("plan:"):
                self.statics[spec] = _fixed_plan(spec, s, self.cond)
            else:
                build_multi_policy(spec.removesuffix(":layers"), self.ctl_cfg, env=self.env_for(spec))
        self.calibrated: dict[str, float] = dict(self.declared)
        self.requests: list[dict[str, Any]] = []
        self.runs: list[dict[str, Any]] = []
        self.rows: list[dict[str, Any]] = []
        self.results: dict[str, Any] = {}
        self.interrupted = False
        self.stop = threading.Event()
        self.progress = LiveProgress(phases=len(s.policies) * repeats)

    def env_for(self, spec: str) -> dict[str, Any] | None:
        """The env config a policy's candidates come from (a trained policy brings its own).

        Plans with sections when the scenario allows them, unless ``NAME:layers`` asks for layer plans.
        """
        if spec.startswith("ppo"):
            return None
        from adaptive.experiments.simulate import plan_options

        return {**self.env_overrides, **plan_options(spec, self.s)}

    def write_uplinks(self, out: Path) -> list[Path]:
        """What each edge's emulated uplink replays, one CSV per client."""
        paths = []
        for k, c in enumerate(self.s.clients):
            path = out / f"uplink-{c.name}.csv"
            bw = self.cond["bw"][:, k]
            path.write_text("time_s,bandwidth_mbps\n" + "".join(
                f"{t * self.s.dt_s:g},{v:.4f}\n" for t, v in enumerate([*bw, bw[-1]])))
            paths.append(path)
        return paths

    def run(self, lab: Cluster, links: dict[str, Any]) -> None:
        """Every policy, ``repeats`` times; Ctrl-C stops sending and keeps what was recorded."""
        from adaptive.nn.zoo import default_input_shape

        check = ResultCheck(self.s.model, default_input_shape(self.s.model))
        reach = {n: {"bind": "0.0.0.0", "advertise": link.local_ip} for n, link in links.items()}
        # a frame is not sent again before its deadline: a resend would queue its work twice
        clients = [lab.client(f"{c.name}.client", timeout_s=max(30.0, 3 * c.deadline_ms / 1e3), source=c.name,
                              min_deadline_s=max(2.0, c.deadline_ms / 1e3), on_result=check,
                              **reach.get(c.name, {})) for c in self.s.clients]
        try:
            for r in range(self.repeats):
                for spec in self.s.policies:
                    self.progress.policy, self.progress.repeat = spec, r
                    phase = _Phase(self, lab, clients, check, links).run(spec, r)
                    self.requests += phase["requests"]
                    self.rows += phase["rows"]
                    self.runs.append(phase["run"])
                    self.calibrated = phase["scales"]
                    self.progress.done += 1
                    if self.stop.is_set():
                        raise KeyboardInterrupt
        except KeyboardInterrupt:
            self.interrupted = True
        self.results = check.summary()

    def result(self, batch_window_ms: float, shaping: str) -> dict[str, Any]:
        """``{"rows", "runs", "requests", "live"}`` (see :func:`run_live`)."""
        sent = sum(p["sent"] for p in self.runs)
        live = {
            "device_scales_declared": self.declared,
            "device_scales_calibrated": {n: round(v, 3) for n, v in self.calibrated.items()},
            "requests": sent, "records": len(self.requests), "lost": sent - len(self.requests),
            "results": self.results, "interrupted": self.interrupted, "batch_window_ms": batch_window_ms,
            "shaping": shaping, "host": _host(),
        }
        return {"rows": self.rows, "runs": self.runs, "requests": self.requests, "live": live}


class _Phase:
    """One policy over the whole schedule (on kernel-shaped ``links`` too, where there are some)."""

    def __init__(self, run: _LiveRun, lab: Cluster, clients: list[Any], check: ResultCheck,
                 links: dict[str, Any]) -> None:
        self.run_, self.lab, self.clients, self.check, self.links = run, lab, clients, check, links

    def _schedules(self) -> list[Any]:
        from adaptive.lab.netns import RateSchedule

        s, cond = self.run_.s, self.run_.cond
        schedules = []
        for k, c in enumerate(s.clients):
            if c.name in self.links:
                bw = cond["bw"][:, k]
                steps = [(t * s.dt_s, float(v)) for t, v in enumerate(bw) if t == 0 or v != bw[t - 1]]
                schedules.append(RateSchedule(self.links[c.name], steps))
        return schedules

    def _controller(self, spec: str) -> tuple[Any, Any]:
        from adaptive.control.shared_controller import SharedController
        from agents.wiring import build_multi_policy

        run, s = self.run_, self.run_.s
        fixed = spec in run.statics
        wiring = build_multi_policy("static" if fixed else spec.removesuffix(":layers"), run.ctl_cfg,
                                    static_plan=run.statics.get(spec), env=run.env_for(spec))
        controller = SharedController(run.ctl_cfg, self.lab.address, wiring.policy, spec=wiring.spec,
                                      candidates=wiring.candidates, deadline_ms=wiring.deadline_ms,
                                      step_s=wiring.step_s, policy_name=spec, on_shared=wiring.on_shared,
                                      accel_link_mbps=s.accel_link_mbps, link_delay_ms=s.link_delay_ms,
                                      admission={c.name: c.deadline_ms for c in s.clients})
        controller.adopt_scales(run.calibrated)
        return controller.start(), wiring

    def run(self, spec: str, repeat: int) -> dict[str, Any]:
        """Run ``spec``; its requests, rows, calibrated scales and run record."""
        run, s, clients = self.run_, self.run_.s, self.clients
        schedules = self._schedules()
        # Each policy starts on links already at their first rate, long enough for the monitors to have
        # measured it, as in the sim: otherwise a source would decide its first frames on the rate the
        # previous policy ended at, and a probe sized for that rate would hold a link that stepped down.
        settle_s = SETTLE_S if bool(np.any(np.ptp(run.cond["bw"], axis=0) > 0)) else 0.0
        for sch in schedules:
            sch.link.set_rate(sch.rates[0])
        controller, wiring = self._controller(spec)
        done = [len(c.records) for c in clients]
        asked = [c.requests for c in clients]
        wall = time.perf_counter()
        try:
            start = self._start(controller, spec, settle_s)
            t0 = time.monotonic()
            for sch in schedules:
                sch.start(t0)
            self._drive_all(t0, done, asked)
            scales = {n: float(v) for n, v in controller.scales.items()}
        finally:
            controller.close()
            for sch in schedules:
                sch.stop()
        sent = sum(c.requests - a for c, a in zip(clients, asked, strict=True))
        requests = [{"policy": spec, "repeat": repeat, "client": spec_c.name, "id": rec.id,
                     "t_s": round(rec.sent_at - start, 4), "latency_ms": rec.latency_ms,
                     "outcome": rec.outcome, "plan": rec.plan, "hops": rec.hops, "error": rec.error}
                    for spec_c, c, d in zip(s.clients, clients, done, strict=True) for rec in c.records[d:]]
        rows = _rows(s, run.cond, spec, repeat, requests, wiring.candidates)
        return {"requests": requests, "rows": rows, "scales": scales,
                "run": {"policy": spec, "repeat": repeat, "wall_s": round(time.perf_counter() - wall, 3),
                        "sent": sent, "rules": len(controller.rules)}}

    def _start(self, controller: Any, spec: str, settle_s: float) -> float:
        """The schedule's start: after the links settled and every source applied the first rule."""
        stop = self.run_.stop
        # emulated uplinks hold their first rate until the schedule starts, and the first frames go out
        # then too
        start = time.time() + settle_s + RULE_WAIT_S
        self.lab.start_trace(start)
        stop.wait(settle_s)
        # every source's first rule: a frame decided on the previous policy's (retained until this one
        # lands) would not be this policy's
        controller.step()
        behind = controller.wait_rules(max(start - time.time(), 0.0))
        if behind:
            log.warning("%s: sources %s had not applied their first rule when the schedule started",
                        spec, behind)
        stop.wait(max(start - time.time(), 0.0))
        return start

    def _drive_all(self, t0: float, done: list[int], asked: list[int]) -> None:
        """Every client open loop over the schedule, reporting progress twice a second."""
        run, clients = self.run_, self.clients
        args = [(c, spec_c, self.check, t0, run.s.duration_s, run.stop)
                for c, spec_c in zip(clients, run.s.clients, strict=True)]
        runners = [threading.Thread(target=_drive, args=a, daemon=True) for a in args]
        for th in runners:
            th.start()
        progress = run.progress
        while any(th.is_alive() for th in runners):
            try:
                time.sleep(0.5)
            except KeyboardInterrupt:  # stop sending; keep what was recorded
                run.stop.set()
            progress.elapsed_s = min(time.monotonic() - t0, run.s.duration_s)
            progress.duration_s = run.s.duration_s
            progress.sent = sum(c.requests - a for c, a in zip(clients, asked, strict=True))
            progress.answered = sum(len(c.records) - d for c, d in zip(clients, done, strict=True))
            if run.on_progress is not None:
                run.on_progress(progress)
        for th in runners:
            th.join()


def _drive(client: Any, spec: Any, check: Any, t0: float, duration_s: float, stop: threading.Event) -> None:
    """Open loop at the client's rate from its join to its leave; then wait for the answers."""
    period = 1.0 / spec.rate_rps
    end = t0 + min(spec.leave_s if spec.leave_s is not None else duration_s, duration_s)
    next_at = t0 + spec.join_s
    while not stop.is_set():
        delay = next_at - time.monotonic()
        if delay > 0:
            stop.wait(delay)
            continue
        if next_at >= end:
            break
        client.send(check.inputs[check.index(client.requests)])  # request ids count up from 0, as this does
        next_at += period
    patience = time.monotonic() + client.timeout_s + 1
    while client.outstanding() and time.monotonic() < patience and not stop.is_set():
        time.sleep(0.05)


def _rows(s: Scenario, cond: dict[str, np.ndarray], policy: str, repeat: int, requests: list[dict[str, Any]],
          candidates: Any) -> list[dict[str, Any]]:
    """Requests binned into the simulation's rows: per step, per present client."""
    from adaptive.experiments.simulate import edge_share
    from adaptive.model.plans import plan_label
    from adaptive.model.profiles import resolve_model

    L = resolve_model(s.model).num_blocks
    share = {}
    for i in range(len(candidates)):
        p = candidates.plan(i)
        share[plan_label(p.splits, p.codecs, p.section)] = edge_share(p, max(L, 1))
    T = cond["active"].shape[0]
    rows = []
    for k, c in enumerate(s.clients):
        mine = [r for r in requests if r["client"] == c.name]
        bins: dict[int, list[dict[str, Any]]] = {}
        for r in mine:
            bins.setdefault(min(max(int(r["t_s"] // s.dt_s), 0), T - 1), []).append(r)
        known = Counter(r["plan"] for r in mine if r["plan"] in share)
        last = known.most_common(1)[0][0] if known else None
        for t in range(T):
            if not cond["active"][t, k]:
                continue
            at = bins.get(t, [])
            ok = [r["latency_ms"] for r in at if r["outcome"] == "ok" and r["latency_ms"] is not None
                  and r["latency_ms"] <= c.deadline_ms]
            plans = Counter(r["plan"] for r in at if r["plan"] in share)
            if plans:
                last = plans.most_common(1)[0][0]
            rows.append({
                "policy": policy, "repeat": repeat, "time_s": round(t * s.dt_s, 4), "client": c.name,
                "bandwidth_mbps": round(float(cond["bw"][t, k]), 4),
                "plan": last or "-", "edge_share": round(float(share.get(last, math.nan)), 4),
                "offered": len(at), "dropped": len(at) - len(ok),
                "latency_ms": round(float(np.mean(ok)), 3) if ok else math.nan,
            })
    return rows


def _fixed_plan(spec: str, s: Scenario, cond: dict[str, np.ndarray]) -> int:
    """The plan index a fixed policy keeps.

    ``plan:LABEL``: that plan; ``static-hindsight``: the one with the least true cost over the
    schedule, in the model.
    """
    from adaptive.experiments.simulate import policy_env

    env, policy, _ = policy_env(spec, s)
    env.reset(seed=s.seed, options={"script": cond})
    policy.begin_episode(env)
    return int(policy.choice)


def _host() -> str:
    import os
    import platform

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
