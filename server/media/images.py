"""Still images: decode within a memory budget, turn upright, strip metadata, re-encode.

Every accepted image (JPEG, PNG, WebP, AVIF when Pillow decodes it, HEIC/HEIF
when `pillow_heif` is importable) is re-encoded: EXIF orientation applied,
colour converted to sRGB RGB (alpha flattened onto white), long side capped,
saved as a progressive JPEG with no EXIF/GPS/XMP/ICC data.
Only the first frame of an animated image is kept. Errors are `errors`
exceptions: `InvalidMedia` (422) for bombs and corrupt or truncated files.

Memory: the decoded picture is the one full-size buffer. JPEGs are decoded
already scaled down (libjpeg DCT scaling, `Image.draft`); every other format is
reduced by an integer factor right after decoding, a strip of rows at a time
(each strip flattened onto white and reduced on its own, so no full-size RGB or
premultiplied copy is ever made), and the full-size buffer is freed before the
final resample, the EXIF turn and the ICC conversion, which all work on the
reduced copy. `estimate_bytes` states the peak from the header alone, for
admission against `media_memory_budget_bytes` (see `server.membudget`).
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import ExifTags, Image, ImageCms, features

from server.core.errors import InvalidMedia

try:  # HEIC/HEIF decoding is optional: without it HEIC uploads are a 415.
    import pillow_heif

    pillow_heif.register_heif_opener()
    HEIF_AVAILABLE = True
except ImportError:  # pragma: no cover - depends on the environment
    HEIF_AVAILABLE = False

AVIF_AVAILABLE: bool = bool(features.check("avif"))
JPEG_QUALITY = 85
POSTER_LONG_SIDE = 640
# Pillow format names we let `Image.open` try; anything else is never parsed.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "AVIF", "HEIF")
WHITE = (255, 255, 255)
STRIP_BYTES = 4 * 1024 * 1024  # full-size rows converted at a time while reducing
# Bytes per pixel of Pillow's own storage: 1 for 8-bit single-band modes, 2 for
# 16-bit ones, 4 for everything else (RGB is stored as 32-bit pixels too).
PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}
# What a decoder holds beside Pillow's buffer at its peak, bytes per pixel, measured
# with `tests/test_memory.py` (VmHWM): libwebp's animation decoder keeps two
# RGBA canvases and hands Pillow a third copy as `bytes`; libavif decodes into
# YUV(A) planes (up to 12 bits: 2 bytes a sample) and an RGBA buffer that Pillow
# then copies (Pillow does not say the bit depth: the worst case is taken).
# HEIF is computed from its header by `_heif_decoder_bytes`.
DECODER_BYTES_PER_PIXEL = {"WEBP": 12, "AVIF": 12}
CHROMA_PLANES = {420: 0.5, 422: 1.0, 444: 2.0}  # both chroma planes, as a share of luma
ORIENTATION_TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}  # EXIF Orientation -> the turn that makes the picture upright (as ImageOps.exif_transpose)


def part_path(path: Path) -> Path:
    """The temporary sibling (`.<name>.part`) a file is written to before rename."""
    return path.with_name(f".{path.name}.part")


def open_checked(src: Path, *, max_pixels: int) -> Image.Image:
    """Open `src` lazily and refuse bombs before any pixel is decoded.

    Returns a not-yet-loaded Pillow image. Raises `InvalidMedia` when the
    header cannot be parsed or `width * height > max_pixels`.
    """
    try:
        im = Image.open(src, formats=ALLOWED_FORMATS)
    except Image.DecompressionBombError as exc:
        raise InvalidMedia("image has too many pixels") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidMedia("image cannot be decoded") from exc
    width, height = im.size
    if width <= 0 or height <= 0 or width * height > max_pixels:
        im.close()
        raise InvalidMedia(f"image is {width}x{height}; at most {max_pixels} pixels are accepted")
    return im


def open_for_decode(src: Path, *, max_pixels: int, long_side: int) -> tuple[Image.Image, int]:
    """`open_checked`, then ask the decoder for a reduced picture where it can.

    Returns `(image, peak_bytes)`: the not-yet-loaded image (JPEG: set to decode
    at 1/2, 1/4 or 1/8 scale, the smallest still >= `long_side`) and
    `decode_bytes` for it.
    """
    im = open_checked(src, max_pixels=max_pixels)
    coefficients = _jpeg_coefficient_bytes(im)  # at the full size: taken before draft
    if im.format == "JPEG":
        im.draft("RGB", (long_side, long_side))
    return im, decode_bytes(im, long_side) + coefficients


def decode_bytes(im: Image.Image, long_side: int) -> int:
    """Upper bound of the memory `decode_upright` holds at its peak for `im`, bytes.

    From the header only (`im` not loaded; after `draft`): Pillow's full-size
    buffer, what the format's decoder holds beside it (`DECODER_BYTES_PER_PIXEL`),
    the reduced copy, the final image twice (resample, then turn or ICC), and
    two strips. Progressive JPEGs add `_jpeg_coefficient_bytes`, which
    `open_for_decode` counts.
    """
    width, height = im.size
    pixels = width * height
    decoder = (
        _heif_decoder_bytes(im)
        if im.format == "HEIF"
        else DECODER_BYTES_PER_PIXEL.get(im.format or "", 0)
    )
    full = math.ceil(pixels * (PIXEL_BYTES.get(im.mode, 4) + decoder))
    factor = reduce_factor(im.size, long_side)
    reduced = math.ceil(width / factor) * math.ceil(height / factor) * 4
    final = min(pixels, long_side * long_side) * 4
    return full + reduced + 2 * final + 2 * STRIP_BYTES


def _heif_decoder_bytes(im: Image.Image) -> float:
    """Bytes per pixel libheif holds beside Pillow's buffer while `pillow_heif` decodes `im`.

    The decoded planes (luma, chroma as subsampled, alpha; 2 bytes a sample
    above 8 bits), the 8-bit interleaved RGB(A) that Pillow copies from, and,
    above 8 bits, the 16-bit interleaved image libheif converts from
    (`pillow_heif` opens with `convert_hdr_to_8bit=True`). `im.info` carries
    `bit_depth` and `chroma` (420/422/444; unknown counts as 444).
    """
    sample = 2 if int(im.info.get("bit_depth") or 8) > 8 else 1
    bands = len(im.getbands())
    alpha = 1 if "A" in im.getbands() else 0
    planes = sample * (1 + CHROMA_PLANES.get(im.info.get("chroma") or 444, 2.0) + alpha)
    return planes + bands + (2 * bands if sample == 2 else 0)


def _jpeg_coefficient_bytes(im: Image.Image) -> int:
    """Bytes of DCT coefficients libjpeg buffers for a progressive JPEG; 0 otherwise.

    A progressive (multi-scan) JPEG is decoded by collecting every scan's
    coefficients for the whole image first: 64 16-bit values per 8x8 block of
    each component, at the full size whatever the DCT scaling (libjpeg's
    `jdcoefct.c`, "whole-image" buffer). Components are subsampled by their
    sampling factors (`im.layer`: `(id, h, v, table)`).
    """
    if im.format != "JPEG" or not im.info.get("progressive"):
        return 0
    layers = getattr(im, "layer", None) or [(0, 1, 1, 0)] * len(im.getbands())
    h_max = max(h for _, h, _, _ in layers)
    v_max = max(v for _, _, v, _ in layers)
    width, height = im.size
    total = 0
    for _, h, v, _ in layers:
        blocks_w = math.ceil(math.ceil(width * h / h_max) / 8) + h_max
        blocks_h = math.ceil(math.ceil(height * v / v_max) / 8) + v_max
        total += blocks_w * blocks_h * 64 * 2
    return total


def reduce_factor(size: tuple[int, int], long_side: int) -> int:
    """The integer factor that shrinks `size` most while its long side stays >= `long_side`."""
    return max(1, max(size) // long_side)


@dataclass(frozen=True)
class Reduced:
    """What `load_reduced` keeps of a decoded image: a small RGB copy and its facts."""

    image: Image.Image  # RGB, alpha already on white, long side < 2 * long_side
    icc: bytes | None  # the source's embedded ICC profile
    orientation: int  # EXIF Orientation, 1 when none


def load_reduced(im: Image.Image, *, long_side: int) -> Reduced:
    """Decode `im` (as from `open_for_decode`) and return an RGB copy reduced by `reduce_factor`.

    The copy does not share `im`'s buffer: closing `im` afterwards frees the
    full-size picture. Raises `InvalidMedia` when the pixel data is truncated or corrupt.
    """
    try:
        im.load()
        icc = im.info.get("icc_profile")
        orientation = im.getexif().get(ExifTags.Base.Orientation, 1)
        factor = reduce_factor(im.size, long_side)
        if factor == 1 and im.mode == "RGB":
            image = im.copy()
        else:
            image = _reduce_in_strips(im, factor)
    except Image.DecompressionBombError as exc:
        raise InvalidMedia("image has too many pixels") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidMedia("image data is truncated or corrupt") from exc
    return Reduced(image, icc, orientation if orientation in ORIENTATION_TURNS else 1)


def _reduce_in_strips(im: Image.Image, factor: int) -> Image.Image:
    """`flatten_rgb` then `Image.reduce(factor)`, a strip of rows at a time.

    Flattening before reducing equals reducing premultiplied colour (both are
    linear), which is what `Image.reduce` does for RGBA via a full-size copy.
    """
    width, height = im.size
    rows = max(1, STRIP_BYTES // (width * 4) // factor) * factor
    out = Image.new("RGB", (math.ceil(width / factor), math.ceil(height / factor)))
    for top in range(0, height, rows):
        strip = flatten_rgb(im.crop((0, top, width, min(height, top + rows))))
        out.paste(strip.reduce(factor) if factor > 1 else strip, (0, top // factor))
    return out


def finish_upright(reduced: Reduced, *, long_side: int) -> Image.Image:
    """The reduced copy scaled to a long side <= `long_side` (Lanczos), upright, in sRGB."""
    im = reduced.image
    if max(im.size) > long_side:
        im.thumbnail((long_side, long_side), Image.Resampling.LANCZOS)
    if reduced.orientation in ORIENTATION_TURNS:
        im = im.transpose(ORIENTATION_TURNS[reduced.orientation])
    return _icc_to_srgb(im, reduced.icc) if reduced.icc else im


def flatten_rgb(im: Image.Image) -> Image.Image:
    """Convert any mode to 8-bit `RGB`; transparency is flattened onto white."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        im = im.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        flat = Image.new("RGB", rgba.size, WHITE)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return im if im.mode == "RGB" else im.convert("RGB")


