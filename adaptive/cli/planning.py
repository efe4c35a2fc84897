"""``adaptive predict``, ``plan``, ``plan-table`` and ``profiles``: the model and planner."""

from __future__ import annotations

import argparse
import itertools
import json
from typing import Any

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the planning subcommands."""
    p = sub.add_parser("predict", help="predict latency and energy of one plan",
                       description="Predict latency, energy and a per-stage breakdown of one plan.")
    _common(p)
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--splits", help="split positions S1[,S2..], one per device after the first (0..L)")
    which.add_argument("--plan", metavar="LABEL",
                       help="a plan label: 8,12 or 8,12/int8,none, or with a parallel section "
                            "0-5@0.5,0/none,int8")
    p.add_argument("--codecs", help="codec per split with --splits, e.g. none,fp16 (default: none)")
    p.set_defaults(func=_run_predict)

    p = sub.add_parser("plan", help="find the best plan and the latency-energy Pareto front",
                       description="Search every plan of the chain for the best one.")
    _common(p)
    _objective(p)
    p.add_argument("--front", type=int, default=10, metavar="N",
                   help="Pareto-front rows to print in text mode (default 10; JSON has all)")
    p.set_defaults(func=_run_plan)

    p = sub.add_parser("plan-table", help="best plan for each bandwidth of a grid",
                       description="Best plan per bandwidth (applied to every link).")
    _common(p, bandwidth=False)
    _objective(p)
    p.add_argument("--bandwidth-grid", required=True, metavar="START:STOP:STEP",
                   help="bandwidths in Mbit/s, e.g. 10:400:10")
    p.set_defaults(func=_run_table)

    p = sub.add_parser("profiles", help="list the shipped device and model profiles",
                       description="List shipped profiles usable by name.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_run_profiles)


def _common(p: argparse.ArgumentParser, *, bandwidth: bool = True) -> None:
    p.add_argument("--model-profile", required=True, metavar="FILE|NAME",
                   help="model profile file (YAML/JSON) or shipped model name")
    p.add_argument("--devices", required=True, metavar="D0,D1[,..]",
                   help="device chain, input device first: shipped names or profile files")
    if bandwidth:
        p.add_argument("--bandwidth", required=True, metavar="MBPS[,..]",
                       help="available bandwidth per link in Mbit/s (one value: every link)")
    p.add_argument("--clients", default="1", help="clients sharing the accelerators (default 1)")
    p.add_argument("--load", default="0", metavar="U0[,U1..]",
                   help="background CPU load per device in [0, 1] (default 0)")
    p.add_argument("--propagation-ms", default="0", metavar="MS[,..]",
                   help="propagation delay per link, ms (default 0)")
    p.add_argument("--available-mb", metavar="MB[,..]",
                   help="memory available per device, MB (default: the device profiles)")
    p.add_argument("--no-return-result", action="store_true",
                   help="do not model the result travelling back to the first device "
                        "(seed 000 Eq. 9 as printed)")
    p.add_argument("--idle-energy", action="store_true",
                   help="add idle power of waiting devices to the energy")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _objective(p: argparse.ArgumentParser) -> None:
    p.add_argument("--objective", default="latency",
                   choices=["latency", "energy", "weighted", "throughput"],
                   help="what to optimise (default latency)")
    p.add_argument("--energy-weight", default="1", help="weight of energy in 'weighted' (default 1)")
    p.add_argument("--slo-ms", help="latency limit, ms")
    p.add_argument("--energy-budget-j", help="energy limit per request, J")
    p.add_argument("--no-codecs", action="store_true", help="ignore the profile's activation codecs")
    p.add_argument("--min-edge-blocks", type=int, default=0, metavar="N",
                   help="blocks the first device must run before sending (seed 000: 1; keeps raw "
                        "input local)")
    p.add_argument("--parallel", action="store_true",
                   help="also search plans with a parallel section (Intra-DP local operation parallelism) "
                        "and show the best beside the best layer plan")
    p.add_argument("--method", default="auto", choices=["auto", "dp", "enumeration"],
                   help="search method (default: dynamic program where exact, else enumeration)")


# --------------------------------------------------------------------------- building blocks


def _setup(args: argparse.Namespace, *, bandwidth: bool = True) -> tuple[Any, Any]:
    from adaptive.cli.args import parse_floats, parse_ints, parse_names
    from adaptive.errors import AdaptiveError
    from adaptive.model.latency import Conditions, SplitModel
    from adaptive.model.profiles import resolve_device, resolve_model

    names = parse_names(args.devices, "--devices")
    devices = [resolve_device(n) for n in names]
    model = resolve_model(args.model_profile)
    split_model = SplitModel(model, devices, return_result=not args.no_return_result,
                             idle_energy=args.idle_energy)
    clients = parse_ints(args.clients, "--clients")
    if len(clients) != 1 or clients[0] < 1:
        raise AdaptiveError(f"--clients: expected one integer >= 1, found '{args.clients}'")
    bw = parse_floats(args.bandwidth, "--bandwidth", positive=True, unit=" (Mbit/s)") if bandwidth else [1.0]
    avail = (parse_floats(args.available_mb, "--available-mb", minimum=0.0)
             if args.available_mb else None)
    cond = Conditions(
        bandwidth_mbps=bw,
        propagation_ms=parse_floats(args.propagation_ms, "--propagation-ms", minimum=0.0),
        cpu_load=parse_floats(args.load, "--load", minimum=0.0, maximum=1.0),
        clients=clients[0],
        available_mb=avail,
    )
    split_model.conditions(cond)  # validate counts now, with the model's messages
    return split_model, cond


def _planner(args: argparse.Namespace, split_model: Any) -> tuple[Any, Any, dict[str, Any]]:
    from adaptive.cli.args import parse_floats
    from adaptive.model.planner import Constraints, Planner

    constraints = Constraints(
        slo_ms=parse_floats(args.slo_ms, "--slo-ms", positive=True)[0] if args.slo_ms else None,
        energy_budget_j=(parse_floats(args.energy_budget_j, "--energy-budget-j", positive=True)[0]
                         if args.energy_budget_j else None),
        min_edge_blocks=args.min_edge_blocks,
    )
    weight = parse_floats(args.energy_weight, "--energy-weight", minimum=0.0)[0]
    kwargs = {"energy_weight": weight, "constraints": constraints, "method": args.method}
    return (Planner(split_model, use_codecs=not args.no_codecs, parallel=args.parallel), constraints, kwargs)


def _breakdown(split_model: Any, plan: Any, pred: Any, i: int = 0) -> dict[str, Any]:
    bounds = [0, *plan.splits, split_model.num_blocks]
    stages = []
    for d, dev in enumerate(split_model.devices):
        stages.append({
            "device": dev.name,
            "blocks": [bounds[d], bounds[d + 1]],
            **({"section": [plan.splits[0], plan.section.stop]} if plan.section is not None and (
                d == 0 or bounds[d] == plan.splits[0] < bounds[d + 1]) else {}),
            "exec_ms": round(float(pred.exec_ms[i, d]), 6),
            "comm_ms": round(float(pred.comm_ms[i, d]) if d > 0 else 0.0, 6),
            "proc_ms": round(float(pred.proc_ms[i, d]), 6),
            "memory_mb": round(float(pred.memory_mb[i, d]), 3),
        })
    return {
        "latency_ms": round(float(pred.latency_ms[i]), 6),
        "energy_j": round(float(pred.energy_j[i]), 9),
        "naive_latency_ms": round(float(pred.naive_latency_ms[i]), 6),
        "throughput_rps": round(float(pred.throughput_rps[i]), 3),
        "return_comm_ms": round(float(pred.comm_ms[i, 0]), 6),
        "feasible": bool(pred.feasible[i]),
        "breakdown": stages,
    }


def _print_breakdown(out: dict[str, Any]) -> None:
    print(f"{'device':<22}{'blocks':>12}{'exec_ms':>11}{'comm_ms':>11}{'proc_ms':>11}{'mem_MB':>10}")
    for s in out["breakdown"]:
        blocks = f"[{s['blocks'][0]}, {s['blocks'][1]})"
        if "section" in s:  # d0 and the accelerator share the section's blocks by rows
            blocks = f"[{s['blocks'][0]}, {s['section'][1]})+" if s["blocks"][0] == 0 and s["blocks"][1] == \
                s["section"][0] else f"{blocks}*"
        print(f"{s['device']:<22}{blocks:>12}{s['exec_ms']:>11.3f}{s['comm_ms']:>11.3f}"
              f"{s['proc_ms']:>11.3f}{s['memory_mb']:>10.1f}")
    if any("section" in s for s in out["breakdown"]):
        a, b = next(s["section"] for s in out["breakdown"] if "section" in s)
        print(f"+: runs d0's band of blocks [{a}, {b}) too; *: shares [{a}, {b}) by rows with d0, "
              f"in parallel (exec_ms counts both sides' work; latency is the schedule's critical path)")
    print(f"result back to first device: {out['return_comm_ms']:.3f} ms")
    print(f"latency_ms        {out['latency_ms']:.3f}")
    print(f"naive_latency_ms  {out['naive_latency_ms']:.3f}")
    print(f"energy_j          {out['energy_j']:.5f}")
    print(f"throughput_rps    {out['throughput_rps']:.2f}")
    if not out["feasible"]:
        print("WARNING: a stage does not fit its device's available memory")


# --------------------------------------------------------------------------- commands


def _run_predict(args: argparse.Namespace) -> int:
    from adaptive.cli.args import parse_ints, parse_names
    from adaptive.model.planner import Planner
    from adaptive.model.plans import Plan, parse_plan, validate_splits

    split_model, cond = _setup(args)
    if args.plan is not None:
        if args.codecs:
            raise _error("--codecs: give codecs inside --plan (e.g. 8,12/int8,none)")
        splits, ks, section = parse_plan(args.plan, split_model.num_blocks, split_model.num_devices,
                                         split_model.codec_names)
        codecs = tuple(split_model.codec_names[k] for k in ks) if any(ks) else ()
    else:
        splits = validate_splits(parse_ints(args.splits, "--splits"), split_model.num_blocks,
                                 split_model.num_devices)
        codecs, section = (tuple(parse_names(args.codecs, "--codecs")) if args.codecs else ()), None
    plan = Plan(splits, codecs, section)
    pred = Planner(split_model).evaluate(plan, cond)
    out = {"model": split_model.profile.model, "devices": [d.name for d in split_model.devices],
           **_plan_fields(plan), **_breakdown(split_model, plan, pred)}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print(f"{out['model']} on {' -> '.join(out['devices'])}, plan {plan.label}")
        _print_breakdown(out)
    return 0


def _plan_fields(plan: Any) -> dict[str, Any]:
    section = plan.section
    return {"plan": plan.label, "splits": list(plan.splits), "codecs": list(plan.codecs) or None,
            "section": None if section is None else {"stop": section.stop, "share": section.share,
                                                     "parts": section.parts}}


def _plan_dict(planner: Any, result: Any) -> dict[str, Any]:
    return {
        **_plan_fields(result.plan),
        "latency_ms": round(result.latency_ms, 6),
        "energy_j": round(result.energy_j, 9),
        "throughput_rps": round(result.throughput_rps, 3),
    }


def _run_plan(args: argparse.Namespace) -> int:
    split_model, cond = _setup(args)
    planner, constraints, kwargs = _planner(args, split_model)
    result = planner.best(cond, args.objective, **kwargs)
    layer = planner.best_layer(cond, args.objective, **kwargs) if args.parallel else result
    front, fpred = planner.pareto(cond, constraints)
    out = {
        "model": split_model.profile.model,
        "devices": [d.name for d in split_model.devices],
        "objective": args.objective,
        **_plan_dict(planner, result),
        "breakdown": _breakdown(split_model, result.plan, result.prediction)["breakdown"],
        **({"best_layer_plan": _plan_dict(planner, layer)} if args.parallel else {}),
        "pareto_front": [
            {"splits": [int(x) for x in front.splits[i]],
             "codecs": list(planner.to_plan(front, i).codecs) or None,
             "latency_ms": round(float(fpred.latency_ms[i]), 6),
             "energy_j": round(float(fpred.energy_j[i]), 9)}
            for i in range(len(front))
        ],
        "evaluated": result.evaluated,
        "method": result.method,
        "elapsed_ms": round(result.elapsed_ms, 3),
    }
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{out['model']} on {' -> '.join(out['devices'])}, objective {args.objective}")
    codecs = f"  codecs {out['codecs']}" if out["codecs"] else ""
    print(f"best plan: {out['plan']}  splits {out['splits']}{codecs}  latency_ms {out['latency_ms']:.3f}  "
          f"energy_j {out['energy_j']:.5f}  throughput_rps {out['throughput_rps']:.1f}")
    if args.parallel:
        lay = out["best_layer_plan"]
        gain = 1 - out["latency_ms"] / lay["latency_ms"] if lay["latency_ms"] > 0 else 0.0
        print(f"best layer plan: {lay['plan']}  latency_ms {lay['latency_ms']:.3f}  "
              f"energy_j {lay['energy_j']:.5f}"
              f"  (the best plan is {gain:.1%} faster)")
        if result.plan.section is None:
            print("no plan with a parallel section beats it here" if split_model.section_costs.sections
                  else f"{out['model']} has no parallel section: layer plans only")
    print(f"evaluated {out['evaluated']} plans ({out['method']}) in {out['elapsed_ms']:.1f} ms")
    rows = out["pareto_front"]
    print(f"latency-energy Pareto front ({len(rows)} plans):")
    for r in rows[: args.front]:
        codecs = f"  {r['codecs']}" if r["codecs"] else ""
        print(f"  splits {r['splits']!s:<16} latency_ms {r['latency_ms']:>10.3f}  "
              f"energy_j {r['energy_j']:.5f}{codecs}")
    if len(rows) > args.front:
        print(f"  ... {len(rows) - args.front} more (use --json)")
    return 0


def _run_table(args: argparse.Namespace) -> int:
    from adaptive.cli.args import parse_grid

    grid = parse_grid(args.bandwidth_grid, "--bandwidth-grid")
    if min(grid) <= 0:
        raise _error("--bandwidth-grid: expected bandwidths > 0 Mbit/s")
    split_model, cond = _setup(args, bandwidth=False)
    planner, _, kwargs = _planner(args, split_model)
    layers = planner.layer_table(grid, cond, args.objective, **kwargs)
    results = planner.table(grid, cond, args.objective, layers=layers, **kwargs)
    rows = []
    for bw, r, lay in zip(grid, results, layers, strict=True):
        bounds = [*r.plan.splits, split_model.num_blocks]
        sent = [int(split_model.split_bytes[s]) if s < nxt else None
                for s, nxt in itertools.pairwise(bounds)]
        rows.append({"bandwidth_mbps": round(bw, 6), **_plan_dict(planner, r), "split_bytes": sent,
                     **({"best_layer_plan": _plan_dict(planner, lay)} if args.parallel else {})})
    if args.json:
        print(json.dumps({"model": split_model.profile.model,
                          "devices": [d.name for d in split_model.devices],
                          "objective": args.objective, "rows": rows}, indent=1))
        return 0
    if args.parallel:
        return _print_parallel_table(args, split_model, rows)
    print(f"{split_model.profile.model} on {' -> '.join(d.name for d in split_model.devices)}, "
          f"objective {args.objective}")
    print(f"{'bandwidth_mbps':>15}  {'splits':<16}{'split_KB':<22}{'latency_ms':>11}{'energy_j':>11}")
    for r in rows:
        kb = ",".join("-" if b is None else f"{b / 1e3:.1f}" for b in r["split_bytes"])
        codecs = f"  {r['codecs']}" if r["codecs"] else ""
        print(f"{r['bandwidth_mbps']:>15.2f}  {r['splits']!s:<16}{kb:<22}{r['latency_ms']:>11.3f}"
              f"{r['energy_j']:>11.5f}{codecs}")
    return 0


def _print_parallel_table(args: argparse.Namespace, split_model: Any, rows: list[dict[str, Any]]) -> int:
    print(f"{split_model.profile.model} on {' -> '.join(d.name for d in split_model.devices)}, "
          f"objective {args.objective}: best layer plan and best plan with parallel sections")
    print(f"{'Mbit/s':>8}  {'layer plan':<20}{'ms':>9}  {'with sections':<26}{'ms':>9}{'gain':>8}")
    for r in rows:
        lay = r["best_layer_plan"]
        gain = 1 - r["latency_ms"] / lay["latency_ms"] if lay["latency_ms"] > 0 else 0.0
        print(f"{r['bandwidth_mbps']:>8.2f}  {lay['plan']:<20}{lay['latency_ms']:>9.2f}  {r['plan']:<26}"
              f"{r['latency_ms']:>9.2f}{gain:>8.1%}")
    return 0


def _run_profiles(args: argparse.Namespace) -> int:
    from adaptive.model.profiles import list_shipped

    out = {"devices": list_shipped("devices"), "models": list_shipped("models")}
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        print("devices: " + ", ".join(out["devices"]))
        print("models:  " + ", ".join(out["models"]))
    return 0


def _error(message: str) -> Exception:
    from adaptive.errors import AdaptiveError

    return AdaptiveError(message)
