"""The encoder-thread side of a story recording: one MP4 container, H.264 video, AAC audio.

`StoryFile` owns the container; `VideoOut` fits frames to 720x1280 (centre crop to
9:16, scale), encodes them with x264 and writes the poster; `AudioOut` resamples to
48 kHz stereo, fills gaps with silence and encodes AAC-LC. Each output is driven by
its own thread (see `server/live/lanes.py`); the two share the container, so every
`mux()` goes through `StoryFile.mux` under one lock. No method here touches the
event loop.

Timestamps are seconds on the recording's timeline (t=0: the first frame of any
track), chosen by the recorder. Every track ends at the same `end_s`: the last
video packet is held back until the next one (or the end) is known, so its
duration can reach `end_s` exactly (x264 leaves packet durations at 0 and the mp4
muxer would otherwise repeat the previous interval); audio is padded with silence
up to `end_s`. The first video frame is shown from t=0: with `use_editlist=0` the
mp4 muxer would otherwise shift the whole video track to start at 0 and put it
ahead of the audio by the first frame's arrival offset.
"""

from __future__ import annotations

import threading
from fractions import Fraction
from pathlib import Path

import av
from av.audio.frame import AudioFrame
from av.container import OutputContainer
from av.packet import Packet
from av.video.frame import VideoFrame

VIDEO_TIME_BASE = Fraction(1, 90_000)
AUDIO_RATE = 48_000
AUDIO_TIME_BASE = Fraction(1, AUDIO_RATE)
AUDIO_BIT_RATE = 128_000
CONTAINER_OPTIONS = {"movflags": "+faststart", "use_editlist": "0"}
AUDIO_GAP_S = 0.06  # a jump larger than this in the audio timeline is filled with silence
MAX_GRAPHS = 8  # cached filter graphs (one per input size/format)
POSTER_QUALITY = 85
POSTER_FRAME = 5  # the poster is the 5th encoded frame (not the first, often dark, keyframe)
# x264 settings (bench/capture.py): superfast costs about half of veryfast's CPU per
# 720x1280 frame on this 2-core machine and keeps CABAC and 8x8 transforms (High
# profile); zerolatency means no lookahead, so stop() flushes at once; no B-frames
# keeps audio and video aligned without edit lists. One x264 thread per capture: the
# least CPU per frame (about 10 ms at 720x1280 here, frame-threaded or sliced cost more),
# and concurrent captures use the cores.
X264_OPTIONS = {
    "threads": "1",
    "preset": "superfast",
    "tune": "zerolatency",
    "crf": "23",
    "profile": "high",
    "bf": "0",
}


class StoryFile:
    """The MP4 being written (`<path>.part` until `close()`), shared by both outputs.

    Raises av.FFmpegError when the file cannot be opened.
    """

    def __init__(self, part: Path) -> None:
        self.container: OutputContainer = av.open(
            str(part), mode="w", format="mp4", options=CONTAINER_OPTIONS
        )
        self._lock = threading.Lock()

    def mux(self, packets: list[Packet]) -> None:
        """Write `packets` (thread-safe: audio and video threads share the muxer)."""
        if packets:
            with self._lock:
                self.container.mux(packets)

    def close(self) -> None:
        """Write the moov (faststart moves it before mdat) and close the file."""
        with self._lock:
            self.container.close()


