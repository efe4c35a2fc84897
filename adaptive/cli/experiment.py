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
        choices=("sim",),
        default="sim",
        help="sim: the model and environment under the scenario's conditions (seconds)",
    )
    r.add_argument("--repeats", type=int, help="repeats per policy (default: the scenario's)")
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
    from adaptive.report import write_run
    from adaptive.scenario import Scenario
    from agents.experiment import simulate

    scenario = Scenario.load(args.scenario)
    if (args.repeats is not None and args.repeats < 1) or (args.seed is not None and args.seed < 0):
        raise AdaptiveError("--repeats must be >= 1 and --seed >= 0")
    out = Path(args.out or f"runs/experiments/{scenario.name}-{args.mode}")
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


def _print(summary: dict[str, Any]) -> None:
    s = summary["scenario"]
    print(
        f"{s['name']} ({summary['mode']}, {summary['wall_s']:.1f} s): {s['model']}, {len(s['clients'])} "
        f"client(s), {s['duration_s']:g} s"
    )
    print(f"{'policy':<18}{'mean ms':>9}{'p95':>9}{'dropped':>9}{'edge':>6}  main plan")
    fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
    for name, p in summary["policies"].items():
        drop = 100 * p["drop_rate"] if p["drop_rate"] is not None else None
        print(
            f"{name:<18}{fmt(p['mean_ms'], '>9.1f')}{fmt(p['p95_ms'], '>9.1f')}{fmt(drop, '>8.2f')}%"
            f"{fmt(p['edge_share'], '>6.2f')}  {p['main_plan']}"
        )
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
            text = ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}"
                             for k, v in values.items())
        else:
            text = ", ".join(f"{v:.3g}" if isinstance(v, float) else str(v) for v in values or [])
        print(textwrap.fill(f"published: {what}: {verdict}", 79, subsequent_indent="  "))
        print(textwrap.fill(f"values: {text}", 79, initial_indent="  ", subsequent_indent="  "))


def _report(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from adaptive.report import write_report

    path = write_report(Path(args.dir))
    _print(json.loads((Path(args.dir) / "summary.json").read_text(encoding="utf-8")))
    print(f"report in {path}")
    return 0


def _list(args: argparse.Namespace) -> int:
    from adaptive.scenario import Scenario, shipped_scenarios

    for name, path in sorted(shipped_scenarios().items()):
        s = Scenario.load(path)
        first = (s.description.splitlines() or [""])[0]
        print(f"{name:<22}{first}")
    return 0
