"""``adaptive node``, ``controller``, ``client`` and ``keys``: the live system, one process each."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from monitor.cli import add_broker_arguments

__all__ = ["add_parsers"]

log = logging.getLogger(__name__)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the live subcommands."""
    for add in (_add_node, _add_controller, _add_demo, _add_client, _add_keys):
        add(sub)


def _add_metrics(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on this port (default: off)")
    p.add_argument("--metrics-bind", default="127.0.0.1", help="address of the metrics endpoint")


def _add_node(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("node", help="run a node runtime (executes model stages)",
                       description="Hold a model replica, run this node's stage of each request.")
    p.add_argument("--node", required=True, help="node id")
    add_broker_arguments(p)
    p.add_argument("--cluster", default="default")
    p.add_argument("--model", required=True, help="zoo model name")
    p.add_argument("--input-shape", help="e.g. 1,3,224,224 (default: the model's)")
    p.add_argument("--weights", help="local state_dict file (default: random initialisation)")
    p.add_argument("--bind", default="127.0.0.1", help="address of the data socket")
    p.add_argument("--port", type=int, default=0, help="data port (0: any free port)")
    p.add_argument("--advertise", default="127.0.0.1", help="host name peers use to reach this node")
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    p.add_argument("--device", default="", help="device profile name announced in the status")
    p.add_argument("--emulate", metavar="DEVICE", help="pad stages to this device's latency in the "
                   "shipped model profile (one-machine clusters)")
    p.add_argument("--slowdown", type=float, default=1.0,
                   help="multiply stage time, measured or --emulate'd, by this (default 1)")
    p.add_argument("--batch-window-ms", type=float, default=0.0, help="batching window (default 0)")
    p.add_argument("--max-batch", type=int, default=8)
    p.add_argument("--uplink-mbps", type=float, help="emulated uplink rate, Mbit/s")
    p.add_argument("--uplink-delay-ms", type=float, default=0.0, help="emulated one-way delay, ms")
    p.add_argument("--result-delay-ms", type=float, default=0.0,
                   help="emulated delay of a result on its way back to the client (the links to the "
                        "source), ms")
    p.add_argument("--uplink-trace", help="bandwidth trace CSV the uplink replays")
    p.add_argument("--trace-median-mbps", type=float, help="scale the trace to this median")
    p.add_argument("--trace-dt", type=float, default=1.0, help="seconds per trace step (default 1)")
    p.add_argument("--monitor", action="store_true",
                   help="also run the monitor agent in this process (recommended: its status then carries "
                        "this node's data endpoint; probes go through an emulated uplink if any)")
    p.add_argument("--peers", default="", help="with --monitor: ID=HOST:PORT,.. to probe")
    p.add_argument("--probe-port", type=int, default=0, help="with --monitor: probe sink port (0: any)")
    p.add_argument("--probe-interval", type=float, default=2.0, help="with --monitor: seconds per probe")
    p.add_argument("--probe-max-share", type=float, default=0.05,
                   help="with --monitor: share of the link's capacity probing may use (default 0.05)")
    p.add_argument("--interval", type=float, default=1.0, help="with --monitor: telemetry period, s")
    p.add_argument("--controller-key", metavar="FILE",
                   help="the controller's Ed25519 public key (DIR/controller.ed25519.pub from 'adaptive keys "
                        "--sign'): take only plans and rules it signed (default: unsigned lab mode)")
    p.add_argument("--curve-keys", metavar="DIR",
                   help="CurveZMQ key directory (from 'adaptive keys'): authenticate and encrypt the data "
                        "plane, admitting only the public keys in DIR; needs DIR/<node>.key_secret")
    _add_metrics(p)
    p.set_defaults(func=_run_node)


def _add_controller(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("controller", help="run the controller daemon (telemetry in, plans out)",
                       description="Choose and publish split plans from live telemetry.")
    add_broker_arguments(p)
    p.add_argument("--config", required=True, help="controller config YAML")
    p.add_argument("--policy",
                   help="ppo[:PATH] | greedy | hysteresis | static (default hysteresis); with sources in the "
                        "config (several clients) a joint policy: ppo[:PATH] | coordinated | greedy | "
                        "hysteresis | device-only (default coordinated)")
    p.add_argument("--trust-policy-zip", action="store_true",
                   help="let ppo:PATH load a stable-baselines3 .zip (which can run any code it holds) "
                        "when no .mlp.json sits beside it (default: refuse)")
    p.add_argument("--sign-key", metavar="FILE",
                   help="sign plans and rules with this Ed25519 secret key (DIR/controller.ed25519 from "
                        "'adaptive keys --sign'; default: unsigned lab mode)")
    _add_metrics(p)
    p.set_defaults(func=_run_controller)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole system on one machine in about four minutes",
                       description="Broker, three emulated nodes with monitors, the controller and a client; "
                                   "adaptive (decided per request at the pi, with parallel sections) vs "
                                   "adaptive with layer plans only vs static plans chosen in hindsight and "
                                   "for the mean bandwidth vs device-only on a real trace.")
    p.add_argument("--model", default="mobilenet_v2", help="zoo model with a shipped profile")
    p.add_argument("--policy", default="auto",
                   help="auto | ppo[:PATH] | greedy | hysteresis | static (default auto: the shipped PPO "
                        "policy, trained for mobilenet_v2 on this chain, else hysteresis)")
    p.add_argument("--layers-policy", default="auto",
                   help="policy of the 'adaptive-layers' phase (default auto: the shipped PPO policy trained "
                        "on layer plans, or the --policy heuristic on layer candidates)")
    p.add_argument("--trace", help="bandwidth trace CSV for the pi's uplink (default: a shipped 5G trace)")
    p.add_argument("--trace-median-mbps", type=float, default=8.0, help="scale the trace to this median")
    p.add_argument("--duration", type=float, default=120.0,
                   help="three times the seconds per phase (default 120: 40 s phases)")
    p.add_argument("--out", default="runs/demo", help="directory for the plot, CSV and JSON")
    p.add_argument("--no-view", action="store_true", help="no live terminal view")
    p.add_argument("--clients", type=int, default=1,
                   help="2..8: that many clients, each on its own emulated pi with its own uplink trace, "
                        "share a jetson; joint policies run side by side (default 1: the chain above)")
    p.add_argument("--policies", default="ppo,coordinated,static",
                   help="with --clients: joint policies to run in turn (default ppo,coordinated,static)")
    p.add_argument("--rate", type=float, default=3.0, help="with --clients: frames/s per client (default 3)")
    p.set_defaults(func=_run_demo)


def _add_client(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="send inference requests and record their latency",
                       description="Load generator: open loop (--rate) or closed loop (--concurrency).")
    add_broker_arguments(p)
    p.add_argument("--cluster", default="default")
    p.add_argument("--client", default="client-1", help="client id")
    p.add_argument("--model", required=True, help="zoo model name (for the input shape)")
    p.add_argument("--input-shape", help="input shape (default: the model's)")
    p.add_argument("--source", metavar="NODE",
                   help="the edge node this client's inputs enter at, which picks each request's plan from "
                        "its own rule (several clients, each on its own device; default: the default plan's "
                        "first node)")
    p.add_argument("--rate", type=float, help="requests per second (open loop)")
    p.add_argument("--concurrency", type=int, default=1, help="requests in flight (closed loop)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of load (default 30)")
    p.add_argument("--out", help="append each record to this .csv or .jsonl as it completes")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds before a request times out")
    p.add_argument("--retries", type=int, default=3,
                   help="times a request is sent again when a node fails it (default 3)")
    p.add_argument("--wait", type=float, default=30.0,
                   help="seconds to wait at start for a plan and its first node (default 30)")
    p.add_argument("--bind", default="127.0.0.1", help="address of the result socket")
    p.add_argument("--advertise", default="127.0.0.1", help="host name nodes use to reach this client")
    p.add_argument("--curve-keys", metavar="DIR",
                   help="CurveZMQ key directory; needs DIR/<client>.key_secret and the nodes' public keys")
    _add_metrics(p)
    p.set_defaults(func=_run_client)


def _add_keys(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="make key pairs: CurveZMQ for the data plane, Ed25519 for the controller",
                       description="Write DIR/<ID>.key (public) and DIR/<ID>.key_secret for each id. Give "
                                   "every node and client all the .key files and only its own .key_secret. "
                                   "With --sign, write the controller's signing key instead: "
                                   "DIR/<ID>.ed25519 (secret, for 'controller --sign-key') and "
                                   "DIR/<ID>.ed25519.pub (for every node's --controller-key).")
    p.add_argument("dir", help="key directory (created if missing)")
    p.add_argument("ids", nargs="+", metavar="ID", help="node and client ids (with --sign: the controller's)")
    p.add_argument("--sign", action="store_true", help="make Ed25519 signing keys for plans and rules")
    p.add_argument("--overwrite", action="store_true", help="replace existing keys")
    p.set_defaults(func=_run_keys)


def _broker(args: argparse.Namespace) -> Any:
    from adaptive.errors import AdaptiveError
    from monitor.transport import broker_credentials

    try:
        return broker_credentials(args.broker, args.username, args.password_file)
    except ValueError as exc:
        raise AdaptiveError(str(exc)) from None


def _wait_for_signal(failed: threading.Event | None = None) -> bool:
    """Wait for SIGTERM or SIGINT, or until ``failed`` is set; whether it was ``failed``."""
    stop = failed or threading.Event()
    signalled = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: (signalled.set(), stop.set()))
    stop.wait()
    return not signalled.is_set()


def _shape(text: str | None) -> tuple[int, ...] | None:
    from adaptive.cli.args import parse_ints

    return tuple(parse_ints(text, "--input-shape")) if text else None


def _run_node(args: argparse.Namespace) -> int:
    from adaptive.errors import AdaptiveError
    from adaptive.model.profiles import resolve_device, resolve_model
    from adaptive.runtime.node import (
        NodeConfig,
        NodeRuntime,
        attach_monitor,
        emulated_latency,
        emulated_parts,
        load_trace_series,
    )

    broker = _broker(args)
    emulate, correction, emulate_batch, parts = None, (0.0, 0.0), 1.0, None
    if args.emulate:
        profile = resolve_model(args.model)
        emulate = emulated_latency(profile, args.emulate)
        c = profile.correction_for(args.emulate)
        correction = (c.c0_ms, c.c1_ms)
        emulate_batch = resolve_device(args.emulate).batch_per_extra_item
        parts = emulated_parts(profile, resolve_device(args.emulate))
    trace = ()
    if args.uplink_trace:
        trace = load_trace_series(args.uplink_trace, args.trace_dt, args.trace_median_mbps)
    if not (0 < args.probe_max_share <= 1 and args.probe_interval > 0):
        raise AdaptiveError(f"--probe-max-share must be in (0, 1] and --probe-interval > 0, found "
                            f"{args.probe_max_share} and {args.probe_interval}")
    if args.slowdown < 1 or args.threads < 1 or args.max_batch < 1:
        raise AdaptiveError("--slowdown must be >= 1, --threads and --max-batch >= 1")
    if (args.uplink_mbps is not None and not args.uplink_mbps > 0) or args.uplink_delay_ms < 0 \
            or args.batch_window_ms < 0 or not args.trace_dt > 0 or args.result_delay_ms < 0:
        raise AdaptiveError("--uplink-mbps and --trace-dt must be > 0, --uplink-delay-ms, "
                            "--result-delay-ms and --batch-window-ms >= 0")
    config = NodeConfig(node=args.node, model=args.model, cluster=args.cluster,
                        input_shape=_shape(args.input_shape), weights=args.weights,
                        bind=args.bind, port=args.port, advertise=args.advertise, threads=args.threads,
                        device=args.device, emulate=emulate, emulate_correction=correction,
                        emulate_batch=emulate_batch, emulate_parts=parts,
                        slowdown=args.slowdown,
                        batch_window_ms=args.batch_window_ms, max_batch=args.max_batch,
                        uplink_mbps=args.uplink_mbps, uplink_delay_ms=args.uplink_delay_ms,
                        result_delay_ms=args.result_delay_ms,
                        uplink_trace=trace, trace_dt_s=args.trace_dt)
    from monitor.cli import parse_peers

    try:
        peers = parse_peers(args.peers)
    except ValueError as exc:
        raise AdaptiveError(str(exc)) from None
    curve = _curve(args.curve_keys, args.node)
    metrics = _metrics("node", args)
    from adaptive.runtime.signing import Verifier

    node = NodeRuntime(config, broker, ca_file=args.ca_file, curve=curve,
                       metrics=metrics.node(args.node) if metrics else None,
                       verifier=Verifier(args.controller_key))
    try:
        node.start()
    except ConnectionError as exc:
        raise AdaptiveError(str(exc)) from None
    agent = None
    if args.monitor:
        agent = attach_monitor(node, peers, probe_port=args.probe_port,
                               probe_interval_s=args.probe_interval, interval_s=args.interval,
                               probe_max_share=args.probe_max_share)
    print(f"node {args.node} serving {args.model} on {node.endpoint}", flush=True)
    failed = _wait_for_signal(node.failed)
    if agent is not None:
        agent.close()
    node.close()
    if failed:  # a loop died: exit non-zero so the supervisor (systemd: Restart=on-failure) restarts it
        print(f"adaptive node: error: node {args.node} stopped serving (a runtime thread died; see the log)",
              file=sys.stderr)
        return 1
    return 0


def _curve(directory: str | None, identity: str) -> Any:
    if directory is None:
        return None
    from adaptive.runtime.security import CurveKeys

    return CurveKeys(directory, identity)


def _metrics(role: str, args: argparse.Namespace) -> Any:
    """Start the Prometheus endpoint if ``--metrics-port`` was given; returns the metrics or None."""
    if args.metrics_port is None:
        return None
    from adaptive.control.metrics import Metrics
    from adaptive.errors import AdaptiveError

    if not 0 < args.metrics_port < 65536:
        raise AdaptiveError(f"--metrics-port must be in 1..65535, found {args.metrics_port}")
    metrics = Metrics()
    metrics.serve(args.metrics_port, args.metrics_bind)
    log.info("%s metrics on http://%s:%d/metrics", role, args.metrics_bind, args.metrics_port)
    return metrics


def _run_keys(args: argparse.Namespace) -> int:
    if args.sign:
        from adaptive.runtime.signing import generate_signing_key

        for name in args.ids:
            secret = generate_signing_key(args.dir, name, overwrite=args.overwrite)
            print(f"wrote {secret} (keep it on the controller's host only) and {secret}.pub (for every node)")
        return 0
    from adaptive.runtime.security import generate

    written = generate(args.dir, args.ids, overwrite=args.overwrite)
    print(f"wrote {len(written)} key pair(s) to {args.dir}: " + ", ".join(p.stem for p in written))
    print("give every node and client all the .key files and only its own .key_secret")
    return 0


def _run_controller(args: argparse.Namespace) -> int:
    from adaptive.control.controller import Controller, ControllerConfig
    from adaptive.errors import AdaptiveError
    from adaptive.runtime.signing import Signer
    from agents.wiring import build_policy

    config = ControllerConfig.load(args.config)
    signer = Signer(args.sign_key) if args.sign_key else None
    broker = _broker(args)
    metrics = _metrics("controller", args)
    controller: Controller
    if config.sources:  # several clients share the accelerators: one joint decision, a rule each
        from adaptive.control.shared_controller import SharedController
        from agents.wiring import build_multi_policy

        w = build_multi_policy(args.policy or "coordinated", config, trust_zip=args.trust_policy_zip)
        candidates, name = w.candidates, w.name
        controller = SharedController(config, broker, w.policy, spec=w.spec,
                                      candidates=candidates, deadline_ms=w.deadline_ms, step_s=w.step_s,
                                      policy_name=name, on_shared=w.on_shared, ca_file=args.ca_file,
                                      signer=signer,
                                      metrics=metrics.controller() if metrics else None)
    else:
        policy, candidates, obs_spec, name, on_model = build_policy(args.policy or "hysteresis", config,
                                                                    trust_zip=args.trust_policy_zip)
        controller = Controller(config, broker, policy, candidates=candidates,
                                obs_spec=obs_spec, policy_name=name, on_model=on_model, ca_file=args.ca_file,
                                signer=signer,
                                metrics=metrics.controller() if metrics else None)
    try:
        controller.start()
    except ConnectionError as exc:
        raise AdaptiveError(str(exc)) from None
    print(f"controller for cluster '{config.cluster}': {len(candidates)} candidate plans, policy {name}",
          flush=True)
    _wait_for_signal()
    controller.close()
    return 0


def _run_client(args: argparse.Namespace) -> int:
    from collections import Counter

    import numpy as np

    from adaptive.errors import AdaptiveError
    from adaptive.nn.zoo import default_input_shape
    from adaptive.runtime.client import InferenceClient, RecordWriter

    shape = _shape(args.input_shape) or default_input_shape(args.model)
    if args.duration <= 0 or (args.rate is not None and args.rate <= 0) or args.concurrency < 1:
        raise AdaptiveError("--duration and --rate must be > 0, --concurrency >= 1")
    if args.retries < 0 or args.wait < 0 or not args.timeout > 0:
        raise AdaptiveError("--retries and --wait must be >= 0, --timeout > 0")
    broker = _broker(args)
    curve = _curve(args.curve_keys, args.client)
    metrics = _metrics("client", args)
    writer = RecordWriter(args.out) if args.out else None
    sinks = [s for s in (writer, metrics.client() if metrics else None) if s is not None]
    client = InferenceClient(args.client, broker, args.cluster, shape, timeout_s=args.timeout,
                             bind=args.bind, advertise=args.advertise, ca_file=args.ca_file,
                             max_retries=args.retries, curve=curve, source=args.source,
                             on_record=lambda r: [sink(r) for sink in sinks])
    for sig in (signal.SIGTERM, signal.SIGINT):  # stop sending, let what is in flight finish, exit 0
        signal.signal(sig, lambda *_: client.halt())
    try:
        client.start(args.wait)
        records = client.run(args.duration, rate_hz=args.rate, concurrency=args.concurrency)
    finally:
        client.close()
        if writer is not None:
            writer.close()
    outcomes = Counter(r.outcome for r in client.records)
    ok = [r.latency_ms for r in records if r.outcome == "ok" and r.latency_ms is not None]
    med = f", median {np.median(ok):.1f} ms, p95 {np.percentile(ok, 95):.1f} ms" if ok else ""
    retried = sum(r.retries > 0 for r in client.records)
    print(f"{len(client.records)} requests: {dict(outcomes)}{med}"
          + (f"; {retried} needed a retry" if retried else "")
          + (f"; records in {args.out}" if args.out else ""))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from adaptive.errors import AdaptiveError
    from adaptive.lab.demo import DemoConfig, run_demo

    if args.duration < 15 or args.trace_median_mbps <= 0:
        raise AdaptiveError("--duration must be >= 15 s and --trace-median-mbps > 0")
    if args.clients != 1:
        return _run_clients_demo(args)
    from agents.wiring import build_policy, static_plans

    summary = run_demo(DemoConfig(model=args.model, policy=args.policy, layers_policy=args.layers_policy,
                                  trace=args.trace,
                                  trace_median_mbps=args.trace_median_mbps, duration_s=args.duration,
                                  out=args.out, view=not args.no_view), build_policy, static_plans)
    print(f"\n{summary['model']} on pi -> jetson -> jetson2, policy {summary['policy']} "
          f"({summary['rule']} rule at the pi)\ntrace {summary['trace']}, median "
          f"{summary['trace_median_mbps']:g} Mbit/s, {summary['phase_s']:.0f} s phases")
    print(f"{'phase':<17}{'reqs':>5}{'ok':>5}{'err':>4}{'t.o.':>5}{'mean ms':>8}{'median':>7}{'p95':>7}"
          f"{'plans':>6}{'speedup':>8}")
    for p in summary["phases"]:
        fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
        print(f"{p['phase']:<17}{p['requests']:>5}{p['ok']:>5}{p['errors']:>4}{p['timeouts']:>5}"
              f"{fmt(p['mean_ms'], '>8.1f')}{fmt(p['median_ms'], '>7.1f')}{fmt(p['p95_ms'], '>7.1f')}"
              f"{p['plans']:>6}{fmt(p['speedup_vs_device_only'], '>7.2f')}x")
    for p in summary["phases"]:
        if p.get("same_as"):
            print(f"({p['phase']} is the plan of {p['same_as']}: not run twice)")
    better = summary["better_static"]
    for key, text in (("adaptive_vs_better_static", f"adaptive / {better} (the better static)"),
                      ("adaptive_vs_layers", "adaptive / adaptive-layers (layer plans only)"),
                      ("layers_vs_better_static", f"adaptive-layers / {better}")):
        ratio = summary[key]
        if ratio is not None:
            word = "lower" if ratio < 1 else "higher"
            print(f"{text}: mean x{ratio:.3f}, {100 * abs(1 - ratio):.1f}% {word}")
    results = summary["results"]
    print(f"results: {results['checked']} checked against the whole model, {results['same_top1']} same "
          f"top-1; {results['lossless']} of plans without lossy codecs, largest error "
          f"{results['lossless_max_rel_error']:.1e} of the output's range")
    print(f"plot, requests.csv, summary.json and node logs in {args.out}")
    return 0


def _run_clients_demo(args: argparse.Namespace) -> int:
    from adaptive.errors import AdaptiveError
    from adaptive.lab.demo_clients import TRACES, ClientsDemoConfig, run_clients_demo

    policies = tuple(p.strip() for p in args.policies.split(",") if p.strip())
    if not 2 <= args.clients <= len(TRACES) or not policies or not args.rate > 0:
        raise AdaptiveError(f"--clients must be 1..{len(TRACES)}, --policies non-empty and --rate > 0")
    if args.trace or args.policy != "auto":
        raise AdaptiveError("with --clients, each pi replays its own shipped trace and --policies names the "
                            "policies; --trace and --policy apply to the one-chain demo")
    from agents.wiring import build_multi_policy, static_multi_plan

    out = args.out if args.out != "runs/demo" else "runs/demo-clients"
    summary = run_clients_demo(ClientsDemoConfig(
        clients=args.clients, model=args.model, policies=policies, rate_rps=args.rate,
        trace_median_mbps=args.trace_median_mbps, duration_s=args.duration / len(policies), out=out,
        view=not args.no_view), build_multi_policy, static_multi_plan)
    print(f"\n{summary['model']}: {summary['clients']} clients, each on its own pi, share a jetson;\n"
          f"{summary['rate_rps']:g} frames/s each, {summary['phase_s']:.0f} s per policy")
    print("drop: answered after the 1 s deadline, or not at all; model: the mean the\n"
          "model predicts for what ran; latency in ms")
    print(f"{'policy':<12}{'client':<7}{'frames':>6}{'lost':>5}{'drop':>7}{'mean':>7}{'p95':>7}{'model':>7}"
          f"{'error':>7}  plan")
    fmt = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
    for p in summary["phases"]:
        for c in p["clients"]:
            main = next(iter(c["plans"]), "-")
            print(f"{p['policy'][:11]:<12}{c['pi']:<7}{c['requests']:>6}{c['lost']:>5}"
                  f"{fmt(100 * c['drop_rate'], '>6.1f')}%{fmt(c['mean_ms'], '>7.0f')}"
                  f"{fmt(c['p95_ms'], '>7.0f')}"
                  f"{fmt(c['predicted_ms'], '>7.0f')}{fmt(c['error_pct'], '>+6.1f')}%  {main}")
        print(f"{p['policy'][:11]:<12}{'all':<7}{p['requests']:>6}{p['lost']:>5}"
              f"{fmt(100 * p['drop_rate'], '>6.1f')}%{fmt(p['mean_ms'], '>7.0f')}")
    res = summary["results"]
    print(f"results vs the whole model run here: {res['same_top1']}/{res['checked']} same top-1;\n"
          f"  largest error {100 * res['max_rel_error']:.2g}% of the output range "
          f"({100 * res['lossless_max_rel_error']:.2g}% over the {res['lossless']} with no lossy codec)")
    if summary["mape_pct"] is not None:
        print(f"measured vs model mean latency per client: {summary['mape_pct']:.1f}% MAPE")
    print(f"plot, requests.csv, summary.json and node logs in {out}")
    return 0
