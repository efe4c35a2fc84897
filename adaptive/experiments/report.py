"""Experiment outputs: per-step records, a summary, figures and a markdown report.

``adaptive experiment run`` writes into its output directory

* ``steps.csv``: one row per step and present client (:func:`adaptive.experiments.simulate.simulate`'s rows);
* ``summary.json``: the scenario, and per policy its frames, drops, latency (mean, median, p95,
  weighted by the frames served), share of the model on the edge, plan switches, per client and
  per *segment* (the stretches between the scenario's bandwidth steps, joins and leaves), and the
  published result's check when the scenario names one;
* ``latency.png`` (latency over time per policy, each client's bandwidth under it), ``cdf.png``,
  ``plans.png`` (share of the model on the edge over time) and ``drops.png``;
* ``report.md``, which ``adaptive experiment report DIR`` rebuilds from the two data files.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from adaptive.errors import AdaptiveError

__all__ = ["FIELDS", "compare", "read_steps", "summarise", "write_report", "write_run"]

FIELDS = (
    "policy",
    "repeat",
    "time_s",
    "client",
    "bandwidth_mbps",
    "plan",
    "edge_share",
    "offered",
    "dropped",
    "latency_ms",
)


def _weighted_quantile(values: np.ndarray, weights: np.ndarray, q: float) -> float | None:
    ok = np.isfinite(values) & (weights > 0)
    if not ok.any():
        return None
    v, w = values[ok], weights[ok]
    order = np.argsort(v)
    cum = np.cumsum(w[order])
    return float(v[order][min(np.searchsorted(cum, q * cum[-1]), len(v) - 1)])


def _stats(rows: list[dict[str, Any]], dt_s: float) -> dict[str, Any]:
    offered = np.array([r["offered"] for r in rows], float)
    dropped = np.array([r["dropped"] for r in rows], float)
    served = offered - dropped
    lat = np.array([r["latency_ms"] for r in rows], float)
    share = np.array([r["edge_share"] for r in rows], float)
    ok = np.isfinite(lat) & (served > 0)
    total = float(offered.sum())
    mean = float((lat[ok] * served[ok]).sum() / served[ok].sum()) if ok.any() else None
    switches = 0
    clients: dict[str, str] = {}
    for r in sorted(rows, key=lambda r: (r["repeat"], r["time_s"])):
        key = f"{r['repeat']}/{r['client']}"
        if key in clients and clients[key] != r["plan"]:
            switches += 1
        clients[key] = r["plan"]
    span_min = len({(r["repeat"], r["time_s"]) for r in rows}) * dt_s / 60
    plans: dict[str, float] = {}
    for r, s in zip(rows, served, strict=True):
        plans[r["plan"]] = plans.get(r["plan"], 0.0) + float(s)
    return {
        "frames": round(total, 2),
        "dropped": round(float(dropped.sum()), 2),
        "drop_rate": round(float(dropped.sum()) / total, 5) if total else None,
        "mean_ms": round(mean, 3) if mean is not None else None,
        "median_ms": _round(_weighted_quantile(lat, served, 0.5)),
        "p95_ms": _round(_weighted_quantile(lat, served, 0.95)),
        "edge_share": round(float((share * served).sum() / served.sum()), 4) if served.sum() else None,
        "switches_per_min": round(switches / span_min, 3) if span_min else None,
        "main_plan": max(plans, key=plans.get) if plans else None,  # type: ignore[arg-type]
    }


def _round(x: float | None, digits: int = 3) -> float | None:
    return None if x is None else round(x, digits)


def segments(scenario: dict[str, Any]) -> list[tuple[float, float, str]]:
    """The stretches between the scenario's step changes, joins and leaves: ``(start_s, end_s, label)``."""
    cuts = {0.0, float(scenario["duration_s"])}
    for c in scenario["clients"]:
        cuts.add(float(c.get("join_s", 0.0)))
        if c.get("leave_s") is not None:
            cuts.add(float(c["leave_s"]))
        for key in ("uplink", "load"):
            for t, _ in (c.get(key) or {}).get("steps", []):
                cuts.add(float(t))
    for a in scenario["accelerators"]:
        for t, _ in (a.get("load") or {}).get("steps", []):
            cuts.add(float(t))
    edges = sorted(x for x in cuts if 0 <= x <= float(scenario["duration_s"]))
    out = []
    for a, b in itertools.pairwise(edges):
        active = [
            c
            for c in scenario["clients"]
            if c.get("join_s", 0.0) <= a and (c.get("leave_s") is None or c["leave_s"] > a)
        ]
        bws = []
        for c in active:
            up = c["uplink"]
            if "mbps" in up:
                bws.append(up["mbps"])
            elif "steps" in up:
                bws.append(next(v for t, v in reversed(up["steps"]) if t <= a))
        label = f"{len(active)} client{'s' if len(active) != 1 else ''}"
        if bws and len(set(bws)) == 1:
            label += f", {bws[0]:g} Mbit/s"
        out.append((a, b, label))
    return out


