"""Prometheus endpoints of node, controller and client, scraped during a live run."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from adaptive.control.controller import Controller, ControllerConfig
from adaptive.control.metrics import Metrics
from adaptive.errors import AdaptiveError
from adaptive.lab.broker import EmbeddedBroker
from adaptive.lab.ports import free_port
from adaptive.runtime.client import InferenceClient
from adaptive.runtime.node import NodeConfig, NodeRuntime, attach_monitor
from agents.wiring import build_policy
from monitor.transport import parse_broker_url

pytestmark = pytest.mark.integration
MODEL, CLUSTER = "resnet20_cifar", "metrics"
CHAIN = [("pi", "raspberry-pi-4"), ("jetson", "jetson-nano")]
NODE_SERIES = ["adaptive_node_frames_total", "adaptive_node_stage_seconds", "adaptive_node_request_seconds",
               "adaptive_node_queue_wait_seconds", "adaptive_node_batch_size", "adaptive_node_queue_depth",
               "adaptive_node_plan_version", "adaptive_node_plan_switches_total",
               "adaptive_node_plans_rejected_total", "adaptive_node_peers_online",
               "adaptive_node_uplink_bytes_per_second", "adaptive_node_estimate_age_seconds"]
CONTROLLER_SERIES = ["adaptive_controller_plan_switches_total", "adaptive_controller_plan_version",
                     "adaptive_controller_predicted_latency_seconds", "adaptive_controller_decisions_total",
                     "adaptive_controller_bandwidth_bytes_per_second",
                     "adaptive_controller_bandwidth_age_seconds",
                     "adaptive_controller_node_up", "adaptive_controller_calibration_scale",
                     "adaptive_controller_broker_connected"]
CLIENT_SERIES = ["adaptive_client_request_seconds", "adaptive_client_requests_total",
                 "adaptive_client_retries_total"]


def scrape(port):
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples.setdefault(s.name, []).append((s.labels, s.value))
    return samples


def names(samples):
    """Series names as documented: histograms by their base name, counters with ``_total``."""
    out = set(samples)
    out |= {n.rsplit("_", 1)[0] for n in samples if n.endswith(("_bucket", "_count", "_sum"))}
    return out


def test_metrics_endpoints_expose_the_documented_series_during_a_run():
    broker = EmbeddedBroker(port=0).start()
    url = parse_broker_url(broker.url)
    metrics = {n: Metrics() for n in ("pi", "jetson", "controller", "client")}
    for m in metrics.values():
        m.serve(0)
    nodes = [NodeRuntime(NodeConfig(node=n, model=MODEL, cluster=CLUSTER, device=d,
                                    uplink_mbps=100 if n == "pi" else None), url,
                         metrics=metrics[n].node(n)).start() for n, d in CHAIN]
    port = free_port()
    agents = [attach_monitor(nodes[0], {"jetson": ("127.0.0.1", port)}, probe_interval_s=0.5,
                             interval_s=0.25),
              attach_monitor(nodes[1], {}, probe_port=port, interval_s=0.25)]
    config = ControllerConfig.from_dict({"model_profile": MODEL, "cluster": CLUSTER, "interval_s": 0.25,
                                         "chain": [{"node": n, "device": d} for n, d in CHAIN]})
    policy, candidates, spec, name, on_model = build_policy("greedy", config)
    ctl = Controller(config, url, policy, candidates=candidates, obs_spec=spec, policy_name=name,
                     on_model=on_model, metrics=metrics["controller"].controller())
    try:
        time.sleep(1.5)  # telemetry first
        ctl.start()
        with InferenceClient("m", url, CLUSTER, (1, 3, 32, 32), timeout_s=15,
                             on_record=metrics["client"].client()) as client:
            records = client.run(3.0, rate_hz=10)
            scraped = {n: scrape(m.port) for n, m in metrics.items()}
    finally:
        ctl.close()
        for a in agents:
            a.close()
        for n in nodes:
            n.close()
        for m in metrics.values():
            m.close()
        broker.close()
    assert records and all(r.outcome == "ok" for r in records)
    for node in ("pi", "jetson"):  # per-plan series appear once a plan is used; the uplink where emulated
        optional = {"adaptive_node_request_seconds", "adaptive_node_stage_seconds"}
        optional |= {"adaptive_node_uplink_bytes_per_second"} if node == "jetson" else set()
        missing = set(NODE_SERIES) - names(scraped[node]) - optional
        assert not missing, (node, missing)
    assert "adaptive_node_request_seconds" in names(scraped["pi"]) | names(scraped["jetson"])
    assert not set(CONTROLLER_SERIES) - names(scraped["controller"])
    assert not set(CLIENT_SERIES) - names(scraped["client"])
    # the values say what happened
    processed = sum(v for labels, v in scraped["pi"]["adaptive_node_frames_total"] +
                    scraped["jetson"]["adaptive_node_frames_total"] if labels["outcome"] == "processed")
    assert processed >= len(records)
    ok = [v for labels, v in scraped["client"]["adaptive_client_requests_total"] if labels["outcome"] == "ok"]
    assert ok == [len(records)]
    finished = sum(v for _, v in scraped["pi"].get("adaptive_node_request_seconds_count", [])
                   + scraped["jetson"].get("adaptive_node_request_seconds_count", []))
    assert finished == len(records)  # the last working node of each request saw it finish
    assert {lab["node"]: v for lab, v in scraped["controller"]["adaptive_controller_node_up"]} == \
        {"pi": 1.0, "jetson": 1.0}
    (bw,) = scraped["controller"]["adaptive_controller_bandwidth_bytes_per_second"]
    assert bw[0]["link"] == "pi->jetson" and 20e6 / 8 < bw[1] < 200e6 / 8  # the emulated 100 Mbit/s
    assert scraped["controller"]["adaptive_controller_plan_switches_total"][0][1] >= 1
    assert scraped["pi"]["adaptive_node_uplink_bytes_per_second"][0][1] == 100e6 / 8  # base units


def test_every_series_is_documented():
    doc = (Path(__file__).parents[3] / "docs" / "live.md").read_text()
    for series in NODE_SERIES + CONTROLLER_SERIES + CLIENT_SERIES:
        assert f"`{series}`" in doc, series


def test_a_busy_metrics_port_is_one_clear_error():
    m = Metrics()
    m.serve(0)
    try:
        with pytest.raises(AdaptiveError, match=f"cannot serve metrics on 127.0.0.1:{m.port}"):
            Metrics().serve(m.port)
    finally:
        m.close()


def test_the_grafana_dashboard_uses_only_documented_series():
    import json
    import re

    doc = json.loads((Path(__file__).parents[3] / "docs" / "deploy" / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    names = {name for e in exprs for name in re.findall(r"adaptive_\w+", e)}
    used = {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}
    known = set(NODE_SERIES + CONTROLLER_SERIES + CLIENT_SERIES)
    assert used and used <= known, used - known
    assert {"adaptive_node_request_seconds", "adaptive_node_queue_depth", "adaptive_controller_node_up",
            "adaptive_controller_bandwidth_age_seconds"} <= used
