"""Policies for split inference: PPO (stable-baselines3), heuristics and the hindsight oracle.

Every policy follows one protocol (:class:`agents.policies.Policy`), so one evaluation function
(:func:`agents.evaluate.evaluate`) compares them on identical episodes.
"""

import adaptive  # noqa: F401  (resolves moved paths such as agents.experiment)

__all__ = ["evaluate", "oracle", "policies", "ppo"]
