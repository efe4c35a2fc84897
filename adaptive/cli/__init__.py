"""The ``adaptive`` command line.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and ``run(args)``.
Modules import only :mod:`argparse` at the top, so ``adaptive monitor`` works on a Raspberry Pi
with the base dependencies, and ``adaptive --help`` is instant; torch, gymnasium and friends are
imported inside the subcommands that need them.

User mistakes (:class:`~adaptive.errors.AdaptiveError`, missing files, a missing optional extra)
print one line on stderr and exit with code 2, like argparse's own usage errors.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]

# subcommand name -> module under adaptive.cli
_COMMANDS: dict[str, str] = {
    "predict": "planning",
    "plan": "planning",
    "plan-table": "planning",
    "profiles": "planning",
    "partition": "modeling",
    "profile": "modeling",
    "monitor": "monitoring",
    "broker": "monitoring",
    "train": "learning",
    "evaluate": "learning",
    "node": "live",
    "controller": "live",
    "client": "live",
    "demo": "live",
    "keys": "live",
    "experiment": "experiment",
}


# top-level module of an optional dependency -> the extra that installs it
_EXTRAS: dict[str, str] = {
    "torch": "runtime", "torchvision": "runtime", "zmq": "runtime",
    "gymnasium": "train", "stable_baselines3": "train", "sb3_contrib": "train", "matplotlib": "train",
    "tensorboard": "train", "tqdm": "runtime", "rich": "train",
    "amqtt": "broker",
}


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (every subcommand registered)."""
    parser = argparse.ArgumentParser(
        prog="adaptive",
        description="Adaptive split DNN inference on edge clusters.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    seen: set[str] = set()
    for module in dict.fromkeys(_COMMANDS.values()):
        if module not in seen:
            importlib.import_module(f"adaptive.cli.{module}").add_parsers(sub)
            seen.add(module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``adaptive`` console script; returns the exit code."""
    from adaptive.errors import AdaptiveError
    from adaptive.protocol.messages import SchemaError

    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except (AdaptiveError, SchemaError) as exc:  # SchemaError: an id or message breaking the MQTT contract
        print(f"adaptive {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"adaptive {args.command}: error: file not found: {exc.filename}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        extra = _EXTRAS.get((exc.name or "").split(".")[0])
        if extra is None:
            raise
        print(f"adaptive {args.command}: error: needs the '{extra}' extra (no module '{exc.name}'): "
              f"pip install 'adaptive-split[{extra}]', or [all] for everything", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
