"""Profile loading: schema validation, clear messages, shipped profiles, round trips."""

from __future__ import annotations

import json

import pytest
import yaml

from adaptive.errors import ProfileError
from adaptive.model.profiles import (
    list_shipped,
    load_device,
    load_model,
    model_from_dict,
    model_to_dict,
    resolve_device,
    resolve_model,
    save_profile,
)
from tests.conftest import EDGE, TOY_MODEL


@pytest.mark.parametrize("name", list_shipped("devices"))
def test_shipped_devices_load(name):
    dev = resolve_device(name)
    assert dev.name == name and dev.notes


@pytest.mark.parametrize("name", list_shipped("models"))
def test_shipped_models_load(name):
    model = resolve_model(name)
    assert model.num_blocks >= 1 and model.notes
    for dev, lat in model.latency_ms.items():
        assert len(lat) == model.num_blocks, dev


def test_seed000_table2_table3_coefficients_exactly_as_printed():
    nano, agx = resolve_device("jetson-orin-nano"), resolve_device("jetson-agx-orin")
    # Table II: Q0 (x1e-3 ms/KB), Q1 (ms), T_FP (ms)
    assert (nano.link.per_kb_ms, nano.link.offset_ms, nano.link.first_packet_ms) == (8.58e-3, -0.57, 1.59)
    assert (agx.link.per_kb_ms, agx.link.offset_ms, agx.link.first_packet_ms) == (8.32e-3, -0.54, 1.67)
    # Table III: P_N0 (x1e-4 ms/KB), P_N1 (ms), P_G0 (x1e-4 ms/KB), P_G1 (ms)
    assert (nano.inbound.per_kb_ms, nano.inbound.offset_ms) == (1.63e-4, 1.12)
    assert (nano.outbound.per_kb_ms, nano.outbound.offset_ms) == (3.94e-4, 0.70)
    assert (agx.inbound.per_kb_ms, agx.inbound.offset_ms) == (1.15e-4, 0.75)
    assert (agx.outbound.per_kb_ms, agx.outbound.offset_ms) == (2.77e-4, 0.09)


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_round_trip_through_files(tmp_path, suffix):
    model = model_from_dict(TOY_MODEL)
    path = tmp_path / f"toy{suffix}"
    save_profile(model_to_dict(model), path)
    again = load_model(path)
    assert again.blocks == model.blocks
    assert again.codecs == model.codecs
    assert again.correction == model.correction
    for dev in model.latency_ms:
        assert again.latency_ms[dev].tolist() == model.latency_ms[dev].tolist()


def write(tmp_path, doc, name="p.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("mutate", "field", "problem"),
    [
        (lambda d: d.pop("link"), "", "'link' is required but missing"),
        (lambda d: d["link"].update(per_kb_ms="fast"), "link.per_kb_ms", "expected number"),
        (lambda d: d["link"].update(per_kb_ms=-1.0), "link.per_kb_ms", "expected minimum 0"),
        (lambda d: d.update(accelerator="tpu"), "accelerator", "expected one of"),
        (lambda d: d.update(schema="adaptive.device/v2"), "schema", "expected 'adaptive.device/v1'"),
        (lambda d: d.update(memory_mb=float("nan")), "memory_mb", "finite"),
        (lambda d: d["power_w"].update(idle=99.0), "power_w.idle", "idle power <= active"),
        (lambda d: d.update(colour="red"), "", "Additional properties"),
    ],
)
def test_invalid_device_names_file_field_and_problem(tmp_path, mutate, field, problem):
    doc = json.loads(json.dumps(EDGE))
    mutate(doc)
    path = write(tmp_path, doc)
    with pytest.raises(ProfileError) as info:
        load_device(path)
    err = info.value
    assert str(path) in str(err)
    assert err.field == field
    assert problem in err.problem
    assert "\n" not in str(err)


@pytest.mark.parametrize(
    ("mutate", "field", "problem"),
    [
        (lambda d: d["latency_ms"].update(edge=[1.0, 2.0]), "latency_ms.edge", "expected 4 values"),
        (lambda d: d["blocks"][1].update(output_bytes=-3), "blocks.1.output_bytes", "minimum 0"),
        (lambda d: d["codecs"]["ae"].update(splits=[9]), "codecs.ae.splits", "0..4"),
        (lambda d: d["codecs"].update(none=d["codecs"]["fp16"]), "codecs", ""),
        (lambda d: d.update(blocks=[]), "blocks", ""),
    ],
)
def test_invalid_model_names_field(tmp_path, mutate, field, problem):
    doc = json.loads(json.dumps(TOY_MODEL))
    mutate(doc)
    with pytest.raises(ProfileError) as info:
        load_model(write(tmp_path, doc))
    assert info.value.field == field
    assert problem in info.value.problem


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(ProfileError, match="no such file"):
        load_model(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ProfileError, match="invalid JSON at line 1"):
        load_model(bad)
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ProfileError, match="invalid YAML"):
        load_model(bad)
    wrong = write(tmp_path, EDGE, "dev.yaml")
    with pytest.raises(ProfileError, match=r"expected 'adaptive\.model/v1'"):
        load_model(wrong)


def test_unknown_shipped_name_lists_the_valid_ones():
    with pytest.raises(ProfileError, match=r"shipped devices: .*jetson-orin-nano"):
        resolve_device("jetson-xavier")
