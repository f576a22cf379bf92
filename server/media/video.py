"""Video: probe with PyAV, keep browser-ready files, transcode the rest to H.264 MP4.

`probe_video` opens a file, picks its video stream, refuses bombs, over-long
and truncated files, and decodes the first frame (which also yields the
rotation: PyAV 18 exposes the display matrix as `VideoFrame.rotation`, not on
the stream). `can_keep` decides whether the bytes can be served unchanged;
`transcode` re-encodes to H.264/AAC MP4 with the moov atom first.

Containers are named by the caller's content sniffing: "mp4" (ISO BMFF with
a non-QuickTime brand), "mov", "webm", "matroska", "mpeg-ps", "mpeg-ts".
"""

from __future__ import annotations

import dataclasses
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
from av.audio.stream import AudioStream
from av.container import InputContainer, OutputContainer
from av.filter import Graph
from av.video.frame import VideoFrame
from av.video.stream import VideoStream
from PIL import Image

from server.core.errors import InvalidMedia, UnsupportedMedia
from server.media.images import part_path

# Video codecs we decode at all; anything else is a 415.
DECODABLE = frozenset({"h264", "hevc", "vp8", "vp9", "av1", "mpeg1video", "mpeg2video", "mpeg4"})
# container -> (video codecs, audio codecs) a browser plays without help.
KEEPABLE: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "mp4": (frozenset({"h264"}), frozenset({"aac"})),
    "webm": (frozenset({"vp8", "vp9"}), frozenset({"opus", "vorbis"})),
}
# ISO BMFF containers: box structure checked, duration stated exactly in the moov.
EXACT_DURATION = frozenset({"mp4", "mov"})
# Containers whose stated duration is trusted (MPEG-PS/TS durations are estimates).
TRUSTED_DURATION = EXACT_DURATION | {"webm", "matroska"}
LOCATION_KEYS = ("location", "location-eng", "com.apple.quicktime.location.iso6709")
# threads capped so that the encoder's memory does not grow with the machine (video_memory.py)
X264_OPTIONS = {"preset": "veryfast", "crf": "23", "threads": str(min(8, os.cpu_count() or 1))}
AUDIO_RATE = 48_000
# counter-clockwise degrees -> FFmpeg filters ("name=args") that turn the picture upright
TRANSPOSE = {90: ["transpose=cclock"], 180: ["hflip", "vflip"], 270: ["transpose=clock"]}
FIRST_FRAME_LONG_SIDE = 1280  # the poster is 640: twice that for its Lanczos pass
TURNS = {
    90: Image.Transpose.ROTATE_90,
    180: Image.Transpose.ROTATE_180,
    270: Image.Transpose.ROTATE_270,
}


@dataclass(frozen=True)
class VideoInfo:
    """What `probe_video` learnt. Sizes in pixels, times in milliseconds."""

    container: str  # sniffed container family, see module docstring
    video_codec: str  # FFmpeg decoder name: "h264", "hevc", "vp8", ...
    pix_fmt: str | None  # "yuv420p", ...
    width: int  # coded width, before rotation / aspect correction
    height: int
    sar: Fraction  # sample (pixel) aspect ratio; 1 when square or unknown
    rotation: int  # counter-clockwise degrees to turn the picture upright: 0/90/180/270
    duration_ms: int  # from the packets actually present
    audio_codec: str | None  # first audio stream's codec, None without audio
    extra_streams: int  # streams beyond one video and one audio (data, subtitles, ...)
    has_location: bool  # container metadata carries a GPS location
    faststart: bool  # MP4/MOV: moov before mdat; True for other containers
    first_frame: Image.Image  # first picture, upright RGB, display aspect, long side <= 1280

    @property
    def display_size(self) -> tuple[int, int]:
        """Upright `(width, height)` in square pixels."""
        width = max(1, round(self.width * self.sar))
        if self.rotation in (90, 270):
            return self.height, width
        return width, self.height


def mp4_top_level_boxes(path: Path) -> list[str]:
    """Types of the top-level ISO BMFF boxes of `path`, in file order.

    E.g. `["ftyp", "moov", "mdat"]` for a fast-start MP4. Stops at the first
    box header that cannot be read; a box that runs past the end of the file is
    still listed (see `mp4_is_complete`). Never raises for malformed data.
    """
    return [kind for kind, _, _ in _walk_boxes(path)]


def mp4_is_complete(path: Path) -> bool:
    """True when the top-level boxes of `path` tile the file exactly (no truncation)."""
    size = path.stat().st_size
    boxes = _walk_boxes(path)
    return bool(boxes) and boxes[-1][1] + boxes[-1][2] == size


