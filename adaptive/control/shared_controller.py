"""The controller of several clients sharing the accelerators: one joint decision, a rule per client.

Each client is on its own edge device (a *source*: ``chain[0]`` and ``sources`` of the
:class:`~adaptive.control.config.ControllerConfig`) with its own uplink, and every source's requests
run along ``[its edge, chain[1], …, chain[M]]``. Every ``interval_s`` the controller

1. builds the cluster's observation with :class:`adaptive.model.shared_chain.ClusterObservation`, the
   mapping ``adaptive/MultiClient-v0`` trains on: per client slot, present or not (its source is
   alive and its client sends), its request rate (measured from its source's stats), its edge's
   load and its uplink history (its monitor's estimates, sampled every ``step_s`` of the
   policy); then the accelerators' load and the clients batched on each under the joint plan in
   force. Backlogs are not observed live: they read as 0;
2. asks the joint policy (``predict(obs, action_masks=K·P mask) -> (K,)`` plans, the env's
   action) for a plan per client. A plan outside a client's mask (it gives work to a dead
   accelerator) is replaced by that client's best allowed plan, with a warning; a plan for a slot
   with no client is ignored;
3. turns the decision into a **table rule per source** (:mod:`adaptive.protocol.rules`): the policy (a
   copy, so that a stateful one is not moved) is asked again with that client's uplink moved
   over a grid, everything else held, and runs of equal choices become bandwidth bins. The
   source then follows its own uplink per request, as on one chain, while the others' plans
   (and so the accelerators' batch and queue) stay as decided. A source that is alive but idle
   (its client has not sent for 3 s) gets the rule it would get if its client began now, and
   does not count in the others' decision. A rule is published (retained, versioned) when its
   bins or plans change.

Calibration works as on one chain, per node; the shared model
(:class:`adaptive.model.shared_chain.SharedChain`) is rebuilt from the scaled profiles and handed to
``on_shared`` (a heuristic that simulates with it). Telemetry and liveness, calibration, the rule
sender and the heartbeat are the parts the one-chain :class:`~adaptive.control.controller.Controller`
is built from too (:class:`~adaptive.control.session.ControlSession`); a rule's bins come from
:func:`adaptive.model.decision.bandwidth_bins`, as a one-chain table's do.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from adaptive.control.config import ControllerConfig
from adaptive.control.session import ControlSession
from adaptive.errors import AdaptiveError
from adaptive.model.decision import bandwidth_bins
from adaptive.model.latency import SplitModel
from adaptive.model.observation import CandidatePlans
from adaptive.model.profiles import DeviceProfile, resolve_device, resolve_model, scaled_profiles
from adaptive.model.shared_chain import ClusterObservation, ClusterState, SharedChain
from adaptive.protocol.rules import RuleMessage, RulePlan
from monitor.transport import BrokerAddress

__all__ = ["RULE_GRID_MBPS", "SharedController"]

log = logging.getLogger(__name__)

RULE_GRID_MBPS = np.geomspace(0.1, 1000.0, 25)  # a source's uplink grid for its table: 6 points per decade


class SharedController:
    """Joint plans for several sources sharing ``chain[1:]`` (see the module docstring).

    Args:
        config: Controller configuration with ``sources``.
        broker: MQTT broker.
        policy: The joint policy: ``predict(obs, action_masks=...)`` returning a plan per slot.
        spec: The observation layout the policy takes (``K`` slots ≥ the number of sources).
        candidates: The plans every client chooses from (the policy's actions).
        deadline_ms: Frame deadline the model's predictions assume, ms.
        step_s: Spacing of the uplink history in the observation (the policy's training step), s.
        policy_name: Name published with each rule.
        on_shared: Called with each new (calibrated) shared model.
        accel_link_mbps: Bandwidth between accelerators, Mbit/s.
        link_delay_ms: Propagation delay of every client's uplink, then of each link between
            accelerators, ms (none: 0).
        admission: Per source node, a deadline, ms: its rules then carry it, with each bin's
            predicted latency, source compute and uplink bits, and the source drops a request the
            model predicts later than that (seed 004's frame drop; the environment's admission).
            None: sources admit every request.
        ca_file: CA bundle for an ``mqtts://`` broker.
        signer: Signs plans and rules (:class:`adaptive.runtime.signing.Signer`); None: unsigned.
        metrics: Prometheus metrics, or None.
    """

    def __init__(self, config: ControllerConfig, broker: BrokerAddress, policy: Any, *,
                 spec: ClusterObservation, candidates: CandidatePlans, deadline_ms: float = 1000.0,
                 step_s: float = 0.25, policy_name: str = "policy",
                 on_shared: Callable[[SharedChain], None] | None = None, accel_link_mbps: float = 1000.0,
                 link_delay_ms: Sequence[float] = (), admission: Mapping[str, float] | None = None,
                 ca_file: str | None = None, metrics: Any = None, signer: Any = None) -> None:
        if len(config.chain) < 2:
            raise AdaptiveError("several clients share accelerators: the chain needs at least one")
        self.config = config
        self.policy = policy
        self.policy_name = policy_name
        self.metrics = metrics
        self.profile = resolve_model(config.model_profile)
        self.devices: list[DeviceProfile] = [resolve_device(c.device) for c in config.chain]
        self.candidates = candidates
        self.clients = (config.chain[0], *config.sources)
        if len(self.clients) > spec.num_clients:
            raise AdaptiveError(f"the policy has {spec.num_clients} client slots; the cluster has "
                                f"{len(self.clients)} sources")
        if spec.num_plans != len(candidates) or spec.num_accels != len(config.chain) - 1:
            raise AdaptiveError(f"the policy expects {spec.num_plans} plans on {spec.num_accels} "
                                f"accelerator(s); the cluster has {len(candidates)} on "
                                f"{len(config.chain) - 1}")
        self.spec = spec
        self.deadline_ms = float(deadline_ms)
        self.step_s = float(step_s)
        self.on_shared = on_shared
        self.accel_link_mbps = float(accel_link_mbps)
        self.link_delay_ms = tuple(float(x) for x in link_delay_ms)
        self.admission = dict(admission or {})
        self._edge_devices = [resolve_device(c.device) for c in self.clients]
        self.num_blocks = self.profile.num_blocks
        chain_model = SplitModel(self.profile, self.devices)
        stage_models = {c.node: (SplitModel(self.profile, [dev, *self.devices[1:]]), 0)
                        for c, dev in zip(self.clients, self._edge_devices, strict=True)}
        stage_models |= {c.node: (chain_model, i) for i, c in enumerate(config.chain) if i > 0}
        # sources ack rules, which the channel tracks (wait_rules); nothing else is acked here
        self.session = ControlSession(config, broker, stage_models, [c.node for c in self.clients],
                                      tick=self.step, rebuild=self.rebuild_model, on_ack=lambda ack: None,
                                      ca_file=ca_file, signer=signer)
        self.collector, self.channel = self.session.collector, self.session.channel
        self.shared = self._build_shared(self.scales)
        K = spec.num_clients
        self.joint = np.zeros(K, np.int64)  # the joint plan in force (slot order)
        self._uplinks: list[deque[tuple[float, float]]] = [deque(maxlen=256) for _ in range(K)]
        self._tables: dict[str, tuple[tuple[float, ...], tuple[int, ...]]] = {}
        self.rejected_actions = 0  # plans outside the mask the policy gave
        self.history: deque[dict[str, Any]] = deque(maxlen=10_000)  # each decision, for reports
        self.observed: dict[str, Any] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ lifecycle

    def start(self, wait_s: float = 10.0) -> SharedController:
        """Connect, learn the newest rule version from the retained topics, start deciding."""
        self.session.start(wait_s)
        return self

    def close(self) -> None:
        """Stop deciding and disconnect (the retained rules stay in force)."""
        self.session.close()

    @property
    def scales(self) -> dict[str, float]:
        """Each node's calibrated compute scale (measured / profiled stage time)."""
        return self.session.calibration.snapshot()

    @property
    def rules(self) -> deque[RuleMessage]:
        """Every source's rules published, newest last."""
        return self.channel.rules

    def wait_rules(self, timeout_s: float = 5.0) -> list[str]:
        """Wait until every source applied the newest rule sent to it; the sources that did not."""
        return self.channel.wait_rules(timeout_s)

    # ------------------------------------------------------------------ model

    def request_rate(self, now: float | None = None, source: str | None = None) -> float:
        """A source's recent request rate, requests/s (0 after 3 s without stats); default: the first."""
        return self.session.rates.rate(source or self.clients[0].node, now)

    def adopt_scales(self, scales: Mapping[str, float]) -> None:
        """Start from compute scales measured earlier (e.g. by a previous controller), per node."""
        self.session.adopt_scales(scales)

    def rebuild_model(self) -> None:
        """Rebuild the shared model with every node's compute scaled by its fitted factor."""
        self.shared = self._build_shared(self.session.calibration.built())
        if self.on_shared is not None:
            self.on_shared(self.shared)

    def _build_shared(self, scales: dict[str, float]) -> SharedChain:
        """The shared model with every node's compute scaled by its factor."""
        nodes = [*self.clients, *self.config.chain[1:]]
        devices: list[DeviceProfile] = [*self._edge_devices, *self.devices[1:]]
        profile, scaled = scaled_profiles(self.profile, devices, [scales[c.node] for c in nodes],
                                          [c.node for c in nodes])
        n = len(self.clients)
        edges = scaled[:n] + [scaled[0]] * (self.spec.num_clients - n)  # empty slots: any edge
        return SharedChain(profile, edges, scaled[n:], self.candidates.plans,
                           accel_link_mbps=self.accel_link_mbps, link_delay_ms=self.link_delay_ms or 0.0)

    # ------------------------------------------------------------------ observation

    def observe_cluster(self, now: float | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """``(observation, (K, P) mask, what it saw)`` from the newest telemetry."""
        now = time.time() if now is None else now
        cfg, spec = self.config, self.spec
        K, P, M, H = spec.num_clients, spec.num_plans, spec.num_accels, spec.history
        views = self.collector.nodes()
        accels = cfg.chain[1:]
        dead = [c.node for c in accels if not self.session.alive(views.get(c.node), now)]
        accel_load = np.zeros(M)
        for j, c in enumerate(accels):
            v = views.get(c.node)
            if c.node not in dead and v is not None and v.telemetry is not None:
                accel_load[j] = v.telemetry.cpu_percent / 100
        active, alive = np.zeros(K, bool), np.zeros(K, bool)
        rate, edge_load, bw = np.ones(K), np.zeros(K), np.full(K, cfg.default_bandwidth_mbps)
        hist = np.full((K, H), cfg.default_bandwidth_mbps)
        ages: list[float | None] = [None] * K
        for k, c in enumerate(self.clients):
            v = views.get(c.node)
            if not self.session.alive(v, now):
                continue
            alive[k] = True
            measured_rate = self.request_rate(now, c.node)
            active[k] = measured_rate > 0  # its client sends (an idle source is planned as if it began)
            rate[k] = max(measured_rate, 1.0)
            edge_load[k] = v.telemetry.cpu_percent / 100
            value, ages[k] = self.collector.uplink(v, accels[0].node, now)
            if value:
                self._uplinks[k].append((now, value))
            if self._uplinks[k]:
                bw[k] = self._uplinks[k][-1][1]
                hist[k] = self._history(self._uplinks[k], now, H)
        batch = (self.shared.uses[self.joint][:, 1:] & active[:, None]).sum(axis=0).astype(float)
        obs = self._assemble(active, rate, edge_load, hist, bw, accel_load, batch)[0]
        dead_at = [i for i, c in enumerate(cfg.chain) if c.node in dead]
        mask = np.broadcast_to(self.candidates.avoiding(dead_at, self.num_blocks), (K, P)).copy()
        mask[~active] = True
        seen = {"active": active, "alive": alive, "rate_rps": rate, "edge_load": edge_load,
                "bandwidth_mbps": bw, "history_mbps": hist, "accel_load": accel_load, "dead": dead,
                "batch": batch}
        if self.metrics is not None:
            self.metrics.observed(
                {f"{c.node}->{accels[0].node}": (float(bw[k]), ages[k]) for k, c in enumerate(self.clients)},
                {c.node: self.session.alive(views.get(c.node), now) for c in (*self.clients, *accels)},
                self.scales, self.session.connected())
        n = len(self.clients)
        with self._lock:
            self.observed = {"dead": dead, "bandwidth_mbps": bw[:n].tolist(), "rate_rps": rate[:n].tolist(),
                             "active": active[:n].tolist(), "alive": alive[:n].tolist()}
        return obs, mask, seen

    def _history(self, samples: deque[tuple[float, float]], now: float, H: int) -> np.ndarray:
        """The newest estimate at or before each of the last ``H`` steps of ``step_s``, oldest first."""
        times = [t for t, _ in samples]
        out = np.empty(H)
        for h in range(H):
            at = now - (H - 1 - h) * self.step_s
            i = max(int(np.searchsorted(times, at, side="right")) - 1, 0)
            out[h] = samples[i][1]
        return out

    def _assemble(self, active: np.ndarray, rate: np.ndarray, edge_load: np.ndarray, hist: np.ndarray,
                  bw: np.ndarray, accel_load: np.ndarray, batch: np.ndarray) -> np.ndarray:
        """Observations for ``E`` variants (leading axis on ``hist`` and ``bw``, or none)."""
        hist = np.atleast_3d(hist[None] if hist.ndim == 2 else hist)
        bw = np.atleast_2d(bw)
        E = len(bw)
        tile = lambda x: np.broadcast_to(x, (E, *np.shape(x)))  # noqa: E731
        slots = self.spec.slots(tile(active), tile(rate), tile(edge_load), hist)
        predicted = self.shared.alone_ms(bw, tile(edge_load), tile(accel_load))
        empty = ClusterState(*(np.zeros((E, *x.shape[1:])) for x in self.shared.initial_state(1)))
        return self.spec.assemble(slots, predicted, bw, tile(accel_load), empty, tile(batch))

    # ------------------------------------------------------------------ decisions

    def _joint(self, obs: np.ndarray, mask: np.ndarray, seen: dict[str, Any], warn: bool,
               policy: Any = None) -> np.ndarray:
        """The policy's (or ``policy``'s) plan per slot, each inside its mask (slots with no client: 0)."""
        policy = self.policy if policy is None else policy
        plans, _ = policy.predict(obs, deterministic=True, action_masks=mask.reshape(-1))
        plans = np.asarray(plans, np.int64).reshape(-1)
        K, P = mask.shape
        if plans.shape != (K,):
            raise AdaptiveError(f"the policy gave {plans.size} plans for {K} client slots")
        active = seen["active"]
        bad = active & ((plans < 0) | (plans >= P) | ~mask[np.arange(K), np.clip(plans, 0, P - 1)])
        if bad.any():
            pred = self.shared.alone_ms(seen["bandwidth_mbps"][None], seen["edge_load"][None],
                                        seen["accel_load"][None])[0]
            best = np.argmin(np.where(mask, pred, np.inf), axis=1)
            if warn:
                self.rejected_actions += int(bad.sum())
                for k in np.flatnonzero(bad):
                    log.warning("policy %s gave client %s plan %d, outside its mask; using plan %d",
                                self.policy_name, self.clients[k].node, plans[k], best[k])
            plans = np.where(bad, best, plans)
        return np.where(active, plans, 0)

    def step(self, now: float | None = None) -> list[RuleMessage]:
        """Decide jointly once; publish the rules that changed. Returns them."""
        now = time.time() if now is None else now
        if not self.session.connected():
            return []
        obs, mask, seen = self.observe_cluster(now)
        self.joint = self._joint(obs, mask, seen, warn=True)
        published = []
        predicted = {}
        for k, c in enumerate(self.clients):
            if not seen["alive"][k]:
                continue  # the client left with its source: its slot's plan is ignored
            if not seen["active"][k]:  # idle: the rule it would get if its client began now
                begins = {**seen, "active": seen["active"].copy()}
                begins["active"][k] = True
                rule, predicted[c.node] = self._rule_for(k, mask, begins, now)
            else:
                rule, predicted[c.node] = self._rule_for(k, mask, seen, now)
            if rule is not None:
                published.append(rule)
        self.history.append({"at": now, "plans": self.joint[: len(self.clients)].tolist(),
                             "active": seen["active"][: len(self.clients)].tolist(),
                             "alive": seen["alive"][: len(self.clients)].tolist(),
                             "bandwidth_mbps": seen["bandwidth_mbps"][: len(self.clients)].tolist(),
                             "rate_rps": seen["rate_rps"][: len(self.clients)].tolist(),
                             "predicted_ms": predicted})
        return published

    def _rule_for(self, k: int, mask: np.ndarray, seen: dict[str, Any],
                  now: float) -> tuple[RuleMessage | None, float | None]:
        """Client ``k``'s table: the policy's choice for it over its uplink grid, the rest held."""
        grid = RULE_GRID_MBPS
        G = len(grid)
        hist = np.repeat(seen["history_mbps"][None], G, axis=0)
        hist[:, k, -1] = grid
        bw = np.repeat(seen["bandwidth_mbps"][None], G, axis=0)
        bw[:, k] = grid
        obs = self._assemble(seen["active"], seen["rate_rps"], seen["edge_load"], hist, bw,
                             seen["accel_load"], seen["batch"])
        # a copy: the sweep must not move a stateful policy (dwell counters, plans kept)
        sweep = copy.copy(self.policy)
        choice = np.array([self._joint(obs[g], mask, {**seen, "bandwidth_mbps": bw[g]}, False, sweep)[k]
                           for g in range(G)])
        # each bin's predicted latency for this client, the others on the joint plan
        joint = np.repeat(self.joint[None], G, axis=0)
        joint[:, k] = choice
        latency = self._predict(joint, seen, bw)[:, k]
        bins = bandwidth_bins(grid, choice)
        edges = tuple(round(e, 4) for e in bins.edges_mbps)
        now_ms = float(self._predict(self.joint[None], seen, seen["bandwidth_mbps"][None])[0, k])
        node = self.clients[k].node
        if self._tables.get(node) == (edges, bins.actions):
            return None, now_ms
        edge_ms, bits = self.shared.source_work(joint, np.repeat(seen["edge_load"][None], G, axis=0))
        rows = []
        for g, a in zip(bins.mids, bins.actions, strict=True):  # each bin at its representative grid point
            plan = self.candidates.plan(a)
            ms = float(latency[g])
            known = np.isfinite(ms)
            rows.append(RulePlan(plan.splits, plan.codecs, round(ms, 3) if known else None,
                                 at_mbps=round(float(grid[g]), 4) if known else None,
                                 edge_ms=round(float(edge_ms[g, k]), 3),
                                 uplink_bits=round(float(bits[g, k]), 1),
                                 section=plan.section.wire if plan.section else None))
        devices = (node, *(c.node for c in self.config.chain[1:]))
        rule = RuleMessage(self.channel.next_version(), node, self.profile.model, devices, self.num_blocks,
                           round(now, 3), self.policy_name, edges, tuple(rows),
                           deadline_ms=self.admission.get(node))
        self._tables[node] = (edges, bins.actions)
        rule = self.channel.publish_rule(rule)
        log.info("rule %d for %s: %d bins, edges %s Mbit/s", rule.version, node, len(rows), list(edges))
        return rule, now_ms

    def _predict(self, joint: np.ndarray, seen: dict[str, Any], bw: np.ndarray) -> np.ndarray:
        """``(E, K)`` each client's service latency under joint plans ``(E, K)``, ms.

        No queueing: the source adds the backlog ahead of each request itself (admission), at its
        own estimate. (Until 2026-12-03 this was the latency of one 1 s step from empty queues,
        which counts the step's own frames queueing at the bin's representative rate: a one-bin
        table evaluated at 10 Mbit/s told a source on a 200 Mbit/s link that full offload at 2
        frames/s would take 1,014 ms, and it dropped every frame.)
        """
        E = len(joint)
        tile = lambda x: np.broadcast_to(x, (E, *np.shape(x)))  # noqa: E731
        _, out = self.shared.step(self.shared.initial_state(E), joint, tile(seen["active"]),
                                  tile(seen["rate_rps"]), bw, tile(seen["edge_load"]),
                                  tile(seen["accel_load"]), 1.0, np.inf)
        return out.service_ms