def summarise(rows: list[dict[str, Any]], scenario: dict[str, Any]) -> dict[str, Any]:
    """Per policy: overall, per client, per segment; then the published check."""
    dt = float(scenario.get("dt_s", 0.25))
    policies: dict[str, Any] = {}
    for name in dict.fromkeys(r["policy"] for r in rows):
        mine = [r for r in rows if r["policy"] == name]
        entry = _stats(mine, dt)
        repeats = sorted({r["repeat"] for r in mine})
        entry["per_repeat_mean_ms"] = [
            _stats([r for r in mine if r["repeat"] == k], dt)["mean_ms"] for k in repeats
        ]
        entry["clients"] = {
            c: _stats([r for r in mine if r["client"] == c], dt)
            for c in dict.fromkeys(r["client"] for r in mine)
        }
        entry["segments"] = []
        for a, b, label in segments(scenario):
            part = [r for r in mine if a <= r["time_s"] < b]
            if part:
                entry["segments"].append({"start_s": a, "end_s": b, "label": label, **_stats(part, dt)})
        policies[name] = entry
    summary: dict[str, Any] = {"policies": policies}
    band = offload_band(rows, policies, scenario)
    if band:
        summary["offload_pays"] = band
    check = published_check(scenario.get("published") or {}, policies)
    if check is not None:
        summary["published_check"] = check
    return summary


def offload_band(rows: list[dict[str, Any]], policies: dict[str, Any], scenario: dict[str, Any],
                 margins: tuple[float, ...] = (0.05, 0.2)) -> dict[str, Any]:
    """Per policy, the segments where it beats device-only by each margin (Intra-DP Fig. 17's band).

    Only for scenarios with one client and a ``device-only`` policy; a segment's uplink is the
    median of the true bandwidth in it. Returns ``{policy: {"5%": {"mbps": [...], "lowest_mbps":
    x}, "20%": ...}}`` (``lowest_mbps`` None where offloading never pays by that much).
    """
    if "device-only" not in policies or len(scenario["clients"]) != 1:
        return {}
    base = policies["device-only"]["segments"]
    out: dict[str, Any] = {}
    for name, entry in policies.items():
        if name == "device-only":
            continue
        bws = []
        for seg in entry["segments"]:
            bw = [r["bandwidth_mbps"] for r in rows
                  if r["policy"] == name and seg["start_s"] <= r["time_s"] < seg["end_s"]]
            bws.append(round(float(np.median(bw)), 3))
        out[name] = {}
        for margin in margins:
            pays = [bw for seg, ref, bw in zip(entry["segments"], base, bws, strict=False)
                    if seg["mean_ms"] is not None and ref["mean_ms"] is not None
                    and seg["mean_ms"] <= (1 - margin) * ref["mean_ms"]]
            out[name][f"{margin:.0%}"] = {"mbps": pays, "lowest_mbps": min(pays) if pays else None}
    return out


