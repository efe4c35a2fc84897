"""Command line of the monitor agent: ``python -m monitor`` and ``adaptive monitor``.

Bad input (malformed broker URL, unreachable broker, unknown peer, bad numbers) prints one line
on stderr and exits with code 2. SIGTERM and Ctrl-C stop the agent cleanly: it publishes a
retained ``offline`` status first. Only the standard library, psutil and paho-mqtt are needed.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading

__all__ = ["add_arguments", "add_broker_arguments", "main", "parse_peers", "run"]


def add_broker_arguments(p: argparse.ArgumentParser) -> None:
    """``--broker``, ``--username``, ``--password-file``, ``--ca-file``: where the broker is, who we are."""
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                   help="mqtt://[user@]HOST:PORT or mqtts://… (default mqtt://127.0.0.1:1883); no password "
                        "here")
    p.add_argument("--username", help="MQTT user name (or user@ in the URL)")
    p.add_argument("--password-file", metavar="FILE",
                   help="file whose first line is the MQTT password (default: $ADAPTIVE_MQTT_PASSWORD)")
    p.add_argument("--ca-file", help="CA bundle for mqtts:// (default: the system's)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Add the agent's options to a parser."""
    p.add_argument("--node", required=True, help="this node's id (letters, digits, . _ -)")
    add_broker_arguments(p)
    p.add_argument("--cluster", default="default", help="cluster id (default 'default')")
    p.add_argument("--peers", default="", metavar="ID=HOST:PORT,..",
                   help="peers to probe: their ids and probe-sink addresses")
    p.add_argument("--interval", type=float, default=1.0, help="telemetry period, s (default 1)")
    p.add_argument("--probe-port", type=int, default=7300,
                   help="port of this node's probe sink (0: any free port, -1: no sink; default 7300)")
    p.add_argument("--probe-bind", default="0.0.0.0", help="address of the probe sink (default all)")
    p.add_argument("--probe-allow", default="", metavar="HOST,..|any",
                   help="hosts that may probe this node besides this machine and --peers (the nodes "
                        "before it in the chain); 'any': whoever reaches the port (default: none more)")
    p.add_argument("--probe-interval", type=float, default=10.0, help="period per peer probe, s")
    p.add_argument("--probe-bytes", type=int, default=1_000_000,
                   help="largest probe transfer, bytes (default 1000000)")
    p.add_argument("--probe-max-share", type=float, default=0.05,
                   help="max share of a link's capacity used by probing (default 0.05)")
    p.add_argument("--device", default="", help="device profile name announced in the status")
    p.add_argument("--accelerator", choices=["cpu", "gpu"], default="cpu")
    p.add_argument("--data-endpoint", default="", help="runtime data endpoint announced in the status")
    p.add_argument("--buffer", type=int, default=600, help="samples kept while the broker is away")
    p.add_argument("--keepalive", type=int, default=10,
                   help="MQTT keep-alive, s; the broker announces 'offline' after 1.5x this (default 10)")


def parse_peers(text: str) -> dict[str, tuple[str, int]]:
    """``ID=HOST:PORT,...`` to ``{id: (host, port)}``; raises ValueError naming a bad entry."""
    from adaptive.protocol.messages import SchemaError, check_id
    from monitor.probe import parse_hostport

    peers: dict[str, tuple[str, int]] = {}
    for item in filter(None, (t.strip() for t in text.split(","))):
        peer, sep, addr = item.partition("=")
        if not sep:
            raise ValueError(f"--peers: expected ID=HOST:PORT, found '{item}'")
        try:
            check_id(peer, "peer id")
        except SchemaError as exc:
            raise ValueError(f"--peers: {exc}") from None
        host, port = parse_hostport(addr)
        try:
            socket.getaddrinfo(host, port)
        except OSError:
            raise ValueError(f"--peers: unknown peer host '{host}' for peer '{peer}'") from None
        peers[peer] = (host, port)
    return peers


def run(args: argparse.Namespace) -> int:
    """Run the agent until SIGTERM/SIGINT; returns the exit code."""
    from adaptive.protocol.messages import SchemaError
    from monitor.agent import AgentConfig, MonitorAgent
    from monitor.transport import broker_credentials

    try:
        broker = broker_credentials(args.broker, args.username, args.password_file)
        config = AgentConfig(
            node=args.node, cluster=args.cluster, interval_s=args.interval, peers=parse_peers(args.peers),
            probe_port=None if args.probe_port < 0 else args.probe_port,
            probe_interval_s=args.probe_interval, probe_bytes=args.probe_bytes,
            probe_max_share=args.probe_max_share, device=args.device, accelerator=args.accelerator,
            data_endpoint=args.data_endpoint, buffer_size=args.buffer, probe_bind=args.probe_bind,
            probe_allow=None if args.probe_allow.strip() == "any" else tuple(
                h.strip() for h in args.probe_allow.split(",") if h.strip()))
        if args.keepalive < 1:
            raise ValueError(f"--keepalive must be >= 1 s, found {args.keepalive}")
        agent = MonitorAgent(config, broker, ca_file=args.ca_file if broker.tls else None,
                             keepalive_s=args.keepalive)
        agent.start()
    except (ValueError, SchemaError, ConnectionError) as exc:
        print(f"monitor: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # probe port taken, etc.
        print(f"monitor: error: {exc.strerror or exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    logging.getLogger(__name__).info("monitor %s publishing to %s every %g s", args.node, broker.url,
                                     args.interval)
    stop.wait()
    agent.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m monitor``."""
    parser = argparse.ArgumentParser(prog="python -m monitor", description="Node telemetry agent.")
    add_arguments(parser)
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING (default INFO)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run(args)
