"""How much memory probing and transcoding a video takes, from its header alone.

`estimate_bytes` opens the container with decoding switched off
(`skip_frame=all`, a minimal probe size): it learns the codec, profile, pixel
format and coded size without holding a single decoded frame (where FFmpeg
must decode one to learn the format, as for MPEG program streams, it holds
that one). The estimate is an upper bound for `server.video.probe_video` plus
`server.video.transcode` on that file:

    frame bytes x (reference frames the codec may keep + frames in flight)
    + the x264 encoder at the output size + the RGB first frame + a fixed slack.

Reference frame counts are the codecs' maxima (H.264 and HEVC: a 16-frame
decoded picture buffer; VP9 and AV1: 8 reference slots; VP8: 3 references;
MPEG-1/2/4 part 2: 2), since the real count is only known once decoding
starts. Decoding uses slice threads, never frame threads (each frame thread
would hold frames of its own), so the count does not grow with the CPU count.
The other figures were measured with `tests/test_memory.py` (VmHWM).
"""

from __future__ import annotations

import math
from pathlib import Path

import av

from server.core.errors import InvalidMedia
from server.media.video import FIRST_FRAME_LONG_SIDE, _check_pixels, _video_stream

DPB_FRAMES = {"h264": 16, "hevc": 16, "vp9": 8, "av1": 8, "vp8": 3,
              "mpeg1video": 2, "mpeg2video": 2, "mpeg4": 2}  # fmt: skip
IN_FLIGHT_FRAMES = 10  # being decoded, waiting for reordering, in the decoder's pool, in the graph
# H.264 streams often leave the pixel format unknown until a frame is decoded:
# their profile tells the chroma format and bit depth. Bytes per pixel.
H264_PROFILE_BYTES = {"High 10": 3.0, "High 10 Intra": 3.0, "High 4:2:2": 4.0,
                      "High 4:2:2 Intra": 4.0}  # fmt: skip
UNKNOWN_FORMAT_BYTES = 6.0  # 4:4:4 at 16 bits per sample: nothing can need more
X264_BASE_BYTES = 48 * 1024 * 1024  # libx264 veryfast, up to 8 threads, measured
X264_BYTES_PER_PIXEL = 72  # ... plus this per output pixel (lookahead, references, threads)
SLACK_BYTES = 32 * 1024 * 1024  # demuxer, audio, muxer, contexts
PROBE_OPTIONS = {"skip_frame": "all", "probesize": "32", "analyzeduration": "0"}


def estimate_bytes(path: Path, *, max_pixels: int, max_long_side_px: int) -> int:
    """Upper bound of the memory probing and transcoding the video at `path` holds, bytes.

    Raises `UnsupportedMedia` (no video stream, codec not decodable here) or
    `InvalidMedia` (unreadable, `width*height > max_pixels`), as `probe_video` would.
    """
    try:
        with av.open(str(path), metadata_errors="ignore", options=PROBE_OPTIONS) as inp:
            stream = _video_stream(inp)
            _check_pixels(stream, max_pixels)
            ctx = stream.codec_context
            name, width, height = ctx.name, ctx.width, ctx.height
            frame = frame_bytes(ctx.pix_fmt, width, height, name=name, profile=ctx.profile)
    except av.FFmpegError as exc:
        raise InvalidMedia("video cannot be decoded") from exc
    frames = DPB_FRAMES.get(name, 16) + IN_FLIGHT_FRAMES
    scale = min(1.0, max_long_side_px / max(width, height))
    out_pixels = math.ceil(width * scale) * math.ceil(height * scale)
    encoder = X264_BASE_BYTES + X264_BYTES_PER_PIXEL * out_pixels
    first_frame = FIRST_FRAME_LONG_SIDE**2 * (3 + 4 + 4)  # rgb24, Pillow RGB, turned copy
    return frame * frames + encoder + first_frame + SLACK_BYTES


def frame_bytes(
    pix_fmt: str | None, width: int, height: int, *, name: str = "", profile: str | None = None
) -> int:
    """Bytes of one decoded `width` x `height` frame in `pix_fmt`, padded as FFmpeg pads.

    With no pixel format known yet, an H.264 profile gives it; anything else
    is taken as the largest there is (`UNKNOWN_FORMAT_BYTES` per pixel).
    """
    padded_w, padded_h = _align(width, 64), _align(height, 32)
    if pix_fmt:
        try:
            fmt = av.VideoFormat(pix_fmt, padded_w, padded_h)
        except (ValueError, av.FFmpegError):
            pix_fmt = None
        else:
            return sum(c.width * c.height * math.ceil(c.bits / 8) for c in fmt.components)
    per_pixel = UNKNOWN_FORMAT_BYTES
    if name == "h264" and profile and "4:4:4" not in profile:
        per_pixel = H264_PROFILE_BYTES.get(profile, 1.5)
    return math.ceil(padded_w * padded_h * per_pixel)


def _align(value: int, to: int) -> int:
    return (value + to - 1) // to * to
