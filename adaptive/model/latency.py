"""Analytical latency and energy model of split inference over a chain of devices.

Seed 000 (Liu et al.) Eqs. 1–10, generalised to any chain length and vectorised over many plans
and many conditions at once, plus the extensions live control needs. Every formula is written
out in ``docs/model.md``; the short version:

* computation (Eqs. 1–2): a non-empty stage on device ``d`` running ``n`` blocks costs
  ``Σ t_d,i − (c0_d·n' + c1_d)``, with ``n' = n`` on d0 and ``n`` plus the learned-codec layers
  it runs on later devices (Eq. 2's ``+2`` when both an encoder and a decoder are present). An
  empty stage costs nothing. Background CPU load ``u`` divides it by ``1 − κ_d·u``; ``b``
  clients batched on an accelerator multiply it by ``1 + β_d·(b − 1)`` (seed 000 Sec. V-D).
* communication (Eqs. 4–5): a hop into device ``d`` carrying ``D`` KB costs
  ``T_FP,d + Q0,d·(B_ref,d/B)·D + Q1,d``: Q0 scales with the available bandwidth ``B``; the
  first packet's serialisation ``8·P/B`` replaces the one inside T_FP (measured with full packets at
  ``B_ref``), ``P = min(MTU, message)``;
  each hop adds its propagation delay. A transfer that skips devices crosses several hops with
  packet pipelining (seed 002 Sec. II-C): the slowest hop carries all fragments but the last,
  then every hop carries the last fragment and adds its first-packet latency and propagation
  (never more than forwarding the whole message hop by hop).
* data movement (Eqs. 6–8): the sender pays its outbound cost, the receiver its inbound cost,
  both linear in KB; on CPU devices these are (de)serialisation.
* result: the last stage moves the result out (Eq. 7's ``d_{k_{M+1}}``); with
  ``return_result`` it then travels back to d0 over the chain and d0 moves it in.
* energy (Eq. 10): busy time × active power per device (communication charged to the
  receiver), batched execution shared among the batch; optionally idle power of the others.
* throughput: ``1000 / bottleneck`` where the bottleneck is the busiest device or transfer.
* memory: a stage needs its parameters plus ``2 × batch × largest activation`` inside it.

KB is 10^3 bytes; bandwidth is in Mbit/s (10^6 bit/s). The naive model (per-layer sums plus
bytes / bandwidth per hop) is returned beside it for comparison.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from adaptive.errors import PlanError, ProfileError
from adaptive.model.lop import SectionCosts, add_sections, check_sections, first_stage, section_bytes
from adaptive.model.plans import PlanArray
from adaptive.model.profiles import DeviceProfile, ModelProfile

__all__ = ["ConditionBatch", "Conditions", "Prediction", "SplitModel"]

_MAX_LOAD = 0.95  # background CPU load is clipped here so the slowdown stays finite (20×)


@dataclass(frozen=True)
class Conditions:
    """Run-time conditions of a chain of ``D = M + 1`` devices.

    Attributes:
        bandwidth_mbps: Available bandwidth of each of the ``M`` links (link ``m`` joins
            device ``m−1`` and ``m``), Mbit/s, > 0. One number applies to every link.
        propagation_ms: Propagation delay of each link, ms, ≥ 0 (one number: all links).
        cpu_load: Background CPU utilisation of each device in [0, 1] (one number: all).
        clients: Clients sharing the accelerators (devices 1..M), an integer ≥ 1.
        available_mb: Memory available for a stage on each device, MB; ``None`` uses each
            device profile's ``memory_mb``.
    """

    bandwidth_mbps: float | Sequence[float]
    propagation_ms: float | Sequence[float] = 0.0
    cpu_load: float | Sequence[float] = 0.0
    clients: int = 1
    available_mb: Sequence[float] | None = None


class ConditionBatch(NamedTuple):
    """``B`` sets of conditions as arrays (see :class:`Conditions` for units and ranges).

    Attributes:
        bandwidth_mbps: ``(B, M)``, or ``(B, P, M)``: the rate each of the ``P`` plans evaluated
            with it gets (e.g. a transfer's rate integrated over a changing link), for
            :meth:`SplitModel.evaluate_unchecked`.
        propagation_ms: ``(B, M)``.
        cpu_load: ``(B, D)``.
        clients: ``(B,)``.
        available_mb: ``(B, D)``.
    """

    bandwidth_mbps: np.ndarray
    propagation_ms: np.ndarray
    cpu_load: np.ndarray
    clients: np.ndarray
    available_mb: np.ndarray

    @classmethod
    def concat(cls, batches: Sequence[ConditionBatch]) -> ConditionBatch:
        """The conditions of several batches, in order."""
        return cls(*(np.concatenate([getattr(b, f) for b in batches]) for f in cls._fields))

    def plans(self, cols: np.ndarray) -> ConditionBatch:
        """The batch as plans ``cols`` see it: their own rates when bandwidth is per plan."""
        if self.bandwidth_mbps.ndim == 2:
            return self
        return self._replace(bandwidth_mbps=self.bandwidth_mbps[:, cols])

    def link_rate(self, link: int, ndim: int) -> np.ndarray:
        """Link ``link``'s rate shaped to broadcast against ``(B, n, …)`` with ``ndim`` axes after B.

        Per-plan bandwidth (after :meth:`plans`) gives ``(B, n, 1, …)``; a batch-wide rate ``(B, 1, …)``.
        """
        bw = self.bandwidth_mbps[..., link]
        return bw.reshape(bw.shape + (1,) * (ndim - bw.ndim + 1))


class Prediction(NamedTuple):
    """Model output for ``P`` plans (leading ``B`` axis when evaluated on a batch).

    Attributes:
        latency_ms: End-to-end latency (Eq. 9 plus extensions), ms.
        energy_j: Energy per request (Eq. 10 plus extensions), J.
        exec_ms: ``(…, D)`` computation per device, codecs included, ms.
        comm_ms: ``(…, D)`` communication into each device, ms; index 0 is the result
            returning to d0.
        proc_ms: ``(…, D)`` NIC↔compute data movement / (de)serialisation per device, ms.
        bottleneck_ms: Busiest device or transfer, ms (pipelined streaming).
        throughput_rps: ``1000 / bottleneck_ms``, requests per second.
        naive_latency_ms: Per-layer sums plus bytes / bandwidth per hop, ms.
        memory_mb: ``(…, D)`` memory each stage needs, MB.
        feasible: Every stage fits its device's available memory.
    """

    latency_ms: np.ndarray
    energy_j: np.ndarray
    exec_ms: np.ndarray
    comm_ms: np.ndarray
    proc_ms: np.ndarray
    bottleneck_ms: np.ndarray
    throughput_rps: np.ndarray
    naive_latency_ms: np.ndarray
    memory_mb: np.ndarray
    feasible: np.ndarray


class Transfer(NamedTuple):
    """Costs of moving one activation from device ``i`` to device ``j``, each ``(B, *shape)``."""

    comm: np.ndarray
    out_src: np.ndarray
    in_dst: np.ndarray
    enc_src: np.ndarray
    dec_dst: np.ndarray
    naive: np.ndarray


class SplitModel:
    """The latency and energy model of one model profile over one chain of devices.

    Construction precomputes prefix sums and coefficient arrays (cheap, no I/O). The same
    component functions serve :meth:`evaluate` (many plans) and the planner's dynamic program.

    Args:
        model: Model profile; must have per-block latency for every device of the chain.
        devices: The chain ``[d0, …, dM]``; d0 holds the input.
        return_result: Send the result back to d0 (extension). ``False`` with no codecs and
            default conditions at the reference bandwidth gives seed 000 Eq. 9 exactly.
        idle_energy: Add idle power of the devices not busy on the request (extension).
    """

    def __init__(
        self,
        model: ModelProfile,
        devices: Sequence[DeviceProfile],
        *,
        return_result: bool = True,
        idle_energy: bool = False,
    ) -> None:
        if len(devices) < 1:
            raise PlanError("a chain needs at least one device")
        self.profile = model
        self.devices = tuple(devices)
        self.return_result = return_result
        self.idle_energy = idle_energy
        L, D = model.num_blocks, len(devices)
        self.num_blocks, self.num_devices = L, D
        lat = np.stack([model.latency_for(d.name) for d in devices])  # (D, L)
        self._prefix = np.concatenate([np.zeros((D, 1)), np.cumsum(lat, axis=1)], axis=1)
        corr = [model.correction_for(d.name) for d in devices]
        self._c0 = np.array([c.c0_ms for c in corr])
        self._c1 = np.array([c.c1_ms for c in corr])
        self.split_bytes = model.split_bytes()  # (L+1,)
        params = np.array([b.param_bytes for b in model.blocks], dtype=float)
        self._param_prefix = np.concatenate([[0.0], np.cumsum(params)])
        self._act_max = _range_max(self.split_bytes)  # (L+1, L+1): max activation in [a, b)
        # devices
        self._q0 = np.array([d.link.per_kb_ms for d in devices])
        self._q1 = np.array([d.link.offset_ms for d in devices])
        self._tfp = np.array([d.link.first_packet_ms for d in devices])
        self._ref = np.array([d.link.ref_bandwidth_mbps for d in devices])
        self._mtu = np.array([float(d.link.mtu_bytes) for d in devices])
        self._in = np.array([[d.inbound.per_kb_ms, d.inbound.offset_ms] for d in devices])
        self._out = np.array([[d.outbound.per_kb_ms, d.outbound.offset_ms] for d in devices])
        self._p_active = np.array([d.power_active_w for d in devices])
        self._p_idle = np.array([d.power_idle_w for d in devices]) if idle_energy else np.zeros(D)
        self._beta = np.array([d.batch_per_extra_item for d in devices])
        self._kappa = np.array([d.cpu_load_sensitivity for d in devices])
        self._memory = np.array([d.memory_mb for d in devices])
        self._init_codecs()

    # ------------------------------------------------------------------ setup

    def _init_codecs(self) -> None:
        (self.codec_names, self._ratio, self._layers, self.codec_allowed, self._enc,
         self._dec) = _codec_tables(self.profile, self.devices)

    def codec_index(self, name: str) -> int:
        """Index of a codec name (``"none"`` is 0)."""
        try:
            return self.codec_names.index(name)
        except ValueError:
            raise PlanError(f"unknown codec '{name}' (model has: {', '.join(self.codec_names)})") from None

    def conditions(self, cond: Conditions | ConditionBatch) -> ConditionBatch:
        """Validate conditions and broadcast them to a :class:`ConditionBatch`."""
        if isinstance(cond, ConditionBatch):
            return cond
        M, D = self.num_devices - 1, self.num_devices
        bw = _per_item(cond.bandwidth_mbps, M, "bandwidth_mbps", "link")
        if M and not (np.all(np.isfinite(bw)) and np.all(bw > 0)):
            raise PlanError(f"bandwidth must be a positive finite number of Mbit/s, found {bw.tolist()}")
        prop = _per_item(cond.propagation_ms, M, "propagation_ms", "link")
        if not (np.all(np.isfinite(prop)) and np.all(prop >= 0)):
            raise PlanError(f"propagation delay must be >= 0 ms, found {prop.tolist()}")
        load = _per_item(cond.cpu_load, D, "cpu_load", "device")
        if not (np.all(np.isfinite(load)) and np.all((load >= 0) & (load <= 1))):
            raise PlanError(f"CPU load must be in [0, 1] per device, found {load.tolist()}")
        if int(cond.clients) != cond.clients or cond.clients < 1:
            raise PlanError(f"clients must be an integer >= 1, found {cond.clients}")
        avail = self._memory if cond.available_mb is None else _per_item(
            cond.available_mb, D, "available_mb", "device")
        if not np.all(np.isfinite(avail)) or np.any(avail < 0):
            raise PlanError(f"available memory must be >= 0 MB, found {np.asarray(avail).tolist()}")
        return ConditionBatch(bw[None], prop[None], load[None],
                              np.array([float(cond.clients)]), np.asarray(avail, float)[None])

    # ------------------------------------------------------------------ components

    def load_slowdown(self, cb: ConditionBatch) -> np.ndarray:
        """``(B, D)`` slowdown of computation by background CPU load: ``1 / (1 − κ·u)``."""
        return 1.0 / (1.0 - self._kappa * np.minimum(cb.cpu_load, _MAX_LOAD))

    def exec_scale(self, cb: ConditionBatch) -> np.ndarray:
        """``(B, D)`` factor on computation: CPU-load slowdown × batching on accelerators."""
        slow = self.load_slowdown(cb)
        batch = np.ones_like(slow)
        batch[:, 1:] = 1.0 + self._beta[1:] * (cb.clients[:, None] - 1.0)
        return slow * batch

    def batch_share(self, cb: ConditionBatch) -> np.ndarray:
        """``(B, D)`` number of requests sharing one execution on each device."""
        share = np.ones((len(cb.clients), self.num_devices))
        share[:, 1:] = cb.clients[:, None]
        return share

    def exec_raw(self, dev: np.ndarray | int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Per-layer sum of blocks ``[a, b)`` on device ``dev`` (no correction), ms."""
        return self._prefix[dev, b] - self._prefix[dev, a]

    def exec_base(self, dev: np.ndarray | int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Corrected batch-1 computation of blocks ``[a, b)`` on ``dev`` (Eqs. 1–2), ms.

        Empty ranges cost 0 (no correction term); a non-empty range never costs less than 0.
        """
        n = b - a
        raw = self.exec_raw(dev, a, b)
        corrected = raw - (self._c0[dev] * n + self._c1[dev])
        return np.where(n > 0, np.maximum(corrected, 0.0), 0.0)

    def stage_memory_mb(self, a: np.ndarray, b: np.ndarray, batch: np.ndarray) -> np.ndarray:
        """Memory a stage ``[a, b)`` needs with ``batch`` requests in flight, MB."""
        params = self._param_prefix[b] - self._param_prefix[a]
        acts = 2.0 * batch * self._act_max[a, b]
        return np.where(b > a, (params + acts) / 1e6, 0.0)

    def path_comm(self, src: int, dst: int, nbytes: np.ndarray, cb: ConditionBatch) -> np.ndarray:
        """Communication of ``nbytes`` from device ``src`` to ``dst`` over the chain, ms.

        ``src < dst`` goes forward over links ``src+1..dst``; ``src > dst`` goes back (the
        result). Each hop uses the link coefficients of its receiving device. One hop is seed
        000 Eq. 4 with the wire time moved to the bandwidth; several hops pipeline packets (seed 002).

        Returns:
            ``(B, *nbytes.shape)`` array.
        """
        step = 1 if dst > src else -1
        kb = np.asarray(nbytes, dtype=float)[None] / 1e3
        bulk = None  # slowest hop's time for all fragments but the last
        tail = 0.0  # every hop's last fragment, first-packet latency and propagation
        hop_by_hop = 0.0  # store-and-forward: seed 000 Eq. 4 on each hop in turn
        for h in range(src + step, dst + step, step):
            link = max(h, h - step) - 1  # link index joining devices h-step and h
            bw = cb.link_rate(link, kb.ndim - 1)
            # Eq. 4 was measured at B_ref: at rate B every byte's serialisation changes by
            # 8/B − 8/B_ref ms per KB; the host's per-KB cost above the wire time does not scale
            q0 = np.maximum(self._q0[h] + 8.0 / bw - 8.0 / self._ref[h], 0.0)
            # the last fragment: a message shorter than the MTU is its own first and last packet
            pkt = np.minimum(self._mtu[h], 1e3 * kb)
            frag = q0 * pkt / 1e3
            first = self._tfp[h]  # its serialisation is inside q0 · kb
            hop_bulk = q0 * kb + self._q1[h] - frag
            hop_fixed = first + cb.propagation_ms[:, link].reshape((-1,) + (1,) * (bw.ndim - 1))
            bulk = hop_bulk if bulk is None else np.maximum(bulk, hop_bulk)
            tail = tail + frag + hop_fixed
            hop_by_hop = hop_by_hop + hop_bulk + frag + hop_fixed
        total = np.minimum(bulk + tail, hop_by_hop)
        return np.maximum(total, 0.0)

    def transfer(
        self, src: int, dst: int, raw_bytes: np.ndarray, codec: np.ndarray, cb: ConditionBatch,
        *, naive: bool = True,
    ) -> Transfer:
        """All costs of sending an activation of ``raw_bytes`` (fp32) from ``src`` to ``dst``.

        ``codec`` (same shape) selects the codec; its layers reduce the correction on devices
        after d0 (seed 000 Eq. 2 counts encoder and decoder as layers); ``naive=False``: no naive time.
        """
        raw = np.asarray(raw_bytes, dtype=float)
        nbytes = raw * self._ratio[codec]
        kb, raw_kb = nbytes / 1e3, raw / 1e3
        layer_corr = self._layers[codec]
        enc = self._enc[codec, src, 0] * raw_kb + self._enc[codec, src, 1]
        dec = self._dec[codec, dst, 0] * raw_kb + self._dec[codec, dst, 1]
        if src > 0:
            enc = enc - self._c0[src] * layer_corr
        dec = dec - self._c0[dst] * layer_corr
        comm = self.path_comm(src, dst, nbytes, cb)
        lo, hi = min(src, dst), max(src, dst)
        ones = np.ones((len(cb.clients),) + (1,) * raw.ndim)
        slow = sum(8e-3 * nbytes[None] / cb.link_rate(h, raw.ndim) for h in range(lo, hi)) if naive else 0.0
        return Transfer(
            comm=comm,
            out_src=ones * (self._out[src, 0] * kb + self._out[src, 1]),
            in_dst=ones * (self._in[dst, 0] * kb + self._in[dst, 1]),
            enc_src=ones * enc,
            dec_dst=ones * dec,
            naive=ones * slow,
        )

    def result_return(self, last: int, cb: ConditionBatch) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(out_last, comm, in_d0)`` of the result leaving device ``last`` (> 0), each ``(B,)``."""
        r = np.array(float(self.profile.result_bytes))
        out = np.full(len(cb.clients), self._out[last, 0] * r / 1e3 + self._out[last, 1])
        if not self.return_result:
            return out, np.zeros_like(out), np.zeros_like(out)
        comm = self.path_comm(last, 0, r, cb)
        inn = np.full_like(out, self._in[0, 0] * r / 1e3 + self._in[0, 1])
        return out, comm, inn

    def power_weights(self, cb: ConditionBatch) -> tuple[np.ndarray, np.ndarray]:
        """``(B, D)`` effective W per ms of (execution, other busy time) on each device.

        Execution is shared by the batch; with ``idle_energy`` every other device draws idle
        power meanwhile, which makes energy linear in the components (used by the planner).
        """
        idle_others = self._p_idle.sum() - self._p_idle
        share = self.batch_share(cb)
        busy = np.broadcast_to(self._p_active + idle_others, share.shape)
        return self._p_active / share + idle_others, busy

    @property
    def load_sensitivity(self) -> np.ndarray:
        """``(D,)`` κ per device: background load ``u`` divides computation by ``1 − κ·u``."""
        return self._kappa.copy()

    def link_bits(self, plans: PlanArray) -> np.ndarray:
        """``(P, M)`` bits each plan's activation sends over each forward link (0: none).

        A transfer that skips devices crosses every link on its way and counts on each; a parallel
        section's is its chunks and the edge's band (:func:`adaptive.model.lop.section_bytes`).
        """
        L, D = self.num_blocks, self.num_devices
        out = np.zeros((len(plans), D - 1))
        for p in range(len(plans)):
            bounds, section, j0 = [0, *(int(x) for x in plans.splits[p]), L], plans.section_of(p), 0
            if section is not None:
                j0, size = first_stage(plans.splits[p], L), section_bytes(self, bounds[1], section)
            for link in range(1, D):
                j = next((d for d in range(link, D) if bounds[d + 1] > bounds[d]), None)
                if j is not None:
                    nbytes = size if link <= j0 else self.split_bytes[bounds[j]]
                    out[p, link - 1] = nbytes * self._ratio[int(plans.codecs[p, j - 1])] * 8
        return out

    # ------------------------------------------------------------------ evaluation

    def evaluate(self, plans: PlanArray, conditions: Conditions | ConditionBatch) -> Prediction:
        """Predict every plan under the conditions.

        Args:
            plans: ``P`` plans; splits ``(P, M)`` with ``M = len(devices) − 1``.
            conditions: One :class:`Conditions` (outputs shaped ``(P, …)``) or a
                :class:`ConditionBatch` of ``B`` (outputs shaped ``(B, P, …)``).
        """
        cb = self.conditions(conditions)
        self.check_plans(plans)
        pred = self.evaluate_unchecked(plans, cb)
        if isinstance(conditions, Conditions):
            return Prediction(*(x[0] for x in pred))
        return pred

    def check_plans(self, plans: PlanArray) -> None:
        """Raise :class:`PlanError` unless every plan fits this chain (splits, order, codecs)."""
        L, M = self.num_blocks, self.num_devices - 1
        s = plans.splits
        if s.shape[1] != M:
            raise PlanError(f"expected {M} split(s) per plan for {M + 1} devices, found {s.shape[1]}")
        if s.size and (s.min() < 0 or s.max() > L):
            raise PlanError(f"split positions must be in 0..{L}")
        if M > 1 and np.any(np.diff(s, axis=1) < 0):
            raise PlanError("splits must be non-decreasing")
        if plans.has_sections:
            check_sections(self, plans)
        k = plans.codecs
        if k.size and (k.min() < 0 or k.max() >= len(self.codec_names)):
            raise PlanError(f"codec indices must be in 0..{len(self.codec_names) - 1}")
        if k.size and np.any((k > 0) & ~self.codec_allowed[k, s]):
            raise PlanError("a codec is used at a split position where it is not available")

    @functools.cached_property
    def section_costs(self) -> SectionCosts:
        """Band sizes and times of the model's parallel sections on this chain (built on first use)."""
        return SectionCosts(self.profile, self.devices)

    def evaluate_unchecked(self, plans: PlanArray, cb: ConditionBatch) -> Prediction:
        """:meth:`evaluate` without its checks, on a batch: for callers that checked the plans once.

        Outputs are shaped ``(B, P, …)``. Plans that :meth:`check_plans` would refuse give
        meaningless numbers or an ``IndexError``.
        """
        # Internally every per-device quantity is laid out (D, B, P): reductions over devices are
        # then elementwise operations on contiguous (B, P) planes, much faster than reducing a
        # short last axis. The Prediction exposes (B, P, D) views.
        L, D = self.num_blocks, self.num_devices
        P, B = len(plans), len(cb.clients)
        s, k = plans.splits, plans.codecs
        lop = np.flatnonzero(plans.stop > 0) if plans.has_sections else np.zeros(0, np.int64)  # type: ignore[operator]
        if lop.size:  # d0 runs to the section's end, less its band (below)
            s = s.copy()
            s[lop] = np.where(s[lop] == s[lop, :1], plans.stop[lop, None], s[lop])  # type: ignore[index]
        bounds = np.column_stack([np.zeros(P, np.int64), s, np.full(P, L)])
        a, b = bounds[:, :-1], bounds[:, 1:]
        active = b > a
        dev = np.arange(D)
        scale = self.exec_scale(cb).T  # (D, B)
        slow = self.load_slowdown(cb).T
        base = self.exec_base(dev, a, b).T  # (D, P)
        naive = np.broadcast_to(self.exec_raw(dev, a, b).sum(axis=1), (B, P)).copy()
        codec_ms = np.zeros((D, B, P))
        proc = np.zeros((D, B, P))
        comm = np.zeros((D, B, P))
        # previous active device before j (d0 is the source even when its stage is empty)
        last_active = np.maximum.accumulate(np.where(active, dev, 0), axis=1)
        for j in range(1, D):
            for i in range(j):
                # only the plans whose transfer into j comes from i (each plan has at most one)
                idx = np.flatnonzero(active[:, j] & (last_active[:, j - 1] == i))
                if i == 0 and lop.size:  # a section's transfers replace the one at its end
                    idx = np.setdiff1d(idx, lop, assume_unique=True)
                if idx.size == 0:
                    continue
                t = self.transfer(i, j, self.split_bytes[a[idx, j]], k[idx, j - 1], cb.plans(idx))
                comm[j][:, idx] += t.comm
                proc[j][:, idx] += t.in_dst
                proc[i][:, idx] += t.out_src
                codec_ms[i][:, idx] += t.enc_src
                codec_ms[j][:, idx] += t.dec_dst
                naive[:, idx] += t.naive
        last = last_active[:, -1]
        for j in range(1, D):
            idx = np.flatnonzero(last == j)
            if idx.size:
                out, back, inn = self.result_return(j, cb.plans(idx))
                proc[j][:, idx] += out[:, None]
                comm[0][:, idx] += back if back.ndim == 2 else back[:, None]
                proc[0][:, idx] += inn[:, None]
        base[0, lop] = self.exec_base(0, 0, plans.splits[lop, :1].ravel())  # d0 runs [0, s1), then its band
        exec_ms = base[:, None, :] * scale[:, :, None] + codec_ms * slow[:, :, None]
        overlap = add_sections(self, plans, lop, cb, exec_ms, proc, comm) if lop.size else None
        busy = exec_ms + proc + comm
        latency = busy.sum(axis=0)
        w_exec, w_busy = (w.T[:, :, None] for w in self.power_weights(cb))
        energy = (exec_ms * w_exec + (proc + comm) * w_busy).sum(axis=0) / 1e3
        if overlap is not None:  # busy time that overlaps: the chain is done sooner, idle power stops sooner
            latency[:, lop] -= overlap
            energy[:, lop] -= self._p_idle.sum() * overlap / 1e3
        bottleneck = np.maximum((exec_ms + proc).max(axis=0), comm.max(axis=0))
        share = self.batch_share(cb).T  # (D, B)
        memory = self.stage_memory_mb(a.T[:, None, :], b.T[:, None, :], share[:, :, None])
        feasible = np.all(memory <= cb.available_mb.T[:, :, None], axis=0)
        with np.errstate(divide="ignore"):
            throughput = np.where(bottleneck > 0, 1e3 / bottleneck, np.inf)
        last_axis = lambda x: np.moveaxis(x, 0, -1)  # noqa: E731  (D, B, P) -> (B, P, D) view
        return Prediction(latency, energy, last_axis(exec_ms), last_axis(comm), last_axis(proc), bottleneck,
                          throughput, naive, last_axis(memory), feasible)


def _codec_tables(profile: ModelProfile, devices: Sequence[DeviceProfile]) -> tuple[Any, ...]:
    """Names, byte ratios, layers, ``(K, L+1)`` allowed positions, ``(K, D, 2)`` encode/decode costs."""
    codecs = profile.codecs
    K, D, L = len(codecs) + 1, len(devices), profile.num_blocks
    names = ("none", *(c.name for c in codecs))
    ratio = np.array([1.0, *(c.bytes_ratio for c in codecs)])
    layers = np.array([0.0, *(float(c.layers) for c in codecs)])
    allowed = np.ones((K, L + 1), dtype=bool)
    enc, dec = np.zeros((K, D, 2)), np.zeros((K, D, 2))
    for k, c in enumerate(codecs, start=1):
        if c.splits is not None:
            allowed[k] = False
            allowed[k, list(c.splits)] = True
        for d, dev in enumerate(devices):
            try:
                e, g = c.encode_cost(dev.name), c.decode_cost(dev.name)
            except ProfileError as exc:
                raise ProfileError(profile.source or profile.model, exc.field, exc.problem) from None
            enc[k, d] = (e.per_kb_ms, e.offset_ms)
            dec[k, d] = (g.per_kb_ms, g.offset_ms)
    return names, ratio, layers, allowed, enc, dec


def _per_item(value: float | Sequence[float], n: int, name: str, item: str) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value, dtype=float))
    if arr.ndim != 1:
        raise PlanError(f"{name} must be a number or a list with one value per {item}")
    if arr.size == 1:
        return np.full(n, arr[0])
    if arr.size != n:
        raise PlanError(f"{name}: expected 1 or {n} values (one per {item}), found {arr.size}")
    return arr


def _range_max(values: np.ndarray) -> np.ndarray:
    """``out[a, b] = max(values[a..b])`` (inclusive) for ``a ≤ b``, 0 below the diagonal.

    ``values`` are bytes at split positions 0..L, so a stage ``[a, b)`` holds its input
    (position ``a``) and the outputs of its blocks (positions ``a+1..b``).
    """
    n = len(values)
    out = np.zeros((n, n))
    for a in range(n):
        out[a, a:] = np.maximum.accumulate(values[a:])
    return out
