"""``adaptive partition`` and ``adaptive profile {model,link,link-server,device}``."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the partition and profile subcommands."""
    p = sub.add_parser("partition", help="cut a model into blocks at valid cut points",
                       description="Trace a model with torch.fx and list its blocks.")
    _model_args(p)
    p.add_argument("--verify", action="store_true",
                   help="check that chained block ranges reproduce the model at every cut")
    p.add_argument("--parallel", action="store_true",
                   help="list the parallel sections (runs of local operators whose output rows can be "
                        "computed in parts); with --verify, check parts at fractions 0.25, 0.5, 0.75")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_run_partition)

    prof = sub.add_parser("profile", help="measure model, link or device profiles",
                          description="Structured profiling (seed 000 Sec. IV-D).")
    psub = prof.add_subparsers(dest="what", metavar="WHAT", required=True)

    _add_profile_model(psub)

    p = psub.add_parser("link", help="first-packet latency and per-KB reception to a peer",
                        description="Fit T_FP, Q0, Q1 over 20 payload sizes (seed 000 Sec. IV-B).")
    p.add_argument("--peer", required=True, metavar="HOST:PORT",
                   help="address of 'adaptive profile link-server' on the receiving device")
    p.add_argument("--sizes", type=int, default=20, help="number of payload sizes (default 20)")
    p.add_argument("--repeats", type=int, default=7, help="transfers per size (default 7)")
    p.add_argument("--ref-bandwidth-mbps", type=float,
                   help="nominal rate of the link while measuring (default: the fitted rate)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_run_profile_link)

    p = psub.add_parser("link-server", help="run the probe sink that 'profile link' talks to",
                        description="Serve timed transfers until interrupted.")
    p.add_argument("--bind", default="0.0.0.0", help="address to bind (default all)")
    p.add_argument("--port", type=int, default=7300, help="TCP port (default 7300)")
    p.add_argument("--allow", default="", metavar="HOST,..|any",
                   help="hosts that may profile the link to here (default: this machine only); 'any': "
                        "whoever reaches the port")
    p.set_defaults(func=_run_link_server)

    p = psub.add_parser("derive", help="derive latency on Pi 4 / Jetson from published data",
                        description="Fit per-kind speed ratios on published measurements "
                                    "(shared/profiles), validate on held-out rows, and optionally "
                                    "add the derived devices to model profiles.")
    p.add_argument("--shared", required=True, metavar="DIR",
                   help="the published-measurements folder (shared/profiles)")
    p.add_argument("--models", nargs="+", required=True, metavar="FILE", help="model profiles")
    p.add_argument("--host-device", default="xeon-vm",
                   help="device whose measured latency the derivation scales (default xeon-vm)")
    p.add_argument("--write", action="store_true", help="write derived devices into the profiles")
    p.add_argument("--json", action="store_true", help="machine-readable report")
    p.set_defaults(func=_run_profile_derive)

    p = psub.add_parser("device", help="data movement / (de)serialisation cost of this machine",
                        description="Write an adaptive.device/v1 profile for this machine.")
    p.add_argument("--name", required=True, help="device name")
    p.add_argument("--out", help="write the full device profile here (default: print)")
    p.add_argument("--link", metavar="FILE",
                   help="JSON from 'adaptive profile link --json' for the link section")
    p.add_argument("--power-active", type=float, default=0.0, help="active power, W (not measured)")
    p.add_argument("--power-idle", type=float, default=0.0, help="idle power, W (not measured)")
    p.set_defaults(func=_run_profile_device)


def _add_profile_model(psub: argparse._SubParsersAction) -> None:
    p = psub.add_parser("model", help="per-block latency, 2N+1 segments, correction fit",
                        description="Write an adaptive.model/v1 profile measured on this machine.")
    _model_args(p)
    p.add_argument("--device-name", default="host", help="device name for the latency entry")
    p.add_argument("--out", required=True, help="output profile (.yaml or .json)")
    p.add_argument("--merge", action="store_true",
                   help="add this device to an existing profile of the same blocks at --out")
    p.add_argument("--threads", type=int, default=1, help="torch threads while timing (default 1)")
    p.add_argument("--warmup", type=int, default=5, help="warm-up calls (default 5)")
    p.add_argument("--repeats", type=int, default=21, help="timed calls per block (default 21)")
    p.add_argument("--segment-repeats", type=int, default=11, help="timed calls per segment")
    p.add_argument("--block-timing", choices=["context", "isolated"], default="context",
                   help="time blocks inside forward passes (default) or alone (seed 000)")
    p.add_argument("--segment-timing", choices=["context", "isolated"], default="context",
                   help="time segments after their prefix (default) or alone")
    p.add_argument("--no-codecs", action="store_true", help="do not measure fp16/int8 codecs")
    p.add_argument("--row-fractions", nargs="?", const="0.125,0.25,0.5,0.75", metavar="F,..",
                   help="also time section parts at these row fractions (default 0.125,0.25,0.5,0.75); "
                        "fit row_efficiency and row_op_ms")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_profile_model)


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="zoo model name (torchvision or a seed CNN)")
    p.add_argument("--input-shape", help="input shape, e.g. 1,3,224,224 (default: the model's)")
    p.add_argument("--granularity", choices=["block", "layer"], default="block",
                   help="module-level blocks (default) or every valid cut point")
    p.add_argument("--weights", metavar="FILE", help="local state_dict file (default: random init)")


