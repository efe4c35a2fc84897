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


def test_a_delayed_link_carries_frames_in_flight_together():
    """The propagation delay is pipelined: three frames sent at once arrive ~one delay later, in order."""
    import zmq

    from adaptive.runtime.links import OutLink
    from adaptive.runtime.wire import Frame, decode_frame

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    link = OutLink(ctx, f"tcp://127.0.0.1:{port}", LinkShaper(100.0, delay_ms=300))
    try:
        t0 = time.monotonic()
        for i in range(3):
            assert link.send(Frame(kind="work", request_id=f"r-{i}", client="c", reply_to="tcp://h:1",
                                   version=1, hop=1, position=0, shape=(1,), payload=b"\0\0\0\0",
                                   model="m", devices=("a", "b"), splits=(0,), codecs=("none",)))
        got = []
        pull.setsockopt(zmq.RCVTIMEO, 3000)
        for _ in range(3):
            got.append(decode_frame(pull.recv_multipart(), 1 << 20).request_id)
        took = time.monotonic() - t0
        assert got == ["r-0", "r-1", "r-2"] and 0.29 <= took < 0.6, took  # not 3 x 300 ms
    finally:
        link.close()
        pull.close(linger=0)
        ctx.term()


def test_results_come_back_one_return_delay_later_in_order():
    import zmq

    from adaptive.runtime.links import OutLink
    from adaptive.runtime.wire import Frame, decode_frame

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    link = OutLink(ctx, f"tcp://127.0.0.1:{port}", result_delay_ms=300)  # no shaper: only the way back
    try:
        t0 = time.monotonic()
        for i in range(3):
            assert link.send(Frame(kind="result", request_id=f"r-{i}", client="c", reply_to="tcp://h:1",
                                   version=1, hop=1, position=1, shape=(1,), payload=b"\0\0\0\0"))
        pull.setsockopt(zmq.RCVTIMEO, 3000)
        got = [decode_frame(pull.recv_multipart(), 1 << 20).request_id for _ in range(3)]
        took = time.monotonic() - t0
        assert got == ["r-0", "r-1", "r-2"] and 0.29 <= took < 0.6, took
    finally:
        link.close()
        pull.close(linger=0)
        ctx.term()


def test_a_busy_delayed_link_delivers_each_frame_when_its_delay_has_passed():
    """A link that always has the next frame to carry still delivers the ones in flight on time
    (they once waited until the sender was idle: a saturated uplink held every frame back)."""
    import zmq

    from adaptive.runtime.links import OutLink
    from adaptive.runtime.wire import Frame, decode_frame

    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    link = OutLink(ctx, f"tcp://127.0.0.1:{port}", LinkShaper(8.0, delay_ms=50, burst_bytes=0))
    try:
        t0 = time.monotonic()
        for i in range(30):  # 10 KB each: 10 ms on the wire at 8 Mbit/s, all queued at once
            assert link.send(Frame(kind="work", request_id=f"r-{i}", client="c", reply_to="tcp://h:1",
                                   version=1, hop=1, position=0, shape=(2500,), payload=bytes(10_000),
                                   model="m", devices=("a", "b"), splits=(0,), codecs=("none",)))
        pull.setsockopt(zmq.RCVTIMEO, 3000)
        arrived = []
        for _ in range(30):
            arrived.append((decode_frame(pull.recv_multipart(), 1 << 20).request_id, time.monotonic() - t0))
    finally:
        link.close()
        pull.close(linger=0)
        ctx.term()
    assert [r for r, _ in arrived] == [f"r-{i}" for i in range(30)]
    # frame i is through the link after (i + 1) x 10 ms and arrives 50 ms later
    for i, (_, at) in enumerate(arrived):
        assert 0.01 * (i + 1) + 0.045 <= at <= 0.01 * (i + 1) + 0.15, (i, [round(a, 3) for _, a in arrived])


def test_an_idle_link_lends_no_burst_by_default():
    """Every byte takes its time at the rate, as the latency model charges it."""
    link = LinkShaper(0.4)
    time.sleep(0.2)  # idle: a token bucket would have filled
    t0 = time.monotonic()
    took = link.acquire(4096, delay=False)
    assert time.monotonic() - t0 >= 0.08 and took == pytest.approx(4096 * 8 / 0.4e6)  # 82 ms
