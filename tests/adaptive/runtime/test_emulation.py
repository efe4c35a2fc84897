"""Device and link emulation: stage times from a profile, and the uplink's control messages."""

from __future__ import annotations

import threading
import time

import pytest

from adaptive.runtime.emulation import ComputeEmulation, UplinkEmulation
from adaptive.runtime.shaping import LinkShaper


def test_a_stage_takes_its_profiled_time_corrected_batched_and_slowed():
    emu = ComputeEmulation((1.0, 2.0, 3.0, 4.0), correction=(0.1, 0.2), batch_per_extra_item=0.5,
                           slowdown=2.0)
    # blocks [1, 3): 2 + 3 - (0.1 * 2 + 0.2) = 4.6 ms; a batch of 3 costs 1 + 0.5 * 2 = 2x; slowed 2x
    assert emu.target_s(1, 3, 3, 0.0) == pytest.approx(4.6e-3 * 2 * 2)
    assert emu.target_s(2, 2, 1, 0.001) == pytest.approx(0.002)  # an empty stage: measured time, slowed
    plain = ComputeEmulation(None, slowdown=0.5)  # a slowdown below 1 never speeds a stage up
    assert plain.target_s(0, 4, 1, 0.003) == 0.003
    t0 = time.perf_counter()
    assert ComputeEmulation((20.0,)).pad(0, 1, 1, 0.001) == pytest.approx(0.020)
    assert time.perf_counter() - t0 >= 0.018  # it slept the difference


def test_uplink_control_messages_pin_a_rate_or_restart_the_replay():
    shaper = LinkShaper(10.0)
    emu = UplinkEmulation(shaper, trace_mbps=(5.0, 50.0), dt_s=0.05)
    assert emu.handle(b'{"v": 1, "uplink_mbps": 12.5}') and emu.pinned and shaper.rate_mbps == 12.5
    stop = threading.Event()
    replay = threading.Thread(target=emu.replay, args=(stop,), daemon=True)
    replay.start()
    time.sleep(0.15)
    assert shaper.rate_mbps == 12.5  # pinned: the replay waits
    assert emu.handle(b'{"v": 1, "trace_start": %f}' % (time.time() + 10))
    time.sleep(0.1)
    assert shaper.rate_mbps == 5.0  # a start to come holds the trace's first rate
    stop.set()
    replay.join(1.0)
    for bad in (b"{}", b'{"v": 2, "uplink_mbps": 3}', b'{"v": 1, "uplink_mbps": 0}', b"\xff" * 300,
                b'{"v": 1, "uplink_mbps": true}', b'{"v": 1, "uplink_mbps": NaN}'):
        assert not emu.handle(bad), bad
    assert not UplinkEmulation(None).handle(b'{"v": 1, "uplink_mbps": 3}')  # no emulated uplink
    assert UplinkEmulation(None).handle(b'{"v": 1, "trace_start": 5}')
