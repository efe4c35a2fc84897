"""Resource sampling behind a small interface, so tests need neither a Pi nor a Jetson.

:class:`PsutilSampler` reads CPU, memory, swap and network counters with psutil, the hottest
thermal zone (``/sys/class/thermal``, as on a Pi or Jetson) and board power from INA3221
sensors (``/sys/class/hwmon``, as on Jetson boards) when the platform exposes them.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from typing import Protocol

import psutil

__all__ = ["PsutilSampler", "ResourceSample", "Sampler", "passive_rates"]


@dataclass(frozen=True)
class ResourceSample:
    """Raw resource readings at one instant.

    Attributes:
        ts: Unix time, s.
        cpu_percent: CPU utilisation since the previous sample, %.
        per_core: Per-core utilisation, %.
        load1: One-minute load average.
        total_mb: Physical memory, MB (10^6 bytes).
        available_mb: Available memory, MB.
        mem_percent: Memory in use, %.
        swap_total_mb: Swap size, MB.
        swap_used_mb: Swap in use, MB.
        net_tx_bytes: Bytes sent on all interfaces since boot.
        net_rx_bytes: Bytes received since boot.
        temp_c: Hottest thermal zone, °C, or None.
        power_w: Board power, W, or None.
    """

    ts: float
    cpu_percent: float
    per_core: tuple[float, ...]
    load1: float
    total_mb: float
    available_mb: float
    mem_percent: float
    swap_total_mb: float
    swap_used_mb: float
    net_tx_bytes: int
    net_rx_bytes: int
    temp_c: float | None = None
    power_w: float | None = None


class Sampler(Protocol):
    """Anything that returns a :class:`ResourceSample`."""

    def sample(self) -> ResourceSample:
        """Read the resources now."""
        ...


class PsutilSampler:
    """Reads resources with psutil and sysfs.

    Args:
        interfaces: Network interfaces to count (default: all except loopback).
        sysfs: Root of sysfs (tests point it at a fake tree).
        exclude_pid: A process whose CPU use is left out of ``cpu_percent`` (the node runtime
            hosting this agent), so it reports background load, as the latency model expects.
    """

    def __init__(self, interfaces: list[str] | None = None, sysfs: str = "/sys",
                 exclude_pid: int | None = None) -> None:
        self.interfaces = interfaces
        self.sysfs = sysfs
        self._primed = False
        self._excluded = psutil.Process(exclude_pid) if exclude_pid is not None else None

    def sample(self) -> ResourceSample:
        """Read everything; CPU utilisation covers the time since the previous call."""
        if not self._primed:  # psutil's first cpu_percent call has no reference point
            psutil.cpu_percent(interval=None)
            psutil.cpu_percent(interval=None, percpu=True)
            if self._excluded is not None:
                self._excluded.cpu_percent(interval=None)
            time.sleep(0.05)
            self._primed = True
        cpu = float(psutil.cpu_percent(interval=None))
        if self._excluded is not None:  # its share of the whole machine, over the same interval
            try:
                own = self._excluded.cpu_percent(interval=None) / (psutil.cpu_count() or 1)
            except psutil.Error:
                own = 0.0
            cpu = min(max(cpu - own, 0.0), 100.0)
        vm = psutil.virtual_memory()
        sw = psutil.swap_memory()
        counters = psutil.net_io_counters(pernic=True)
        names = self.interfaces or [n for n in counters if n != "lo"]
        tx = sum(counters[n].bytes_sent for n in names if n in counters)
        rx = sum(counters[n].bytes_recv for n in names if n in counters)
        return ResourceSample(
            ts=time.time(),
            cpu_percent=round(cpu, 2),
            per_core=tuple(float(x) for x in psutil.cpu_percent(interval=None, percpu=True)),
            load1=float(os.getloadavg()[0]),
            total_mb=vm.total / 1e6,
            available_mb=vm.available / 1e6,
            mem_percent=float(vm.percent),
            swap_total_mb=sw.total / 1e6,
            swap_used_mb=sw.used / 1e6,
            net_tx_bytes=int(tx),
            net_rx_bytes=int(rx),
            temp_c=self._temperature(),
            power_w=self._power(),
        )

    def _temperature(self) -> float | None:
        temps = []
        for path in glob.glob(os.path.join(self.sysfs, "class/thermal/thermal_zone*/temp")):
            try:
                with open(path, encoding="ascii") as fh:
                    temps.append(int(fh.read().strip()) / 1000.0)
            except (OSError, ValueError):
                continue
        return max(temps) if temps else None

    def _power(self) -> float | None:
        """Sum of voltage × current over INA3221 channels (Jetson), W."""
        total, found = 0.0, False
        for hwmon in glob.glob(os.path.join(self.sysfs, "class/hwmon/hwmon*")):
            try:
                with open(os.path.join(hwmon, "name"), encoding="ascii") as fh:
                    if "ina3221" not in fh.read():
                        continue
            except OSError:
                continue
            for volt in glob.glob(os.path.join(hwmon, "in[0-9]_input")):
                channel = volt[-7]
                curr = os.path.join(hwmon, f"curr{channel}_input")
                try:
                    with open(volt, encoding="ascii") as fv, open(curr, encoding="ascii") as fc:
                        total += int(fv.read()) * int(fc.read()) / 1e6  # mV × mA -> W
                        found = True
                except (OSError, ValueError):
                    continue
        return round(total, 3) if found else None


_SS_RATE = re.compile(r"delivery_rate (\d+(?:\.\d+)?)([KMG]?)bps")
_SS_RTT = re.compile(r"\brtt:(\d+(?:\.\d+)?)/")
_UNIT = {"": 1e-6, "K": 1e-3, "M": 1.0, "G": 1e3}


def passive_rates(hosts: dict[str, str], timeout_s: float = 1.0) -> dict[str, tuple[float, float | None]]:
    """Kernel-observed delivery rate and RTT of established TCP connections to each peer.

    Parses ``ss -tin`` (iproute2): for every peer id → IP, the highest ``delivery_rate`` among
    the connections to it, Mbit/s, and the matching RTT, ms. Traffic the runtime already sends
    thus yields a bandwidth estimate at no probing cost; it is a lower bound when the
    application, not the link, limits the rate. Peers without connections are left out.
    """
    if not hosts or shutil.which("ss") is None:
        return {}
    out: dict[str, tuple[float, float | None]] = {}
    for peer, ip in hosts.items():
        try:
            proc = subprocess.run(["ss", "-tinH", "state", "established", "dst", ip],
                                  capture_output=True, text=True, timeout=timeout_s, check=False)
        except (OSError, subprocess.TimeoutExpired):
            continue
        best: tuple[float, float | None] | None = None
        for line in proc.stdout.splitlines():
            rate = _SS_RATE.search(line)
            if rate is None:
                continue
            mbps = float(rate.group(1)) * _UNIT[rate.group(2)]
            rtt = _SS_RTT.search(line)
            if best is None or mbps > best[0]:
                best = (mbps, float(rtt.group(1)) if rtt else None)
        if best is not None:
            out[peer] = best
    return out
