"""``adaptive train`` and ``adaptive evaluate``: PPO and heuristic policies on the environment."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

__all__ = ["add_parsers"]

HEURISTICS = ("device-only", "offload", "static-mean", "static-hindsight", "greedy", "hysteresis", "static")
MULTI_HEURISTICS = ("device-only", "greedy", "hysteresis", "coordinated", "static-hindsight", "clairvoyant")
SINGLE, MULTI = "adaptive/SplitInference-v0", "adaptive/MultiClient-v0"
DEFAULT_POLICIES = {SINGLE: "ppo,greedy,hysteresis,static-hindsight,static-mean,device-only,offload,oracle",
                    MULTI: "ppo,greedy,hysteresis,coordinated,static-hindsight,device-only,clairvoyant"}


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the learning subcommands."""
    p = sub.add_parser("train", help="train a MaskablePPO policy on the split-inference env",
                       description="Train MaskablePPO (sb3-contrib); write model, sidecar, logs.")
    p.add_argument("--env", default=SINGLE, choices=(SINGLE, MULTI),
                   help=f"environment (default {SINGLE}; {MULTI} trains on batched episodes)")
    p.add_argument("--config", help="env config YAML (default: the shipped default)")
    p.add_argument("--hyperparams", help="PPO hyperparameter YAML (default: agents/hyperparams/ppo.yml)")
    p.add_argument("--timesteps", type=int, help="environment steps (default: from the hyperparameters)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/ppo", help="run directory (default runs/ppo)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_train)

    p = sub.add_parser("evaluate", help="compare policies against the hindsight oracle",
                       description="Run every policy on the same seeded episodes and compare.")
    p.add_argument("--env", default=SINGLE, choices=(SINGLE, MULTI),
                   help=f"environment (default {SINGLE}; {MULTI}: several clients share the accelerators)")
    p.add_argument("--config", help="env config YAML (default: the PPO policy's, else the shipped)")
    p.add_argument("--traces", nargs="+", metavar="DIR|FILE",
                   help="evaluate on these traces, each pinned for --episodes-per-trace episodes")
    p.add_argument("--policies",
                   help="comma list; single chain: ppo[:PATH], " + ", ".join(HEURISTICS)
                   + f", oracle (default {DEFAULT_POLICIES[SINGLE]}); {MULTI}: ppo[:PATH], "
                   + ", ".join(MULTI_HEURISTICS)
                   + f" (default {DEFAULT_POLICIES[MULTI]})")
    p.add_argument("--trust-policy-zip", action="store_true",
                   help="let ppo:PATH load a stable-baselines3 .zip (which can run any code it holds) "
                        "when no .mlp.json sits beside it (default: refuse)")
    p.add_argument("--episodes", type=int, default=20, help="episodes without --traces (default 20)")
    p.add_argument("--episodes-per-trace", type=int, default=3, help="episodes per trace (default 3)")
    p.add_argument("--seed", type=int, default=1000, help="first episode seed (default 1000)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--plot", metavar="FILE", help="save a figure of latency and plan over time")
    p.set_defaults(func=_run_evaluate)


def _run_train(args: argparse.Namespace) -> int:
    from adaptive.errors import AdaptiveError
    from agents.ppo import load_hyperparams, train
    from envs.config import EnvConfig, MultiClientConfig

    if args.timesteps is not None and args.timesteps < 1:
        raise AdaptiveError(f"--timesteps must be >= 1, found {args.timesteps}")
    config = (MultiClientConfig if args.env == MULTI else EnvConfig).load(args.config)
    started = time.time() - 1.0  # file times may be rounded down
    result = train(config, args.out, hyperparams=load_hyperparams(args.hyperparams, args.env),
                   timesteps=args.timesteps, seed=args.seed, progress=not args.no_progress)
    wrote = [p.name for p in sorted(result.out_dir.iterdir()) if p.is_file() and p.stat().st_mtime >= started]
    print(f"trained {result.timesteps} steps in {result.wall_s:.0f} s; wrote {', '.join(wrote)} and "
          f"TensorBoard logs in {result.out_dir}")
    return 0


def _default_ppo(env_id: str = SINGLE) -> Path:
    from importlib import resources

    name = "ppo_multi_client.zip" if env_id == MULTI else "ppo_default.zip"
    return Path(str(resources.files("agents.trained").joinpath(name)))


def _policy_factories(names: list[str], trust_zip: bool = False) -> tuple[dict[str, Any], Any]:
    from adaptive.errors import AdaptiveError
    from agents.oracle import OraclePolicy
    from agents.policies import make_heuristic
    from agents.ppo import load_actor

    factories: dict[str, Any] = {}
    spec = None
    for item in names:
        name, _, path = item.partition(":")
        if name == "ppo":
            model, spec = load_actor(path or _default_ppo(), trust_zip)  # the numpy actor the controller runs
            factories["ppo"] = lambda env, m=model: m
        elif name in HEURISTICS:
            factories[name] = lambda env, n=name: make_heuristic(n, env)
        elif name == "oracle":
            factories[name] = lambda env: OraclePolicy()
        else:
            raise AdaptiveError(f"--policies: unknown policy '{item}' "
                                f"(expected ppo[:PATH], {', '.join(HEURISTICS)}, oracle)")
    return factories, spec


def _multi_factories(names: list[str], trust_zip: bool = False) -> dict[str, Any]:
    from adaptive.errors import AdaptiveError
    from agents.multi_policies import MultiActor, make_multi_heuristic
    from agents.ppo import load_actor

    factories: dict[str, Any] = {}
    for item in names:
        name, _, path = item.partition(":")
        if name == "ppo":
            net, spec = load_actor(path or _default_ppo(MULTI), trust_zip)
            if spec.env_id != MULTI:
                raise AdaptiveError(f"{path}: trained on {spec.env_id}, not {MULTI}")
            factories["ppo"] = lambda env, n=net, k=spec.observation.num_clients: MultiActor(n, k)
        elif name in MULTI_HEURISTICS:
            factories[name] = lambda env, n=name: make_multi_heuristic(n, env)
        else:
            raise AdaptiveError(f"--policies: unknown policy '{item}' for {MULTI} "
                                f"(expected ppo[:PATH], {', '.join(MULTI_HEURISTICS)})")
    return factories


def _run_evaluate(args: argparse.Namespace) -> int:
    import gymnasium as gym

    import envs  # noqa: F401
    from adaptive.cli.args import parse_names
    from adaptive.errors import AdaptiveError
    from agents.evaluate import evaluate
    from envs.config import EnvConfig, MultiClientConfig

    if min(args.episodes, args.episodes_per_trace) < 1:
        raise AdaptiveError("--episodes and --episodes-per-trace must be >= 1")
    names = parse_names(args.policies or DEFAULT_POLICIES[args.env], "--policies")
    multi = args.env == MULTI
    spec = None
    if multi:
        factories, kind = _multi_factories(names, args.trust_policy_zip), MultiClientConfig
        config = MultiClientConfig.load(args.config)
    else:
        (factories, spec), kind = _policy_factories(names, args.trust_policy_zip), EnvConfig
        if args.config:
            config = EnvConfig.load(args.config)
        elif spec is not None:
            config = EnvConfig.from_dict(spec.env, "policy sidecar")
        else:
            config = EnvConfig.load()
    overrides: dict[str, Any] = {"synthetic_share": 0.0}
    if args.traces:
        overrides["traces"] = tuple(args.traces)
    config = kind.from_dict({**config.to_dict(), **overrides}, "evaluate")

    def make_env() -> Any:
        return gym.make(args.env, config=config)

    probe = make_env().unwrapped
    if spec is not None and (spec.plans != probe.candidates.to_json()
                             or spec.observation.size != probe.obs_spec.size):
        why = (f"the PPO policy was trained on {spec.model_profile} over {list(spec.devices)} "
               f"with {len(spec.plans)} plans; this env has {probe.num_plans}")
        if args.policies:
            raise AdaptiveError(f"{why}: evaluate with the policy's own config (omit --config)")
        print(f"ppo left out: {why}")  # the default list names ppo; the user asked for this env
        factories.pop("ppo")
    if args.traces:
        names = probe.trace_names
        seeds = [args.seed + i for i in range(len(names) * args.episodes_per_trace)]
        options = [{"trace": names[i // args.episodes_per_trace]} for i in range(len(seeds))]
    else:
        seeds, options = [args.seed + i for i in range(args.episodes)], None
    summaries, episodes = evaluate(make_env, factories, seeds, options)
    rows = [s.__dict__ for s in summaries]
    if args.plot:
        _plot(episodes, args.plot, probe)
    if args.json:
        print(json.dumps({"env": args.env, "episodes": len(seeds), "model": config.model_profile,
                          "devices": list(config.devices), "policies": rows}, indent=1))
        return 0
    print(f"{len(seeds)} episodes of {config.max_steps} steps, {config.model_profile} on "
          f"{' -> '.join(config.devices)}" + (f", {config.max_clients} client slots" if multi else ""))
    width = max(len("policy"), *(len(s.policy) for s in summaries)) + 1
    last = ("drops", "vs clairv.") if multi else ("SLO viol.", "vs oracle")
    print(f"{'policy':<{width}}{'mean ms':>10}{'p95 ms':>10}{'energy J':>10}{'switches':>10}"
          f"{last[0]:>10}{last[1]:>11}")
    for s in summaries:
        ratio = "" if s.ratio_to_oracle != s.ratio_to_oracle else f"{s.ratio_to_oracle:.3f}"
        share = s.drop_rate if multi else s.slo_violation_rate
        print(f"{s.policy:<{width}}{s.mean_latency_ms:>10.2f}{s.p95_latency_ms:>10.2f}{s.mean_energy_j:>10.4f}"
              f"{s.switches_per_episode:>10.1f}{100 * share:>9.1f}%{ratio:>11}")
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


def _plot(episodes: dict[str, Any], path: str, env: Any) -> None:
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = {name: eps[0] for name, eps in episodes.items()}
    any_ep = next(iter(first.values()))
    t = range(len(any_ep.latency_ms))
    fig, axes = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    multi = any_ep.actions.ndim == 2
    axes[0].plot(t, any_ep.bandwidth_mbps[:, 0], color="black")
    axes[0].set_ylabel("client 1's uplink, Mbit/s" if multi else "bandwidth, Mbit/s")
    axes[0].set_yscale("log")
    follows = f"client 1 on {any_ep.traces[0]}" if multi else ", ".join(any_ep.traces)
    axes[0].set_title(f"{env.config.model_profile} on {' -> '.join(env.config.devices)}: {follows}",
                      fontsize=9)
    for name, ep in first.items():
        axes[1].plot(t, ep.latency_ms, label=name, lw=1)
        # on the multi-client env, a gap while client 1 is absent
        plans = np.where(ep.actions[:, 0] >= 0, ep.actions[:, 0], np.nan) if multi else ep.actions
        axes[2].step(t, plans, where="post", label=name, lw=1)
    axes[1].set_ylabel("mean latency of the step's frames, ms" if multi else "latency, ms")
    axes[1].set_yscale("log")
    axes[1].legend(fontsize=8, ncol=4)
    labels = [str(env.candidates.plan(i).splits) + ("+" + ",".join(env.candidates.plan(i).codecs)
                                                    if env.candidates.plan(i).codecs else "")
              for i in range(env.num_plans)]
    axes[2].set_yticks(range(env.num_plans), labels, fontsize=7)
    axes[2].set_ylabel("client 1's plan (splits)" if multi else "plan (splits)")
    axes[2].set_xlabel(f"step ({env.config.dt_s:g} s)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
