"""adaptive: adaptive split DNN inference on edge clusters.

Subpackages by floor, each importing only from the floors below it (``tests/test_layers.py``):
``protocol`` (the MQTT contract, standard library only), ``model`` (numpy: profiles, latency,
plans, planner), ``nn`` (torch: zoo, partition, profiler), ``runtime`` (nodes, source, client),
``control`` (controllers, telemetry, metrics), ``lab`` (a cluster on one machine, the demos),
``experiments`` (scenarios in sim and live, reports) and ``cli``. Torch is imported lazily.
"""

from adaptive._moved import install as _install_moved
from adaptive.errors import AdaptiveError, PlanError, ProfileError

_install_moved()

__version__ = "0.1.0"

__all__ = ["AdaptiveError", "PlanError", "ProfileError", "__version__"]
