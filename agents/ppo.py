"""Train MaskablePPO (sb3-contrib) on the split-inference environment, and load trained policies.

A run directory holds: ``policy.zip`` (final model), ``best_model.zip`` (best on the evaluation
episodes), ``policy.json`` (the sidecar: observation and action mapping for the controller),
``policy.mlp.json`` (the actor alone, for numpy: what the controller and source nodes run),
``config.yaml`` (resolved env config and hyperparameters), ``tb/`` (TensorBoard) and
``evaluations.npz`` (EvalCallback log).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from adaptive.errors import AdaptiveError
from adaptive.model.mlp import MlpPolicyNet
from adaptive.model.observation import MULTI_ENV, PolicySpec
from envs.config import EnvConfig, MultiClientConfig

__all__ = ["TrainResult", "export_mlp", "load_actor", "load_hyperparams", "load_policy", "mlp_path", "train"]

ENV_ID = "adaptive/SplitInference-v0"


@dataclass(frozen=True)
class TrainResult:
    """Where a training run wrote its files and how long it took.

    Attributes:
        out_dir: Run directory.
        policy_path: Final model.
        sidecar_path: Sidecar JSON.
        wall_s: Training wall time, s.
        timesteps: Environment steps trained.
    """

    out_dir: Path
    policy_path: Path
    sidecar_path: Path
    wall_s: float
    timesteps: int


def load_hyperparams(path: str | Path | None = None, env_id: str = ENV_ID) -> dict[str, Any]:
    """Hyperparameters for ``env_id``: the ``default`` block overridden by the env's block."""
    import yaml

    if path is None:
        text = resources.files("agents.hyperparams").joinpath("ppo.yml").read_text()
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise AdaptiveError(f"{path}: hyperparameter file not found") from None
    doc = yaml.safe_load(text) or {}
    if not isinstance(doc, dict):
        raise AdaptiveError(f"{path or 'ppo.yml'}: expected a mapping keyed by env id")
    return {**doc.get("default", {}), **doc.get(env_id, {})}


def _make_env(config: EnvConfig, seed: int, env_id: str = ENV_ID) -> Any:
    import gymnasium as gym

    import envs  # noqa: F401  (registers the env id)

    def init() -> Any:
        from stable_baselines3.common.monitor import Monitor

        env = Monitor(gym.make(env_id, config=config))
        env.reset(seed=seed)
        return env

    return init


