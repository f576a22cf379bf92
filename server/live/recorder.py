"""Record the tracks of one WebRTC connection into a 9:16 H.264/AAC MP4 story segment.

`StoryRecorder` reads decoded frames from aiortc `RemoteStreamTrack`s and writes
`<name>.mp4` (H.264 High 720x1280 yuv420p + AAC-LC 48 kHz stereo when there is
audio, moov before mdat, no edit list) plus a poster `<name>.jpg` (720x1280).

Design (from the team's live-capture measurements on a 2-core machine, and
bench/capture.py):

* every output stream is created in `start()`, before the first mux: adding one
  later crashes libavformat (SIGFPE);
* one consumer task per track takes frames from aiortc as soon as they are decoded
  and stamps them; each track then has its own encoder thread and bounded queue
  (`server/live/lanes.py`): audio is never serialized behind video, and a video encoder
  that falls behind drops its oldest waiting frames (counted) instead of letting
  aiortc's unbounded queue grow; nothing is encoded on the event loop;
* timestamps come from the sender's RTP clock, rebased: t=0 is when the first frame
  to arrive (any track) was sent, as far as the receiver can tell; a track's frames
  keep their RTP spacing, shifted to when its first frame was sent (its arrival less
  what aiortc's jitter buffer held it back: `server/live/timeline.py`); audio gaps are
  filled with silence;
* video is stored at most at MAX_FPS: frames closer than MIN_FRAME_GAP_S to the
  previous stored one are skipped (counted), so a 60 fps sender costs what 30 does;
* stop has a timestamp: `stop()` takes "now" on the timeline (or the cap) as the
  end, keeps reading until every track has delivered a frame at or after it (the
  frames still in flight before it), at most STOP_GRACE_S, drops what comes after,
  and ends every track exactly there (video's last frame lasts up to it, audio is
  padded), so audio and video have the same length;
* every video frame is centre-cropped to 9:16 and scaled (browsers change
  resolution mid-stream; the encoder's size cannot change);
* the file is written as `<name>.mp4.part` and renamed after `container.close()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
from aiortc.contrib.media import MediaBlackhole
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.audio.frame import AudioFrame
from av.video.frame import VideoFrame

from server.live.encoding import AudioOut, StoryFile, VideoOut
from server.live.lanes import FrameLane
from server.live.timeline import TrackTimeline, Verdict

log = logging.getLogger(__name__)

MAX_FPS = 30  # stored video frame rate, at most
MIN_FRAME_GAP_S = 0.75 / MAX_FPS  # closer frames are skipped (RTP timestamps jitter)
VIDEO_QUEUE_MAX = 10  # decoded frames waiting for x264 (1/3 s at 30 fps); beyond: drop oldest
AUDIO_QUEUE_MAX = 100  # 2 s of 20 ms frames
STOP_GRACE_S = 0.25  # how long stop() waits for frames sent before it that are still in flight
BEHIND_FRAMES = 5  # a video queue this long means the encoder is not keeping up
BEHIND_WINDOW_S = 2.0  # ... and so does a frame dropped within this many seconds
# aiortc's receiver hands a frame out once this many later frames have begun to arrive
# (server/live/timeline.py): what places the stop on each track's timeline
VIDEO_HOLD_FRAMES, AUDIO_HOLD_FRAMES = 1, 4


@dataclass(frozen=True)
class RecordingResult:
    """A finished segment.

    `path`: the MP4; `poster_path`: the JPEG (None when no video frame was encoded);
    `duration_ms`: container duration as read back from the file; `video_ms`,
    `audio_ms`: each stream's duration in the file (0 when absent);
    `video_frames`: H.264 frames encoded; `audio_frames`: received audio frames written;
    `video_dropped`: frames dropped because the encoder fell VIDEO_QUEUE_MAX behind;
    `video_skipped`: frames skipped to stay within MAX_FPS.
    """

    path: Path
    poster_path: Path | None
    duration_ms: int
    video_frames: int
    audio_frames: int
    video_ms: int = 0
    audio_ms: int = 0
    video_dropped: int = 0
    video_skipped: int = 0


@dataclass(eq=False)
class _Track:
    """One recorded track: its aiortc track, its timeline, and whether it reached the end."""

    kind: str
    track: MediaStreamTrack
    timeline: TrackTimeline
    passed: asyncio.Event = field(default_factory=asyncio.Event)


class StoryRecorder:
    """Records one connection's first video and first audio track into an MP4 segment.

    Usage: `add_track()` for every track (from `pc.on("track")`, before `start()`),
    `await start()`, then `await stop()` -> `RecordingResult` or `await discard()`.
    Extra tracks (second video, tracks added after `start()`) are drained, not recorded.

    `path`: final MP4 path (`<path>.part` while recording); poster at `path.with_suffix(".jpg")`.
    `max_duration_ms`: frames starting at or after this are dropped and `finished` is set
    with `finish_reason == "cap"`. `finish_reason` is `"ended"` when every recorded track
    ended, `"error"` when encoding failed. `size`: output (width, height), default 720x1280.
    `fps`: nominal rate (keyframe interval is `2*fps` frames).
    """

    def __init__(
        self,
        path: Path,
        *,
        max_duration_ms: int = 15_000,
        size: tuple[int, int] = (720, 1280),
        fps: int = MAX_FPS,
    ) -> None:
        self.path = Path(path)
        self.poster_path = self.path.with_suffix(".jpg")
        self.max_duration_ms = max_duration_ms
        self.size, self.fps = size, fps
        self.finished = asyncio.Event()
        self.finish_reason: str | None = None
        self.first_frame_at: float | None = None  # time.monotonic() of the first frame
        self.last_frame_at: float | None = None  # time.monotonic() of the latest frame
        self._t0 = 0.0  # time.monotonic() of t=0 on the recording's timeline
        self._tracks: dict[str, _Track] = {}
        self._lanes: dict[str, FrameLane[tuple[Any, float]]] = {}
        self._end_at: float | None = None  # the stop point on the timeline, once stopping
        self._blackhole = MediaBlackhole()
        self._file: StoryFile | None = None
        self._video: VideoOut | None = None
        self._audio: AudioOut | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._halted = False
        self._stop_task: asyncio.Task[RecordingResult] | None = None
        self._discarded = False
        self._dropped_seen = 0
        self._dropped_at: float | None = None  # time.monotonic() of the latest video drop

    # ----------------------------------------------------------------- public API

    @property
    def has_video(self) -> bool:
        """True when a video track will be recorded."""
        return "video" in self._tracks

    @property
    def has_audio(self) -> bool:
        """True when an audio track will be recorded."""
        return "audio" in self._tracks

    @property
    def recorded_ms(self) -> int:
        """Milliseconds of timeline handed to the encoders so far."""
        return int(max((t.timeline.end_s for t in self._tracks.values()), default=0.0) * 1000)

    @property
    def behind(self) -> bool:
        """True while the video encoder does not keep up with real time: BEHIND_FRAMES or
        more frames waiting, or a frame dropped within the last BEHIND_WINDOW_S seconds."""
        lane = self._lanes.get("video")
        if lane is None or self._halted:
            return False
        recent = self._dropped_at is not None
        recent = recent and time.monotonic() - (self._dropped_at or 0) < BEHIND_WINDOW_S
        return lane.backlog >= BEHIND_FRAMES or recent

    def add_track(self, track: MediaStreamTrack) -> None:
        """Record `track` if it is the first of its kind ("video"/"audio"), else drain it."""
        kind = track.kind
        if kind in ("video", "audio") and kind not in self._tracks and not self._started:
            video = kind == "video"
            timeline = TrackTimeline(min_gap_s=MIN_FRAME_GAP_S if video else 0.0,
                                     hold_frames=VIDEO_HOLD_FRAMES if video else AUDIO_HOLD_FRAMES)  # fmt: skip
            self._tracks[kind] = _Track(kind, track, timeline)
            return
        self._blackhole.addTrack(track)
        if self._started and not self._halted:
            self._tasks.append(asyncio.create_task(self._blackhole.start()))

    async def start(self) -> None:
        """Open `<path>.part`, create every output stream, start the consumers.

        Raises RuntimeError when called twice or after stop/discard; av.FFmpegError
        when the file or encoders cannot be opened.
        """
        if self._started or self._halted:
            raise RuntimeError("StoryRecorder.start() called twice or after stop")
        self._started = True
        self._lanes["control"] = FrameLane("story-rec-video", self._write_video, VIDEO_QUEUE_MAX)
        if self.has_audio:
            self._lanes["audio"] = FrameLane("story-rec-audio", self._write_audio, AUDIO_QUEUE_MAX)
        if self.has_video:
            self._lanes["video"] = self._lanes["control"]
        await self._lanes["control"].run(self._open_sync)
        await self._blackhole.start()
        for kind, state in self._tracks.items():
            task = asyncio.create_task(self._consume(state), name=f"story-rec-{kind}")
            self._tasks.append(task)

    async def stop(self) -> RecordingResult:
        """End every track at "now" (or the cap), finish, close and rename the file. Idempotent.

        Returns the `RecordingResult` (the same one on every call). Raises RuntimeError
        after `discard()` or when never started; av.FFmpegError when finalizing fails
        (the partial files are removed then).
        """
        if self._discarded:
            raise RuntimeError("recording was discarded")
        if not self._started:
            raise RuntimeError("recording was never started")
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop())
        return await asyncio.shield(self._stop_task)

    async def discard(self) -> None:
        """Stop consuming and remove every file of this recording (also a stopped one).

        Idempotent; never raises for missing files or failed encoders.
        """
        self._discarded = True
        await self._halt()
        if self._stop_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._stop_task)
        elif self._started:
            for lane in self._lanes.values():
                lane.clear()
            with contextlib.suppress(Exception):
                await self._settle_lanes()
                await self._lanes["control"].run(self._abort_sync)
        self._close_lanes()
        self._remove_files()  # a few unlink() calls: cheap enough for the loop

    # ----------------------------------------------------------------- event loop side

    async def _consume(self, state: _Track) -> None:
        """Read frames until the track ends or reaches the end point; hand them to the lane."""
        lane = self._lanes[state.kind]
        try:
            while not state.passed.is_set():
                frame = await state.track.recv()
                at = self._place(state, frame)
                if self._take(state, frame, at):
                    lane.put((frame, at))
                    self._note_drops()
                if lane.error is not None:
                    raise lane.error
        except MediaStreamError:
            state.passed.set()
            if all(t.passed.is_set() for t in self._tracks.values()):
                self._finish("ended")
        except Exception:
            log.exception("recording %s failed", self.path.name)
            state.passed.set()
            self._finish("error")

    def _place(self, state: _Track, frame: Any) -> float:
        """Note the arrival of `frame`; return its start on the timeline in seconds."""
        now = time.monotonic()
        audio = isinstance(frame, AudioFrame) and frame.sample_rate
        length = frame.samples / frame.sample_rate if audio else None
        if self.first_frame_at is None:  # t=0: when it was sent, as far as we can tell yet
            self.first_frame_at = now
            self._t0 = now - state.timeline.hold_s(length)
        self.last_frame_at = now
        return state.timeline.place(frame.pts, frame.time_base, now - self._t0, length)

    def _take(self, state: _Track, frame: Any, at: float) -> bool:
        """Whether `frame` (starting at `at`) is recorded; sets `passed` at the end point."""
        cap_s = self.max_duration_ms / 1000
        audio = isinstance(frame, AudioFrame) and frame.sample_rate
        length = frame.samples / frame.sample_rate if audio else None
        verdict = state.timeline.decide(at, length, end_at=self._end_at, cap_s=cap_s)
        if verdict is Verdict.END:
            state.passed.set()  # every frame sent before the stop (or the cap) has arrived
            if at >= cap_s:
                self._finish("cap")
        elif state.timeline.is_last(at, self._end_at):
            state.passed.set()  # the next frame was sent after the stop
        return verdict is Verdict.KEEP

    def _note_drops(self) -> None:
        lane = self._lanes.get("video")
        if lane is not None and lane.dropped != self._dropped_seen:
            self._dropped_seen = lane.dropped
            self._dropped_at = time.monotonic()

    def _finish(self, reason: str) -> None:
        if not self.finished.is_set():
            self.finish_reason = reason
            self.finished.set()

    def _end_point(self) -> float:
        """The stop point on the timeline: now, but never past the cap."""
        if self.first_frame_at is None:
            return 0.0
        now_s = time.monotonic() - self._t0
        return min(now_s, self.max_duration_ms / 1000)

    async def _halt(self) -> None:
        """Cancel the consumers and drains (frames already queued in the lanes stay)."""
        if self._halted:
            return
        self._halted = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self._blackhole.stop()

    async def _settle_lanes(self) -> None:
        await asyncio.gather(*(lane.drain() for lane in set(self._lanes.values())))

    def _close_lanes(self) -> None:
        for lane in set(self._lanes.values()):
            lane.close()

    async def _stop(self) -> RecordingResult:
        if not self._halted:
            self._end_at = self._end_point()
            for t in self._tracks.values():  # its last frame before the stop came already
                if t.timeline.latest_at is not None and t.timeline.is_last(
                    t.timeline.latest_at, self._end_at
                ):
                    t.passed.set()
            waits = [t.passed.wait() for t in self._tracks.values()]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits), STOP_GRACE_S)
        await self._halt()
        try:
            await self._settle_lanes()
            end_s = self._media_end()
            return await self._lanes["control"].run(self._finish_sync, end_s)
        finally:
            self._close_lanes()

    def _media_end(self) -> float:
        """Where every track ends: the latest track's stop point, or where its media stopped."""
        ends = [t.timeline.end(self._end_at) for t in self._tracks.values()]
        return min(max(ends, default=0.0), self.max_duration_ms / 1000)

    # ----------------------------------------------------------------- encoder threads

    @property
    def _part(self) -> Path:
        return self.path.with_name(self.path.name + ".part")

    @property
    def _poster_part(self) -> Path:
        return self.poster_path.with_name(self.poster_path.name + ".part")

    def _open_sync(self) -> None:
        self._file = StoryFile(self._part)
        if self.has_video:
            self._video = VideoOut(self._file, self.size, self.fps, self._poster_part)
        if self.has_audio:
            self._audio = AudioOut(self._file)

    def _write_video(self, item: tuple[VideoFrame, float]) -> None:
        if self._video is not None:
            self._video.write(*item)

    def _write_audio(self, item: tuple[AudioFrame, float]) -> None:
        if self._audio is not None:
            self._audio.write(*item)

    def _finish_sync(self, end_s: float) -> RecordingResult:
        """End both tracks at `end_s`, flush, close (moov up front), rename, read back."""
        assert self._file is not None
        if self._video is not None and self._video.frames:  # the last frame shows >= 1 frame time
            end_s = max(end_s, self._video.end_s + 1 / self.fps)
        try:
            if self._video is not None:
                self._video.finish(end_s)
            if self._audio is not None:
                self._audio.finish(end_s)
            self._file.close()
        except Exception:
            self._abort_sync()
            self._remove_files()
            raise
        return self._publish_sync()

    def _publish_sync(self) -> RecordingResult:
        video_frames = self._video.frames if self._video else 0
        poster = self.poster_path if self._video and self._video.poster_written else None
        if poster is not None:
            os.replace(self._poster_part, poster)
        if not self._part.exists():  # nothing was ever muxed: libavformat never opened it
            return RecordingResult(self.path, None, 0, 0, 0)
        os.replace(self._part, self.path)
        with av.open(str(self.path)) as probe:
            duration_ms = (probe.duration or 0) // 1000
            ms = {
                s.type: int(s.duration * s.time_base * 1000)
                for s in probe.streams
                if s.duration and s.time_base
            }
        lane = self._lanes.get("video")
        return RecordingResult(
            self.path, poster, duration_ms, video_frames,
            audio_frames=self._audio.frames if self._audio else 0,
            video_ms=ms.get("video", 0), audio_ms=ms.get("audio", 0),
            video_dropped=lane.dropped if lane else 0,
            video_skipped=self._tracks["video"].timeline.skipped if self.has_video else 0,
        )  # fmt: skip

    def _abort_sync(self) -> None:
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
        self._video = self._audio = None

    def _remove_files(self) -> None:
        for path in (self._part, self._poster_part, self.path, self.poster_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
