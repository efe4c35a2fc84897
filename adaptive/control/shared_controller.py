"""The controller of several clients sharing the accelerators: one joint decision, a rule per client.

Each client is on its own edge device (a *source*: ``chain[0]`` and ``sources`` of the
:class:`~adaptive.control.controller.ControllerConfig`) with its own uplink, and every source's requests
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
``on_shared`` (a heuristic that simulates with it).
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

from adaptive.control.controller import Controller, ControllerConfig
from adaptive.errors import AdaptiveError
from adaptive.model.latency import SplitModel
from adaptive.model.observation import CandidatePlans
from adaptive.model.profiles import DeviceProfile, resolve_device, scaled_profiles
from adaptive.model.shared_chain import ClusterObservation, ClusterState, SharedChain
from adaptive.protocol.messages import Ack, Message, version_of
from adaptive.protocol.rules import RuleMessage, RulePlan, rule_topic
from monitor.transport import BrokerAddress

__all__ = ["RULE_GRID_MBPS", "SharedController"]

log = logging.getLogger(__name__)

RULE_GRID_MBPS = np.geomspace(0.1, 1000.0, 25)  # a source's uplink grid for its table: 6 points per decade


class SharedController(Controller):
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
        metrics: Prometheus metrics, or None.
    """

    def __init__(self, config: ControllerConfig, broker: BrokerAddress, policy: Any, *,
                 spec: ClusterObservation, candidates: CandidatePlans, deadline_ms: float = 1000.0,
                 step_s: float = 0.25, policy_name: str = "policy",
                 on_shared: Callable[[SharedChain], None] | None = None, accel_link_mbps: float = 1000.0,
                 link_delay_ms: Sequence[float] = (), admission: Mapping[str, float] | None = None,
                 ca_file: str | None = None, metrics: Any = None) -> None:
        if len(config.chain) < 2:
            raise AdaptiveError("several clients share accelerators: the chain needs at least one")
        super().__init__(config, broker, policy, candidates=candidates, policy_name=policy_name,
                         ca_file=ca_file, metrics=metrics)
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
        self._sources = tuple(c.node for c in self.clients)
        self._edge_devices = [resolve_device(c.device) for c in self.clients]
        for c in self.clients:
            self.scales.setdefault(c.node, 1.0)
        self._model_scales = dict(self.scales)
        self._edge_models = {c.node: SplitModel(self.profile, [dev, *self.devices[1:]])
                             for c, dev in zip(self.clients, self._edge_devices, strict=True)}
        self.shared = self._build_shared(self.scales)
        self._retained_rules: dict[str, Message] = {}
        self._rule_sent: dict[str, int] = {}  # per source, the newest rule version sent to it
        self._rule_acked: dict[str, int] = {}  # ... and the newest it applied
        self._acked = threading.Condition(self._lock)
        # rules share the version counter with plans: learn the newest an earlier controller left
        self.transport.subscriptions.append((f"adaptive/{config.cluster}/node/+/rule", 1))
        K = spec.num_clients
        self.joint = np.zeros(K, np.int64)  # the joint plan in force (slot order)
        self._uplinks: list[deque[tuple[float, float]]] = [deque(maxlen=256) for _ in range(K)]
        self._tables: dict[str, tuple[tuple[float, ...], tuple[int, ...]]] = {}
        self.rejected_actions = 0  # plans outside the mask the policy gave
        self.history: deque[dict[str, Any]] = deque(maxlen=10_000)  # each decision, for reports

    # ------------------------------------------------------------------ model

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

    def _stage_model(self, node: str) -> tuple[SplitModel, int] | None:
        if node in self._edge_models:
            return self._edge_models[node], 0
        return super()._stage_model(node)

    def _rebuild_model(self) -> None:
        super()._rebuild_model()
        with self._lock:
            scales = dict(self.scales)
        self.shared = self._build_shared(scales)
        if self.on_shared is not None:
            self.on_shared(self.shared)

    # ------------------------------------------------------------------ observation

    def observe_cluster(self, now: float | None = None) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """``(observation, (K, P) mask, what it saw)`` from the newest telemetry."""
        now = time.time() if now is None else now
        cfg, spec = self.config, self.spec
        K, P, M, H = spec.num_clients, spec.num_plans, spec.num_accels, spec.history
        views = self.collector.nodes()
        accels = cfg.chain[1:]
        dead = [c.node for c in accels if not self._alive(views.get(c.node), now)]
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
            if not self._alive(v, now):
                continue
            assert v is not None and v.telemetry is not None
            alive[k] = True
            measured_rate = self.request_rate(now, c.node)
            active[k] = measured_rate > 0  # its client sends (an idle source is planned as if it began)
            rate[k] = max(measured_rate, 1.0)
            edge_load[k] = v.telemetry.cpu_percent / 100
            est = v.telemetry.links.get(accels[0].node)
            value = (est.passive_mbps or est.bandwidth_mbps) if est is not None else None
            if value:
                self._uplinks[k].append((now, float(value)))
                measured = v.telemetry.ts if est.passive_mbps else (est.measured_at or v.telemetry.ts)
                ages[k] = max(now - measured, 0.0)
            if self._uplinks[k]:
                bw[k] = self._uplinks[k][-1][1]
                hist[k] = self._history(self._uplinks[k], now, H)
        batch = (self.shared.uses[self.joint][:, 1:] & active[:, None]).sum(axis=0).astype(float)
        obs = self._assemble(active, rate, edge_load, hist, bw, accel_load, batch)[0]
        mask = np.broadcast_to(self._alive_mask(dead), (K, P)).copy()
        mask[~active] = True
        seen = {"active": active, "alive": alive, "rate_rps": rate, "edge_load": edge_load,
                "bandwidth_mbps": bw, "history_mbps": hist, "accel_load": accel_load, "dead": dead,
                "batch": batch}
        if self.metrics is not None:
            first = accels[0].node
            with self._lock:
                scales = dict(self.scales)
            self.metrics.observed(
                {f"{c.node}->{first}": (float(bw[k]), ages[k]) for k, c in enumerate(self.clients)},
                {c.node: self._alive(views.get(c.node), now) for c in (*self.clients, *accels)}, scales,
                self.connected())
        with self._lock:
            self.observed = {"dead": dead, "bandwidth_mbps": bw[: len(self.clients)].tolist(),
                             "rate_rps": rate[: len(self.clients)].tolist(),
                             "active": active[: len(self.clients)].tolist(),
                             "alive": alive[: len(self.clients)].tolist()}
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
        if not self.connected():
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
        change = np.flatnonzero(choice[1:] != choice[:-1])
        starts = np.concatenate([[0], change + 1])
        ends = np.concatenate([change + 1, [G]])
        edges = tuple(round(float(np.sqrt(grid[i - 1] * grid[i])), 4) for i in change + 1)
        actions = tuple(int(choice[s]) for s in starts)
        now_ms = float(self._predict(self.joint[None], seen, seen["bandwidth_mbps"][None])[0, k])
        node = self.clients[k].node
        if self._tables.get(node) == (edges, actions):
            return None, now_ms
        edge_ms, bits = self.shared.source_work(joint, np.repeat(seen["edge_load"][None], G, axis=0))
        rows = []
        for s, e, a in zip(starts, ends, actions, strict=True):
            plan = self.candidates.plan(a)
            g = (s + e - 1) // 2  # the bin's representative grid point
            ms = float(latency[g])
            known = np.isfinite(ms)
            rows.append(RulePlan(plan.splits, plan.codecs, round(ms, 3) if known else None,
                                 at_mbps=round(float(grid[g]), 4) if known else None,
                                 edge_ms=round(float(edge_ms[g, k]), 3),
                                 uplink_bits=round(float(bits[g, k]), 1)))
        with self._lock:
            self.version += 1
            version = self.version
        devices = (node, *(c.node for c in self.config.chain[1:]))
        rule = RuleMessage(version, node, self.profile.model, devices, self.model.num_blocks, round(now, 3),
                           self.policy_name, edges, tuple(rows), deadline_ms=self.admission.get(node))
        message = Message(rule_topic(self.config.cluster, node), rule.encode(), qos=1, retain=True)
        with self._lock:
            self._tables[node] = (edges, actions)
            self.rules.append(rule)
            self._retained_rules[node] = message
            self._rule_sent[node] = version
        self.transport.publish(message)
        log.info("rule %d for %s: %d bins, edges %s Mbit/s", version, node, len(rows), list(edges))
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

    def _retained(self) -> list[Message]:
        with self._lock:
            return list(self._retained_rules.values())

    def _on_message(self, topic: str, payload: bytes) -> None:
        if topic.endswith("/rule"):
            version = version_of(payload) if payload else None
            if version is not None:
                with self._lock:
                    self.version = max(self.version, version)
            return
        super()._on_message(topic, payload)

    def _on_ack(self, ack: Ack) -> None:
        super()._on_ack(ack)
        if ack.ok and ack.node in self._sources:
            with self._acked:
                self._rule_acked[ack.node] = max(self._rule_acked.get(ack.node, 0), ack.version)
                self._acked.notify_all()

    def wait_rules(self, timeout_s: float = 5.0) -> list[str]:
        """Wait until every source applied the newest rule sent to it; the sources that did not."""
        deadline = time.monotonic() + timeout_s
        with self._acked:
            while True:
                behind = [n for n, v in self._rule_sent.items() if self._rule_acked.get(n, 0) < v]
                left = deadline - time.monotonic()
                if not behind or left <= 0:
                    return behind
                self._acked.wait(left)

    def check_acks(self, now: float | None = None) -> None:
        """Rules are retained: a source that was away gets its own when it reconnects."""