def train(config: EnvConfig, out_dir: str | Path, *, hyperparams: dict[str, Any] | None = None,
          timesteps: int | None = None, seed: int = 0, progress: bool = True,
          verbose: int = 0) -> TrainResult:
    """Train MaskablePPO on ``config``; write the run directory; return where things are.

    A :class:`~envs.config.MultiClientConfig` trains on ``adaptive/MultiClient-v0``, its ``n_envs``
    episodes stepped together by :class:`~envs.multi_client_vec.MultiClientVecEnv`; otherwise
    ``adaptive/SplitInference-v0`` in a ``DummyVecEnv``.
    """
    import torch
    import yaml
    from sb3_contrib import MaskablePPO
    from sb3_contrib.common.maskable.callbacks import MaskableEvalCallback
    from stable_baselines3.common.vec_env import DummyVecEnv

    hp = dict(hyperparams or load_hyperparams())
    n_envs = int(hp.pop("n_envs", 4))
    total = int(timesteps or hp.pop("n_timesteps", 300_000))
    hp.pop("n_timesteps", None)
    eval_freq = int(hp.pop("eval_freq", 10_000))
    eval_episodes = int(hp.pop("eval_episodes", 10))
    policy = hp.pop("policy", "MlpPolicy")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # a 64x64 MLP: threads only add overhead on small machines
    env_id = MULTI_ENV if isinstance(config, MultiClientConfig) else ENV_ID
    if env_id == MULTI_ENV:
        from envs.multi_client_vec import MultiClientVecEnv

        venv = MultiClientVecEnv(n_envs, config, seed=seed)
        eval_env = MultiClientVecEnv(1, config, seed=seed + 10_000)
    else:
        venv = DummyVecEnv([_make_env(config, seed + i) for i in range(n_envs)])
        eval_env = DummyVecEnv([_make_env(config, seed + 10_000)])
    model = MaskablePPO(policy, venv, seed=seed, verbose=verbose, tensorboard_log=str(out / "tb"), **hp)
    callback = MaskableEvalCallback(eval_env, best_model_save_path=str(out), log_path=str(out),
                                    eval_freq=max(eval_freq // n_envs, 1), n_eval_episodes=eval_episodes,
                                    deterministic=True, verbose=verbose)
    start = time.perf_counter()
    model.learn(total_timesteps=total, callback=callback, progress_bar=progress, tb_log_name="ppo")
    wall = time.perf_counter() - start
    policy_path = out / "policy.zip"
    model.save(policy_path)
    env = _make_env(config, seed, env_id)()
    spec = env.unwrapped.policy_spec("ppo", notes=f"MaskablePPO, {total} steps, seed {seed}, "
                                                  f"{wall:.0f} s wall on {n_envs} envs")
    sidecar = out / "policy.json"
    spec.save(sidecar)
    export_mlp(model).save(mlp_path(policy_path))
    (out / "config.yaml").write_text(yaml.safe_dump(
        {"env": _plain(config.to_dict()), "ppo": {**hp, "n_envs": n_envs, "n_timesteps": total,
                                                  "policy": policy, "seed": seed},
         "wall_s": round(wall, 1)}, sort_keys=False))
    return TrainResult(out, policy_path, sidecar, wall, total)


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def mlp_path(policy_path: str | Path) -> Path:
    """Where the numpy actor of ``policy_path`` lives: ``<name>.mlp.json`` beside it."""
    path = Path(policy_path)
    return path.with_name(path.stem + ".mlp.json")


def export_mlp(model: Any) -> MlpPolicyNet:
    """The deterministic actor of a MaskablePPO ``MlpPolicy`` as a numpy :class:`MlpPolicyNet`.

    Only the architecture the default ``MlpPolicy`` builds is accepted: a flatten feature
    extractor, ``Linear``/``Tanh`` pairs, and a linear action head.
    """
    import torch
    from stable_baselines3.common.torch_layers import FlattenExtractor

    policy = model.policy
    modules = list(policy.mlp_extractor.policy_net)
    if not isinstance(policy.pi_features_extractor, FlattenExtractor) or len(modules) % 2:
        raise AdaptiveError("only MlpPolicy actors with tanh hidden layers can be exported")
    layers = []
    for linear, act in zip(modules[::2], modules[1::2], strict=True):
        if not isinstance(linear, torch.nn.Linear) or not isinstance(act, torch.nn.Tanh):
            raise AdaptiveError("only MlpPolicy actors with tanh hidden layers can be exported")
        layers.append(linear)
    layers.append(policy.action_net)
    with torch.no_grad():
        return MlpPolicyNet([(lin.weight.cpu().numpy(), lin.bias.cpu().numpy()) for lin in layers])


def _sidecar(path: Path) -> PolicySpec:
    if not path.exists() and not mlp_path(path).exists():
        raise AdaptiveError(f"{path}: policy file not found (nor {mlp_path(path).name} beside it)")
    sidecar = path.with_suffix(".json")
    if not sidecar.exists():
        sidecar = path.parent / "policy.json"
    return PolicySpec.load(sidecar)


def load_actor(path: str | Path, trust_zip: bool = False) -> tuple[MlpPolicyNet, PolicySpec]:
    """The numpy actor of a trained policy and its sidecar: ``<name>.mlp.json`` beside ``path``.

    Without that file (a policy trained before it existed), the stable-baselines3 zip itself is
    loaded and exported only with ``trust_zip``: unpickling a zip runs whatever code it holds.

    Raises:
        AdaptiveError: No ``.mlp.json`` (and no ``trust_zip``), or a file that cannot be read.
    """
    path = Path(path)
    if path.name.endswith(".mlp.json"):  # named by its numpy actor
        path = path.with_name(path.name.removesuffix(".mlp.json") + ".zip")
    spec = _sidecar(path)
    actor = mlp_path(path)
    if not actor.exists() and not trust_zip:
        raise AdaptiveError(f"{path}: no {actor.name} beside it; loading the .zip itself would run any code "
                            "it holds (pickle): pass --trust-policy-zip if you trust the file")
    net = MlpPolicyNet.load(actor) if actor.exists() else export_mlp(load_policy(path)[0])
    net.step_s = float(spec.env.get("dt_s", 1.0))
    if net.num_inputs != spec.observation.size or net.num_actions != spec.num_outputs:
        raise AdaptiveError(f"{path}: the network takes {net.num_inputs} inputs and gives "
                            f"{net.num_actions} actions; its sidecar says {spec.observation.size} and "
                            f"{spec.num_outputs}")
    return net, spec


def load_policy(path: str | Path) -> tuple[Any, PolicySpec]:
    """Load a trained model and its sidecar (``policy.json`` beside it, or ``<name>.json``)."""
    from sb3_contrib import MaskablePPO

    path = Path(path)
    spec = _sidecar(path)
    try:
        model = MaskablePPO.load(path, device="cpu")
    except (ValueError, KeyError, RuntimeError, OSError) as exc:
        raise AdaptiveError(f"{path}: cannot load a MaskablePPO policy ({exc.__class__.__name__})") from None
    return model, spec
