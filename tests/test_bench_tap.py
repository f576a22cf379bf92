"""bench/pubsub_tap.py: the relay that counts the pub/sub messages Redis sends a process.

The scale-out benchmark's "Redis messages per post" rests on it, so it is tested
against a real Redis: every message published to a channel is counted once per
subscriber connection behind the tap, whatever the chunking of the byte stream.
"""

from __future__ import annotations

import time

import pytest
import redis

from bench.pubsub_tap import FrameCounter, PubSubTap


def _frame(channel: bytes, data: bytes) -> bytes:
    return b"*3\r\n$7\r\nmessage\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (
        len(channel),
        channel,
        len(data),
        data,
    )


@pytest.mark.parametrize("step", [1, 3, 7, 50, 10_000])
def test_counter_counts_each_frame_once_however_the_stream_is_cut(step: int) -> None:
    stream = (
        _frame(b"st1:ev:{a}", b'{"type":"story.new","caption":"x\\r\\ny"}') * 3
        + b"*3\r\n$9\r\nsubscribe\r\n$10\r\nst1:ev:{b}\r\n:1\r\n"
        + _frame(b"st1:ev:{b}", b"{}")
        + b"*4\r\n$8\r\npmessage\r\n$1\r\n*\r\n$1\r\nc\r\n$2\r\n{}\r\n"
    )
    counter = FrameCounter()
    for start in range(0, len(stream), step):
        counter.feed(stream[start : start + step])
    assert counter.messages == {"st1:ev:{a}": 3, "st1:ev:{b}": 1}
    assert counter.pattern_messages == 1


def test_tap_counts_what_redis_delivers_per_subscriber(redis_url: str) -> None:
    assert redis_url.startswith(("unix://", "redis://")), "the tap relays unix:// and redis://"
    tap = PubSubTap(redis_url)
    url = tap.start()
    direct = redis.Redis.from_url(redis_url)
    subscribers = [redis.Redis.from_url(url) for _ in range(2)]
    pubsubs = [s.pubsub() for s in subscribers]
    try:
        for ps in pubsubs:
            ps.subscribe("tap-test:a", "tap-test:b")
            for _ in range(2):
                assert ps.get_message(timeout=5)["type"] == "subscribe"
        receivers = [direct.publish("tap-test:a", b"x" * n) for n in (1, 70_000, 5)]
        receivers.append(direct.publish("tap-test:b", b"y"))
        assert receivers == [2, 2, 2, 2]
        got = [0, 0]
        deadline = time.monotonic() + 5
        while sum(got) < 8 and time.monotonic() < deadline:
            for i, ps in enumerate(pubsubs):
                msg = ps.get_message(timeout=0.1)
                if msg and msg["type"] == "message":
                    got[i] += 1
        assert got == [4, 4]
        assert tap.messages() == {"tap-test:a": 6, "tap-test:b": 2}
        assert tap.pattern_messages() == 0
    finally:
        for ps in pubsubs:
            ps.close()
        for s in [*subscribers, direct]:
            s.close()
        tap.stop()
