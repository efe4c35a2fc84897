"""Scenarios (adaptive.scenario/v1): the format, the simulation, the report and the shipped ones."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources

import jsonschema
import numpy as np
import pytest
import yaml

from adaptive.errors import AdaptiveError
from adaptive.experiments.report import scenario_doc, summarise, write_report, write_run
from adaptive.experiments.scenario import Scenario, shipped_scenarios
from adaptive.experiments.simulate import simulate
from envs.multi_client import MultiClientEnv

SCHEMA = json.loads(resources.files("adaptive.schemas").joinpath("scenario.v1.json").read_text())


def base(**kw):
    doc = {
        "schema": "adaptive.scenario/v1",
        "name": "t",
        "model": "mobilenet_v2",
        "accelerators": [{"name": "nano", "device": "jetson-nano"}],
        "clients": [
            {"name": "a", "rate_rps": 2, "uplink": {"steps": [[0, 30], [5, 2]]}},
            {
                "name": "b",
                "rate_rps": 4,
                "join_s": 4,
                "leave_s": 8,
                "uplink": {"mbps": 10},
                "load": {"fixed": 0.5},
            },
        ],
        "duration_s": 10,
        "policies": ["greedy", "device-only"],
    }
    doc.update(kw)
    return doc


def test_shipped_scenarios_follow_the_schema_and_load():
    names = shipped_scenarios()
    assert {"liu-fig13a", "liu-fig13b", "intradp-traces"} <= set(names)
    for path in names.values():
        doc = yaml.safe_load(path.read_text())
        jsonschema.validate(doc, SCHEMA)
        Scenario.load(path)
    # a sectioned label: the schema and the loader take the same ones
    doc = base(plans={"parallel": True, "include": ["0-5@0.5,0", "2-6@0.25x2,3/int8,none"]})
    jsonschema.validate(doc, SCHEMA)
    assert Scenario.from_dict(doc).include_plans[:2] == ("0-5@0.5,0", "2-6@0.25x2,3/int8,none")


def test_conditions_follow_the_schedules():
    s = Scenario.from_dict(base())
    c = s.conditions()
    t = s.times() + s.dt_s / 2
    assert c["bw"].shape == (40, 2) and c["accel_load"].shape == (40, 1)
    np.testing.assert_array_equal(c["bw"][:, 0], np.where(t < 5, 30.0, 2.0))
    np.testing.assert_array_equal(c["active"][:, 1], (s.times() >= 4) & (s.times() < 8))
    assert (c["edge_load"][:, 1] == 0.5).all() and (c["edge_load"][:, 0] == 0).all()
    assert list(c["deadline_ms"]) == [1000.0, 1000.0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"colour": "red"}, "t.colour: unknown key"),
        ({"duration": 10}, "unknown key"),
        ({"duration_s": "10 s"}, "duration_s: expected a number of s, found '10 s'"),
        (
            {"clients": [{"rate_rps": 2, "uplink": {"mbps": "30 Mbit/s"}}]},
            "clients[0].uplink.mbps: expected a number of Mbit/s",
        ),
        (
            {"clients": [{"rate_rps": 2, "uplink": {"bandwidth": 30}}]},
            "clients[0].uplink.bandwidth: unknown key",
        ),
        (
            {"clients": [{"rate_rps": 2, "uplink": {"steps": [[0, 30], [5, 2], [3, 8]]}}]},
            "clients[0].uplink.steps[2]: times must increase",
        ),
        ({"clients": [{"rate_rps": 2, "uplink": {"steps": [[1, 30]]}}]}, "first step must be at time 0"),
        ({"clients": [{"rate_rps": 2, "uplink": {"steps": [[0, 30], [12, 5]]}}]}, "not before the end"),
        (
            {"clients": [{"rate_rps": 2, "join_s": 5, "leave_s": 3, "uplink": {"mbps": 3}}]},
            "clients[0].leave_s: 3 s is not after join_s",
        ),
        ({"clients": [{"rate_rps": 2, "join_s": 20, "uplink": {"mbps": 3}}]}, "clients[0].join_s"),
        (
            {"clients": [{"rate_rps": 2, "uplink": {"mbps": 3}, "load": {"fixed": 1.5}}]},
            "clients[0].load.fixed: must be >= 0 and <= 1",
        ),
        ({"clients": [{"rate_rps": 2, "uplink": {"mbps": 3, "steps": [[0, 1]]}}]}, "give exactly one of"),
        ({"schema": "adaptive.scenario/v2"}, "schema"),
        ({"policies": []}, "policies"),
        ({"repeats": 0}, "repeats"),
        ({"plans": {"codecs": ["zip"]}}, "plans.codecs"),
        ({"link_delay_ms": [1, 2]}, "link_delay_ms: expected 1 numbers of ms"),
        ({"plans": {"include": ["3;7"]}}, "plans.include: expected plan labels"),
        ({"policies": ["plan:three"]}, "policies: 'plan:three': expected plan:SPLITS"),
        ({"plans": {"include": ["0-5@0.5,0"]}}, "plans: '0-5@0.5,0': a plan with a section needs"),
    ],
)
def test_bad_scenarios_are_named_by_field(change, message):
    doc = base(**change)
    with pytest.raises(AdaptiveError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Scenario.from_dict(doc, "t")
    if (
        change != {"schema": "adaptive.scenario/v2"}
        and "steps" not in json.dumps(change)
        and "join_s" not in json.dumps(change)
        and "link_delay_ms" not in change
        and "plan:three" not in json.dumps(change)
        and "@" not in json.dumps(change)
    ):
        with pytest.raises(jsonschema.ValidationError):  # the schema refuses it too
            jsonschema.validate(doc, SCHEMA)


def test_the_simulation_replays_the_scenario_on_the_env():
    s = Scenario.from_dict(base(policies=["device-only", "greedy"]))
    out = simulate(s)
    rows = out["rows"]
    dev = [r for r in rows if r["policy"] == "device-only"]
    # client b is present from 4 s to 8 s only; every step of a present client is a row
    assert {r["client"] for r in dev if r["time_s"] < 4} == {"a"}
    assert len([r for r in dev if r["client"] == "b"]) == 16
    # device-only is the edge alone: what the env's model says for one frame there, every step
    env = MultiClientEnv(
        {"model_profile": "mobilenet_v2", "devices": ["raspberry-pi-4", "jetson-nano"], "max_clients": 2}
    )
    alone = env.unwrapped.chain.exec_ms[0, 0].sum() + env.unwrapped.chain.proc_ms[0, 0].sum()
    a = [r for r in dev if r["client"] == "a"]
    assert all(r["plan"] == "23" and r["edge_share"] == 1.0 for r in a)
    assert np.allclose([r["latency_ms"] for r in a], alone, atol=1e-3)  # rows keep 3 decimals
    # the uplink each row reports is the schedule's
    assert all(r["bandwidth_mbps"] == (30.0 if r["time_s"] < 5 else 2.0) for r in a)
    greedy = [r for r in rows if r["policy"] == "greedy" and r["client"] == "a"]
    fast = np.mean([r["edge_share"] for r in greedy if 1 <= r["time_s"] < 5])
    slow = np.mean([r["edge_share"] for r in greedy if r["time_s"] >= 6])
    assert fast < slow  # on 30 Mbit/s greedy offloads more than on 2 Mbit/s


def test_report_files_and_published_check(tmp_path):
    s = Scenario.from_dict(
        base(
            policies=["greedy", "device-only"],
            published={"source": "test", "expect": {"better": ["greedy"], "than": ["device-only"]}},
        )
    )
    out = simulate(s, repeats=2)
    summary = write_run(tmp_path, s, out["rows"], out["runs"], "sim", 1.0)
    assert summary["published_check"]["holds"] is True
    g = summary["policies"]["greedy"]
    assert len(g["per_repeat_mean_ms"]) == 2 and set(g["clients"]) == {"a", "b"}
    assert [seg["label"] for seg in g["segments"]] == [
        "1 client, 30 Mbit/s",
        "2 clients",
        "2 clients",
        "1 client, 2 Mbit/s",
    ]
    for name in (
        "steps.csv",
        "summary.json",
        "report.md",
        "latency.png",
        "cdf.png",
        "plans.png",
        "drops.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    (tmp_path / "report.md").unlink()
    write_report(tmp_path)  # rebuilt from the data files alone
    text = (tmp_path / "report.md").read_text()
    assert "| greedy |" in text and "holds here" in text
    with pytest.raises(AdaptiveError, match="not an experiment directory"):
        write_report(tmp_path / "nothing")


@pytest.mark.parametrize("name", ["liu-fig13a", "liu-fig13b", "intradp-traces", "intradp-lop"])
def test_shipped_scenarios_reproduce_their_published_direction(name):
    s = Scenario.load(name)
    out = simulate(s)
    summary = summarise(out["rows"], scenario_doc(s))
    check = summary["published_check"]
    assert check["holds"] is True, check
    if name == "intradp-lop":  # Fig. 17's direction: sections make offloading pay from a lower uplink
        band = summary["offload_pays"]
        assert band["greedy"]["20%"]["lowest_mbps"] < band["greedy:layers"]["20%"]["lowest_mbps"]
        plans = {r["plan"] for r in out["rows"] if r["policy"] == "greedy"}
        assert any("@" in p for p in plans)  # it did choose sectioned plans
        assert not any("@" in r["plan"] for r in out["rows"] if r["policy"] != "greedy")


def test_layer_only_policies_need_parallel_candidates():
    with pytest.raises(AdaptiveError, match=r"'greedy:layers': ':layers' needs plans.parallel: true"):
        Scenario.from_dict(base(policies=["greedy", "greedy:layers"]))
    with pytest.raises(AdaptiveError, match=r"plans\.parallel: expected true or false"):
        Scenario.from_dict(base(plans={"parallel": "yes"}))


def test_cli_runs_and_refuses_bad_input(tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "adaptive", "experiment", *args],
            capture_output=True,
            text=True,
            timeout=300,
        )

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(base(clients=[{"rate_rps": 2, "uplink": {"mbps": "fast"}}])))
    proc = run("run", str(bad))
    assert proc.returncode == 2 and "clients[0].uplink.mbps" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    proc = run("run", "no-such-scenario")
    assert proc.returncode == 2 and "no such scenario" in proc.stderr
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(base()))
    proc = run("run", str(good), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "greedy" in proc.stdout and (tmp_path / "out" / "report.md").exists()
    proc = run("list")
    assert proc.returncode == 0 and "liu-fig13b" in proc.stdout


def test_a_link_delay_adds_to_every_offloaded_frame():
    def full_offload(delay):
        s = Scenario.from_dict(
            base(
                policies=["full-offload"],
                link_delay_ms=delay,
                clients=[{"name": "a", "rate_rps": 1, "uplink": {"mbps": 50}}],
            )
        )
        return np.nanmean([r["latency_ms"] for r in simulate(s)["rows"]])

    extra = full_offload([40.0]) - full_offload([])
    assert 40.0 <= extra <= 80.0 + 1e-6  # the input out, at most the result back too


def test_a_fixed_plan_policy_keeps_its_plan_and_joins_the_candidates():
    s = Scenario.from_dict(base(policies=["plan:3/int8", "plan:5"]), "t")
    assert s.include_plans == ("3/int8", "5")
    rows = simulate(s)["rows"]
    assert {r["plan"] for r in rows if r["policy"] == "plan:3/int8"} == {"3/int8"}
    assert {r["plan"] for r in rows if r["policy"] == "plan:5"} == {"5"}
    with pytest.raises(AdaptiveError, match="plan '40'"):
        simulate(Scenario.from_dict(base(policies=["plan:40"]), "t"))


def test_seed004_low_throughput_drops_the_most_frames():
    """Seed 004 Table 2's direction: configuration 2 (a tenth of the throughput) drops far more."""
    drops = {}
    for c in (1, 2, 3):
        doc = yaml.safe_load(shipped_scenarios()[f"seed004-config{c}"].read_text())
        doc["policies"] = ["plan:1,8", "plan:3,11"]  # the paper's extremes, to keep the test short
        s = Scenario.from_dict(doc, f"seed004-config{c}")
        pol = summarise(simulate(s)["rows"], scenario_doc(s))["policies"]
        drops[c] = np.mean([p["drop_rate"] for p in pol.values()])
    assert drops[2] > 0.2 and drops[2] > 5 * max(drops[1], drops[3]), drops
