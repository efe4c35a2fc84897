"""adaptive: adaptive split DNN inference on edge clusters.

The core (profiles, latency and energy model, planner) needs only numpy. Torch is imported
lazily by the partitioner, the profiler and the node runtime.
"""

from adaptive.errors import AdaptiveError, PlanError, ProfileError

__version__ = "0.1.0"

__all__ = ["AdaptiveError", "PlanError", "ProfileError", "__version__"]
