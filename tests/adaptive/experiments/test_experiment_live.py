"""``adaptive experiment run --mode live``: refusals, the live: block, binning, the comparison, a real run."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import yaml

from adaptive.errors import AdaptiveError
from adaptive.experiments.live import _rows, check_live
from adaptive.experiments.report import compare
from adaptive.experiments.scenario import Scenario, shipped_scenarios
from adaptive.lab.netns import netns_available


def doc(**kw):
    d = {
        "schema": "adaptive.scenario/v1",
        "name": "t",
        "model": "mobilenet_v2",
        "accelerators": [{"name": "nano", "device": "jetson-nano"}],
        "clients": [
            {"name": "pi1", "rate_rps": 3, "uplink": {"steps": [[0, 2], [6, 30]]}},
            {"name": "pi2", "rate_rps": 3, "join_s": 4, "uplink": {"mbps": 10}},
        ],
        "duration_s": 12,
        "policies": ["coordinated", "device-only"],
    }
    d.update(kw)
    return d


def run_cli(*args, timeout=600):
    return subprocess.run(
        [sys.executable, "-m", "adaptive", "experiment", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"policies": ["clairvoyant"]}, "policy 'clairvoyant' cannot run live"),
        (
            {"accelerators": [{"name": "nano", "device": "jetson-nano", "load": {"fixed": 0.2}}]},
            "accelerators 'nano' load: live runs do not emulate background load",
        ),
    ],
)
def test_what_a_live_run_cannot_do_is_refused_in_one_line(tmp_path, change, message):
    with pytest.raises(AdaptiveError, match=message):
        check_live(Scenario.from_dict(doc(**change)))
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc(**change)))
    proc = run_cli("run", str(path), "--mode", "live", "--out", str(tmp_path / "out"), timeout=120)
    assert proc.returncode == 2 and message in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()  # nothing started


def test_the_live_block_replaces_top_level_keys_and_is_checked_at_load():
    s = Scenario.from_dict(doc(live={"duration_s": 8, "device_scales": [2, 3], "policies": ["greedy"]}))
    assert s.duration_s == 12 and s.policies == ("coordinated", "device-only")
    live = s.for_live()
    assert (live.duration_s, live.device_scales, live.policies) == (8, (2.0, 3.0), ("greedy",))
    assert live.clients == s.clients and live.live == {}
    with pytest.raises(AdaptiveError, match=r"t\.live\.published: unknown key"):
        Scenario.from_dict(doc(live={"published": {}}), "t")
    # the pi1 step at 6 s is past a live duration of 5 s: the variant is refused when it is loaded
    with pytest.raises(AdaptiveError, match=r"t \(live\)\.clients\[0\]\.uplink\.steps\[1\]"):
        Scenario.from_dict(doc(live={"duration_s": 5}), "t")
    for name in shipped_scenarios():  # every shipped one can run live, parallel sections too
        check_live(Scenario.load(name).for_live())
    live = Scenario.load("intradp-lop").for_live()
    assert live.parallel and "plan:0-5@0.5,0/none,int8" in live.policies
    from adaptive.experiments.simulate import policy_env

    # the fixed sectioned plan is among every candidate set but a NAME:layers policy's, live and in sim
    assert policy_env("greedy", live)[0].candidates.plans.has_sections
    assert not policy_env("greedy:layers", live)[0].candidates.plans.has_sections
    from adaptive.experiments.live import _LiveRun
    from agents.wiring import build_multi_policy

    run = _LiveRun(live, "t", None, 1)  # the live controllers' candidates: the same sets
    for spec, sections in (("greedy", True), ("greedy:layers", False)):
        wiring = build_multi_policy(spec.removesuffix(":layers"), run.ctl_cfg, env=run.env_for(spec))
        assert wiring.candidates.plans.has_sections == sections
    with pytest.raises(AdaptiveError, match=r"a plan with a section needs plans\.parallel: true"):
        Scenario.from_dict(doc(policies=["plan:0-5@0.5,0"]), "t")


def test_requests_are_binned_into_the_simulations_rows():
    from envs.multi_client import MultiClientEnv

    s = Scenario.from_dict(doc(dt_s=1.0))
    cands = MultiClientEnv(
        {"model_profile": "mobilenet_v2", "devices": ["raspberry-pi-4", "jetson-nano"]}
    ).candidates
    req = [  # pi1: two on time at 0 s, one late and one error at 1 s; pi2 joins at 4 s
        {"client": "pi1", "t_s": 0.1, "latency_ms": 200.0, "outcome": "ok", "plan": "23"},
        {"client": "pi1", "t_s": 0.6, "latency_ms": 300.0, "outcome": "ok", "plan": "23"},
        {"client": "pi1", "t_s": 1.2, "latency_ms": 1500.0, "outcome": "ok", "plan": "0"},
        {"client": "pi1", "t_s": 1.5, "latency_ms": 5.0, "outcome": "error", "plan": ""},
        {"client": "pi2", "t_s": 4.2, "latency_ms": 100.0, "outcome": "ok", "plan": "0"},
    ]
    rows = _rows(s, s.conditions(), "x", 0, req, cands)
    by = {(r["client"], r["time_s"]): r for r in rows}
    assert len([r for r in rows if r["client"] == "pi1"]) == 12  # every step it is present
    assert len([r for r in rows if r["client"] == "pi2"]) == 8  # from its join on
    a, b = by[("pi1", 0.0)], by[("pi1", 1.0)]
    assert (a["offered"], a["dropped"], a["latency_ms"], a["plan"], a["edge_share"]) == (
        2,
        0,
        250.0,
        "23",
        1.0,
    )
    assert (b["offered"], b["dropped"], b["plan"], b["edge_share"]) == (2, 2, "0", 0.0)
    assert math.isnan(b["latency_ms"])
    quiet = by[("pi1", 2.0)]  # nothing sent: the last plan holds
    assert (quiet["offered"], quiet["plan"]) == (0, "0")
    assert by[("pi1", 1.0)]["bandwidth_mbps"] == 2.0 and by[("pi1", 7.0)]["bandwidth_mbps"] == 30.0


def test_compare_reports_ratios_ties_and_disagreements():
    def pol(mean, p95=None, drop=0.0):
        return {"mean_ms": mean, "p95_ms": p95 or mean, "drop_rate": drop}

    sim = {"a": pol(100), "b": pol(102), "c": pol(200), "d": pol(400)}
    live = {"a": pol(105), "b": pol(101), "c": pol(450), "d": pol(390)}
    c = compare(live, sim)
    rows = {r["policy"]: r for r in c["policies"]}
    assert rows["a"]["mean_ratio"] == pytest.approx(1.05) and rows["a"]["within_10pct"]
    assert not rows["c"]["within_10pct"] and not c["within_10pct"]
    assert c["ties"] == [["a", "b"]]  # 2% apart in sim: either order live agrees
    assert c["disagreements"] == [["c", "d"]] and not c["ranking_agrees"]
    assert c["sim_order"] == ["a", "b", "c", "d"] and c["live_order"] == ["b", "a", "d", "c"]
    c = compare({"a": pol(101), "c": pol(190)}, sim)
    assert c["within_10pct"] and c["ranking_agrees"] and [r["policy"] for r in c["policies"]] == ["a", "c"]
    assert rows["a"]["segment_mape_pct"] is None  # no segments measured

    def segs(*means):
        return {**pol(float(np.mean([m for m in means if m is not None]))),
                "segments": [{"mean_ms": m} for m in means]}

    # per segment |sim - live| / live: 10/100, 30/300, and a segment live did not measure is skipped
    c = compare({"a": segs(100.0, 300.0, None)}, {"a": segs(110.0, 270.0, 50.0)})
    assert c["policies"][0]["segment_mape_pct"] == pytest.approx(10.0)
    assert c["policies"][0]["segments_compared"] == 2


def test_the_report_says_why_the_modes_differ_where_the_records_show_it():
    from adaptive.experiments.report import _differences

    def pol(mean, drop=0.0):
        return {"mean_ms": mean, "p95_ms": mean, "drop_rate": drop}

    sim = {"short": pol(12.0), "fluid": pol(2889.0, 0.51), "drops": pol(400.0, 0.0), "same": pol(500.0)}
    live = {"short": pol(13.7), "fluid": pol(2587.0, 0.50), "drops": pol(150.0, 0.76), "same": pol(510.0)}
    summary = {"scenario": {"clients": [{"deadline_ms": 3000.0}]}, "compare": compare(live, sim),
               "live": {"device_scales_declared": {"edge": 5.0}, "device_scales_calibrated": {"edge": 6.4}}}
    notes = _differences(summary)
    assert "edge ran 1.28× the time its emulation asked for" in notes[0]
    by = {n.split(":")[0]: n for n in notes[1:]}
    assert set(by) == {"short", "fluid", "drops"}  # "same" agrees within 10%: nothing to say
    assert "+1.7 ms: about what the runtime itself costs" in by["short"]
    assert "fractions of a frame" in by["fluid"] and "against 3000 ms" in by["fluid"]
    assert "dropped 76.0% of frames live and 0.0% in sim" in by["drops"]


def test_a_live_run_loses_nothing_and_agrees_with_its_simulation(tmp_path):
    """Two clients (one joins at 4 s, one link steps 2 -> 30 Mbit/s, 50 ms of delay) on real processes."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc(link_delay_ms=[50])))
    out = tmp_path / "out"
    proc = run_cli("run", str(path), "--mode", "live", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    live = summary["live"]
    assert live["lost"] == 0 and live["requests"] == live["records"] > 50
    with (out / "requests.csv").open() as fh:
        requests = list(csv.DictReader(fh))
    assert len(requests) == live["requests"]
    assert {r["client"] for r in requests} == {"pi1", "pi2"}
    assert min(float(r["t_s"]) for r in requests if r["client"] == "pi2") >= 4.0  # it joined at 4 s
    res = live["results"]  # every answer is the whole model's answer
    assert res["checked"] == sum(r["outcome"] == "ok" for r in requests) > 50
    assert res["same_top1"] == res["checked"] and res["lossless_max_rel_error"] < 1e-4
    rows = {r["policy"]: r for r in summary["compare"]["policies"]}
    assert set(rows) == {"coordinated", "device-only"}
    # device-only is the edge's emulated compute alone: live and sim must agree closely; an
    # offloading policy crosses the link (and its delay, both ways) as the model says
    assert abs(rows["device-only"]["mean_ratio"] - 1) < 0.10, rows
    assert abs(rows["coordinated"]["mean_ratio"] - 1) < 0.15, rows
    assert summary["policies"]["device-only"]["edge_share"] == 1.0
    assert (out / "sim" / "summary.json").exists() and "## Sim vs live" in (out / "report.md").read_text()
    assert "sim vs live" in proc.stdout


@pytest.mark.netns
@pytest.mark.skipif(not netns_available(), reason="needs root, iproute2 and tc")
def test_a_live_run_on_kernel_shaped_links(tmp_path):
    """--shaping netns: each edge in its own namespace behind a tbf-shaped veth pair."""
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump(doc(duration_s=10, clients=[doc()["clients"][0]])))
    out = tmp_path / "out"
    proc = run_cli("run", str(path), "--mode", "live", "--shaping", "netns", "--out", str(out))
    if proc.returncode != 0 and "Operation not permitted" in proc.stderr:
        pytest.skip("network namespaces unavailable here")
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["live"]["shaping"] == "netns" and summary["live"]["lost"] == 0
    rows = {r["policy"]: r for r in summary["compare"]["policies"]}
    assert abs(rows["device-only"]["mean_ratio"] - 1) < 0.10, rows
    assert "kernel-shaped" in (out / "report.md").read_text()
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
    assert not [n for n in left if n.startswith("adpx")]  # the namespaces are gone
