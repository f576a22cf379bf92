"""Media facade: sniff an upload by its bytes, then normalise it for serving.

`sniff` looks only at magic bytes, never at names or declared types.
`process_media` turns an upload into the files a Story serves (the media and
a JPEG poster) inside a caller-owned work directory, all or nothing.

Accepted: JPEG, PNG, WebP, AVIF (when this Pillow build decodes it) and
HEIC/HEIF (when `pillow_heif` is importable) as images, always re-encoded to
JPEG; MP4, MOV, WebM, Matroska, MPEG program and transport streams as video,
kept when a browser plays them as they are (see `server.video.can_keep`),
else transcoded to H.264/AAC MP4. GIF is refused (415): an animation would
silently become a still, and clients record video instead.
"""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from server.core.errors import InvalidMedia, PayloadTooLarge, UnsupportedMedia
from server.core.settings import Settings
from server.media import images, video, video_memory

HEAD_BYTES = 200  # enough for two MPEG-TS sync bytes (188- or 192-byte packets)
HEVC_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx"})
GENERIC_HEIF_BRANDS = frozenset({b"mif1", b"msf1"})  # HEIF container, any codec
AVIF_BRANDS = frozenset({b"avif", b"avis"})
# Old QuickTime files may start with one of these atoms instead of `ftyp`.
QUICKTIME_ATOMS = frozenset({b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"})
IMAGE_FORMATS = frozenset(
    {"jpeg", "png", "webp"}
    | ({"heif"} if images.HEIF_AVAILABLE else set())
    | ({"avif"} if images.AVIF_AVAILABLE else set())
)
VIDEO_FORMATS = frozenset({"mp4", "mov", "webm", "matroska", "mpeg-ps", "mpeg-ts"})
VIDEO_MIME = {"mp4": "video/mp4", "webm": "video/webm"}


@dataclass(frozen=True)
class MediaLimits:
    """Caps applied by `process_media`. Bytes, milliseconds, pixels."""

    max_bytes: int = 100 * 1024 * 1024  # upload size cap
    max_video_ms: int = 60_000  # longest video
    max_pixels: int = 50_000_000  # decompression-bomb cap, width*height (images and video frames)
    max_long_side_px: int = 1920  # images are downscaled to this; transcoded video too

    @classmethod
    def from_settings(cls, settings: Settings, *, capture: bool = False) -> MediaLimits:
        """The limits `settings` set for uploads, or for live captures (`capture=True`).

        A capture may run for `capture_max_duration_ms` (which may exceed
        `max_video_ms`); its file gets one second of slack for the last frames
        and container rounding.
        """
        max_video_ms = settings.max_video_ms
        if capture:
            max_video_ms = max(max_video_ms, settings.capture_max_duration_ms + 1000)
        return cls(
            max_bytes=settings.max_upload_bytes,
            max_video_ms=max_video_ms,
            max_pixels=settings.max_pixels,
            max_long_side_px=settings.max_long_side_px,
        )


@dataclass(frozen=True)
class ProcessedMedia:
    """The result of `process_media`: files inside the work directory plus facts."""

    kind: Literal["image", "video"]
    path: Path  # the final media file, inside workdir
    mime: str  # "image/jpeg", "video/mp4", "video/webm" ("image/webp" is never produced)
    ext: str  # "jpg", "mp4", "webm"
    width: int  # display width, upright
    height: int
    duration_ms: int | None  # None for images
    poster_path: Path  # JPEG poster, inside workdir, long side <= 640
    transcoded: bool  # video only: True when re-encoded; images always re-encoded -> True


def detect_format(head: bytes) -> str | None:
    """The format named by the first bytes of a file.

    Images: "jpeg", "png", "webp", "gif", "heif", "avif". Video: "mp4", "mov",
    "webm", "matroska", "mpeg-ps", "mpeg-ts". None when unknown. Pure function
    of `head`, the first `HEAD_BYTES` bytes of the file (fewer if it is shorter).
    """
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[4:8] == b"ftyp":
        return _iso_bmff_format(head)
    if head[4:8] in QUICKTIME_ATOMS:
        return "mov"
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # EBML: Matroska family
        return "webm" if b"webm" in head[:64] else "matroska"
    if head.startswith(b"\x00\x00\x01\xba"):
        return "mpeg-ps"
    if head[:1] == head[188:189] == b"\x47" or head[4:5] == head[196:197] == b"\x47":
        return "mpeg-ts"  # plain TS, or M2TS with 4-byte timestamps (camcorders)
    return None


def _iso_bmff_format(head: bytes) -> str:
    """Image or video by the `ftyp` brands; generic `mif1`/`msf1` may hold AVIF or HEIC."""
    major = head[8:12]
    ftyp_end = min(len(head), int.from_bytes(head[:4], "big"))
    compatible = {head[i : i + 4] for i in range(16, ftyp_end - 3, 4)}
    if major in GENERIC_HEIF_BRANDS and compatible & AVIF_BRANDS and not compatible & HEVC_BRANDS:
        return "avif"
    if major in HEVC_BRANDS | GENERIC_HEIF_BRANDS:
        return "heif"
    if major in AVIF_BRANDS:
        return "avif"
    return "mov" if major == b"qt  " else "mp4"


def _read_format(path: Path) -> str:
    """`detect_format` of the file at `path`; raises `UnsupportedMedia` if refused."""
    with path.open("rb") as fh:
        head = fh.read(HEAD_BYTES)
    fmt = detect_format(head)
    if fmt == "gif":
        raise UnsupportedMedia("GIF is not supported; upload a video instead")
    if fmt is None or fmt not in IMAGE_FORMATS | VIDEO_FORMATS:
        raise UnsupportedMedia("unsupported file type; send JPEG, PNG, WebP, HEIC, MP4 or WebM")
    return fmt


def sniff(path: Path) -> Literal["image", "video"]:
    """Classify the file at `path` as "image" or "video" by its magic bytes only.

    Raises `UnsupportedMedia` (415) for anything not accepted (text, GIF,
    HEIC without `pillow_heif`, unknown containers).
    """
    return "image" if _read_format(path) in IMAGE_FORMATS else "video"


def process_media(
    src: Path, workdir: Path, limits: MediaLimits, *, consume: bool = False
) -> ProcessedMedia:
    """Normalise the upload at `src` into `workdir` (synchronous, CPU bound).

    Writes `<token>.<ext>` and `<token>.poster.jpg` into `workdir` (which must
    exist) and returns their description. A video kept as sent is copied, or
    with `consume` renamed (`src` is then gone: the file is written once, by
    the upload). On any error nothing written here is left behind. Raises `PayloadTooLarge` (413, over `limits.max_bytes`),
    `UnsupportedMedia` (415) or `InvalidMedia` (422: corrupt, truncated,
    too many pixels, too long).
    """
    fmt = _checked_format(src, limits)
    token = secrets.token_hex(8)
    try:
        if fmt in IMAGE_FORMATS:
            return _process_image(src, workdir, token, limits)
        return _process_video(src, workdir, token, fmt, limits, consume)
    except BaseException:
        _remove_outputs(workdir, token)
        raise


def estimate_bytes(src: Path, limits: MediaLimits) -> int:
    """Upper bound of the memory `process_media(src, ..., limits)` holds, bytes.

    From the file's header only: no pixel is decoded (see `images.estimate_bytes`
    and `video_memory.estimate_bytes`). Raises what `process_media` raises for
    a file refused by its size, type, header or pixel count.
    """
    fmt = _checked_format(src, limits)
    if fmt in IMAGE_FORMATS:
        return images.estimate_bytes(
            src, max_pixels=limits.max_pixels, long_side=limits.max_long_side_px
        )
    return video_memory.estimate_bytes(
        src, max_pixels=limits.max_pixels, max_long_side_px=limits.max_long_side_px
    )


def _checked_format(src: Path, limits: MediaLimits) -> str:
    """`_read_format`, after refusing empty files and files over `limits.max_bytes`."""
    size = src.stat().st_size
    if size > limits.max_bytes:
        raise PayloadTooLarge(f"file is {size} bytes; the limit is {limits.max_bytes}")
    if size == 0:
        raise InvalidMedia("file is empty")
    return _read_format(src)


def _process_image(src: Path, workdir: Path, token: str, limits: MediaLimits) -> ProcessedMedia:
    path, poster = workdir / f"{token}.jpg", workdir / f"{token}.poster.jpg"
    width, height = images.process_image(
        src, path, poster, max_pixels=limits.max_pixels, max_long_side_px=limits.max_long_side_px
    )
    return ProcessedMedia("image", path, "image/jpeg", "jpg", width, height, None, poster, True)


def _process_video(
    src: Path, workdir: Path, token: str, fmt: str, limits: MediaLimits, consume: bool
) -> ProcessedMedia:
    """Probe, then keep (browser-ready) or transcode to MP4; poster from the first frame."""
    info = video.probe_video(
        src, fmt, max_pixels=limits.max_pixels, max_video_ms=limits.max_video_ms
    )
    keep = video.can_keep(info, max_long_side_px=limits.max_long_side_px)
    ext = fmt if keep else "mp4"
    path = workdir / f"{token}.{ext}"
    if keep:
        (_move if consume else _copy)(src, path)
        width, height = info.display_size
    else:
        width, height = video.transcode(src, path, info, max_long_side_px=limits.max_long_side_px)
    poster = workdir / f"{token}.poster.jpg"
    images.save_poster(info.first_frame, poster)
    return ProcessedMedia(
        "video", path, VIDEO_MIME[ext], ext, width, height, info.duration_ms, poster, not keep
    )


def _copy(src: Path, dst: Path) -> None:
    """Byte copy of `src` to `dst`, via a temporary name in the same directory."""
    tmp = images.part_path(dst)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def _move(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`; a byte copy (then `src` removed) across filesystems."""
    try:
        os.replace(src, dst)
    except OSError:
        _copy(src, dst)
        src.unlink()


def _remove_outputs(workdir: Path, token: str) -> None:
    """Delete every file this call created: `<token>.*` and their `.part` temporaries."""
    for pattern in (f"{token}.*", f".{token}.*"):
        for leftover in workdir.glob(pattern):
            leftover.unlink(missing_ok=True)
