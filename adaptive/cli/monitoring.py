"""``adaptive monitor`` (the node agent) and ``adaptive broker`` (the embedded MQTT broker)."""

from __future__ import annotations

import argparse

__all__ = ["add_parsers"]


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the monitoring subcommands."""
    from monitor.cli import add_arguments

    p = sub.add_parser("monitor", help="run the node telemetry agent (psutil + paho only)",
                       description="Publish CPU, memory, network and link telemetry over MQTT.")
    add_arguments(p)
    p.set_defaults(func=_run_monitor)

    p = sub.add_parser("broker", help="run the embedded MQTT broker (amqtt) for one-machine use",
                       description="An MQTT broker needing no installation; use Mosquitto in production.")
    p.add_argument("--bind", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=1883, help="TCP port (default 1883)")
    p.set_defaults(func=_run_broker)


def _run_monitor(args: argparse.Namespace) -> int:
    from monitor.cli import run

    return run(args)


def _run_broker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from adaptive.errors import AdaptiveError
    from adaptive.lab.broker import EmbeddedBroker

    try:
        import amqtt  # noqa: F401  (only to give a clear message when the extra is missing)
    except ImportError:
        raise AdaptiveError("the embedded broker needs the 'broker' extra: "
                            "pip install 'adaptive-split[broker]'") from None
    try:
        broker = EmbeddedBroker(args.bind, args.port).start()
    except OSError as exc:
        raise AdaptiveError(str(exc)) from None
    print(f"MQTT broker listening on {broker.url} (Ctrl-C to stop)", flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    broker.close()
    return 0
