"""Still images: decode safely, turn upright, strip metadata, re-encode as JPEG.

Every accepted image (JPEG, PNG, WebP, AVIF when Pillow decodes it, HEIC/HEIF
when `pillow_heif` is importable) is re-encoded: EXIF orientation applied,
colour converted to sRGB RGB (alpha flattened onto white), long side capped,
saved as a progressive JPEG with no EXIF/GPS/XMP/ICC data.
Only the first frame of an animated image is kept. Errors are `errors`
exceptions: `InvalidMedia` (422) for bombs and corrupt or truncated files.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image, ImageCms, ImageOps, features

from server.errors import InvalidMedia

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


def load_upright(im: Image.Image, *, long_side: int) -> Image.Image:
    """Decode `im` fully and return an upright sRGB `RGB` image, long side <= `long_side`.

    Raises `InvalidMedia` when the pixel data is truncated or corrupt.
    """
    try:
        if im.format == "JPEG":
            im.draft("RGB", (long_side, long_side))  # cheap DCT downscale of huge JPEGs
        im.load()
        icc = im.info.get("icc_profile")
        upright = ImageOps.exif_transpose(im) or im
        rgb = to_srgb_rgb(upright, icc=icc)
    except Image.DecompressionBombError as exc:
        raise InvalidMedia("image has too many pixels") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidMedia("image data is truncated or corrupt") from exc
    rgb.thumbnail((long_side, long_side), Image.Resampling.LANCZOS)
    return rgb


def to_srgb_rgb(im: Image.Image, *, icc: bytes | None = None) -> Image.Image:
    """Convert any mode to 8-bit `RGB`; transparency is flattened onto white.

    `icc` is the source's embedded ICC profile; when given, colours are mapped
    from it to sRGB so that dropping the profile does not shift them.
    """
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        im = im.convert("I").point(lambda v: v * (1 / 256)).convert("L")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        flat = Image.new("RGB", rgba.size, WHITE)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        im = flat
    elif im.mode != "RGB":
        im = im.convert("RGB")
    if icc:
        im = _icc_to_srgb(im, icc)
    return im


def _icc_to_srgb(im: Image.Image, icc: bytes) -> Image.Image:
    """Map `im` from its embedded ICC profile to sRGB; on a bad profile keep the pixels."""
    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        srgb = ImageCms.createProfile("sRGB")
        converted = ImageCms.profileToProfile(im, source, srgb, outputMode="RGB")
    except (ImageCms.PyCMSError, OSError, ValueError, TypeError):
        return im
    return converted if converted is not None else im


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
    May leave `dst`/`poster` behind on error: the
    caller cleans up.
    """
    with open_checked(src, max_pixels=max_pixels) as im:
        upright = load_upright(im, long_side=max_long_side_px)
    save_jpeg(upright, dst)
    save_poster(upright, poster)
    return upright.size
