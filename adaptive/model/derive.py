"""Derive per-block latency on devices we cannot run on, from published measurements.

Method (documented in ``docs/derivation.md``; every number printed by
``adaptive profile derive``):

1. **Block kinds.** Each block is labelled by the op class with the most FLOPs: ``conv``,
   ``depthwise``, ``dense`` or ``other``. Scission's Keras blocks get the same labels from the
   per-layer types in Castellano's fork (same ``keras.applications`` layer indices).
2. **Raspberry Pi 4.** Speed ratio per kind = Σ latency on the Pi 4 / Σ latency on the x86
   reference (Scission's 2-core VM ``vm2Core``), over the blocks of the *training* models.
   Validated on the *held-out* models' blocks, which the fit never sees.
3. **Jetson Nano (GPU).** Castellano's per-block GPU timings are not synchronised, so only
   whole-model times are usable: per-kind ratios Nano / server CPU (``bonarda``) by
   non-negative least squares over the models, validated leave-one-model-out, then converted
   to the x86 reference through the models both CPUs ran.
4. **This machine → reference.** Our blocks are measured here (PyTorch); the Keras reference
   ran TF. The scale between them is the median whole-model ratio over the architectures both
   zoos contain (VGG16, ResNet-50, MobileNetV2, DenseNet-121, Inception-v3).
5. **Jetson Orin Nano / AGX Orin.** No published per-layer data: Jetson Nano latency divided by
   the ratio of peak FP32 throughput (an estimate, labelled as such).

Derived latency of block ``b`` on device ``d``: ``t_d(b) = r_d[kind(b)] · t_host(b) / s``.
No torch needed; the inputs are CSV files and model profiles.
"""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from adaptive.errors import AdaptiveError

__all__ = ["KINDS", "Derivation", "DeviceRatios", "derive", "keras_kind"]

KINDS = ("conv", "depthwise", "dense", "other")
# Keras application name -> our zoo name, for the host calibration
COMMON_ARCHITECTURES = {"vgg16": "vgg16", "resnet50": "resnet50", "mobilenetv2": "mobilenet_v2",
                        "densenet121": "densenet121", "inception_v3": "inception_v3"}
# held out from the Pi 4 fit: one of each family the training set also has
PI4_HOLDOUT = ("vgg16", "resnet101", "resnet152v2", "mobilenetv2", "densenet169", "xception",
               "nasnetmobile")
# peak FP32 throughput, TFLOPS: CUDA cores x clock x 2 (NVIDIA module data sheets)
PEAK_FP32_TFLOPS = {"jetson-nano": 0.128 * 0.9216 * 2, "jetson-orin-nano": 1.024 * 0.625 * 2,
                    "jetson-agx-orin": 2.048 * 1.3 * 2}


def keras_kind(types: Sequence[str]) -> str:
    """Kind of a Keras block from its layer types (convolutions dominate their blocks' FLOPs)."""
    s = set(types)
    if s & {"Conv2D", "Conv1D"}:
        return "conv"
    if "Dense" in s:
        return "dense"
    if s & {"DepthwiseConv2D", "SeparableConv2D"}:
        return "depthwise"
    return "other"


@dataclass(frozen=True)
class DeviceRatios:
    """Speed ratios of one device against the x86 reference, per block kind.

    Attributes:
        device: Our device name (``raspberry-pi-4``, ``jetson-nano``…).
        ratio: Per kind, latency on the device / latency on the reference.
        method: How the ratios were obtained (one sentence, with sources).
        validation: Name → value of the validation errors (%, on data the fit did not see).
    """

    device: str
    ratio: Mapping[str, float]
    method: str
    validation: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Derivation:
    """Everything derived: ratios per device and the host→reference scale.

    Attributes:
        devices: Ratios per derived device.
        host_scale: ``s`` = host latency / reference latency (median over common models).
        host_scale_by_model: The per-model values behind the median.
    """

    devices: Mapping[str, DeviceRatios]
    host_scale: float
    host_scale_by_model: Mapping[str, float]

    def latency(self, device: str, host_ms: np.ndarray, kinds: Sequence[str]) -> np.ndarray:
        """Derived per-block latency on ``device`` from this machine's latency and block kinds."""
        r = self.devices[device].ratio
        return np.array([r[k or "other"] * t / self.host_scale for t, k in zip(host_ms, kinds, strict=True)])