def _partition(args: argparse.Namespace) -> Any:
    from adaptive.cli.args import parse_ints
    from adaptive.errors import AdaptiveError
    from adaptive.nn.partition import partition
    from adaptive.nn.zoo import build_model, default_input_shape

    model = build_model(args.model, args.weights)
    if args.input_shape:
        shape = tuple(parse_ints(args.input_shape, "--input-shape"))
        if any(s < 1 for s in shape):
            raise AdaptiveError(f"--input-shape: expected positive sizes, found '{args.input_shape}'")
        if len(shape) == len(default_input_shape(args.model)) - 1:
            shape = (1, *shape)
    else:
        shape = default_input_shape(args.model)
    return partition(model, shape, name=args.model, granularity=args.granularity)


def _run_partition(args: argparse.Namespace) -> int:
    import torch

    part = _partition(args)
    rows = [{"index": i, "name": b.name, "output_shape": list(b.output_shape),
             "output_bytes": b.output_bytes(torch.float32), "param_bytes": b.param_bytes,
             "flops": b.flops} for i, b in enumerate(part.blocks)]
    out: dict[str, Any] = {"model": part.name, "input_shape": list(part.input_shape),
                           "granularity": args.granularity, "blocks": rows}
    if args.verify:
        out["verify"] = _verify(part)
    if args.parallel:
        out["sections"] = _sections(part, args.verify)
    if args.json:
        print(json.dumps(out, indent=1))
        return 0 if _verified(out) else 1
    print(f"{part.name}: {part.num_blocks} blocks ({args.granularity}), input {list(part.input_shape)}")
    print(f"{'#':>4}  {'name':<34}{'output shape':<22}{'out KB':>10}{'param KB':>11}{'MFLOPs':>10}")
    for r in rows:
        print(f"{r['index']:>4}  {r['name'][:33]:<34}{r['output_shape']!s:<22}"
              f"{r['output_bytes'] / 1e3:>10.1f}{r['param_bytes'] / 1e3:>11.1f}{r['flops'] / 1e6:>10.2f}")
    if args.verify:
        v = out["verify"]
        print(f"verify: {v['cuts']} cut points, largest |difference| {v['max_abs_diff']:.3g}, "
              f"allclose {v['allclose']}")
    if args.parallel:
        _print_sections(out["sections"], part)
    return 0 if _verified(out) else 1


def _sections(part: Any, verify: bool) -> list[dict[str, Any]]:
    from adaptive.nn.spatial import sections, verify_sections

    found = [{"start": s.start, "stop": s.stop, "rows_in": s.height_in, "rows_out": s.height_out}
             for s in sections(part)]
    if verify:
        checks = verify_sections(part)
        for sec in found:
            mine = [c for c in checks if (c["start"], c["stop"]) == (sec["start"], sec["stop"])]
            sec["parts"] = [{"fraction": c["fraction"], "bands": c["bands"], "input_rows": c["input_rows"],
                             "max_rel_diff": c["max_rel_diff"]} for c in mine]
            sec["exact"] = all(c["shape_ok"] and c["max_rel_diff"] <= 1e-5 for c in mine)
    return found


