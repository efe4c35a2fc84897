"""The parts every controller is built from, started and stopped as one.

A :class:`ControlSession` holds a controller's telemetry view and liveness
(:class:`~adaptive.control.telemetry.Collector`), its MQTT side
(:class:`~adaptive.control.channel.ControlChannel`), calibration and request rates
(:mod:`adaptive.control.calibration`) and its heartbeat (:class:`~adaptive.control.loop.ControlLoop`).
It routes node stats to calibration and rates and asks the controller to rebuild its model when a
scale has drifted. The controller keeps only its decisions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from adaptive.control.calibration import Calibration, RequestRates
from adaptive.control.channel import ControlChannel
from adaptive.control.config import ControllerConfig
from adaptive.control.loop import ControlLoop
from adaptive.control.telemetry import Collector
from adaptive.model.latency import SplitModel
from adaptive.protocol.messages import Ack, StatsMessage
from monitor.transport import BrokerAddress

__all__ = ["ControlSession"]


class ControlSession:
    """A controller's parts (see the module docstring).

    Args:
        config: Controller configuration (cluster, period, liveness, calibration settings).
        broker: MQTT broker.
        stage_models: Per node, the shipped-profile model its stage times are compared with, and its
            position there (:class:`~adaptive.control.calibration.Calibration`).
        sources: Nodes whose request rate is measured.
        tick: Called every ``config.interval_s`` once started.
        rebuild: Called when calibration has moved a scale enough to rebuild the model.
        on_ack: Called with every valid ack.
        ca_file: CA bundle for an ``mqtts://`` broker.
        signer: Signs plans and rules (:class:`adaptive.runtime.signing.Signer`); None: unsigned.
    """

    def __init__(self, config: ControllerConfig, broker: BrokerAddress,
                 stage_models: Mapping[str, tuple[SplitModel, int]], sources: Iterable[str], *,
                 tick: Callable[[], Any], rebuild: Callable[[], None], on_ack: Callable[[Ack], None],
                 ca_file: str | None = None, signer: Any = None) -> None:
        self.config = config
        self.rebuild = rebuild
        self.calibration = Calibration(stage_models, config.calibration_weight)
        self.rates = RequestRates(sources)
        self.collector = Collector(broker, config.cluster, client_id=f"controller-{config.cluster}-view",
                                   ca_file=ca_file)
        self.channel = ControlChannel(broker, config.cluster, on_ack=on_ack, on_stats=self._on_stats,
                                      ca_file=ca_file, signer=signer)
        self.loop = ControlLoop(tick, config.interval_s)

    def start(self, wait_s: float = 10.0) -> None:
        """Connect both sessions, learn the newest version from the retained topics, start ticking."""
        self.collector.start(wait_s)
        self.channel.start(wait_s)
        self.loop.start()

    def close(self) -> None:
        """Stop ticking and disconnect (the retained plan and rules stay in force)."""
        self.loop.close()
        self.channel.close()
        self.collector.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self.loop.closed

    def connected(self) -> bool:
        """Both broker sessions (telemetry view and control) are up."""
        return self.channel.connected and self.collector.transport.connected

    def alive(self, view: Any, now: float) -> bool:
        """A node's view shows it online with fresh telemetry (the config's liveness rules)."""
        return self.collector.alive(view, now, self.config.stale_after_s, self.config.reconnect_grace_s)

    def adopt_scales(self, scales: Mapping[str, float]) -> None:
        """Start from compute scales measured earlier (e.g. by a previous controller), then rebuild."""
        self.calibration.adopt(scales)
        self.rebuild()

    def _on_stats(self, stats: StatsMessage) -> None:
        self.rates.update(stats)
        if self.config.calibrate and self.calibration.update(stats):
            self.rebuild()
