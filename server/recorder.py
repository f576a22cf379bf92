"""Record the tracks of one WebRTC connection into a 9:16 H.264/AAC MP4 story segment.

`StoryRecorder` reads decoded frames from aiortc `RemoteStreamTrack`s and writes
`<name>.mp4` (H.264 High 720x1280 yuv420p + AAC-LC 48 kHz stereo when there is
audio, moov before mdat, no edit list) plus a poster `<name>.jpg` (720x1280).

Design (from the team's live-capture measurements on a 2-core machine):

* every output stream is created in `start()`, before the first mux: adding one
  later crashes libavformat (SIGFPE);
* filter graphs, encoders, the muxer and the poster live on ONE worker thread
  (a per-recorder `ThreadPoolExecutor(max_workers=1)`), never on the event loop;
* timestamps are rebased: the first frame that arrives (any track) is t=0, a
  track's own frames keep its sender's RTP spacing, shifted by the arrival time
  of its first frame; audio gaps (including a late start) are filled with silence
  so the AAC track is continuous and starts at 0;
* every video frame is centre-cropped to 9:16 and scaled (browsers change
  resolution mid-stream; the encoder's size cannot change);
* x264 runs without B-frames: with `use_editlist=0` the B-frame delay would shift
  the whole video track against the audio (measured: +2 frames);
* the file is written as `<name>.mp4.part` and renamed after `container.close()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, TypeVar

import av
from aiortc.contrib.media import MediaBlackhole
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av.audio.frame import AudioFrame
from av.container import OutputContainer
from av.video.frame import VideoFrame

log = logging.getLogger(__name__)

T = TypeVar("T")

VIDEO_TIME_BASE = Fraction(1, 90_000)
AUDIO_RATE = 48_000
AUDIO_TIME_BASE = Fraction(1, AUDIO_RATE)
AUDIO_BIT_RATE = 128_000
CONTAINER_OPTIONS = {"movflags": "+faststart", "use_editlist": "0"}
AUDIO_GAP_S = 0.06  # a jump larger than this in the audio timeline is filled with silence
MAX_GRAPHS = 8  # cached filter graphs (one per input size/format)
POSTER_QUALITY = 85


@dataclass(frozen=True)
class RecordingResult:
    """A finished segment.

    `path`: the MP4; `poster_path`: the JPEG (None when no video frame was encoded);
    `duration_ms`: container duration as read back from the file;
    `video_frames`: H.264 frames encoded; `audio_frames`: received audio frames written.
    """

    path: Path
    poster_path: Path | None
    duration_ms: int
    video_frames: int
    audio_frames: int


class _TrackClock:
    """Maps one track's frame pts onto the recording timeline (seconds from t=0)."""

    def __init__(self) -> None:
        self.first_pts: int | None = None
        self.offset_s = 0.0

    def seconds(self, frame: VideoFrame | AudioFrame, arrival_s: float) -> float:
        """Frame start in seconds; `arrival_s` is its arrival time relative to t=0."""
        if frame.pts is None or frame.time_base is None:
            return arrival_s
        if self.first_pts is None:
            self.first_pts = frame.pts
            self.offset_s = arrival_s
        return float((frame.pts - self.first_pts) * frame.time_base) + self.offset_s