def _print_sections(found: list[dict[str, Any]], part: Any) -> None:
    if not found:
        print("parallel sections: none (no run of local operators): layer plans only")
        return
    print("parallel sections (blocks [start, stop): output rows computable in parts):")
    for sec in found:
        names = f"{part.blocks[sec['start']].name} .. {part.blocks[sec['stop'] - 1].name}"
        line = f"  [{sec['start']}, {sec['stop']})  {names:<40} rows {sec['rows_in']} -> {sec['rows_out']}"
        if "parts" in sec:
            worst = max(c["max_rel_diff"] for c in sec["parts"])
            halo = max(c["input_rows"][0][1] - c["input_rows"][1][0] for c in sec["parts"])
            line += f"  parts exact: {sec['exact']} (max rel. diff {worst:.1e}, halo {halo} rows)"
        print(line)


def _verified(out: dict[str, Any]) -> bool:
    ok = out.get("verify", {}).get("allclose", True)
    return ok and all(sec.get("exact", True) for sec in out.get("sections", []))


def _verify(part: Any) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    x = torch.randn(part.input_shape)
    full = part.run(0, part.num_blocks, x)
    worst, ok = 0.0, True
    for cut in range(1, part.num_blocks):
        y = part.run(cut, part.num_blocks, part.run(0, cut, x))
        worst = max(worst, float((y - full).abs().max()))
        ok = ok and bool(torch.allclose(y, full, rtol=1e-5, atol=1e-6))
    return {"cuts": part.num_blocks - 1, "max_abs_diff": worst, "allclose": ok}