def published_check(published: dict[str, Any], policies: dict[str, Any]) -> dict[str, Any] | None:
    """Whether the direction a paper reports holds here.

    ``published.expect`` names a policy, a quantity of its segments (``edge_share``, ``mean_ms`` or
    ``drop_rate``) and a direction (``decreasing`` / ``increasing``: never moving the other way by
    more than ``tolerance`` and lower / higher at the end than at the start); or a ranking of
    policies by a quantity (``order``: best first); or ``better``: each of these policies lower in
    the quantity (``by``, default ``mean_ms``) than every policy in ``than``.
    """
    expect = published.get("expect")
    if not isinstance(expect, dict):
        return None
    out: dict[str, Any] = {"expect": expect}
    if "better" in expect:  # each adaptive policy below every baseline
        key = expect.get("by", "mean_ms")
        mine = {p: policies[p][key] for p in (*expect["better"], *expect.get("than", ())) if p in policies}
        if not mine or any(v is None for v in mine.values()):
            out.update(holds=None, why="a policy is missing or has no value")
            return out
        best_base = min((mine[p] for p in expect.get("than", ()) if p in mine), default=math.inf)
        out.update(values=mine, holds=all(mine[p] < best_base for p in expect["better"] if p in mine))
        return out
    if "order" in expect:
        key = expect.get("by", "mean_ms")
        values = {p: policies[p][key] for p in expect["order"] if p in policies}
        ranked = sorted(values, key=lambda p: values[p] if values[p] is not None else math.inf)
        out.update(
            values={p: values[p] for p in ranked}, holds=ranked == [p for p in expect["order"] if p in values]
        )
        return out
    policy, key, direction = (
        expect.get("policy"),
        expect.get("quantity", "edge_share"),
        expect.get("direction"),
    )
    if policy not in policies or direction not in ("decreasing", "increasing"):
        out.update(holds=None, why=f"no policy '{policy}' in this run or no direction")
        return out
    series = [s[key] for s in policies[policy]["segments"] if s[key] is not None]
    sign = -1 if direction == "decreasing" else 1
    tol = float(expect.get("tolerance", 0.0))
    steps_ok = all(sign * (b - a) >= -tol for a, b in itertools.pairwise(series))
    out.update(
        values=series, holds=bool(len(series) >= 2 and steps_ok and sign * (series[-1] - series[0]) > 0)
    )
    return out


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 4) if a and b else None


