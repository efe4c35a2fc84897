"""Accuracy of the monitor's bandwidth probe and of `adaptive profile link` on a shaped link.

A network namespace joined by a veth pair, both directions shaped by tbf (needs root). For each
rate, the agent's own probe procedure (ping, then a transfer sized by its capacity-share cap) runs
until it has an estimate (bootstrap) and then 8 times, each reporting the median of the last
3, and the link profiler fits Q0 over 20 sizes. Errors are against
the tbf rate, which counts Ethernet frames: TCP goodput is at most 1448/1514 = 95.6% of it.

Usage: sudo python benchmarks/bench_probe_accuracy.py [--rates 5,20,50,100,400] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from adaptive.lab.netns import ShapedLink, netns_available
from adaptive.nn.linkprofile import default_sizes, measure_link
from monitor.agent import AgentConfig, MonitorAgent
from monitor.probe import ProbeClient, ProbeError
from monitor.transport import BrokerAddress

GOODPUT = 1448 / 1514


def wait_for_sink(host: str, port: int, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with ProbeClient(host, port, timeout_s=1.0) as client:
                client.ping()
                return
        except ProbeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="5,20,50,100,400")
    parser.add_argument("--probes", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if not netns_available():
        sys.exit("needs root, iproute2 and tc")
    rates = [float(r) for r in args.rates.split(",")]
    rows = []
    with ShapedLink("adpbench", rates[0]) as link:
        sink = link.popen([sys.executable, "-m", "adaptive", "profile", "link-server",
                           "--bind", link.peer_ip, "--port", "7399", "--allow", link.host_ip],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_for_sink(link.peer_ip, 7399)
            for rate in rates:
                link.set_rate(rate)
                agent = MonitorAgent(AgentConfig(node="bench", peers={"sink": (link.peer_ip, 7399)},
                                                 probe_port=None, probe_interval_s=10.0),
                                     BrokerAddress("127.0.0.1", 1))  # never connected: probes only
                warmup = 0
                while agent._links["sink"].bandwidth_mbps is None and warmup < 10:
                    agent._probe("sink", link.peer_ip, 7399)  # bootstrap: sizes the later probes
                    warmup += 1
                estimates = []
                for _ in range(args.probes):
                    agent._probe("sink", link.peer_ip, 7399)
                    estimates.append(agent._links["sink"].bandwidth_mbps)
                fit = measure_link(link.peer_ip, 7399, default_sizes(20, 1500, 2_000_000), repeats=3)
                med = statistics.median(estimates)
                rows.append({
                    "tbf_mbps": rate, "probe_bytes": agent.probe_size("sink"), "bootstrap_probes": warmup,
                    "probe_median_mbps": med, "probe_min_mbps": min(estimates),
                    "probe_max_mbps": max(estimates),
                    "probe_error_pct": (med / rate - 1) * 100,
                    "probe_error_vs_goodput_pct": (med / (rate * GOODPUT) - 1) * 100,
                    "profile_link_mbps": fit.effective_mbps,
                    "profile_link_error_pct": (fit.effective_mbps / rate - 1) * 100,
                    "profile_link_fit_mape_pct": fit.mape_pct,
                    "rtt_ms": agent._links["sink"].rtt_ms,
                })
        finally:
            sink.terminate()
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    print(f"{'tbf Mbit/s':>10}{'probe B':>9}{'probe median':>14}{'min..max':>16}{'err':>8}"
          f"{'err vs goodput':>16}{'profile link':>14}{'err':>8}{'fit MAPE':>10}")
    for r in rows:
        print(f"{r['tbf_mbps']:>10.0f}{r['probe_bytes']:>9}{r['probe_median_mbps']:>14.2f}"
              f"{r['probe_min_mbps']:>8.1f}..{r['probe_max_mbps']:<6.1f}{r['probe_error_pct']:>7.1f}%"
              f"{r['probe_error_vs_goodput_pct']:>15.1f}%{r['profile_link_mbps']:>14.2f}"
              f"{r['profile_link_error_pct']:>7.1f}%{r['profile_link_fit_mape_pct']:>9.1f}%")


if __name__ == "__main__":
    main()