def _walk_boxes(path: Path) -> list[tuple[str, int, int]]:
    """`(type, offset, size)` of each top-level box; size 0 means "to end of file"."""
    boxes: list[tuple[str, int, int]] = []
    file_size = path.stat().st_size
    with path.open("rb") as fh:
        offset = 0
        while offset + 8 <= file_size:
            fh.seek(offset)
            size, kind = struct.unpack(">I4s", fh.read(8))
            if size == 1:  # a 64-bit `largesize` follows the type
                if offset + 16 > file_size:
                    break
                size = struct.unpack(">Q", fh.read(8))[0]
            elif size == 0:
                size = file_size - offset
            if size < 8:
                break
            boxes.append((kind.decode("latin-1"), offset, size))
            offset += size
    return boxes


def _moov_first(path: Path) -> bool:
    boxes = mp4_top_level_boxes(path)
    return "moov" in boxes and ("mdat" not in boxes or boxes.index("moov") < boxes.index("mdat"))


def probe_video(path: Path, container: str, *, max_pixels: int, max_video_ms: int) -> VideoInfo:
    """Inspect the video at `path` (`container` as sniffed) and decode its first frame.

    Raises `UnsupportedMedia` (no video stream, codec not decodable here) or
    `InvalidMedia` (unreadable, truncated, `width*height > max_pixels`,
    duration > `max_video_ms`, no decodable frame).
    """
    if container in EXACT_DURATION and not mp4_is_complete(path):
        raise InvalidMedia("video file is truncated")
    try:
        with av.open(str(path), metadata_errors="ignore") as inp:
            stream = _video_stream(inp)
            _check_pixels(stream, max_pixels)
            declared_ms = _declared_ms(inp, container, max_video_ms)
            frame = _first_frame(inp, stream)
            info = _describe(inp, stream, frame, container, path)
        duration_ms = _packet_duration_ms(path)
    except av.FFmpegError as exc:
        raise InvalidMedia("video cannot be decoded") from exc
    _check_duration(duration_ms, declared_ms, max_video_ms)
    return dataclasses.replace(info, duration_ms=duration_ms)


def _video_stream(inp: InputContainer) -> VideoStream:
    """The first real video stream (cover art excluded) in a codec we decode."""
    streams = [
        s for s in inp.streams.video if not s.disposition & av.stream.Disposition.attached_pic
    ]
    if not streams:
        raise UnsupportedMedia("the file has no video stream")
    stream = streams[0]
    if stream.codec_context.name not in DECODABLE:
        raise UnsupportedMedia(f"video codec {stream.codec_context.name} is not supported")
    return stream


def _check_pixels(stream: VideoStream, max_pixels: int) -> None:
    width, height = stream.codec_context.width, stream.codec_context.height
    if width <= 0 or height <= 0 or width * height > max_pixels:
        raise InvalidMedia(f"video is {width}x{height}; at most {max_pixels} pixels are accepted")


def _declared_ms(inp: InputContainer, container: str, max_video_ms: int) -> int | None:
    """The container's trusted stated duration in ms, else None; refuses it early if too long."""
    if container not in TRUSTED_DURATION or inp.duration is None or inp.duration <= 0:
        return None
    declared = inp.duration // 1000
    if declared > max_video_ms:
        raise InvalidMedia(_too_long(declared, max_video_ms))
    return declared


def _too_long(duration_ms: int, max_video_ms: int) -> str:
    return f"video lasts {duration_ms / 1000:.1f} s; the limit is {max_video_ms / 1000:.1f} s"


def _audio_stream(inp: InputContainer) -> AudioStream | None:
    """The first audio stream FFmpeg can decode; others are ignored (dropped on transcode)."""
    for stream in inp.streams.audio:
        if stream.codec_context is not None and stream.codec_context.name:
            return stream
    return None


def _first_frame(inp: InputContainer, stream: VideoStream) -> VideoFrame:
    stream.thread_type = "SLICE"  # frame threads would each hold frames: one is all we need
    for frame in inp.decode(stream):
        return frame
    raise InvalidMedia("video has no decodable frame")