def compare(live: dict[str, Any], sim: dict[str, Any], tie: float = 0.05) -> dict[str, Any]:
    """Sim against live, from two summaries' ``policies``: per policy, and whether they rank alike.

    Per policy: mean and p95 latency in each mode, their ratios (live / sim), whether the means
    agree within 10%, and the mean absolute percentage error of the sim's mean over the segments
    both measured (relative to live). The ranking is by mean latency; a pair of policies whose
    simulated means are within ``tie`` of each other is a tie, which no order of the live means
    contradicts.
    """
    rows = []
    for name, lp in live.items():
        sp = sim.get(name)
        if sp is None:
            continue
        mean_ratio = _ratio(lp["mean_ms"], sp["mean_ms"])
        pairs = [(a["mean_ms"], b["mean_ms"]) for a, b in zip(lp.get("segments", []), sp.get("segments", []),
                                                                strict=False)
                 if a["mean_ms"] and b["mean_ms"] is not None]
        rows.append(
            {
                "policy": name,
                "live_mean_ms": lp["mean_ms"],
                "sim_mean_ms": sp["mean_ms"],
                "mean_ratio": mean_ratio,
                "live_p95_ms": lp["p95_ms"],
                "sim_p95_ms": sp["p95_ms"],
                "p95_ratio": _ratio(lp["p95_ms"], sp["p95_ms"]),
                "live_drop_rate": lp["drop_rate"],
                "sim_drop_rate": sp["drop_rate"],
                "within_10pct": mean_ratio is not None and abs(mean_ratio - 1) <= 0.10,
                "segment_mape_pct": (round(100 * float(np.mean([abs(s_ - l_) / l_ for l_, s_ in pairs])), 2)
                                     if pairs else None),
                "segments_compared": len(pairs),
            }
        )
    ties, wrong = [], []
    for a, b in itertools.combinations(rows, 2):
        sa, sb, la, lb = a["sim_mean_ms"], b["sim_mean_ms"], a["live_mean_ms"], b["live_mean_ms"]
        if None in (sa, sb, la, lb):
            continue
        if abs(sa - sb) <= tie * min(sa, sb):
            ties.append([a["policy"], b["policy"]])
        elif (sa < sb) != (la < lb):
            wrong.append([a["policy"], b["policy"]])

    def by(key: str) -> list[str]:
        known = [r for r in rows if r[key] is not None]
        return [r["policy"] for r in sorted(known, key=lambda r: r[key])]

    return {
        "policies": rows,
        "within_10pct": bool(rows) and all(r["within_10pct"] for r in rows),
        "sim_order": by("sim_mean_ms"),
        "live_order": by("live_mean_ms"),
        "tie_margin": tie,
        "ties": ties,
        "ranking_agrees": bool(rows) and not wrong,
        "disagreements": wrong,
    }


