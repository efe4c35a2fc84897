"""Gymnasium environments on the latency model.

``import envs`` registers ``adaptive/SplitInference-v0`` (one chain) and ``adaptive/MultiClient-v0``
(several clients sharing the accelerators); ``gymnasium.make`` builds either with no arguments (the
shipped default configuration and traces).
"""

from gymnasium.envs.registration import register

__all__ = ["SplitInferenceEnv"]

# The entry point applies TimeLimit with the configuration's own `max_steps` (default 200), so a
# config and the time limit cannot disagree.
register(id="adaptive/SplitInference-v0", entry_point="envs.split_inference:make_split_inference")
register(id="adaptive/MultiClient-v0", entry_point="envs.multi_client:make_multi_client")


def __getattr__(name: str) -> object:
    if name == "SplitInferenceEnv":
        from envs.split_inference import SplitInferenceEnv

        return SplitInferenceEnv
    raise AttributeError(name)