def _describe(
    inp: InputContainer, stream: VideoStream, frame: VideoFrame, container: str, path: Path
) -> VideoInfo:
    """A `VideoInfo` from the open container and its first frame (`duration_ms` still 0)."""
    audio_stream = _audio_stream(inp)
    audio = audio_stream.codec_context.name if audio_stream is not None else None
    sar = stream.sample_aspect_ratio or Fraction(1)
    rotation = round(frame.rotation / 90) * 90 % 360
    metadata = {k.lower() for k in inp.metadata}
    return VideoInfo(
        container=container,
        video_codec=stream.codec_context.name,
        pix_fmt=stream.codec_context.pix_fmt,
        width=stream.codec_context.width,
        height=stream.codec_context.height,
        sar=sar,
        rotation=rotation,
        duration_ms=0,
        audio_codec=audio,
        extra_streams=len(inp.streams) - 1 - (1 if audio_stream is not None else 0),
        has_location=any(key in metadata for key in LOCATION_KEYS),
        faststart=_moov_first(path) if container in EXACT_DURATION else True,
        first_frame=upright_image(frame, sar, rotation, long_side=FIRST_FRAME_LONG_SIDE),
    )


def upright_image(
    frame: VideoFrame, sar: Fraction, rotation: int, *, long_side: int | None = None
) -> Image.Image:
    """`frame` as an upright RGB Pillow image with square pixels, long side <= `long_side`.

    `rotation` is counter-clockwise degrees (0/90/180/270), as `VideoFrame.rotation`.
    Scaling (aspect correction and `long_side`) happens in swscale on the way
    from YUV to RGB, so no full-size RGB copy of a huge frame is ever made.
    """
    width, height = max(1, round(frame.width * sar)), frame.height
    scale = min(1.0, long_side / max(width, height)) if long_side else 1.0
    size = max(1, round(width * scale)), max(1, round(height * scale))
    if size != (frame.width, frame.height):
        frame = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="AREA")
    image: Image.Image = frame.to_image()
    return image.transpose(TURNS[rotation]) if rotation in TURNS else image


def _packet_duration_ms(path: Path) -> int:
    """Span of the audio/video packets present, in ms (max over streams)."""
    spans: dict[int, tuple[Fraction, Fraction]] = {}
    with av.open(str(path), metadata_errors="ignore") as inp:
        for packet in inp.demux(*inp.streams.video, *inp.streams.audio):
            tb = packet.time_base
            if packet.pts is None or tb is None:
                continue
            start, end = packet.pts * tb, (packet.pts + (packet.duration or 0)) * tb
            low, high = spans.get(packet.stream.index, (start, end))
            spans[packet.stream.index] = (min(low, start), max(high, end))
    return max((round((high - low) * 1000) for low, high in spans.values()), default=0)


