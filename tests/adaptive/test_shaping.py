"""The emulated link: rate, burst, delay, FIFO order across threads, live rate changes."""

from __future__ import annotations

import threading
import time

import pytest

from adaptive.runtime.shaping import LinkShaper


def test_rate_and_delay():
    link = LinkShaper(1.0, delay_ms=20, burst_bytes=0)  # 1 Mbit/s: 12,500 bytes take 100 ms
    t0 = time.monotonic()
    link.acquire(12_500)
    assert 0.115 <= time.monotonic() - t0 <= 0.2


def test_back_to_back_messages_queue_fifo_across_threads():
    link = LinkShaper(8.0, burst_bytes=0)  # 8 Mbit/s: 10,000 bytes take 10 ms
    done = []

    def send(i):
        link.acquire(10_000)
        done.append((i, time.monotonic()))

    t0 = time.monotonic()
    threads = [threading.Thread(target=send, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert time.monotonic() - t0 >= 0.048  # 5 x 10 ms, serialised like one link
    times = sorted(t for _, t in done)
    assert times[-1] - times[0] >= 0.035


def test_rate_change_and_validation():
    link = LinkShaper(100.0, burst_bytes=0)
    link.set_rate(1.0)
    assert link.rate_mbps == 1.0
    t0 = time.monotonic()
    link.acquire(6_250)  # 50 ms at 1 Mbit/s
    assert time.monotonic() - t0 >= 0.045
    with pytest.raises(ValueError, match="> 0"):
        link.set_rate(0)


def test_a_rate_change_acts_on_the_bytes_already_waiting():
    link = LinkShaper(0.1, burst_bytes=0)  # 0.1 Mbit/s: 25,000 bytes would take 2 s
    took = []
    sender = threading.Thread(target=lambda: took.append(link.acquire(25_000)))
    t0 = time.monotonic()
    sender.start()
    time.sleep(0.2)  # 2,500 bytes through
    assert link.backlog_bits() == pytest.approx(180_000, rel=0.1)
    link.set_rate(10.0)  # the other 22,500 bytes take 18 ms
    sender.join(timeout=5)
    assert 0.2 <= time.monotonic() - t0 <= 0.4
    assert took == [pytest.approx(0.02)]  # the wire time at the rate it finished at
    assert link.backlog_bits() == 0
