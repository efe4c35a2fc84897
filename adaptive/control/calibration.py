"""Online calibration and request rates, both from the stage times nodes report.

Nodes report measured stage times (:class:`adaptive.protocol.messages.StatsMessage`). For each
node, :class:`Calibration` keeps a scale factor, an exponentially weighted mean of measured over
predicted stage time, where the prediction comes from the shipped profiles (for a node's bands of a
parallel section, the profile's part times: ``docs/model.md``, "Parallel sections"). A controller rebuilds
its latency model from the scaled profiles whenever a scale has moved 2% from the one its model was
built with (:meth:`Calibration.update` says when), so predictions, the policy's observations and the
rules track the real devices. :class:`RequestRates` measures each source's request rate from the
same messages.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Mapping

import numpy as np

from adaptive.errors import PlanError
from adaptive.model.latency import SplitModel
from adaptive.protocol.messages import StageTiming, StatsMessage

__all__ = ["Calibration", "RequestRates"]


class Calibration:
    """Per-node compute scales (see the module docstring).

    Args:
        stage_models: Per node, the shipped-profile model its stages are predicted with and its
            position in that model's chain.
        weight: Weight of each new measurement in the moving mean (0–1].
        rebuild_drift: Relative drift of any scale, since the last rebuild, that calls for one.
    """

    def __init__(self, stage_models: Mapping[str, tuple[SplitModel, int]], weight: float,
                 rebuild_drift: float = 0.02) -> None:
        self.stage_models = dict(stage_models)
        self.weight = weight
        self.rebuild_drift = rebuild_drift
        self.scales = {node: 1.0 for node in self.stage_models}
        self.history: deque[tuple[float, dict[str, float]]] = deque(maxlen=10_000)
        self._built = dict(self.scales)  # the scales the caller's model was last built with
        self._lock = threading.Lock()

    def snapshot(self) -> dict[str, float]:
        """The current scales, per node."""
        with self._lock:
            return dict(self.scales)

    def update(self, stats: StatsMessage) -> bool:
        """Fold a node's stage times in; whether the model should be rebuilt now."""
        found = self.stage_models.get(stats.node)
        if found is None:
            return False
        base_model, idx = found
        ratios = []
        for st in stats.stages:
            predicted = self._predicted_ms(base_model, idx, st)
            if predicted is None or predicted < 0.5 or st.exec_ms <= 0:
                continue  # too small to compare reliably
            # a guard against a broken measurement, wide enough for devices emulated far slower
            # than their profile (an experiment's live run slows Orins 30x)
            ratios.append(float(np.clip(st.exec_ms / predicted, 0.01, 1000.0)))
        if not ratios:
            return False
        w = self.weight
        with self._lock:
            for ratio in ratios:
                self.scales[stats.node] = (1 - w) * self.scales[stats.node] + w * ratio
            self.history.append((time.time(), dict(self.scales)))
            drift = max(abs(self.scales[n] / self._built[n] - 1) for n in self.scales)
        return drift > self.rebuild_drift

    @staticmethod
    def _predicted_ms(model: SplitModel, idx: int, st: StageTiming) -> float | None:
        """The profile's time for a timing of the node at chain position ``idx``; None if it does not fit.

        A whole stage is Eq. 1-2 (accelerators batch, seed 000 Sec. V-D); a node's share of a parallel
        section is its band at the source, else its bands. Blocks outside the model (a node running
        another model, or a forged report) teach nothing.
        """
        if not 0 <= st.start <= st.stop <= model.num_blocks:
            return None
        if st.section is None:
            base = float(model.exec_base(idx, np.array([st.start]), np.array([st.stop]))[0])
            device = model.devices[idx]
            return base * (1 + device.batch_per_extra_item * (st.batch - 1) if idx else 1.0)
        _, share, parts = st.section
        try:
            cfg = model.section_costs.config(st.start, st.stop, share, parts)
        except PlanError:
            return None  # a section this model cannot price
        return float(cfg.edge_ms[0] if idx == 0 else cfg.part_ms[idx, :parts].sum())

    def adopt(self, scales: Mapping[str, float]) -> None:
        """Start from scales measured earlier (e.g. by a previous controller); unknown nodes are ignored."""
        with self._lock:
            for node, k in scales.items():
                if node in self.scales and k > 0:
                    self.scales[node] = float(k)

    def built(self) -> dict[str, float]:
        """Mark the current scales as the ones the model is now built with; returns them."""
        with self._lock:
            self._built = dict(self.scales)
            return dict(self._built)


class RequestRates:
    """Each source's request rate, from the requests its stats say it started.

    Args:
        sources: The nodes whose rate is measured (the others' stats are ignored).
        stale_s: A rate with no stats for this long reads as 0.
    """

    def __init__(self, sources: Iterable[str], stale_s: float = 3.0) -> None:
        self.sources = frozenset(sources)
        self.stale_s = stale_s
        self._rates: dict[str, tuple[float, float]] = {}  # source -> (rate, Unix time of its stats)
        self._lock = threading.Lock()

    def update(self, stats: StatsMessage) -> None:
        """Fold in a source's stats (a moving mean of requests started per second)."""
        if stats.node not in self.sources:
            return
        # a request's first stage starts at block 0 (a sectioned one may also report its band after it)
        requests = sum(st.count * st.batch for st in stats.stages if st.start == 0)
        with self._lock:
            rate, at = self._rates.get(stats.node, (0.0, 0.0))
            span = stats.ts - at if 0 < stats.ts - at < 5 else 1.0
            now_rate = requests / span
            self._rates[stats.node] = (0.5 * rate + 0.5 * now_rate if at else now_rate, stats.ts)

    def rate(self, source: str, now: float | None = None) -> float:
        """The source's recent request rate, requests/s (0 once its stats are ``stale_s`` old)."""
        now = time.time() if now is None else now
        with self._lock:
            rate, at = self._rates.get(source, (0.0, 0.0))
        return rate if now - at < self.stale_s else 0.0