def _read(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            return list(csv.DictReader(fh))
    except FileNotFoundError:
        raise AdaptiveError(f"{path}: file not found (is --shared pointing at shared/profiles?)") from None


def _keras_layer_types(castellano: list[dict[str, str]]) -> dict[tuple[str, int], str]:
    types: dict[tuple[str, int], str] = {}
    for r in castellano:
        if r["device"] != "bonarda":
            continue
        names = r["keras_layer_types"].split(";")
        lo, hi = int(r["input_layer"]), int(r["output_layer"])
        if len(names) == hi - lo + 1:
            for i, t in enumerate(names):
                types[(r["model"], lo + i)] = t
    return types


def _scission_blocks(root: Path) -> list[dict[str, object]]:
    """Scission blocks with Pi 4 and reference latency and a kind (546 rows, 18 models)."""
    types = _keras_layer_types(_read(root / "scission_castellano" / "castellano_blocks_long.csv"))
    ref = {(r["model"], r["block_index"]): float(r["latency_ms"])
           for r in _read(root / "scission_qub" / "edge-vm2Core.csv")}
    rows = []
    for r in _read(root / "scission_qub" / "device-raspi4.csv"):
        lo, hi = int(r["input_layer"]), int(r["output_layer"])
        layer_types = [types.get((r["model"], i)) for i in range(lo, hi + 1)]
        if None in layer_types:
            continue
        rows.append({"model": r["model"], "kind": keras_kind(layer_types),
                     "pi4": float(r["latency_ms"]), "ref": ref[(r["model"], r["block_index"])]})
    return rows


def _ratios(rows: Sequence[Mapping[str, object]], num: str, den: str) -> dict[str, float]:
    sums: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    for r in rows:
        sums[str(r["kind"])][0] += float(r[num])  # type: ignore[arg-type]
        sums[str(r["kind"])][1] += float(r[den])  # type: ignore[arg-type]
    overall = sum(v[0] for v in sums.values()) / sum(v[1] for v in sums.values())
    return {k: (sums[k][0] / sums[k][1] if sums[k][1] > 0 else overall) for k in KINDS}


def _pi4(root: Path) -> DeviceRatios:
    rows = _scission_blocks(root)
    train = [r for r in rows if r["model"] not in PI4_HOLDOUT]
    test = [r for r in rows if r["model"] in PI4_HOLDOUT]
    ratio = _ratios(train, "pi4", "ref")
    pred = np.array([ratio[str(r["kind"])] * float(r["ref"]) for r in test])  # type: ignore[arg-type]
    true = np.array([float(r["pi4"]) for r in test])  # type: ignore[arg-type]
    big = true >= 1.0  # sub-millisecond blocks are dominated by timer and dispatch noise
    per_model = []
    for m in PI4_HOLDOUT:
        idx = [i for i, r in enumerate(test) if r["model"] == m]
        if idx:
            per_model.append(abs(pred[idx].sum() - true[idx].sum()) / true[idx].sum())
    naive = sum(float(r["pi4"]) for r in train) / sum(float(r["ref"]) for r in train)  # type: ignore[arg-type]
    naive_pred = naive * np.array([float(r["ref"]) for r in test])  # type: ignore[arg-type]
    ape = np.abs(pred[big] - true[big]) / true[big]
    validation = {
        "heldout_blocks": float(big.sum()),
        "block_mape_pct": float(np.mean(ape) * 100),
        "block_median_ape_pct": float(np.median(ape) * 100),
        "block_wape_pct": float(np.abs(pred[big] - true[big]).sum() / true[big].sum() * 100),
        "block_mape_one_ratio_pct": float(np.mean(np.abs(naive_pred[big] - true[big]) / true[big]) * 100),
        "model_total_mape_pct": float(np.mean(per_model) * 100),
    }
    method = ("Scission (Lockhart et al., UCC 2020) TF-Keras per-block means on a Raspberry Pi 4 "
              "vs the 2-core x86 VM 'vm2Core', ratio of sums per kind over "
              f"{len({r['model'] for r in train})} training models; held out: {', '.join(PI4_HOLDOUT)}")
    return DeviceRatios("raspberry-pi-4", ratio, method, validation)


def _nnls(A: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares by active set elimination (tiny problems only)."""
    active = list(range(A.shape[1]))
    while True:
        x = np.zeros(A.shape[1])
        sol, *_ = np.linalg.lstsq(A[:, active], b, rcond=None)
        x[active] = sol
        if (sol >= 0).all() or len(active) == 1:
            return np.maximum(x, 0.0)
        active.pop(int(np.argmin(sol)))


def _jetson_nano(root: Path) -> tuple[DeviceRatios, dict[str, float]]:
    cas = root / "scission_castellano"
    whole = {(r["device"], r["model"]): float(r["whole_model_latency_ms"])
             for r in _read(cas / "castellano_whole_model_vs_sum_of_blocks.csv")}
    per_kind: dict[str, dict[str, float]] = defaultdict(lambda: dict.fromkeys(KINDS, 0.0))
    for r in _read(cas / "castellano_blocks_long.csv"):
        if r["device"] == "bonarda":
            per_kind[r["model"]][keras_kind(r["keras_layer_types"].split(";"))] += float(r["latency_ms"])
    # VGG rows on the Nano ran out of memory (see shared/profiles/README): excluded
    models = sorted(m for (d, m) in whole if d == "jetsonnano" and not m.startswith("vgg")
                    and ("bonarda", m) in whole)
    # scale each model's per-kind CPU time to its measured whole-model CPU time
    A = np.array([[per_kind[m][k] for k in KINDS] for m in models])
    A *= np.array([whole[("bonarda", m)] / A[i].sum() for i, m in enumerate(models)])[:, None]
    b = np.array([whole[("jetsonnano", m)] for m in models])
    used = [j for j, k in enumerate(KINDS) if A[:, j].sum() > 0.02 * A.sum()]
    x = np.zeros(len(KINDS))
    x[used] = _nnls(A[:, used], b)
    errors = []
    for i in range(len(models)):
        keep = [j for j in range(len(models)) if j != i]
        xi = np.zeros(len(KINDS))
        xi[used] = _nnls(A[np.ix_(keep, used)], b[keep])
        errors.append(abs(A[i] @ xi - b[i]) / b[i])
    # bonarda (server CPU) -> vm2Core reference, over the Keras models both ran
    ref_total: dict[str, float] = defaultdict(float)
    for r in _read(root / "scission_qub" / "edge-vm2Core.csv"):
        ref_total[r["model"]] += float(r["latency_ms"])
    cpu_to_ref = float(np.median([whole[("bonarda", m)] / ref_total[m] for m in models if m in ref_total]))
    overall = float(b.sum() / A.sum())
    ratio = {k: (x[j] if j in used and x[j] > 0 else overall) * cpu_to_ref for j, k in enumerate(KINDS)}
    method = ("Castellano's Scission fork: whole-model TF-Keras latency on a Jetson Nano (GPU) vs "
              f"the server CPU 'bonarda' over {len(models)} models (VGG excluded: out of memory), "
              "per-kind ratios by non-negative least squares, then bonarda -> vm2Core by the median "
              "whole-model ratio")
    return DeviceRatios("jetson-nano", ratio, method,
                        {"models": float(len(models)),
                         "model_total_mape_loo_pct": float(np.mean(errors) * 100),
                         "bonarda_to_reference": cpu_to_ref}), dict(ref_total)


def derive(shared_profiles: str | Path, host_totals_ms: Mapping[str, float]) -> Derivation:
    """Fit everything from ``shared/profiles/raw`` and this machine's whole-model latencies.

    Args:
        shared_profiles: The ``profiles`` folder (containing ``raw/``) or ``raw`` itself.
        host_totals_ms: Our zoo name → whole-model latency measured on this machine, ms, for
            the architectures in :data:`COMMON_ARCHITECTURES`.
    """
    root = Path(shared_profiles)
    root = root / "raw" if (root / "raw").is_dir() else root
    pi4 = _pi4(root)
    nano, ref_total = _jetson_nano(root)
    scale = {zoo: host_totals_ms[zoo] / ref_total[keras] for keras, zoo in COMMON_ARCHITECTURES.items()
             if zoo in host_totals_ms and keras in ref_total}
    if not scale:
        raise AdaptiveError("no host profile of a common architecture (vgg16, resnet50, mobilenet_v2, "
                            "densenet121, inception_v3) to calibrate against")
    devices = {"raspberry-pi-4": pi4, "jetson-nano": nano}
    for name in ("jetson-orin-nano", "jetson-agx-orin"):
        factor = PEAK_FP32_TFLOPS["jetson-nano"] / PEAK_FP32_TFLOPS[name]
        devices[name] = DeviceRatios(
            name, {k: v * factor for k, v in nano.ratio.items()},
            f"ESTIMATE: jetson-nano ratios x peak FP32 ratio {factor:.3f} "
            f"({PEAK_FP32_TFLOPS['jetson-nano']:.3f} vs {PEAK_FP32_TFLOPS[name]:.2f} TFLOPS); "
            "no published per-layer data for this board")
    return Derivation(devices, float(np.median(list(scale.values()))), scale)
