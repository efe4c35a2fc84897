"""``adaptive experiment``: run a scenario and report on it."""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from typing import Any

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``experiment run|report|list``."""
    p = sub.add_parser(
        "experiment",
        help="run a scenario (adaptive.scenario/v1) and report on it",
        description="Scenarios describe clients, links, loads and the policies to compare "
        "(docs/experiments.md); shipped ones are listed by 'adaptive experiment list'.",
    )
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    r = verbs.add_parser(
        "run", help="run a scenario's policies and write the records, summary, figures and report"
    )
    r.add_argument("scenario", help="scenario YAML file, or the name of a shipped scenario")
    r.add_argument(
        "--mode",
        choices=("sim", "live"),
        default="sim",
        help="sim: the model and environment under the scenario's conditions (seconds); live: broker, "
        "node processes running the real model, controller and clients on this machine, then the "
        "same scenario in sim beside it (minutes; the scenario's live: block says how to size it)",
    )
    r.add_argument(
        "--shaping",
        choices=("app", "netns"),
        default="app",
        help="live: app emulates each uplink in its node (default); netns runs each edge node in a "
        "network namespace behind a tbf-shaped veth pair, changed live by the schedule (root)",
    )
    r.add_argument("--repeats", type=int, help="repeats per policy (default: the scenario's in sim, 1 live)")
    r.add_argument("--seed", type=int, help="first seed (default: the scenario's)")
    r.add_argument("--out", help="output directory (default runs/experiments/<name>-<mode>)")
    r.set_defaults(func=_run)
    q = verbs.add_parser("report", help="rebuild the figures and report.md of a run directory")
    q.add_argument("dir", help="the --out directory of a run")
    q.set_defaults(func=_report)
    s = verbs.add_parser("list", help="the shipped scenarios")
    s.set_defaults(func=_list)


def _run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adaptive.errors import AdaptiveError
    from adaptive.experiments.scenario import Scenario

    scenario = Scenario.load(args.scenario)
    if (args.repeats is not None and args.repeats < 1) or (args.seed is not None and args.seed < 0):
        raise AdaptiveError("--repeats must be >= 1 and --seed >= 0")
    out = Path(args.out or f"runs/experiments/{scenario.name}-{args.mode}")
    if args.shaping != "app" and args.mode != "live":
        raise AdaptiveError("--shaping is for --mode live")
    if args.mode == "live":
        return _run_live(scenario.for_live(), out, args)
    from adaptive.experiments.report import write_run
    from adaptive.experiments.simulate import simulate

    started = time.perf_counter()

    def progress(policy: str, repeat: int, repeats: int) -> None:
        print(
            f"  {policy}: repeat {repeat + 1}/{repeats} done ({time.perf_counter() - started:.1f} s)",
            file=sys.stderr,
            flush=True,
        )

    result = simulate(scenario, repeats=args.repeats, seed=args.seed, on_progress=progress)
    summary = write_run(
        out, scenario, result["rows"], result["runs"], args.mode, time.perf_counter() - started
    )
    _print(summary)
    print(f"records, summary, figures and report.md in {out}")
    return 0


def _run_live(scenario: Any, out: Any, args: argparse.Namespace) -> int:
    """Live, then the same scenario in sim with the devices as calibrated live, and the comparison."""
    import csv
    import dataclasses

    import numpy as np

    from adaptive.experiments.live import check_live, run_live
    from adaptive.experiments.report import compare, write_run
    from adaptive.experiments.simulate import simulate

    if args.seed is not None:
        scenario = dataclasses.replace(scenario, seed=args.seed)
    check_live(scenario, args.shaping)
    started = time.perf_counter()
    bar = _Progress()
    print(
        f"{scenario.name} live: {len(scenario.policies)} policies x {scenario.duration_s:g} s; node logs, "
        f"records and report in {out}",
        file=sys.stderr,
        flush=True,
    )
    result = run_live(scenario, out, repeats=args.repeats or 1, on_progress=bar, shaping=args.shaping)
    bar.close()
    live = result["live"]
    with (out / "requests.csv").open("w", newline="", encoding="utf-8") as fh:
        fields = ["policy", "repeat", "client", "id", "t_s", "latency_ms", "outcome", "plan", "hops", "error"]
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(result["requests"])
    cal = live["device_scales_calibrated"]
    edges = [c.name for c in scenario.clients]
    scales = [float(np.mean([cal[n] for n in edges]))] + [cal[a.name] for a in scenario.accelerators]
    extra: dict[str, Any] = {"live": live}
    if result["rows"]:
        sim_s = dataclasses.replace(scenario, device_scales=tuple(scales))
        ran = sorted({r["policy"] for r in result["rows"]}, key=list(scenario.policies).index)
        sim_s = dataclasses.replace(sim_s, policies=tuple(ran))
        t0 = time.perf_counter()
        sim = simulate(sim_s)
        sim_summary = write_run(out / "sim", sim_s, sim["rows"], sim["runs"], "sim", time.perf_counter() - t0)
        from adaptive.experiments.report import scenario_doc, summarise

        live_pol = summarise(result["rows"], scenario_doc(scenario))["policies"]
        extra["compare"] = compare(live_pol, sim_summary["policies"])
    summary = write_run(
        out, scenario, result["rows"], result["runs"], "live", time.perf_counter() - started, extra
    )
    _print(summary)
    if "compare" in summary:
        _print_compare(summary["compare"])
    print(
        f"{live['requests']} requests, {live['lost']} lost; records, summary, figures and report.md in {out}"
    )
    if live["interrupted"]:
        print("interrupted: every process stopped; what ran before is kept", file=sys.stderr)
        return 130
    return 0


def _cell(value: Any, spec: str) -> str:
    """``value`` formatted by ``spec`` (e.g. ``>9.1f``), or a dash in the same width."""
    if value is not None:
        return format(value, spec)
    return format("-", spec.split(".")[0].rstrip("dfg%"))


def _print_compare(c: dict[str, Any]) -> None:
    print(f"{'sim vs live':<18}{'live ms':>9}{'sim ms':>9}{'ratio':>7}{'live p95':>10}{'sim p95':>9}"
          f"{'seg. MAPE':>10}")
    fmt = _cell
    for r in c["policies"]:
        mape = r.get("segment_mape_pct")
        print(
            f"{r['policy']:<18}{fmt(r['live_mean_ms'], '>9.1f')}{fmt(r['sim_mean_ms'], '>9.1f')}"
            f"{fmt(r['mean_ratio'], '>7.3f')}{fmt(r['live_p95_ms'], '>10.1f')}{fmt(r['sim_p95_ms'], '>9.1f')}"
            f"{fmt(mape, '>9.1f')}{'%' if mape is not None else ' '}"
        )
    verdict = (
        f"means within 10%: {'yes' if c['within_10pct'] else 'no'}; ranking "
        f"{'agrees' if c['ranking_agrees'] else 'disagrees'}: live {' < '.join(c['live_order'])}; "
        f"sim {' < '.join(c['sim_order'])}"
    )
    print(textwrap.fill(verdict, 79, subsequent_indent="  "))


class _Progress:
    """A progress line on stderr: redrawn in place on a terminal, one line per phase otherwise."""

    def __init__(self) -> None:
        self.tty = sys.stderr.isatty()
        self.last: tuple[str, int] | None = None
        self.started = time.perf_counter()

    def __call__(self, p: Any) -> None:
        key = (p.policy, p.repeat)
        if self.tty:
            width = 20
            full = int(width * p.elapsed_s / p.duration_s) if p.duration_s else 0
            line = (
                f"  [{p.done + 1}/{p.phases}] {p.policy[:16]:<16} [{'#' * full}{'.' * (width - full)}] "
                f"{p.elapsed_s:3.0f}/{p.duration_s:.0f} s  {p.answered}/{p.sent} answered"
            )
            print("\r" + line[:79].ljust(79), end="", file=sys.stderr, flush=True)
        elif key != self.last:
            print(
                f"  [{p.done + 1}/{p.phases}] {p.policy} ({time.perf_counter() - self.started:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
        self.last = key

    def close(self) -> None:
        if self.tty:
            print(file=sys.stderr, flush=True)


def _print(summary: dict[str, Any]) -> None:
    s = summary["scenario"]
    print(
        f"{s['name']} ({summary['mode']}, {summary['wall_s']:.1f} s): {s['model']}, {len(s['clients'])} "
        f"client(s), {s['duration_s']:g} s"
    )
    width = max(18, *(len(n) + 1 for n in summary["policies"]))
    print(f"{'policy':<{width}}{'mean ms':>9}{'p95':>9}{'dropped':>9}{'edge':>6}  main plan")
    fmt = _cell
    for name, p in summary["policies"].items():
        drop = 100 * p["drop_rate"] if p["drop_rate"] is not None else None
        print(
            f"{name:<{width}}{fmt(p['mean_ms'], '>9.1f')}{fmt(p['p95_ms'], '>9.1f')}{fmt(drop, '>8.2f')}%"
            f"{fmt(p['edge_share'], '>6.2f')}  {p['main_plan']}"
        )
    band = summary.get("offload_pays")
    if band:
        print("offloading pays from (Mbit/s; segment mean this much below device-only's):")
        margins = list(next(iter(band.values())))
        for name, b in band.items():
            low = ["never" if b[m]["lowest_mbps"] is None else f"{b[m]['lowest_mbps']:g}" for m in margins]
            cells = [f"{m:>4} below: {x:<6}" for m, x in zip(margins, low, strict=True)]
            print(f"  {name:<{width}}" + "  ".join(cells).rstrip())
    check = summary.get("published_check")
    if check is not None:
        e = check["expect"]
        if "better" in e:
            what = (
                f"{', '.join(e['better'])} below {', '.join(e.get('than', []))} in {e.get('by', 'mean_ms')}"
            )
        elif "order" in e:
            what = f"{' < '.join(e['order'])} in {e.get('by', 'mean_ms')}"
        else:
            what = f"{e.get('policy')}'s {e.get('quantity', 'edge_share')} {e.get('direction')} by segment"
        verdict = {True: "holds", False: "does NOT hold", None: "cannot be checked"}[check.get("holds")]
        values = check.get("values")
        if isinstance(values, dict):
            text = ", ".join(
                f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in values.items()
            )
        else:
            text = ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in values or [])
        print(textwrap.fill(f"published: {what}: {verdict}", 79, subsequent_indent="  "))
        print(textwrap.fill(f"values: {text}", 79, initial_indent="  ", subsequent_indent="  "))


def _report(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from adaptive.experiments.report import write_report

    path = write_report(Path(args.dir))
    summary = json.loads((Path(args.dir) / "summary.json").read_text(encoding="utf-8"))
    _print(summary)
    if "compare" in summary:
        _print_compare(summary["compare"])
    print(f"report in {path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from adaptive.experiments.scenario import Scenario, shipped_scenarios

    for name, path in sorted(shipped_scenarios().items()):
        s = Scenario.load(path)
        first = (s.description.splitlines() or [""])[0]
        print(f"{name:<22}{first}")
    return 0
