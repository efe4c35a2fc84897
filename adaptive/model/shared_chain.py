"""Several clients, each on its own edge device, sharing one chain of accelerators.

Client ``k`` runs its own plan over ``[edge_k, a1, …, aM]`` with the same candidate set as a
single chain. Every quantity here is an array over ``E`` clusters (independent episodes) and
``K`` client slots, so one call steps many episodes.

What couples the clients, per step of ``dt`` seconds (``docs/model.md``, "Several clients"):

* **Batching** (seed 000 Sec. V-D): ``b_j`` active clients whose plans run a stage on
  accelerator ``j`` are batched there. Each of their requests waits for the whole batch,
  ``T(1)·(1 + β_j·(b_j − 1))``; the accelerator is busy ``T(b)/b`` per request.
* **Queues** that persist across steps, as fluid backlogs: each edge device and each
  accelerator holds milliseconds of work, each uplink holds bits and drains at the bandwidth of
  the step, each link between accelerators holds the milliseconds its transfers keep it busy
  (propagation excluded: the link carries the next one meanwhile). A request's latency is its
  service latency (the single-chain model at its batch sizes) plus the backlog ahead of it on
  every resource it uses, averaged over the step.
* **Deadlines**: a frame whose latency on arrival would exceed its client's deadline is dropped
  at the source (seed 004's frame drop), so it never enters a queue.

With one client, no backlog and ``b = 1`` everywhere this is :class:`adaptive.model.latency.SplitModel`
exactly: communication is tabulated on a bandwidth grid and interpolated linearly in
``1 / bandwidth``, which is exact for single-hop transfers (seed 000 Eq. 4 is affine in it) and
within a grid interval's curvature for multi-hop ones. A plan with a parallel section overlaps
compute and transfer: what it overlaps is tabulated over the uplink and the edge's background load
(accelerators unloaded) and taken off its latency: exact without background load but in the grid
interval where its critical path changes (within 0.1% there), within 2% with load in the tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from adaptive.errors import PlanError
from adaptive.model.latency import ConditionBatch, SplitModel
from adaptive.model.plans import PlanArray
from adaptive.model.profiles import DeviceProfile, ModelProfile

__all__ = ["ClusterObservation", "ClusterState", "SharedChain", "StepOutcome"]

_MAX_LOAD = 0.95  # as in adaptive.model.latency
_LOAD_GRID = np.linspace(0.0, _MAX_LOAD, 20)  # edge loads at which section overlaps are tabulated


class ClusterState(NamedTuple):
    """Backlogs carried from one step to the next.

    Attributes:
        edge_ms: ``(E, K)`` work queued on each client's edge device, ms.
        uplink_bits: ``(E, K)`` bits queued on each client's uplink.
        accel_ms: ``(E, M)`` work queued on each accelerator, ms.
        link_ms: ``(E, M − 1)`` transfers queued between accelerators, ms.
    """

    edge_ms: np.ndarray
    uplink_bits: np.ndarray
    accel_ms: np.ndarray
    link_ms: np.ndarray


class StepOutcome(NamedTuple):
    """What one step did, per cluster and client.

    Attributes:
        latency_ms: ``(E, K)`` latency of the step's admitted requests (NaN where none were).
        service_ms: ``(E, K)`` latency without queueing: the chain model at the step's batches.
        admitted: ``(E, K)`` the client's frames entered the system this step.
        offered: ``(E, K)`` frames the clients produced this step.
        dropped: ``(E, K)`` frames dropped at the source (deadline).
        energy_j: ``(E, K)`` energy per request, J.
        batch: ``(E, M)`` clients batched on each accelerator.
    """

    latency_ms: np.ndarray
    service_ms: np.ndarray
    admitted: np.ndarray
    offered: np.ndarray
    dropped: np.ndarray
    energy_j: np.ndarray
    batch: np.ndarray


class SharedChain:
    """The model of ``K`` clients, each on its own edge device, sharing accelerators ``a1..aM``.

    Construction tabulates every candidate plan once per kind of edge device (one model call on
    a bandwidth grid); stepping is then pure array arithmetic over clusters and clients.

    Args:
        model: Model profile, with per-block latency for every device involved.
        edges: Edge device of each client slot (``K`` entries; repeat one profile for a fleet of
            identical devices).
        accelerators: The shared chain ``[a1, …, aM]``.
        plans: The candidate plans, ``(P, M)`` splits, shared by all clients.
        accel_link_mbps: Bandwidth of the links between accelerators, Mbit/s (wired).
        link_delay_ms: Propagation delay of each link, ms: every client's uplink, then each link
            between accelerators (``M`` numbers; one number: all links; default 0).
        grid: Bandwidths at which communication is tabulated, Mbit/s, increasing.
    """

    def __init__(self, model: ModelProfile, edges: Sequence[DeviceProfile],
                 accelerators: Sequence[DeviceProfile], plans: PlanArray, *,
                 accel_link_mbps: float = 1000.0, link_delay_ms: float | Sequence[float] = 0.0,
                 grid: np.ndarray | None = None) -> None:
        if not edges:
            raise PlanError("a shared chain needs at least one client edge device")
        if not accelerators:
            raise PlanError("a shared chain needs at least one accelerator")
        if not accel_link_mbps > 0:
            raise PlanError(f"accel_link_mbps must be > 0, found {accel_link_mbps}")
        kinds = list(dict.fromkeys(e.name for e in edges))
        by_name = {e.name: e for e in edges}
        self.chains = [SplitModel(model, [by_name[n], *accelerators]) for n in kinds]
        self.edge_kind = np.array([kinds.index(e.name) for e in edges])
        self.plans = plans
        self.num_clients, self.num_plans = len(edges), len(plans)
        self.num_devices = len(accelerators) + 1
        self.accel_link_mbps = float(accel_link_mbps)
        delay = np.asarray(link_delay_ms, float)
        if delay.ndim == 0:
            delay = np.full(len(accelerators), float(delay))
        if delay.shape != (len(accelerators),) or not (np.isfinite(delay).all() and (delay >= 0).all()):
            raise PlanError(f"link_delay_ms must be {len(accelerators)} numbers >= 0 (uplink, then the links "
                            f"between accelerators), found {link_delay_ms!r}")
        self.link_delay_ms = delay
        self.grid = np.geomspace(0.01, 10_000.0, 2049) if grid is None else np.asarray(grid, float)
        self._inv_grid = 1.0 / self.grid
        D, M, G, P = self.num_devices, self.num_devices - 1, len(self.grid), len(plans)
        comm, execs, delta, proc, power, kappa, busy, overlap = [], [], [], [], [], [], [], []
        # how long a transfer between accelerators keeps its link busy: the same transfer without
        # the propagation of the links between accelerators (the link carries the next one meanwhile)
        wire = np.concatenate([delay[:1], np.zeros(M - 1)])
        for chain in self.chains:
            chain.check_plans(plans)
            bw = np.full((G, M), self.accel_link_mbps)
            bw[:, 0] = self.grid
            one = chain.evaluate(plans, _batch(bw, D, clients=1.0, delay=delay))
            busy.append(chain.evaluate(plans, _batch(bw[:1], D, clients=1.0, delay=wire)).comm_ms[0, :, 2:])
            two = chain.evaluate(plans, _batch(bw[:1], D, clients=2.0, delay=delay))
            comm.append(one.comm_ms)  # (G, P, D)
            if plans.has_sections:
                overlap.append(_overlap(chain, plans, bw, D, delay))
            execs.append(one.exec_ms[0])  # (P, D) at no load, batch 1
            delta.append(two.exec_ms[0] - one.exec_ms[0])  # one more item in the batch, at no load
            proc.append(one.proc_ms[0])
            power.append([d.power_active_w for d in chain.devices])
            kappa.append(chain.load_sensitivity)
        self._comm = np.stack(comm)  # (kinds, G, P, D)
        self._overlap = np.stack(overlap) if overlap else None  # (kinds, loads, G, P)
        self._comm_total = self._comm.sum(-1)  # (kinds, G, P)
        self.exec_ms = np.stack(execs)  # (kinds, P, D)
        self.batch_delta_ms = np.stack(delta)
        self.proc_ms = np.stack(proc)
        self._power = np.array(power)  # (kinds, D)
        self._kappa = np.array(kappa)  # (kinds, D)
        # (P, D): the plan runs a stage there, from its split positions (the edge always takes part)
        L = self.chains[0].num_blocks
        bounds = np.column_stack([np.zeros(P, np.int64), plans.splits, np.full(P, L)])
        self.uses = bounds[:, 1:] > bounds[:, :-1]
        self.uses[:, 0] = True
        bits = self.chains[0].link_bits(plans)  # (P, M)
        self.uplink_bits = bits[:, 0]
        # link m (into device m + 1) carries a transfer that starts on an accelerator: one of
        # devices 1..m ran a stage (otherwise the transfer skipped through from the edge)
        self._accel_hop = np.zeros((P, max(M - 1, 0)), bool)
        for m in range(1, M):
            self._accel_hop[:, m - 1] = (bits[:, m] > 0) & self.uses[:, 1 : m + 1].any(axis=1)
        # per (edge kind, plan): exec (D), one more batch item (D), data movement (D), runs there
        # (D), uplink bits (1), hops between accelerators (M − 1) and how long each keeps its link
        # busy (M − 1): one gather per step gets them all
        kinds = len(self.chains)
        self._features = np.concatenate([
            self.exec_ms, self.batch_delta_ms, self.proc_ms,
            np.broadcast_to(self.uses, (kinds, P, D)).astype(float),
            np.broadcast_to(self.uplink_bits[:, None], (kinds, P, 1)),
            np.broadcast_to(self._accel_hop, (kinds, P, max(M - 1, 0))).astype(float),
            np.stack(busy)], axis=2)

    # ------------------------------------------------------------------ pieces

    def initial_state(self, clusters: int) -> ClusterState:
        """Empty queues for ``clusters`` clusters."""
        E, K, M = clusters, self.num_clients, self.num_devices - 1
        return ClusterState(np.zeros((E, K)), np.zeros((E, K)), np.zeros((E, M)),
                            np.zeros((E, max(M - 1, 0))))

    def _grid_weights(self, bandwidth_mbps: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Grid index ``i`` above each bandwidth, the weight of the point below, and the bandwidth."""
        bw = np.clip(np.asarray(bandwidth_mbps, float), self.grid[0], self.grid[-1])
        i = np.clip(np.searchsorted(self.grid, bw), 1, len(self.grid) - 1)
        lo, hi = self._inv_grid[i], self._inv_grid[i - 1]  # 1/bw decreases along the grid
        return i, (1.0 / bw - lo) / (hi - lo), bw

    def alone_ms(self, bandwidth_mbps: np.ndarray, edge_load: np.ndarray, accel_load: np.ndarray,
                 grid_at: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """``(…, K, P)`` latency of every candidate for every client alone on the cluster.

        Batch 1 and no queue: the single-chain model's prediction, computed for many steps at once
        (what the observation shows). Shapes: bandwidth and edge load ``(…, K)``, accelerator
        load ``(…, M)``; ``grid_at``: :meth:`grid_position` of the bandwidths, if already known.
        """
        i, w = self.grid_position(bandwidth_mbps) if grid_at is None else grid_at
        if len(self.chains) == 1:  # one kind of edge device: index the table by grid point only
            table = self._comm_total[0]
            upper, lower = table[i], table[i - 1]  # (…, K, P)
        else:
            kind = np.broadcast_to(self.edge_kind, i.shape)
            upper, lower = self._comm_total[kind, i], self._comm_total[kind, i - 1]
        comm = upper + w[..., None] * (lower - upper)
        load = np.concatenate([np.asarray(edge_load, float)[..., None],
                               np.broadcast_to(np.asarray(accel_load, float)[..., None, :],
                                               (*i.shape, self.num_devices - 1))], axis=-1)
        slow = 1.0 / (1.0 - self._kappa[self.edge_kind] * np.minimum(load, _MAX_LOAD))  # (…, K, D)
        ex = self.exec_ms[self.edge_kind]  # (K, P, D)
        out = comm + self.proc_ms.sum(-1)[self.edge_kind]
        for d in range(self.num_devices):
            out += slow[..., d : d + 1] * ex[:, :, d]
        if self._overlap is not None:
            out -= self._overlap_at(i, w, np.asarray(edge_load, float))
        return out

    def _overlap_at(self, i: np.ndarray, w: np.ndarray, edge_load: np.ndarray,
                    plans: np.ndarray | None = None) -> np.ndarray:
        """What parallel sections overlap, ms: ``(…, K)`` for ``plans``, else ``(…, K, P)``.

        Interpolated in ``1 / bandwidth`` between grid points ``i − 1`` and ``i`` (weight ``w`` on
        ``i − 1``, as the communication) and linearly in the edge's load.
        """
        assert self._overlap is not None
        load = np.clip(np.broadcast_to(edge_load, i.shape), 0.0, _LOAD_GRID[-1])
        k = np.clip(np.searchsorted(_LOAD_GRID, load), 1, len(_LOAD_GRID) - 1)
        v = (load - _LOAD_GRID[k - 1]) / (_LOAD_GRID[k] - _LOAD_GRID[k - 1])  # weight on k
        kind = np.broadcast_to(self.edge_kind, i.shape)
        table = self._overlap

        def at(kk: np.ndarray, ii: np.ndarray) -> np.ndarray:
            return table[kind, kk, ii] if plans is None else table[kind, kk, ii, plans]

        ext = (..., None) if plans is None else (...,)

        def grid(kk: np.ndarray) -> np.ndarray:
            return at(kk, i) + w[ext] * (at(kk, i - 1) - at(kk, i))

        return grid(k - 1) + v[ext] * (grid(k) - grid(k - 1))

    def slowdown(self, edge_load: np.ndarray, accel_load: np.ndarray) -> np.ndarray:
        """``(E, K, D)`` slowdown ``1 / (1 − κ·u)`` on each client's edge and on the accelerators."""
        E, K = edge_load.shape
        load = np.empty((E, K, self.num_devices))
        load[:, :, 0] = edge_load
        load[:, :, 1:] = accel_load[:, None, :]
        return 1.0 / (1.0 - self._kappa[self.edge_kind] * np.minimum(load, _MAX_LOAD))

    def source_work(self, plans: np.ndarray, edge_load: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(edge_ms, uplink_bits)``, each ``(E, K)``: what a request under ``plans`` puts on its source.

        ``edge_ms``: the compute (and processing) on the client's own edge device, ms;
        ``uplink_bits``: what it sends over the client's uplink, bits.
        """
        D = self.num_devices
        kind = np.broadcast_to(self.edge_kind, plans.shape)
        f = self._features[kind, plans]
        kappa = self._kappa[kind][..., 0]
        slow = 1.0 / (1.0 - kappa * np.minimum(edge_load, _MAX_LOAD))
        return f[..., 0] * slow + f[..., 2 * D], f[..., 4 * D]

    # ------------------------------------------------------------------ dynamics

    def grid_position(self, bandwidth_mbps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Where bandwidths fall on the communication table: for :meth:`step`'s ``grid_at``."""
        i, w, _ = self._grid_weights(bandwidth_mbps)
        return i, w

    def step(self, state: ClusterState, plans: np.ndarray, active: np.ndarray, rate_rps: np.ndarray,
             bandwidth_mbps: np.ndarray, edge_load: np.ndarray, accel_load: np.ndarray, dt_s: float,
             deadline_ms: np.ndarray | float, *, grid_at: tuple[np.ndarray, np.ndarray] | None = None,
             slow: np.ndarray | None = None) -> tuple[ClusterState, StepOutcome]:
        """Advance every cluster by ``dt_s`` with the given plans.

        Args:
            state: Backlogs at the start of the step.
            plans: ``(E, K)`` plan index per client (ignored where not active).
            active: ``(E, K)`` the client is present.
            rate_rps: ``(E, K)`` frames per second each client produces.
            bandwidth_mbps: ``(E, K)`` each client's uplink during the step (true).
            edge_load: ``(E, K)`` background CPU load of each client's edge device.
            accel_load: ``(E, M)`` background load of each accelerator.
            dt_s: Step length, s.
            deadline_ms: Per-client (``(E, K)``) or one deadline, ms.
            grid_at: :meth:`grid_position` of ``bandwidth_mbps``, if already known.
            slow: :meth:`slowdown` of the loads, if already known.
        """
        D, M = self.num_devices, self.num_devices - 1
        if slow is None:
            slow = self.slowdown(edge_load, accel_load)
        i, w = self.grid_position(bandwidth_mbps) if grid_at is None else grid_at
        if len(self.chains) == 1:  # one kind of edge device: one gather per table
            f = self._features[0][plans]  # (E, K, F)
            upper, lower = self._comm[0][i, plans], self._comm[0][i - 1, plans]
        else:
            kind = np.broadcast_to(self.edge_kind, plans.shape)
            f = self._features[kind, plans]
            upper, lower = self._comm[kind, i, plans], self._comm[kind, i - 1, plans]
        comm = upper + w[..., None] * (lower - upper)  # (E, K, D)
        execs, delta, proc = f[..., :D], f[..., D : 2 * D], f[..., 2 * D : 3 * D]
        uses = f[..., 3 * D + 1 : 4 * D] > 0.5  # on the accelerators
        bits = f[..., 4 * D]
        hop = f[..., 4 * D + 1 : 4 * D + M] > 0.5  # (E, K, M − 1)
        link_busy = f[..., 4 * D + M :]  # (E, K, M − 1)
        batch = (uses & active[:, :, None]).sum(axis=1).astype(float)  # (E, M)
        b = np.maximum(batch, 1.0)[:, None, :]
        ex = execs * slow  # (E, K, D)
        grow = delta[..., 1:] * slow[..., 1:] * (b - 1.0)  # (E, K, M)
        total = ex + proc + comm
        service = _last_sum(total) + _last_sum(grow)
        if self._overlap is not None:  # a parallel section overlaps its compute and its transfers
            service = service - self._overlap_at(i, w, edge_load, plans)
        # work each request puts on each resource
        w_edge = ex[..., 0] + proc[..., 0]
        shared = (ex[..., 1:] + grow) / b  # a batch shares the execution
        w_accel = shared + proc[..., 1:]
        w_link = np.where(hop, link_busy, 0.0)
        bw = np.maximum(bandwidth_mbps, 1e-9)
        sends = bits > 0
        wait_now = _ahead(state, uses, sends, w_link, bw)
        admitted = active & (service + wait_now <= deadline_ms)
        frames = rate_rps * dt_s * active
        n = frames * admitted
        cap_ms = 1e3 * dt_s
        new = ClusterState(
            np.maximum(state.edge_ms + n * w_edge - cap_ms, 0.0),
            np.maximum(state.uplink_bits + n * bits - bw * 1e6 * dt_s, 0.0),
            np.maximum(state.accel_ms + (n[:, :, None] * w_accel).sum(axis=1) - cap_ms, 0.0),
            np.maximum(state.link_ms + (n[:, :, None] * w_link).sum(axis=1) - cap_ms, 0.0) if M > 1
            else state.link_ms,
        )
        # the step's requests see, on average, the backlog half way between its start and end
        wait = 0.5 * (wait_now + _ahead(new, uses, sends, w_link, bw))
        latency = np.where(admitted & (n > 0), service + wait, np.nan)
        power = self._power[self.edge_kind]  # (K, D)
        busy = total.copy()
        busy[..., 1:] += shared - ex[..., 1:]
        energy = _last_sum(busy * power) / 1e3
        return new, StepOutcome(latency, service, admitted, frames, frames - n, energy, batch)


def _last_sum(x: np.ndarray) -> np.ndarray:
    """Sum over a short last axis (faster than ``sum(-1)`` for a few devices)."""
    out = x[..., 0].copy()
    for d in range(1, x.shape[-1]):
        out += x[..., d]
    return out


@dataclass(frozen=True)
class ClusterObservation:
    """The observation of a shared chain: one block per client slot, then the shared part.

    Used by ``adaptive/MultiClient-v0`` and meant for the live controller, so both see the same
    vector. ``K`` slots, history ``H``, ``P`` candidates, ``M`` accelerators; every entry is in
    [0, 1] or [−1, 1]:

    ==================  =====  ===================================================================
    per slot            size   meaning
    ==================  =====  ===================================================================
    ``active``          1      the client is present
    ``rate``            1      its frame rate / ``max_rate_rps``
    ``edge_load``       1      background CPU load of its edge device
    ``edge_wait``       1      backlog on its edge device, ``tanh(ms / ref_latency_ms)``
    ``uplink_wait``     1      backlog on its uplink at its reported bandwidth, the same scale
    ``bandwidth``       H      its uplink, oldest first, log-scaled as in the single-chain spec
    ``predicted``       P      each candidate's latency alone on the cluster (batch 1, no queue),
                               ``tanh(log(ms / ref_latency_ms))``
    ==================  =====  ===================================================================

    then ``accel_load`` (M), ``accel_wait`` (M, ``tanh(ms / ref)``), ``link_wait`` (M − 1),
    ``batch`` (M, clients batched on each accelerator at the last step / K) and ``clients``
    (present / K).
    """

    num_clients: int
    num_plans: int
    num_accels: int
    ref_latency_ms: float
    history: int = 4
    max_rate_rps: float = 8.0
    bw_min_mbps: float = 0.1
    bw_max_mbps: float = 1e4

    @property
    def slot_size(self) -> int:
        """Entries per client slot."""
        return 5 + self.history + self.num_plans

    @property
    def size(self) -> int:
        """Length of the observation vector."""
        M = self.num_accels
        return self.num_clients * self.slot_size + 3 * M + max(M - 1, 0) + 1

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(low, high)`` of the observation space."""
        low = np.zeros(self.size, np.float32)
        K, S, H = self.num_clients, self.slot_size, self.history
        for k in range(K):
            low[k * S + 5 + H : (k + 1) * S] = -1.0
        return low, np.ones(self.size, np.float32)

    def slots(self, active: np.ndarray, rate_rps: np.ndarray, edge_load: np.ndarray,
              bandwidth_mbps: np.ndarray) -> np.ndarray:
        """``(…, K, 5 + H)``: the slot entries that do not depend on plans or backlogs.

        Args:
            active: ``(…, K)``.
            rate_rps: ``(…, K)``.
            edge_load: ``(…, K)``.
            bandwidth_mbps: ``(…, K, H)`` uplink history, oldest first.
        """
        lo, hi = np.log10(self.bw_min_mbps), np.log10(self.bw_max_mbps)
        out = np.empty((*active.shape, 5 + self.history), np.float32)
        out[..., 0] = active
        out[..., 1] = np.minimum(rate_rps / self.max_rate_rps, 1.0) * active
        out[..., 2] = np.clip(edge_load, 0, 1)
        out[..., 3:5] = 0.0
        bw = np.clip(np.asarray(bandwidth_mbps, np.float32), self.bw_min_mbps, self.bw_max_mbps)
        out[..., 5:] = (np.log10(bw) - lo) / (hi - lo)
        return out

    def assemble(self, slots: np.ndarray, predicted_ms: np.ndarray, seen_bw_mbps: np.ndarray,
                 accel_load: np.ndarray, state: ClusterState, batch: np.ndarray) -> np.ndarray:
        """``(E, size)`` observations from slot entries, predictions and the step's shared state.

        ``slots``: :meth:`slots` ``(E, K, 5 + H)``; ``predicted_ms``: each candidate alone
        ``(E, K, P)``; ``seen_bw_mbps`` ``(E, K)``: the reported uplink the uplink backlog is timed at.
        """
        E, K = seen_bw_mbps.shape
        ref = self.ref_latency_ms
        S0 = slots.shape[-1]
        out = np.empty((E, self.size), np.float32)
        blocks = out[:, : K * self.slot_size].reshape(E, K, self.slot_size)
        blocks[:, :, :S0] = slots
        blocks[:, :, 3] = np.tanh(state.edge_ms / ref)
        blocks[:, :, 4] = np.tanh(state.uplink_bits / (np.maximum(seen_bw_mbps, 1e-9) * 1e3) / ref)
        pred = np.maximum(np.asarray(predicted_ms, np.float32), 1e-6) / np.float32(ref)
        blocks[:, :, S0:] = np.tanh(np.log(pred))
        M = self.num_accels
        rest = out[:, K * self.slot_size :]
        rest[:, :M] = np.clip(accel_load, 0, 1)
        rest[:, M : 2 * M] = np.tanh(state.accel_ms / ref)
        rest[:, 2 * M : 3 * M - 1] = np.tanh(state.link_ms / ref)
        rest[:, 3 * M - 1 : 4 * M - 1] = batch / K
        rest[:, 4 * M - 1] = slots[:, :, 0].sum(axis=1) / K
        return out

    def decode(self, obs: np.ndarray) -> dict[str, np.ndarray]:
        """The parts of ``(…, size)`` observations, in their units (ms, Mbit/s, frames/s)."""
        K, S, H, M = self.num_clients, self.slot_size, self.history, self.num_accels
        lead = obs.shape[:-1]
        slots = obs[..., : K * S].reshape(*lead, K, S).astype(float)
        lo, hi = np.log10(self.bw_min_mbps), np.log10(self.bw_max_mbps)
        untanh = lambda x: np.arctanh(np.clip(x, -0.999999, 0.999999))  # noqa: E731
        rest = obs[..., K * S :].astype(float)
        return {
            "active": slots[..., 0] > 0.5,
            "rate_rps": slots[..., 1] * self.max_rate_rps,
            "edge_load": slots[..., 2],
            "edge_wait_ms": untanh(slots[..., 3]) * self.ref_latency_ms,
            "uplink_wait_ms": untanh(slots[..., 4]) * self.ref_latency_ms,
            "bandwidth_mbps": 10 ** (lo + slots[..., 5 : 5 + H] * (hi - lo)),
            "predicted_ms": self.ref_latency_ms * np.exp(untanh(slots[..., 5 + H :])),
            "accel_load": rest[..., :M],
            "accel_wait_ms": untanh(rest[..., M : 2 * M]) * self.ref_latency_ms,
            "link_wait_ms": untanh(rest[..., 2 * M : 3 * M - 1]) * self.ref_latency_ms,
            "batch": rest[..., 3 * M - 1 : 4 * M - 1] * K,
        }


def _ahead(state: ClusterState, uses: np.ndarray, sends: np.ndarray, w_link: np.ndarray,
           bw: np.ndarray) -> np.ndarray:
    """``(E, K)`` backlog ahead of a request arriving now on every resource it uses, ms.

    ``uses``: ``(E, K, M)`` the request runs on each accelerator; ``sends``: it crosses the uplink.
    """
    wait = state.edge_ms + np.where(sends, state.uplink_bits / (bw * 1e3), 0.0)
    wait += _last_sum(state.accel_ms[:, None, :] * uses)
    if w_link.shape[-1]:
        wait += _last_sum(state.link_ms[:, None, :] * (w_link > 0))
    return wait


def _overlap(chain: SplitModel, plans: PlanArray, bw: np.ndarray, D: int, delay: np.ndarray) -> np.ndarray:
    """``(loads, G, P)``: by how much each plan's latency is below the sum of its parts, ms.

    A parallel section overlaps compute with transfer; everything else here adds up its parts. The
    overlap depends on the uplink and on how slow the edge's band runs (its background load); it is
    tabulated over both, with the accelerators unloaded.
    """
    out = []
    for load in _LOAD_GRID:
        cb = _batch(bw, D, clients=1.0, delay=delay)
        cb.cpu_load[:, 0] = load
        pred = chain.evaluate(plans, cb)
        out.append(pred.exec_ms.sum(-1) + pred.proc_ms.sum(-1) + pred.comm_ms.sum(-1) - pred.latency_ms)
    return np.maximum(np.stack(out), 0.0)


def _batch(bw: np.ndarray, D: int, clients: float, delay: np.ndarray) -> ConditionBatch:
    B, M = bw.shape
    return ConditionBatch(bw, np.broadcast_to(delay, (B, M)).copy(), np.zeros((B, D)), np.full(B, clients),
                          np.full((B, D), 1e12))
