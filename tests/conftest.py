"""Shared fixtures: small hand-made profiles whose numbers are easy to check by hand."""

from __future__ import annotations

import copy
import shutil

import pytest

from adaptive.model.profiles import device_from_dict, model_from_dict
from tests.brokers import Embedded, Mosquitto

EDGE = {
    "schema": "adaptive.device/v1", "name": "edge", "accelerator": "cpu", "memory_mb": 100.0,
    "power_w": {"active": 5.0, "idle": 2.0},
    "link": {"first_packet_ms": 1.0, "per_kb_ms": 0.01, "offset_ms": -0.5, "ref_bandwidth_mbps": 1000},
    "data_movement": {"inbound": {"per_kb_ms": 0.001, "offset_ms": 0.2},
                      "outbound": {"per_kb_ms": 0.002, "offset_ms": 0.3}},
    "batching": {"per_extra_item": 0.9},
}
ACCEL = {
    "schema": "adaptive.device/v1", "name": "accel", "accelerator": "gpu", "memory_mb": 1000.0,
    "power_w": {"active": 20.0, "idle": 5.0},
    "link": {"first_packet_ms": 2.0, "per_kb_ms": 0.008, "offset_ms": -0.4, "ref_bandwidth_mbps": 1000},
    "data_movement": {"inbound": {"per_kb_ms": 0.0001, "offset_ms": 0.5},
                      "outbound": {"per_kb_ms": 0.0003, "offset_ms": 0.1}},
    "batching": {"per_extra_item": 0.25},
    "cpu_load_sensitivity": 0.5,
}
TOY_MODEL = {
    "schema": "adaptive.model/v1", "model": "toy", "input_shape": [1, 3, 32, 32],
    "input_bytes": 12_000, "result_bytes": 400,
    "blocks": [
        {"name": "b0", "output_bytes": 100_000, "param_bytes": 1_000_000},
        {"name": "b1", "output_bytes": 50_000, "param_bytes": 2_000_000},
        {"name": "b2", "output_bytes": 20_000, "param_bytes": 3_000_000},
        {"name": "b3", "output_bytes": 400, "param_bytes": 4_000_000},
    ],
    "latency_ms": {"edge": [1.0, 2.0, 3.0, 4.0], "accel": [0.5, 0.5, 0.5, 0.5],
                   "accel2": [0.25, 0.25, 0.25, 0.25]},
    "correction": {"edge": {"c0_ms": 0.1, "c1_ms": 0.05}, "accel": {"c0_ms": 0.02, "c1_ms": 0.01}},
    "codecs": {
        "fp16": {"bytes_ratio": 0.5, "encode": {"default": {"per_kb_ms": 0.001, "offset_ms": 0.05}},
                 "decode": {"default": {"per_kb_ms": 0.001, "offset_ms": 0.05}}},
        "ae": {"bytes_ratio": 0.1, "layers": 1, "splits": [1, 2],
               "encode": {"default": {"per_kb_ms": 0.004, "offset_ms": 0.2}},
               "decode": {"default": {"per_kb_ms": 0.004, "offset_ms": 0.2}}},
    },
}


@pytest.fixture
def edge():
    return device_from_dict(copy.deepcopy(EDGE))


@pytest.fixture
def accel():
    return device_from_dict(copy.deepcopy(ACCEL))


@pytest.fixture
def accel2():
    doc = copy.deepcopy(ACCEL)
    doc["name"] = "accel2"
    doc["link"]["first_packet_ms"] = 1.5
    return device_from_dict(doc)


@pytest.fixture
def toy():
    return model_from_dict(copy.deepcopy(TOY_MODEL))


@pytest.fixture
def toy_doc():
    return copy.deepcopy(TOY_MODEL)


BROKERS = ["mosquitto", "embedded"]


@pytest.fixture(params=BROKERS)
def broker(request, tmp_path):
    """A running broker of each kind (Mosquitto skipped where it is not installed)."""
    if request.param == "mosquitto":
        if shutil.which("mosquitto") is None:
            pytest.skip("mosquitto is not installed (.ci/run installs it)")
        b = Mosquitto(tmp_path).start()
    else:
        b = Embedded().start()
    yield b
    b.stop()