class _VideoOut:
    """Encoder-thread state of the video stream: fit to WxH, encode, mux, poster."""

    def __init__(
        self, container: OutputContainer, size: tuple[int, int], fps: int, poster: Path
    ) -> None:
        self.container = container
        self.width, self.height = size
        stream = container.add_stream(
            "libx264",
            rate=fps,
            # zerolatency: no lookahead, so stop() flushes in ~20 ms instead of ~150 ms
            # (bench/capture.py); B-frames off keeps audio and video aligned without edit lists
            options={
                "preset": "veryfast",
                "tune": "zerolatency",
                "crf": "23",
                "profile": "high",
                "bf": "0",
            },
        )
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
        stream.time_base = VIDEO_TIME_BASE
        stream.codec_context.time_base = VIDEO_TIME_BASE
        stream.codec_context.gop_size = 2 * fps
        self.stream = stream
        self.graphs: dict[tuple[int, int, str], av.filter.Graph] = {}
        self.poster = poster
        self.poster_frame = 5
        self.poster_written = False
        self.fallback: VideoFrame | None = None
        self.last_pts = -1
        self.frames = 0

    def write(self, frame: VideoFrame, pts: int) -> None:
        """Fit, encode and mux one frame at `pts` (1/90000 s); drops non-increasing pts."""
        if pts <= self.last_pts:
            return
        self.last_pts = pts
        frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
        fitted = self._fit(frame)
        fitted.pict_type = 0  # let x264 place keyframes (g), not the sender's decoder
        self.container.mux(self.stream.encode(fitted))
        self.frames += 1
        self._maybe_poster(fitted)

    def flush(self) -> None:
        """Drain the encoder; write the poster from the first frame if none yet."""
        self.container.mux(self.stream.encode(None))
        if not self.poster_written and self.fallback is not None:
            self._save_poster(self.fallback)
        self.fallback = None
        self.graphs.clear()

    def _fit(self, frame: VideoFrame) -> VideoFrame:
        key = (frame.width, frame.height, frame.format.name)
        graph = self.graphs.get(key)
        if graph is None:
            if len(self.graphs) >= MAX_GRAPHS:
                self.graphs.clear()
            graph = self.graphs[key] = self._graph(*key)
        graph.vpush(frame)
        return graph.vpull()

    def _graph(self, width: int, height: int, pix_fmt: str) -> av.filter.Graph:
        """buffer -> centre crop to W:H -> scale WxH -> setsar 1 -> yuv420p -> sink."""
        w, h = self.width, self.height
        graph = av.filter.Graph()
        nodes = [
            graph.add_buffer(
                width=width,
                height=height,
                format=av.VideoFormat(pix_fmt),
                time_base=VIDEO_TIME_BASE,
            ),
            graph.add("crop", f"w='min(iw,ih*{w}/{h})':h='min(ih,iw*{h}/{w})'"),
            graph.add("scale", f"{w}:{h}"),
            graph.add("setsar", "1"),
            graph.add("format", "yuv420p"),
            graph.add("buffersink"),
        ]
        graph.link_nodes(*nodes)
        graph.configure()
        return graph

    def _maybe_poster(self, fitted: VideoFrame) -> None:
        if self.poster_written:
            return
        if self.frames >= self.poster_frame:
            self._save_poster(fitted)
            self.fallback = None
        elif self.fallback is None:
            self.fallback = fitted

    def _save_poster(self, fitted: VideoFrame) -> None:
        fitted.to_image().save(self.poster, format="JPEG", quality=POSTER_QUALITY)
        self.poster_written = True