def _run_profile_model(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adaptive.errors import AdaptiveError
    from adaptive.model.profiles import load_model, model_from_dict, model_to_dict, save_profile
    from adaptive.nn.profiler import (
        TimingConfig,
        model_profile_doc,
        profile_codecs,
        profile_partition,
        profile_row_efficiency,
    )

    if min(args.threads, args.repeats, args.segment_repeats) < 1 or args.warmup < 0:
        raise AdaptiveError("--threads, --repeats and --segment-repeats must be >= 1, --warmup >= 0")
    part = _partition(args)
    cfg = TimingConfig(warmup=args.warmup, repeats=args.repeats,
                       segment_repeats=args.segment_repeats, threads=args.threads,
                       block_timing=args.block_timing, segment_timing=args.segment_timing)
    fractions = _row_fractions(args, part)
    med, iqr, _segments, _seg_ms, fit = profile_partition(part, cfg, progress=not args.quiet)
    codecs = None if args.no_codecs else profile_codecs()
    doc = model_profile_doc(part, args.device_name, med, iqr, fit, cfg, codecs=codecs)
    if fractions is not None:
        rows = profile_row_efficiency(part, cfg, fractions=fractions)
        doc["row_efficiency"] = {args.device_name: [list(p) for p in rows.points]}
        doc["row_op_ms"] = {args.device_name: rows.op_ms}
        print(f"parts: {len(rows.parts)} timed; fixed {rows.op_ms:.4f} ms per operator, curve "
              + ", ".join(f"{a:g}:{b:.3f}" for a, b in rows.points)
              + f"; MAPE {rows.mape_fitted_pct:.1f}% (proportional to rows: {rows.mape_linear_pct:.1f}%)")
    out = Path(args.out)
    if args.merge and out.exists():
        doc = _merge(model_to_dict(load_model(out)), doc, args.device_name, str(out))
    model_from_dict(doc, str(out))  # validate before writing
    save_profile(doc, out)
    print(f"wrote {out}: {part.num_blocks} blocks on '{args.device_name}', sum "
          f"{med.sum():.3f} ms; correction c0 {fit.c0_ms:.4f} ms, c1 {fit.c1_ms:.4f} ms; MAPE naive "
          f"{fit.mape_naive_pct:.2f}% -> corrected {fit.mape_corrected_pct:.2f}% "
          f"(held-out {fit.mape_holdout_pct:.2f}%) on {fit.segments} segments")
    return 0


def _row_fractions(args: argparse.Namespace, part: Any) -> list[float] | None:
    """``--row-fractions`` checked against the model (None when not asked for)."""
    from adaptive.cli.args import parse_floats
    from adaptive.errors import AdaptiveError
    from adaptive.nn.spatial import sections

    if args.row_fractions is None:
        return None
    fractions = parse_floats(args.row_fractions, "--row-fractions")
    if not all(0 < f < 1 for f in fractions):
        raise AdaptiveError(f"--row-fractions: expected fractions in (0, 1), found '{args.row_fractions}'")
    if not sections(part):
        raise AdaptiveError(f"--row-fractions: {args.model} has no parallel section (no parts to time)")
    return fractions


def _merge(old: dict[str, Any], new: dict[str, Any], device: str, where: str) -> dict[str, Any]:
    from adaptive.errors import AdaptiveError

    def shape(d: dict[str, Any]) -> list[tuple[str, int]]:
        return [(b["name"], b["output_bytes"]) for b in d["blocks"]]

    if shape(old) != shape(new):
        raise AdaptiveError(f"{where}: existing profile has different blocks; cannot merge")
    for key in ("latency_ms", "latency_spread_ms", "correction", "row_efficiency", "row_op_ms"):
        if key in new:
            old.setdefault(key, {})[device] = new[key][device]
    for name, codec in new.get("codecs", {}).items():
        entry = old.setdefault("codecs", {}).setdefault(name, codec)
        entry["encode"][device] = codec["encode"][device]
        entry["decode"][device] = codec["decode"][device]
    old["notes"] = (old.get("notes", "") + f" | {device}: " + new["notes"]).strip(" |")
    return old


def _run_profile_link(args: argparse.Namespace) -> int:
    import yaml

    from adaptive.errors import AdaptiveError
    from adaptive.nn.linkprofile import default_sizes, measure_link
    from monitor.probe import ProbeError, parse_hostport

    try:
        host, port = parse_hostport(args.peer)
    except ValueError as exc:
        raise AdaptiveError(f"--peer: {exc}") from None
    if not 2 <= args.sizes <= 200 or args.repeats < 1:
        raise AdaptiveError("--sizes must be in 2..200 and --repeats >= 1")
    try:
        fit = measure_link(host, port, default_sizes(args.sizes), repeats=args.repeats)
    except ProbeError as exc:
        raise AdaptiveError(str(exc)) from None
    link = fit.link_section(args.ref_bandwidth_mbps)
    if args.json:
        print(json.dumps({"link": link, "effective_mbps": fit.effective_mbps, "mape_pct": fit.mape_pct,
                          "sizes_bytes": fit.sizes_bytes, "receive_ms": fit.receive_ms}, indent=1))
    else:
        print(f"# {args.peer}: fitted rate {fit.effective_mbps:.1f} Mbit/s, reception fit MAPE "
              f"{fit.mape_pct:.2f}% over {len(fit.sizes_bytes)} sizes")
        print(yaml.safe_dump({"link": link}, sort_keys=False).rstrip())
    return 0


def _run_link_server(args: argparse.Namespace) -> int:
    import time

    from monitor.probe import ProbeServer, host_addresses

    hosts = [h.strip() for h in args.allow.split(",") if h.strip()]
    allowed = None if hosts == ["any"] else host_addresses(["127.0.0.1", "::1", *hosts])
    with ProbeServer(args.bind, args.port, max_bytes=8 * 1024 * 1024,
                     allow=None if allowed is None else allowed.__contains__) as server:
        print(f"probe sink listening on {args.bind}:{server.port} (Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(3600)


def _run_profile_device(args: argparse.Namespace) -> int:
    import psutil
    import torch
    import yaml

    from adaptive.errors import AdaptiveError
    from adaptive.model.profiles import device_from_dict, save_profile
    from adaptive.nn.profiler import machine_description, profile_data_movement

    moves, method = profile_data_movement()
    link = {"first_packet_ms": 0.1, "per_kb_ms": 8.0e-3, "offset_ms": 0.0,
            "ref_bandwidth_mbps": 1000.0, "mtu_bytes": 1500}
    link_note = "link: default 1 Gbit/s placeholder (run 'adaptive profile link')"
    if args.link:
        from adaptive.errors import read_input

        try:
            text = read_input(args.link, "a link profile (JSON from 'adaptive profile link --json')")
            link = json.loads(text)["link"]
        except (ValueError, KeyError, TypeError) as exc:
            if isinstance(exc, AdaptiveError):
                raise
            raise AdaptiveError(f"{args.link}: expected JSON from 'adaptive profile link --json' "
                                f"({exc.__class__.__name__})") from None
        link_note = f"link: measured, from {args.link}"
    doc = {
        "schema": "adaptive.device/v1", "name": args.name,
        "accelerator": "gpu" if torch.cuda.is_available() else "cpu",
        "memory_mb": round(psutil.virtual_memory().total / 1e6, 1),
        "power_w": {"active": args.power_active, "idle": args.power_idle},
        "link": link,
        "data_movement": {k: {"per_kb_ms": round(v[0], 9), "offset_ms": round(max(v[1], 0.0), 6)}
                          for k, v in moves.items()},
        "batching": {"per_extra_item": 1.0},
        "notes": (f"Measured by 'adaptive profile device' on {machine_description()}. "
                  f"data_movement: {method}. {link_note}. Power not measured unless given."),
    }
    device_from_dict(doc, args.out or "<profile>")
    if args.out:
        save_profile(doc, args.out)
        print(f"wrote {args.out}")
    else:
        print(yaml.safe_dump(doc, sort_keys=False).rstrip())
    return 0


def _run_profile_derive(args: argparse.Namespace) -> int:
    from importlib import resources

    import numpy as np
    import yaml

    from adaptive.errors import AdaptiveError
    from adaptive.model.derive import COMMON_ARCHITECTURES, derive
    from adaptive.model.profiles import load_model, model_from_dict, model_to_dict, save_profile

    profiles = {path: load_model(path) for path in args.models}
    for path, prof in profiles.items():
        if args.host_device not in prof.latency_ms:
            raise AdaptiveError(f"{path}: no latency for host device '{args.host_device}'")
        if any(not b.kind for b in prof.blocks):
            raise AdaptiveError(f"{path}: blocks lack 'kind'; re-run 'adaptive profile model'")
    totals = {p.model: float(p.latency_ms[args.host_device].sum()) for p in profiles.values()
              if p.model in COMMON_ARCHITECTURES.values()}
    result = derive(args.shared, totals)
    table1 = yaml.safe_load(resources.files("adaptive.data").joinpath(
        "corrections/seed000_table1.yaml").read_text(encoding="utf-8"))
    report = {"host_device": args.host_device, "host_scale": result.host_scale,
              "host_scale_by_model": result.host_scale_by_model,
              "devices": {d: {"ratio": dict(r.ratio), "method": r.method, "validation": dict(r.validation)}
                          for d, r in result.devices.items()}}
    if args.json:
        print(json.dumps(report, indent=1, default=float))
    else:
        print(f"host '{args.host_device}' / reference x86 latency: s = {result.host_scale:.4f} "
              f"(median of {', '.join(f'{m} {v:.3f}' for m, v in result.host_scale_by_model.items())})")
        for d, r in result.devices.items():
            ratios = ", ".join(f"{k} {v:.3f}" for k, v in r.ratio.items())
            print(f"{d}: ratio to reference per kind: {ratios}")
            print(f"  method: {r.method}")
            for k, v in r.validation.items():
                print(f"  {k}: {v:.2f}")
    if not args.write:
        return 0
    for path, prof in profiles.items():
        doc = model_to_dict(prof)
        kinds = [b.kind for b in prof.blocks]
        host = prof.latency_ms[args.host_device]
        for dev, ratios in result.devices.items():
            doc["latency_ms"][dev] = [round(float(x), 6) for x in result.latency(dev, host, kinds)]
            doc.get("latency_spread_ms", {}).pop(dev, None)
            doc.get("correction", {}).pop(dev, None)
            other = ratios.ratio["other"] / result.host_scale
            for codec in doc.get("codecs", {}).values():
                for side in ("encode", "decode"):
                    base = codec[side][args.host_device]
                    codec[side][dev] = {"per_kb_ms": float(np.round(base["per_kb_ms"] * other, 9)),
                                        "offset_ms": float(np.round(base["offset_ms"] * other, 6))}
        for dev, corr in table1.get(prof.model, {}).items():
            doc.setdefault("correction", {})[dev] = corr
        base_notes = doc.get("notes", "").split(" || derived:")[0]
        doc["notes"] = (base_notes + " || derived: latency on " + ", ".join(result.devices)
                        + f" is derived from '{args.host_device}' by 'adaptive profile derive' "
                        "(docs/derivation.md): per-kind speed ratios fitted on published Scission "
                        "measurements, host scale " + f"{result.host_scale:.4f}; Orin boards are "
                        "estimates from peak FP32 ratios; codec costs scale with the 'other' ratio."
                        + (" Orin corrections: seed 000 Table I as printed "
                           "(adaptive/data/corrections/seed000_table1.yaml)."
                           if prof.model in table1 else ""))
        model_from_dict(doc, str(path))
        save_profile(doc, path)
        print(f"updated {path}")
    return 0
