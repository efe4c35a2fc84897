"""Gymnasium environments on the latency model.

``import envs`` registers ``adaptive/SplitInference-v0``; then
``gymnasium.make("adaptive/SplitInference-v0")`` works with no arguments (the shipped default
configuration and traces).
"""

from gymnasium.envs.registration import register

__all__ = ["SplitInferenceEnv"]

# The entry point applies TimeLimit with the configuration's own `max_steps` (default 200), so a
# config and the time limit cannot disagree.
register(id="adaptive/SplitInference-v0", entry_point="envs.split_inference:make_split_inference")


def __getattr__(name: str) -> object:
    if name == "SplitInferenceEnv":
        from envs.split_inference import SplitInferenceEnv

        return SplitInferenceEnv
    raise AttributeError(name)
