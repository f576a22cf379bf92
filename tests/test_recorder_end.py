"""Where a live recording ends, and what it keeps when its video encoder falls behind.

Real aiortc peers over loopback (the client of tests/test_capture_core.py: city.mpg
frames and a tone, paced in real time), real encoders and files. An encoder that
"falls behind" is made deterministic by holding its thread (a job on the recorder's
video lane that waits on an event), not by loading the machine; assertions are on
frame counts and durations within tolerances, never on speed.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import av
import pytest

from server.core import errors
from server.live.captures import Capture
from server.live.recorder import MAX_FPS, VIDEO_QUEUE_MAX
from tests import test_capture_core as core
from tests.test_capture_core import Client, connect, until

env, clients, loopback_only = core.env, core.clients, core.loopback_only  # fixtures

SMALL = [(320, 180)]


def stream_ms(path: Path) -> dict[str, float]:
    """Duration of each stream in the file, by type ("video", "audio"), in ms."""
    with av.open(str(path)) as container:
        return {
            s.type: float(s.duration * s.time_base * 1000) for s in container.streams if s.duration
        }


def frame_times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        return [float(f.time) for f in container.decode(video=0)]


Hold = Callable[[Capture], tuple[threading.Event, "asyncio.Future[Any]"]]


@pytest.fixture
def hold_video_encoder() -> Iterator[Hold]:
    """`hold(capture)` keeps the capture's video encoder thread busy until the returned
    event is set; every hold is released at teardown (before the manager closes), also
    when the test failed while holding."""
    releases: list[threading.Event] = []

    def hold(capture: Capture) -> tuple[threading.Event, asyncio.Future[Any]]:
        assert capture.recorder is not None
        release = threading.Event()
        releases.append(release)
        lane = capture.recorder._lanes["video"]
        return release, asyncio.ensure_future(lane.run(release.wait))

    yield hold
    for release in releases:
        release.set()


@pytest.mark.parametrize("fps", [5, 60])
async def test_every_track_ends_at_the_stop_at_any_frame_rate(
    env: Any, clients: list[Client], fps: int
) -> None:
    manager, calls, _ = await env()
    client, capture = await connect(manager, "ana", sizes=SMALL, fps=fps)
    clients.append(client)
    stop_at = await client.media_time(3.0 + 0.5 / fps)  # half-way between two frames
    sent_before_stop = client.video.sent
    await manager.stop("ana", capture.id)  # the client is still sending
    assert client.video.first_sent_at is not None
    sent_ms = (stop_at - client.video.first_sent_at) * 1000
    result = calls.finished[0][1]
    durations = stream_ms(result.path)
    print(f"\n{fps} fps: sent {sent_before_stop} in {sent_ms:.0f} ms; {result}; {durations}")
    assert abs(result.duration_ms - sent_ms) <= 300, (result, sent_ms)
    assert abs(durations["video"] - durations["audio"]) <= 100, durations
    frames = frame_times(result.path)
    assert frames[-1] * 1000 < result.duration_ms
    # every frame sent before the stop is stored, skipped (above MAX_FPS) or counted as
    # dropped; none sent after it is stored (the client went on sending)
    accounted = result.video_frames + result.video_skipped + result.video_dropped
    # at 5 fps the last frame before the stop leaves aiortc's jitter buffer only when the
    # first one after it arrives, 200 ms later: it is kept all the same
    slack = 0 if fps <= 30 else 1
    assert sent_before_stop - slack <= accounted <= sent_before_stop + 1, result
    stored_fps = min(fps, MAX_FPS)
    assert abs(result.video_frames + result.video_dropped - stored_fps * sent_ms / 1000) <= 4


async def test_a_video_encoder_that_falls_behind_drops_its_oldest_frames(
    env: Any, clients: list[Client], hold_video_encoder: Hold
) -> None:
    manager, calls, _ = await env()
    client, capture = await connect(manager, "bea", sizes=SMALL)
    clients.append(client)
    assert client.audio is not None
    await client.media_time(1.0)
    release, held = hold_video_encoder(capture)
    await client.media_time(2.6)  # about 40 frames arrive while the encoder is held
    assert capture.recorder is not None and capture.recorder.behind
    stop_at = time.monotonic()
    sent_before_stop, audio_before_stop = client.video.sent, client.audio.sent
    stopping = asyncio.ensure_future(manager.stop("bea", capture.id))
    await asyncio.sleep(0)
    release.set()  # the backlog (at most VIDEO_QUEUE_MAX frames) is encoded before the end
    await asyncio.gather(held, stopping)
    result = calls.finished[0][1]
    assert client.video.first_sent_at is not None
    sent_ms = (stop_at - client.video.first_sent_at) * 1000
    durations = stream_ms(result.path)
    print(f"\nsent {sent_before_stop} video, {audio_before_stop} audio; {result}; {durations}")
    assert result.video_dropped >= 40 - VIDEO_QUEUE_MAX - 10, result
    # (+1: a sender starved of CPU stamps a frame it sends just after the stop before it)
    assert (
        sent_before_stop - 3 <= result.video_frames + result.video_dropped <= sent_before_stop + 1
    )
    # audio has its own encoder: nothing of it waited for the held video encoder
    assert audio_before_stop - 5 <= result.audio_frames <= audio_before_stop + 1, result
    assert abs(result.duration_ms - sent_ms) <= 300, (result, sent_ms)
    assert abs(durations["video"] - durations["audio"]) <= 100, durations
    # the oldest waiting frames went: one gap in the middle, the end is there
    times = frame_times(result.path)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) >= 0.5 * result.video_dropped / 25, gaps
    assert times[-1] * 1000 >= result.duration_ms - 200, times[-5:]


async def test_no_new_capture_while_an_encoder_is_behind(
    env: Any, clients: list[Client], hold_video_encoder: Hold
) -> None:
    manager, _, _ = await env(max_concurrent=3)
    client, capture = await connect(manager, "cy", sizes=SMALL)
    second, third = Client(sizes=SMALL), Client(sizes=SMALL)
    clients.extend([client, second, third])
    await client.media_time(0.5)
    release, held = hold_video_encoder(capture)
    assert capture.recorder is not None
    recorder = capture.recorder
    await until(lambda: recorder.behind, limit_s=5)  # a few frames wait, none dropped yet
    with pytest.raises(errors.RateLimited, match="behind") as info:
        await manager.offer("dee", await second.offer_sdp(), "offer", {})
    assert info.value.status == 429 and manager.active_count() == 1
    release.set()
    await held
    await until(lambda: not recorder.behind, limit_s=5)
    await manager.offer("dee", await third.offer_sdp(), "offer", {})
    assert manager.active_count() == 2