def _check_duration(duration_ms: int, declared_ms: int | None, max_video_ms: int) -> None:
    """Refuse over-long videos, and files with fewer packets than their header states."""
    if duration_ms > max_video_ms:
        raise InvalidMedia(_too_long(duration_ms, max_video_ms))
    if duration_ms <= 0:
        raise InvalidMedia("video has no timed frames")
    if declared_ms and duration_ms < declared_ms - max(500, declared_ms // 20):
        raise InvalidMedia("video file is truncated")


def can_keep(info: VideoInfo, *, max_long_side_px: int) -> bool:
    """True when browsers play the file as is: see `KEEPABLE`, plus yuv420p,
    square pixels, no rotation, fast start, no extra streams, no GPS metadata,
    and a long side within `max_long_side_px`."""
    rules = KEEPABLE.get(info.container)
    if rules is None:
        return False
    video_ok = info.video_codec in rules[0] and info.pix_fmt == "yuv420p"
    audio_ok = info.audio_codec is None or info.audio_codec in rules[1]
    plain = info.rotation == 0 and info.sar == 1 and info.extra_streams == 0
    private = not info.has_location
    small = max(info.width, info.height) <= max_long_side_px
    return video_ok and audio_ok and plain and private and small and info.faststart


def output_size(info: VideoInfo, max_long_side_px: int) -> tuple[int, int]:
    """Upright transcode size: display aspect kept, long side capped, both even."""
    width, height = info.display_size
    scale = min(1.0, max_long_side_px / max(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def transcode(src: Path, dst: Path, info: VideoInfo, *, max_long_side_px: int) -> tuple[int, int]:
    """Re-encode `src` to an H.264/AAC fast-start MP4 at `dst` (written atomically).

    Video: libx264 veryfast crf 23, yuv420p, upright, `output_size`. Audio (if
    any): AAC 48 kHz stereo. Returns the output `(width, height)`. Raises
    `InvalidMedia` when decoding fails part way.
    """
    size = output_size(info, max_long_side_px)
    tmp = part_path(dst)
    try:
        with av.open(str(src), metadata_errors="ignore") as inp:
            with av.open(str(tmp), "w", format="mp4", options={"movflags": "+faststart"}) as out:
                _Transcoder(inp, out, info, size).run()
        os.replace(tmp, dst)
    except av.FFmpegError as exc:
        raise InvalidMedia("video cannot be decoded") from exc
    finally:
        tmp.unlink(missing_ok=True)
    return size


class _Transcoder:
    """One decode -> filter -> encode -> mux pass; timestamps start at zero."""

    def __init__(
        self, inp: InputContainer, out: OutputContainer, info: VideoInfo, size: tuple[int, int]
    ) -> None:
        self.inp, self.out = inp, out
        self.vin = _video_stream(inp)
        self.vin.thread_type = "SLICE"  # frame threads each hold whole frames (see estimate)
        self.ain = _audio_stream(inp)
        self.start = Fraction(inp.start_time or 0, 1_000_000)  # seconds
        self.vout = _video_output(out, self.vin, size)
        self.aout = _audio_output(out) if self.ain is not None else None
        self.rotation, self.size = info.rotation, size
        self.graph: Graph | None = None  # built from the first frame's actual format
        self.last_pts = -1

    def run(self) -> None:
        streams = [s for s in (self.vin, self.ain) if s is not None]
        for packet in self.inp.demux(*streams):
            if packet.stream.type == "video":
                for frame in self.vin.decode(packet):
                    self._shift(frame)
                    self._filter(frame)
            elif self.ain is not None and self.aout is not None:
                for audio in self.ain.decode(packet):
                    self._shift(audio)
                    self.out.mux(self.aout.encode(audio))
        if self.graph is None:
            raise InvalidMedia("video has no decodable frame")
        self._filter(None)
        self.out.mux(self.vout.encode(None))
        if self.aout is not None:
            self.out.mux(self.aout.encode(None))

    def _shift(self, frame: av.AudioFrame | VideoFrame) -> None:
        """Move `frame.pts` so that the earliest stream starts at 0."""
        if frame.pts is not None and frame.time_base is not None:
            frame.pts -= int(self.start / frame.time_base)

    def _filter(self, frame: VideoFrame | None) -> None:
        """Push `frame` (None: flush) through rotate/scale and encode what comes out."""
        if self.graph is None and frame is not None:
            self.graph = _video_graph(frame, self.vin, self.rotation, self.size)
        assert self.graph is not None
        self.graph.vpush(frame)
        for filtered in _pull_all(self.graph):
            pts = filtered.pts if filtered.pts is not None else self.last_pts + 1
            if pts <= self.last_pts:  # duplicate or out-of-order stamp: drop the frame
                continue
            filtered.pts, self.last_pts = pts, pts
            self.out.mux(self.vout.encode(filtered))


def _pull_all(graph: Graph) -> Iterator[VideoFrame]:
    while True:
        try:
            yield graph.vpull()
        except (av.error.BlockingIOError, av.error.EOFError):
            return


def _video_output(out: OutputContainer, vin: VideoStream, size: tuple[int, int]) -> VideoStream:
    rate = vin.average_rate or vin.guessed_rate or Fraction(30)
    stream = out.add_stream("libx264", rate=rate, options=dict(X264_OPTIONS))
    stream.width, stream.height = size
    stream.pix_fmt = "yuv420p"
    stream.codec_context.time_base = vin.time_base or Fraction(1, 90_000)
    return stream


def _audio_output(out: OutputContainer) -> AudioStream:
    stream = out.add_stream("aac", rate=AUDIO_RATE, layout="stereo")
    stream.codec_context.format = "fltp"
    return stream


def _video_graph(
    first: VideoFrame, vin: VideoStream, rotation: int, size: tuple[int, int]
) -> Graph:
    """buffer (shaped like `first`) -> [rotate] -> scale to `size` -> sar 1 -> yuv420p -> sink."""
    graph = Graph()
    time_base = vin.time_base or Fraction(1, 90_000)
    source = graph.add_buffer(
        width=first.width, height=first.height, format=first.format, time_base=time_base
    )
    nodes = [source]
    for name, _, args in (spec.partition("=") for spec in TRANSPOSE.get(rotation, [])):
        nodes.append(graph.add(name, args or None))
    nodes.append(graph.add("scale", f"{size[0]}:{size[1]}"))
    nodes.append(graph.add("setsar", "1"))
    nodes.append(graph.add("format", "yuv420p"))
    nodes.append(graph.add("buffersink"))
    graph.link_nodes(*nodes).configure()
    return graph