def write_run(
    out: Path,
    scenario: Any,
    rows: list[dict[str, Any]],
    runs: list[dict[str, Any]],
    mode: str,
    wall_s: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``steps.csv``, ``summary.json``, the figures and ``report.md``; return the summary.

    ``extra`` adds top-level keys to the summary (a live run's ``live`` and ``compare``).
    """
    out.mkdir(parents=True, exist_ok=True)
    with (out / "steps.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    doc = scenario_doc(scenario)
    summary = {
        "scenario": doc,
        "mode": mode,
        "wall_s": round(wall_s, 3),
        "runs": runs,
        **summarise(rows, doc),
        **(extra or {}),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    write_report(out)
    return summary


def scenario_doc(s: Any) -> dict[str, Any]:
    """A scenario as plain data (what ``summary.json`` keeps)."""
    return {**s.to_dict(), "source": s.source}


def read_steps(path: Path) -> list[dict[str, Any]]:
    """``steps.csv`` back as rows with numbers."""
    with path.open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    for r in rows:
        for key in ("time_s", "bandwidth_mbps", "edge_share", "offered", "dropped", "latency_ms"):
            r[key] = float(r[key]) if r[key] not in ("", "nan") else math.nan
        r["repeat"] = int(r["repeat"])
    return rows


def write_report(out: Path) -> Path:
    """Figures and ``report.md`` from ``summary.json`` and ``steps.csv`` in ``out``."""
    try:
        summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
        rows = read_steps(out / "steps.csv")
    except FileNotFoundError as exc:
        raise AdaptiveError(f"{out}: not an experiment directory (no {Path(exc.filename).name})") from None
    except (ValueError, KeyError) as exc:
        raise AdaptiveError(f"{out}: unreadable experiment files ({exc})") from None
    _figures(out, summary, rows)
    path = out / "report.md"
    path.write_text(_markdown(summary), encoding="utf-8")
    return path


def _fmt(x: Any, spec: str = ".1f") -> str:
    return "–" if x is None else format(x, spec)


def _markdown(summary: dict[str, Any]) -> str:
    s, pol = summary["scenario"], summary["policies"]
    lines = [f"# {s['name']}", ""]
    if s.get("description"):
        lines += [s["description"], ""]
    lines += [
        f"{s['model']} on {len(s['clients'])} × {s['edge_device']} → "
        + " → ".join(a["device"] for a in s["accelerators"])
        + f"; {s['duration_s']:g} s in steps of {s['dt_s']:g} s, {s['repeats']} repeat(s), seed {s['seed']}; "
        f"mode **{summary['mode']}**, {summary['wall_s']:.1f} s wall.",
        "",
        "| policy | mean ms | median | p95 | drop rate | edge share | switches/min | main plan |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, p in pol.items():
        lines.append(
            f"| {name} | {_fmt(p['mean_ms'])} | {_fmt(p['median_ms'])} | {_fmt(p['p95_ms'])} | "
            f"{_fmt(100 * p['drop_rate'] if p['drop_rate'] is not None else None, '.2f')}% | "
            f"{_fmt(p['edge_share'], '.2f')} | {_fmt(p['switches_per_min'], '.1f')} | `{p['main_plan']}` |"
        )
    lines += _segments_markdown(pol)
    lines += _offload_markdown(summary)
    lines += _live_markdown(summary)
    lines += _published_markdown(summary)
    lines += [
        "",
        "![latency](latency.png)",
        "",
        "![cdf](cdf.png)",
        "",
        "![plans](plans.png)",
        "",
        "![drops](drops.png)",
        "",
    ]
    return "\n".join(lines)


def _segments_markdown(pol: dict[str, Any]) -> list[str]:
    """Per segment of the schedule, each policy's mean, edge share and drop rate."""
    lines: list[str] = []
    segs = next(iter(pol.values()))["segments"]
    if len(segs) > 1:
        lines += [
            "",
            "Per segment (mean ms / share of the model on the edge / drop rate):",
            "",
            "| segment | " + " | ".join(pol) + " |",
            "|---|" + "---:|" * len(pol),
        ]
        for i, seg in enumerate(segs):
            cells = []
            for p in pol.values():
                x = p["segments"][i] if i < len(p["segments"]) else None
                cells.append(
                    "–"
                    if x is None
                    else f"{_fmt(x['mean_ms'])} / {_fmt(x['edge_share'], '.2f')} / "
                    f"{_fmt(100 * x['drop_rate'] if x['drop_rate'] is not None else None, '.1f')}%"
                )
            lines.append(
                f"| {seg['start_s']:g}–{seg['end_s']:g} s: {seg['label']} | " + " | ".join(cells) + " |"
            )
    return lines


def _offload_markdown(summary: dict[str, Any]) -> list[str]:
    """Where offloading pays, per policy (:func:`offload_band`)."""
    band = summary.get("offload_pays")
    if not band:
        return []
    margins = list(next(iter(band.values())))
    lines = ["", "Where offloading pays: the lowest uplink (Mbit/s) from which a segment's mean is this much "
             "below device-only's, and the segments where it is:", "",
             "| policy | " + " | ".join(f"{m} below: from" for m in margins)
             + f" | segments {margins[0]} below |",
             "|---|" + "---:|" * len(margins) + "---|"]
    for name, b in band.items():
        cells = ["never" if b[m]["lowest_mbps"] is None else f"{b[m]['lowest_mbps']:g}" for m in margins]
        segs = ", ".join(f"{x:g}" for x in b[margins[0]]["mbps"]) or "–"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {segs} |")
    return lines


def _published_markdown(summary: dict[str, Any]) -> list[str]:
    """The published result the scenario reproduces, and whether it holds here."""
    s, pol = summary["scenario"], summary["policies"]
    lines: list[str] = []
    pub = s.get("published") or {}
    if pub:
        lines += ["", "## Published result", ""]
        if pub.get("source"):
            lines.append(f"Source: {pub['source']}.")
        if pub.get("claim"):
            lines += ["", pub["claim"].strip()]
        check = summary.get("published_check")
        if check is not None:
            verdict = {True: "**holds here**", False: "**does not hold here**", None: "could not be checked"}
            lines += [
                "",
                f"Expected: `{json.dumps(check['expect'])}` — {verdict[check.get('holds')]}"
                + (f"; values {check['values']}" if check.get("values") is not None else "")
                + ".",
            ]
            who = check["expect"].get("policy")
            base = pol.get("device-only")
            if who in pol and base is not None and len(pol[who]["segments"]) > 1:
                lines += [
                    "",
                    f"{who} per segment, against device-only:",
                    "",
                    "| segment | main plan | mean ms | vs device-only |",
                    "|---|---|---:|---:|",
                ]
                for seg, ref in zip(pol[who]["segments"], base["segments"], strict=False):
                    gain = (
                        (1 - seg["mean_ms"] / ref["mean_ms"]) * 100
                        if seg["mean_ms"] and ref["mean_ms"]
                        else None
                    )
                    lines.append(
                        f"| {seg['start_s']:g}–{seg['end_s']:g} s: {seg['label']} | `{seg['main_plan']}` | "
                        f"{_fmt(seg['mean_ms'])} | {_fmt(gain)}% lower |"
                    )
    return lines


def _live_markdown(summary: dict[str, Any]) -> list[str]:
    """The sim-vs-live table and the live run's own figures, when the summary has them."""
    lines: list[str] = []
    cmp_, live = summary.get("compare"), summary.get("live")
    pct = lambda x: _fmt(100 * x if x is not None else None, ".2f") + "%"  # noqa: E731
    if cmp_:
        lines += [
            "",
            "## Sim vs live",
            "",
            "The simulation of the same scenario (in `sim/`), with every device at the speed the "
            "controller calibrated live. Ratios are live / sim.",
            "",
            "| policy | live mean ms | sim mean ms | ratio | live p95 | sim p95 | ratio | live drops "
            "| sim drops | per-segment MAPE |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in cmp_["policies"]:
            mape = r.get("segment_mape_pct")
            seg = f"{mape:.1f}% over {r['segments_compared']}" if mape is not None else "-"
            lines.append(
                f"| {r['policy']} | {_fmt(r['live_mean_ms'])} | {_fmt(r['sim_mean_ms'])} | "
                f"{_fmt(r['mean_ratio'], '.3f')} | {_fmt(r['live_p95_ms'])} | {_fmt(r['sim_p95_ms'])} | "
                f"{_fmt(r['p95_ratio'], '.3f')} | {pct(r['live_drop_rate'])} | {pct(r['sim_drop_rate'])} | "
                f"{seg} |"
            )
        far = [r["policy"] for r in cmp_["policies"] if not r["within_10pct"]]
        lines += [
            "",
            "Mean latency within 10% for every policy: "
            + ("**yes**." if cmp_["within_10pct"] else f"**no** ({', '.join(far)}).")
            + " Ranking by mean latency: live "
            + " < ".join(cmp_["live_order"])
            + "; sim "
            + " < ".join(cmp_["sim_order"])
            + "; "
            + ("**agrees**" if cmp_["ranking_agrees"] else "**disagrees**")
            + (
                f" (pairs within {100 * cmp_['tie_margin']:g}% in sim count as ties: "
                + ", ".join(" = ".join(t) for t in cmp_["ties"])
                + ")"
                if cmp_["ties"]
                else ""
            )
            + ".",
        ]
        notes = _differences(summary)
        if notes:
            lines += ["", "Where they differ:", ""] + [f"* {n}" for n in notes]
    if live:
        res = live.get("results") or {}
        lines += [
            "",
            "## Live run",
            "",
            f"On {live.get('host', 'this machine')}, uplinks "
            + ("kernel-shaped (netns, tbf)" if live.get("shaping") == "netns" else "emulated by the nodes")
            + f": {live['requests']} requests sent, {live['records']} recorded, {live['lost']} lost"
            + (" (**interrupted**: what ran before Ctrl-C)" if live.get("interrupted") else "")
            + ".",
        ]
        if res.get("checked"):
            lines.append(
                f"Every result was compared with the whole model run in one process on the same input: "
                f"{res['checked']} checked, {res['same_top1']} with the same top-1 class, the "
                f"{res['lossless']} from lossless plans within {res['lossless_max_rel_error']:.2g} of "
                f"the output's range (all: {res['max_rel_error']:.2g})."
            )
        dec, cal = live.get("device_scales_declared", {}), live.get("device_scales_calibrated", {})
        if dec:
            lines += [
                "",
                "Device speed against the profile (emulated, and as the controller calibrated it): "
                + ", ".join(f"{n} {dec[n]:g}× / {cal.get(n, float('nan')):.2f}×" for n in dec)
                + ".",
            ]
        lines += ["", "Per-request records: `requests.csv`."]
    return lines


def _differences(summary: dict[str, Any]) -> list[str]:
    """What the two modes did differently, where the records say."""
    notes = []
    live = summary.get("live") or {}
    dec, cal = live.get("device_scales_declared", {}), live.get("device_scales_calibrated", {})
    for n, k in dec.items():
        if n in cal and k and abs(cal[n] / k - 1) > 0.10:
            notes.append(
                f"{n} ran {cal[n] / k:.2f}× the time its emulation asked for: this host could not keep "
                "up (the sim uses the calibrated speed, and with it the sim's plans differ)"
            )
    deadline = max((c.get("deadline_ms") or 0.0) for c in summary["scenario"].get("clients", [{}]))
    for r in summary["compare"]["policies"]:
        if r["within_10pct"]:
            continue
        ld, sd = r["live_drop_rate"] or 0.0, r["sim_drop_rate"] or 0.0
        why = f"{r['policy']}: live {_fmt(r['live_mean_ms'])} ms against sim {_fmt(r['sim_mean_ms'])} ms"
        gap = (r["live_mean_ms"] or 0.0) - (r["sim_mean_ms"] or 0.0)
        if abs(gap) < 5.0:
            why += (
                f"; {gap:+.1f} ms: about what the runtime itself costs per request (serialising, "
                "sockets, Python), which the model leaves out, and most of a request this short"
            )
        lm, sm = r["live_mean_ms"], r["sim_mean_ms"]
        if min(ld, sd) > 0.1 and abs(ld - sd) <= 0.1 and lm is not None and sm is not None and lm < sm:
            why += (
                f"; both dropped about as many frames ({100 * ld:.0f}% live, {100 * sd:.0f}% in sim), "
                "but the sim admits fractions of a frame each step and so keeps its queue just short of "
                f"the deadline (its mean {sm:.0f} ms against {deadline:.0f} ms), where live admits whole "
                "frames, each onto a link the one before has left"
            )
        elif abs(ld - sd) > 0.02:
            why += (
                f"; it dropped {100 * ld:.1f}% of frames live and {100 * sd:.1f}% in sim, so the frames "
                "averaged differ (both drop at admission what the model predicts late: the sim per step, "
                "on the true rate, in fractions of a frame; live per frame, on its source's estimate and "
                "backlog, and it also counts a late answer)"
            )
        notes.append(why)
    return notes


def _figures(out: Path, summary: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(summary["policies"])
    colors = {p: plt.get_cmap("tab10")(i % 10) for i, p in enumerate(policies)}
    s = summary["scenario"]
    title = f"{s['name']}: {s['model']}, {len(s['clients'])} client(s)"
    # live rows hold whole frames, fewer than one per step at a few frames/s: plot per second
    bin_s = max(float(s.get("dt_s", 0.25)), 1.0 if summary.get("mode") == "live" else 0.0)
    _latency_figure(plt, out / "latency.png", rows, policies, colors, title, bin_s)
    _cdf_figure(plt, out / "cdf.png", rows, policies, colors, title)
    _plans_figure(plt, out / "plans.png", rows, policies, colors, title, bin_s)
    _drops_figure(plt, out / "drops.png", summary, policies, colors, title)


def _per_step(rows: list[dict[str, Any]], policy: str, key: str,
              bin_s: float) -> tuple[np.ndarray, np.ndarray]:
    """A policy's ``key`` per bin of ``bin_s`` (its first repeat), weighted by frames."""
    bins: dict[float, list[dict[str, Any]]] = {}
    for r in rows:
        if r["policy"] == policy and r["repeat"] == 0:
            bins.setdefault(math.floor(r["time_s"] / bin_s + 1e-9) * bin_s, []).append(r)
    times = sorted(bins)
    out_v = []
    for t in times:
        at = bins[t]
        # latency over the frames served; the plan over the frames offered (all may be dropped)
        w = np.array([r["offered"] - (r["dropped"] if key == "latency_ms" else 0.0) for r in at])
        v = np.array([r[key] for r in at])
        ok = np.isfinite(v) & (w > 0)
        out_v.append(float((v[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else math.nan)
    return np.array(times), np.array(out_v)


def _latency_figure(plt: Any, path: Path, rows: list[dict[str, Any]], policies: list[str],
                    colors: dict[str, Any], title: str, bin_s: float) -> None:
    fig, (ax, bx) = plt.subplots(2, 1, figsize=(10, 6), sharex=True, height_ratios=[2, 1])
    for p in policies:
        t, v = _per_step(rows, p, "latency_ms", bin_s)
        ax.plot(t, v, lw=1.2, color=colors[p], label=p)
    ax.set_ylabel("latency, ms (mean over clients)")
    ax.set_yscale("log")
    ax.legend(fontsize=8, ncol=min(len(policies), 4))
    ax.set_title(title)
    first = [r for r in rows if r["policy"] == policies[0] and r["repeat"] == 0]
    for c in dict.fromkeys(r["client"] for r in first):
        mine = [r for r in first if r["client"] == c]
        bx.step([r["time_s"] for r in mine], [r["bandwidth_mbps"] for r in mine], where="post", lw=1, label=c)
    bx.set_ylabel("uplink, Mbit/s")
    bx.set_yscale("log")
    bx.set_xlabel("time, s")
    bx.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _cdf_figure(plt: Any, path: Path, rows: list[dict[str, Any]], policies: list[str], colors: dict[str,
                Any], title: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for p in policies:
        mine = [r for r in rows if r["policy"] == p]
        v = np.array([r["latency_ms"] for r in mine])
        w = np.array([r["offered"] - r["dropped"] for r in mine])
        ok = np.isfinite(v) & (w > 0)
        if ok.any():
            order = np.argsort(v[ok])
            cum = np.cumsum(w[ok][order])
            ax.step(v[ok][order], cum / cum[-1], where="post", color=colors[p], label=p)
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms")
    ax.set_ylabel("fraction of frames served")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plans_figure(plt: Any, path: Path, rows: list[dict[str, Any]], policies: list[str],
                  colors: dict[str, Any], title: str, bin_s: float) -> None:
    fig, ax = plt.subplots(figsize=(10, 3.8))
    for p in policies:
        t, v = _per_step(rows, p, "edge_share", bin_s)
        ax.step(t, v, where="post", color=colors[p], label=p)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("share of the model on the edge")
    ax.set_xlabel("time, s")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, ncol=min(len(policies), 4))
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _drops_figure(plt: Any, path: Path, summary: dict[str, Any], policies: list[str], colors: dict[str,
                  Any], title: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 3.8))
    rates = [100 * (summary["policies"][p]["drop_rate"] or 0.0) for p in policies]
    ax.bar(range(len(policies)), rates, color=[colors[p] for p in policies])
    ax.set_xticks(range(len(policies)), policies, rotation=20, fontsize=8)
    ax.set_ylabel("frames dropped, %")
    ax.set_title(title, fontsize=10)
    for i, r in enumerate(rates):
        ax.text(i, r, f"{r:.1f}%", ha="center", va="bottom", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