class _AudioOut:
    """Encoder-thread state of the audio stream: normalize, fill gaps, encode AAC, mux."""

    def __init__(self, container: OutputContainer) -> None:
        self.container = container
        stream = container.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
        stream.bit_rate = AUDIO_BIT_RATE
        stream.time_base = AUDIO_TIME_BASE
        self.stream = stream
        self.resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
        self.input_key: tuple[str, str, int] | None = None
        self.samples = 0  # samples written so far == pts of the next sample
        self.frames = 0

    def write(self, frame: AudioFrame, at_s: float) -> None:
        """Encode one received frame that starts at `at_s` seconds on the timeline."""
        gap = round(at_s * AUDIO_RATE) - self.samples
        if gap > AUDIO_GAP_S * AUDIO_RATE:
            self._encode(self._silence(gap))
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key != self.input_key:  # a new input format needs a new resampler
            self.resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
            self.input_key = key
        frame.pts = None
        for out in self.resampler.resample(frame):
            self._encode(out)
        self.frames += 1

    def flush(self) -> None:
        """Drain the encoder."""
        self.container.mux(self.stream.encode(None))

    def _encode(self, frame: AudioFrame) -> None:
        frame.pts, frame.time_base = self.samples, AUDIO_TIME_BASE
        self.samples += frame.samples
        self.container.mux(self.stream.encode(frame))

    @staticmethod
    def _silence(samples: int) -> AudioFrame:
        frame = AudioFrame(format="fltp", layout="stereo", samples=samples)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.sample_rate = AUDIO_RATE
        return frame


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
        fps: int = 30,
    ) -> None:
        self.path = Path(path)
        self.poster_path = self.path.with_suffix(".jpg")
        self.max_duration_ms = max_duration_ms
        self.size, self.fps = size, fps
        self.finished = asyncio.Event()
        self.finish_reason: str | None = None
        self.first_frame_at: float | None = None  # time.monotonic() of the first frame
        self.last_frame_at: float | None = None  # time.monotonic() of the latest frame
        self._tracks: dict[str, MediaStreamTrack] = {}
        self._consumed: dict[str, int] = {}  # frames taken from each track so far
        self._clocks = {"video": _TrackClock(), "audio": _TrackClock()}
        self._ended: set[str] = set()
        self._end_s = 0.0
        self._blackhole = MediaBlackhole()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="story-rec")
        self._container: OutputContainer | None = None
        self._video: _VideoOut | None = None
        self._audio: _AudioOut | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._halted = False
        self._stop_task: asyncio.Task[RecordingResult] | None = None
        self._discarded = False

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
        """Milliseconds of timeline written so far (end of the latest accepted frame)."""
        return int(self._end_s * 1000)

    def add_track(self, track: MediaStreamTrack) -> None:
        """Record `track` if it is the first of its kind ("video"/"audio"), else drain it."""
        if track.kind in self._clocks and track.kind not in self._tracks and not self._started:
            self._tracks[track.kind] = track
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
        await self._run(self._open_sync)
        await self._blackhole.start()
        for kind, track in self._tracks.items():
            task = asyncio.create_task(self._consume(kind, track), name=f"story-rec-{kind}")
            self._tasks.append(task)

    async def stop(self) -> RecordingResult:
        """Stop consuming, flush the encoders, close and rename the file. Idempotent.

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
            with contextlib.suppress(Exception):
                await self._run(self._abort_sync)
        self._executor.shutdown(wait=False)
        self._remove_files()  # a few unlink() calls: cheap enough for the loop

    # ----------------------------------------------------------------- event loop side

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    async def _consume(self, kind: str, track: MediaStreamTrack) -> None:
        """Read frames until the track ends; write those before the cap, drain the rest."""
        try:
            while True:
                frame = await track.recv()
                self._consumed[kind] = self._consumed.get(kind, 0) + 1
                at = self._place(kind, frame)
                if at * 1000 >= self.max_duration_ms:
                    self._finish("cap")
                elif self.finish_reason != "error":
                    await self._run(self._write_sync, kind, frame, at)
        except MediaStreamError:
            self._ended.add(kind)
            if self._ended >= set(self._tracks):
                self._finish("ended")
        except Exception:
            log.exception("recording %s failed", self.path.name)
            self._finish("error")

    def _place(self, kind: str, frame: Any) -> float:
        """Note the arrival of `frame`; return its start on the timeline in seconds."""
        now = time.monotonic()
        if self.first_frame_at is None:
            self.first_frame_at = now
        self.last_frame_at = now
        return self._clocks[kind].seconds(frame, now - self.first_frame_at)

    def _finish(self, reason: str) -> None:
        if not self.finished.is_set():
            self.finish_reason = reason
            self.finished.set()

    async def _halt(self) -> None:
        """Cancel the consumers and drains (their pending encoder work still completes)."""
        if self._halted:
            return
        self._halted = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self._blackhole.stop()

    async def _catch_up(self, limit_s: float = 3.0) -> None:
        """Before stopping, write the frames that had already arrived (decoded and queued).

        A recorder running behind (a busy machine) would otherwise cut the end of
        the story: aiortc's receiver queues decoded frames until `recv()` takes them.
        Only the backlog present now is awaited, at most `limit_s`; frames arriving
        after the stop are not.
        """
        targets = {}
        for kind, track in self._tracks.items():
            queue = getattr(track, "_queue", None)  # aiortc RemoteStreamTrack's frame queue
            if isinstance(queue, asyncio.Queue) and queue.qsize():
                targets[kind] = self._consumed.get(kind, 0) + queue.qsize()
        deadline = time.monotonic() + limit_s
        while targets and time.monotonic() < deadline and not self.finished.is_set():
            if all(self._consumed.get(k, 0) >= n for k, n in targets.items()):
                return
            await asyncio.sleep(0.02)

    async def _stop(self) -> RecordingResult:
        if not self._halted:
            await self._catch_up()
        await self._halt()
        try:
            return await self._run(self._finish_sync)
        finally:
            self._executor.shutdown(wait=False)

    # ----------------------------------------------------------------- encoder thread

    @property
    def _part(self) -> Path:
        return self.path.with_name(self.path.name + ".part")

    @property
    def _poster_part(self) -> Path:
        return self.poster_path.with_name(self.poster_path.name + ".part")

    def _open_sync(self) -> None:
        container = av.open(str(self._part), mode="w", format="mp4", options=CONTAINER_OPTIONS)
        self._container = container
        if self.has_video:
            self._video = _VideoOut(container, self.size, self.fps, self._poster_part)
        if self.has_audio:
            self._audio = _AudioOut(container)

    def _write_sync(self, kind: str, frame: Any, at: float) -> None:
        if kind == "video" and self._video is not None:
            self._video.write(frame, round(at * VIDEO_TIME_BASE.denominator))
            self._end_s = max(self._end_s, at + 1 / self.fps)
        elif kind == "audio" and self._audio is not None:
            self._audio.write(frame, at)
            self._end_s = max(self._end_s, self._audio.samples / AUDIO_RATE)

    def _finish_sync(self) -> RecordingResult:
        """Flush, close (writes moov up front), rename, read back the duration."""
        assert self._container is not None
        try:
            for out in (self._video, self._audio):
                if out is not None:
                    out.flush()
            self._container.close()
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
        audio_frames = self._audio.frames if self._audio else 0
        return RecordingResult(self.path, poster, duration_ms, video_frames, audio_frames)

    def _abort_sync(self) -> None:
        if self._container is not None:
            with contextlib.suppress(Exception):
                self._container.close()
        self._video = self._audio = None

    def _remove_files(self) -> None:
        for path in (self._part, self._poster_part, self.path, self.poster_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