class VideoOut:
    """Video stream state: fit to WxH, encode (x264), mux, poster. One thread at a time.

    `size`: output (width, height); `fps`: nominal rate (keyframe interval `2*fps`);
    `poster`: where the JPEG goes (written once, from the POSTER_FRAME-th frame, or
    from the first when fewer are encoded).
    """

    def __init__(self, out: StoryFile, size: tuple[int, int], fps: int, poster: Path) -> None:
        self.out = out
        self.width, self.height = size
        stream = out.container.add_stream("libx264", rate=fps, options=X264_OPTIONS)
        stream.width, stream.height, stream.pix_fmt = self.width, self.height, "yuv420p"
        stream.time_base = VIDEO_TIME_BASE
        stream.codec_context.time_base = VIDEO_TIME_BASE
        stream.codec_context.gop_size = 2 * fps
        self.stream = stream
        self.graphs: dict[tuple[int, int, str], av.filter.Graph] = {}
        self.poster = poster
        self.poster_written = False
        self.fallback: VideoFrame | None = None
        self.pending: Packet | None = None  # the latest packet, until its duration is known
        self.last_pts = -1
        self.frames = 0

    def write(self, frame: VideoFrame, at_s: float) -> None:
        """Fit, encode and mux one frame starting at `at_s`; drops non-increasing times."""
        pts = 0 if self.frames == 0 else round(at_s / VIDEO_TIME_BASE)
        if pts <= self.last_pts:
            return
        self.last_pts = pts
        frame.pts, frame.time_base = pts, VIDEO_TIME_BASE
        fitted = self._fit(frame)
        fitted.pict_type = 0  # let x264 place keyframes (g), not the sender's decoder
        self._emit(self.stream.encode(fitted))
        self.frames += 1
        self._maybe_poster(fitted)

    @property
    def end_s(self) -> float:
        """Where the video written so far ends: the last frame's start (0 when none)."""
        return max(0, self.last_pts) * float(VIDEO_TIME_BASE)

    def finish(self, end_s: float) -> None:
        """Drain the encoder, end the last frame at `end_s`; poster from the first frame if none."""
        self._emit(self.stream.encode(None))
        if self.pending is not None:
            end = round(end_s / VIDEO_TIME_BASE)
            self.pending.duration = max(1, end - int(self.pending.pts or 0))
            self.out.mux([self.pending])
            self.pending = None
        if not self.poster_written and self.fallback is not None:
            self._save_poster(self.fallback)
        self.fallback = None
        self.graphs.clear()

    def _emit(self, packets: list[Packet]) -> None:
        """Mux each packet once the next one gives its duration; keep the newest back."""
        ready = []
        for packet in packets:
            if self.pending is not None:
                self.pending.duration = int(packet.pts or 0) - int(self.pending.pts or 0)
                ready.append(self.pending)
            self.pending = packet
        self.out.mux(ready)

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
        if self.frames >= POSTER_FRAME:
            self._save_poster(fitted)
            self.fallback = None
        elif self.fallback is None:
            self.fallback = fitted

    def _save_poster(self, fitted: VideoFrame) -> None:
        fitted.to_image().save(self.poster, format="JPEG", quality=POSTER_QUALITY)
        self.poster_written = True


class AudioOut:
    """Audio stream state: normalize to 48 kHz stereo fltp, fill gaps, encode AAC, mux."""

    def __init__(self, out: StoryFile) -> None:
        self.out = out
        stream = out.container.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
        stream.bit_rate = AUDIO_BIT_RATE
        stream.time_base = AUDIO_TIME_BASE
        self.stream = stream
        self.resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
        self.input_key: tuple[str, str, int] | None = None
        self.samples = 0  # samples written so far == pts of the next sample
        self.frames = 0

    @property
    def end_s(self) -> float:
        """Seconds of audio written so far."""
        return self.samples / AUDIO_RATE

    def write(self, frame: AudioFrame, at_s: float) -> None:
        """Encode one received frame that starts at `at_s` seconds on the timeline."""
        self.pad_to(at_s)
        key = (frame.format.name, frame.layout.name, frame.sample_rate)
        if key != self.input_key:  # a new input format needs a new resampler
            self.resampler = av.AudioResampler(format="fltp", layout="stereo", rate=AUDIO_RATE)
            self.input_key = key
        frame.pts = None
        for out in self.resampler.resample(frame):
            self._encode(out)
        self.frames += 1

    def pad_to(self, at_s: float) -> None:
        """Fill the timeline with silence up to `at_s` when it lags by more than AUDIO_GAP_S."""
        gap = round(at_s * AUDIO_RATE) - self.samples
        if gap > AUDIO_GAP_S * AUDIO_RATE:
            self._encode(self._silence(gap))

    def finish(self, end_s: float) -> None:
        """Pad with silence up to `end_s` (any gap), then drain the encoder."""
        gap = round(end_s * AUDIO_RATE) - self.samples
        if gap > 0:
            self._encode(self._silence(gap))
        self.out.mux(self.stream.encode(None))

    def _encode(self, frame: AudioFrame) -> None:
        frame.pts, frame.time_base = self.samples, AUDIO_TIME_BASE
        self.samples += frame.samples
        self.out.mux(self.stream.encode(frame))

    @staticmethod
    def _silence(samples: int) -> AudioFrame:
        frame = AudioFrame(format="fltp", layout="stereo", samples=samples)
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        frame.sample_rate = AUDIO_RATE
        return frame