def to_srgb_rgb(im: Image.Image, *, icc: bytes | None = None) -> Image.Image:
    """`flatten_rgb`, then colours mapped from `icc` (the source's embedded profile) to sRGB."""
    im = flatten_rgb(im)
    return _icc_to_srgb(im, icc) if icc else im


def _icc_to_srgb(im: Image.Image, icc: bytes) -> Image.Image:
    """Map `im` from its embedded ICC profile to sRGB; on a bad profile keep the pixels."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        srgb = ImageCms.createProfile("sRGB")
        converted = ImageCms.profileToProfile(im, source, srgb, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return im
    return converted if converted is not None else im


def estimate_bytes(src: Path, *, max_pixels: int, long_side: int) -> int:
    """Peak memory `decode_upright(src, ...)` and the saves after it need, bytes, from the header.

    Raises what `open_checked` raises. A WebP file is also read whole, twice
    (Pillow, then libwebp's copy), so its size counts twice.
    """
    im, peak = open_for_decode(src, max_pixels=max_pixels, long_side=long_side)
    with im:
        if im.format == "WEBP":
            peak += 2 * src.stat().st_size
    return peak


def decode_upright(src: Path, *, max_pixels: int, long_side: int) -> Image.Image:
    """The image at `src` decoded within `estimate_bytes`: upright sRGB RGB, long side <= `long_side`.

    The full-size picture is freed (and with it a WebP decoder's canvases)
    before the reduced copy is finished. Raises `InvalidMedia`.
    """
    im, _ = open_for_decode(src, max_pixels=max_pixels, long_side=long_side)
    with im:
        reduced = load_reduced(im, long_side=long_side)
    del im  # the last reference: libwebp's canvases go with the image object
    return finish_upright(reduced, long_side=long_side)


def save_jpeg(im: Image.Image, dst: Path, *, quality: int = JPEG_QUALITY) -> None:
    """Write `im` as a metadata-free JPEG to `dst` atomically (temp file, then rename)."""
    clean = im if im.mode == "RGB" else im.convert("RGB")
    clean.info = {}  # nothing of the source (EXIF, XMP, ICC, comments) may leak out
    tmp = part_path(dst)
    try:
        clean.save(tmp, "JPEG", quality=quality, optimize=True, progressive=True)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)


def save_poster(im: Image.Image, dst: Path, *, long_side: int = POSTER_LONG_SIDE) -> None:
    """Write a JPEG poster of `im` (long side <= `long_side` px) to `dst` atomically."""
    poster = im.convert("RGB") if im.mode != "RGB" else im.copy()
    poster.thumbnail((long_side, long_side), Image.Resampling.LANCZOS)
    save_jpeg(poster, dst)


def process_image(
    src: Path, dst: Path, poster: Path, *, max_pixels: int, max_long_side_px: int
) -> tuple[int, int]:
    """Re-encode the image at `src` to the JPEG `dst` plus a JPEG `poster`.

    Returns the output `(width, height)` in pixels, upright. Raises
    `InvalidMedia` (bomb, corrupt, truncated, or a format Pillow cannot read).
    Holds at most `estimate_bytes(src, ...)` of memory. May leave
    `dst`/`poster` behind on error: the caller cleans up.
    """
    upright = decode_upright(src, max_pixels=max_pixels, long_side=max_long_side_px)
    save_jpeg(upright, dst)
    save_poster(upright, poster)
    return upright.size
