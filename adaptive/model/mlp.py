"""A trained policy's actor as plain numpy: small enough to ship in a rule, fast enough per request.

A MaskablePPO ``MlpPolicy`` acts by ``argmax`` over masked logits of a multilayer perceptron:
``tanh`` hidden layers, then a linear layer with one output per candidate plan. That is all a
deterministic policy needs, so :class:`MlpPolicyNet` keeps only those weights (as float32) and runs
them with numpy. The controller uses it without torch, and a source node evaluates it on every
request (:mod:`adaptive.runtime.source`).

Its JSON form (``adaptive.mlp/v1``) stores each layer's weight and bias as base64 little-endian
float32 with their shapes; :meth:`MlpPolicyNet.from_json` validates every field, because the form
also travels inside decision rules received from the network.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from adaptive.errors import AdaptiveError, read_input

__all__ = ["MLP_SCHEMA", "MlpPolicyNet"]

MLP_SCHEMA = "adaptive.mlp/v1"
MAX_WIDTH = 1024
MAX_LAYERS = 8


class MlpPolicyNet:
    """Masked-argmax actor: ``tanh`` hidden layers and a linear output layer, float32.

    Args:
        layers: ``(weight (out, in), bias (out,))`` per layer, input first; the last layer's
            outputs are the action logits.
        step_s: The decision period the policy was trained with, s (its observation's bandwidth
            history is spaced by it), if known.
    """

    def __init__(self, layers: Sequence[tuple[np.ndarray, np.ndarray]], step_s: float | None = None) -> None:
        self.step_s = step_s
        if not layers:
            raise AdaptiveError("an MLP needs at least one layer")
        self.layers = [(np.ascontiguousarray(w, np.float32), np.ascontiguousarray(b, np.float32))
                       for w, b in layers]
        self._transposed = [(np.ascontiguousarray(w.T), b) for w, b in self.layers]  # h @ W.T, row-major
        for i, (w, b) in enumerate(self.layers):
            if w.ndim != 2 or b.shape != (w.shape[0],):
                raise AdaptiveError(f"MLP layer {i}: weight {w.shape} and bias {b.shape} do not match")
            if i and w.shape[1] != self.layers[i - 1][0].shape[0]:
                raise AdaptiveError(f"MLP layer {i}: takes {w.shape[1]} inputs, layer {i - 1} gives "
                                    f"{self.layers[i - 1][0].shape[0]}")

    @property
    def num_inputs(self) -> int:
        """Length of the observation."""
        return int(self.layers[0][0].shape[1])

    @property
    def num_actions(self) -> int:
        """Number of logits (candidate plans)."""
        return int(self.layers[-1][0].shape[0])

    def logits(self, obs: np.ndarray) -> np.ndarray:
        """Action logits of one observation ``(N,)`` or a batch ``(B, N)``."""
        h = np.asarray(obs, np.float32)
        for wt, b in self._transposed[:-1]:
            h = np.tanh(h @ wt + b)
        wt, b = self._transposed[-1]
        return h @ wt + b

    def act(self, obs: np.ndarray, mask: np.ndarray | None = None) -> int:
        """The best allowed action for one observation (any action if none is allowed)."""
        z = self.logits(obs)
        if mask is not None and mask.any():
            z[~mask] = -np.inf
        return int(z.argmax())

    def predict(self, observation: np.ndarray, state: Any = None, episode_start: Any = None,
                deterministic: bool = True, action_masks: np.ndarray | None = None) -> tuple[int, Any]:
        """Stable-Baselines3's ``predict`` signature (deterministic only)."""
        return self.act(observation, None if action_masks is None else np.asarray(action_masks, bool)), state

    # ------------------------------------------------------------------ serialisation

    def to_json(self) -> dict[str, Any]:
        """The ``adaptive.mlp/v1`` document."""
        return {"schema": MLP_SCHEMA, "activation": "tanh",
                "layers": [{"shape": list(w.shape), "weight": _b64(w), "bias": _b64(b)}
                           for w, b in self.layers]}

    @classmethod
    def from_json(cls, doc: Any, where: str = "mlp") -> MlpPolicyNet:
        """Validate and rebuild; raises :class:`AdaptiveError` naming the field."""
        if not isinstance(doc, dict) or doc.get("schema") != MLP_SCHEMA:
            raise AdaptiveError(f"{where}: expected schema '{MLP_SCHEMA}'")
        if doc.get("activation") != "tanh":
            raise AdaptiveError(f"{where}: field 'activation': expected 'tanh'")
        rows = doc.get("layers")
        if not isinstance(rows, list) or not 1 <= len(rows) <= MAX_LAYERS:
            raise AdaptiveError(f"{where}: field 'layers': expected 1 to {MAX_LAYERS} layers")
        layers = []
        for i, row in enumerate(rows):
            w = f"{where}: layers[{i}]"
            shape = row.get("shape") if isinstance(row, dict) else None
            if (not isinstance(shape, list) or len(shape) != 2
                    or any(isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_WIDTH
                           for n in shape)):
                raise AdaptiveError(f"{w}: field 'shape': expected [outputs, inputs], each 1..{MAX_WIDTH}")
            weight = _unb64(row.get("weight"), shape[0] * shape[1], f"{w}.weight").reshape(shape)
            bias = _unb64(row.get("bias"), shape[0], f"{w}.bias")
            layers.append((weight, bias))
        return cls(layers)

    def save(self, path: str | Path) -> None:
        """Write the JSON document."""
        Path(path).write_text(json.dumps(self.to_json()) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> MlpPolicyNet:
        """Read a JSON document written by :meth:`save`."""
        text = read_input(path, "a policy network (.mlp.json)")
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise AdaptiveError(f"{path}: cannot read policy network ({exc.__class__.__name__})") from None
        return cls.from_json(doc, str(path))


def _b64(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, "<f4").tobytes()).decode("ascii")


def _unb64(text: Any, count: int, where: str) -> np.ndarray:
    if not isinstance(text, str) or len(text) > 4 * (4 * count + 2) // 3 + 4:
        raise AdaptiveError(f"{where}: expected base64 of {count} float32")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise AdaptiveError(f"{where}: invalid base64") from None
    if len(raw) != 4 * count:
        raise AdaptiveError(f"{where}: expected {count} float32 ({4 * count} bytes), found {len(raw)} bytes")
    values = np.frombuffer(raw, "<f4").astype(np.float32)
    if not np.all(np.isfinite(values)):
        raise AdaptiveError(f"{where}: values must be finite")
    return values
