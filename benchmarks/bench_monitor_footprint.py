"""CPU and memory footprint of the monitor agent at 1 Hz (targets: <= 1% of one core, <= 40 MB RSS).

Runs `python -m monitor` as its own process against a broker (Mosquitto if installed, else the
embedded one) with one peer probed every 10 s (its own probe sink, so probing costs are included),
and counts the telemetry a subscriber receives. CPU is (user + system time) / wall time of the
agent process after a 5 s warm-up.

Usage: python benchmarks/bench_monitor_footprint.py [--seconds 60] [--json]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from adaptive.control.telemetry import Collector
from adaptive.lab.ports import free_port
from monitor.transport import parse_broker_url


def start_broker() -> tuple[str, object]:
    port = free_port()
    if shutil.which("mosquitto"):
        conf = Path(tempfile.mkdtemp()) / "m.conf"
        conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
        proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        return f"mqtt://127.0.0.1:{port}", proc
    from adaptive.lab.broker import EmbeddedBroker

    return f"mqtt://127.0.0.1:{port}", EmbeddedBroker("127.0.0.1", port).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    url, broker = start_broker()
    probe = free_port()
    agent = subprocess.Popen([sys.executable, "-m", "monitor", "--node", "fp", "--broker", url,
                              "--interval", "1", "--probe-port", str(probe),
                              "--peers", f"self=127.0.0.1:{probe}", "--probe-interval", "10"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc = psutil.Process(agent.pid)
    with Collector(parse_broker_url(url), "default") as collector:
        time.sleep(5.0)
        t0, c0 = time.monotonic(), proc.cpu_times()
        n0 = collector.nodes().get("fp")
        n0 = n0.telemetry_count if n0 else 0
        peak = 0
        while time.monotonic() - t0 < args.seconds:
            time.sleep(1.0)
            peak = max(peak, proc.memory_info().rss)
        t1, c1 = time.monotonic(), proc.cpu_times()
        view = collector.nodes()["fp"]
        rss, uss = proc.memory_info().rss, proc.memory_full_info().uss
        messages = view.telemetry_count - n0
        link = view.telemetry.links.get("self")
    agent.terminate()
    agent.wait(timeout=10)
    if isinstance(broker, subprocess.Popen):
        broker.terminate()
    else:
        broker.close()
    cpu = (c1.user + c1.system - c0.user - c0.system) / (t1 - t0) * 100
    out = {"broker": "mosquitto" if isinstance(broker, subprocess.Popen) else "embedded",
           "seconds": round(t1 - t0, 1), "cpu_percent_of_one_core": round(cpu, 3),
           "rss_mb": round(rss / 1e6, 1), "peak_rss_mb": round(peak / 1e6, 1), "uss_mb": round(uss / 1e6, 1),
           "telemetry_messages": messages, "probe_estimate_mbps": link.bandwidth_mbps if link else None}
    if args.json:
        print(json.dumps(out, indent=1))
        return
    print(f"agent over {out['seconds']} s at 1 Hz ({out['broker']} broker, 1 peer probed every 10 s):")
    print(f"  CPU {out['cpu_percent_of_one_core']:.2f}% of one core (target <= 1%)")
    print(f"  RSS {out['rss_mb']:.1f} MB, peak {out['peak_rss_mb']:.1f} MB, USS {out['uss_mb']:.1f} MB "
          f"(target <= 40 MB)")
    print(f"  {messages} telemetry messages received")


if __name__ == "__main__":
    main()
