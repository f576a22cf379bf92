"""Unit tests for server.media / server.images / server.video on real sample files.

No Redis, no server. Synthetic inputs (rotated, HEVC, audio, moov-at-end,
GPS-tagged) are made here with PyAV from the real footage in tests/media.
"""

from __future__ import annotations

import array
import math
import shutil
import struct
import sys
import zlib
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import av
import pytest
from av.audio.stream import AudioStream
from av.video.stream import VideoStream
from PIL import Image, ImageChops, ImageCms, ImageStat

if str(Path(__file__).resolve().parents[1]) not in sys.path:  # runnable without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from server.core.errors import InvalidMedia, PayloadTooLarge, UnsupportedMedia
from server.media import images
from server.media.pipeline import MediaLimits, ProcessedMedia, detect_format, process_media, sniff
from server.media.video import mp4_top_level_boxes, upright_image

MEDIA = Path(__file__).parent / "media"
LIMITS = MediaLimits()
IMAGES = [
    "astronaut.png",
    "coffee.png",
    "chelsea.png",
    "rocket.jpg",
    "chelsea_exif_orientation6.jpg",
]


# ---------------------------------------------------------------- helpers


def mean_diff(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute per-channel difference (0..255) of two same-sized RGB images."""
    assert a.size == b.size
    return sum(ImageStat.Stat(ImageChops.difference(a.convert("RGB"), b.convert("RGB"))).mean) / 3


def first_frame(path: Path) -> av.VideoFrame:
    with av.open(str(path)) as container:
        return next(container.decode(video=0))


def assert_no_metadata(path: Path) -> None:
    data = path.read_bytes()
    with Image.open(path) as im:
        assert im.format == "JPEG"
        assert not {"exif", "icc_profile", "xmp", "comment"} & set(im.info)
        assert len(im.getexif()) == 0
    assert b"Exif\x00\x00" not in data
    assert b"ICC_PROFILE" not in data
    assert b"http://ns.adobe.com/xap" not in data


def assert_poster(result: ProcessedMedia) -> Image.Image:
    assert result.poster_path.parent == result.path.parent
    assert result.poster_path.read_bytes()[:3] == b"\xff\xd8\xff"
    poster = Image.open(result.poster_path)
    assert poster.format == "JPEG"
    assert max(poster.size) <= 640
    # same orientation as the media
    assert (poster.width >= poster.height) == (result.width >= result.height)
    return poster


def files_in(workdir: Path) -> list[str]:
    return sorted(p.name for p in workdir.iterdir())


def tone(start: int, count: int, rate: int) -> bytes:
    """`count` mono s16 samples of a 440 Hz sine starting at sample `start`."""
    values = (
        int(9000 * math.sin(2 * math.pi * 440 * i / rate)) for i in range(start, start + count)
    )
    return array.array("h", values).tobytes()


def frames_of(path: Path, count: int) -> Iterator[av.VideoFrame]:
    with av.open(str(path)) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index >= count:
                return
            yield frame


def make_video(
    path: Path,
    *,
    fmt: str,
    vcodec: str,
    acodec: str | None = None,
    seconds: float = 2.0,
    options: dict[str, str] | None = None,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Encode `seconds` of city_vp8.webm (360x640, 25 fps) plus a 44.1 kHz mono tone."""
    with av.open(str(path), "w", format=fmt, options=options or {}) as out:
        out.metadata.update(metadata or {})
        vopts = {"x265-params": "log-level=none"} if vcodec == "libx265" else {}
        vs = out.add_stream(vcodec, rate=25, options=vopts)
        assert isinstance(vs, VideoStream)
        vs.width, vs.height, vs.pix_fmt = 360, 640, "yuv420p"
        aus = out.add_stream(acodec, rate=44_100, layout="mono") if acodec else None
        assert aus is None or isinstance(aus, AudioStream)
        for n, frame in enumerate(frames_of(MEDIA / "city_vp8.webm", int(seconds * 25))):
            picture = frame.reformat(format="yuv420p")
            picture.pts, picture.time_base = n, Fraction(1, 25)
            out.mux(vs.encode(picture))
        out.mux(vs.encode(None))
        if aus is not None:
            total, start = int(seconds * 44_100), 0
            while start < total:
                count = min(1024, total - start)
                sound = av.AudioFrame(format="s16", layout="mono", samples=count)
                sound.planes[0].update(tone(start, count, 44_100))
                sound.sample_rate, sound.pts, sound.time_base = 44_100, start, Fraction(1, 44_100)
                out.mux(aus.encode(sound))
                start += count
            out.mux(aus.encode(None))
    return path


def remux_rotated(src: Path, dst: Path, degrees: int, packets: int = 60, fmt: str = "mp4") -> Path:
    """Copy the first `packets` video packets of `src` with a display-matrix rotation.

    PyAV 18 writes the matrix (`VideoStream.set_display_rotation`, counter-clockwise
    degrees; 0 writes an identity matrix) and reads it back as `VideoFrame.rotation`.
    """
    with av.open(str(src)) as inp, av.open(str(dst), "w", format=fmt) as out:
        stream = out.add_stream_from_template(inp.streams.video[0])
        stream.set_display_rotation(degrees)
        for index, packet in enumerate(inp.demux(video=0)):
            if packet.dts is None or index >= packets:
                continue
            packet.stream = stream
            out.mux(packet)
    return dst


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width`x`height` but has no pixel data: a bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory of synthetic inputs shared by the module (made once)."""
    return tmp_path_factory.mktemp("synth")


@pytest.fixture(scope="module")
def city_mpg(tmp_path_factory: pytest.TempPathFactory) -> ProcessedMedia:
    """city.mpg (MPEG-2 in MPEG-PS) processed once per module."""
    workdir = tmp_path_factory.mktemp("city")
    return process_media(MEDIA / "city.mpg", workdir, LIMITS)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


# ---------------------------------------------------------------- sniffing


@pytest.mark.parametrize("name", IMAGES)
def test_sniff_images(name: str) -> None:
    assert sniff(MEDIA / name) == "image"


@pytest.mark.parametrize("name", ["city.mpg", "city_vertical_h264.mp4", "city_vp8.webm"])
def test_sniff_videos(name: str) -> None:
    assert sniff(MEDIA / name) == "video"


def test_sniff_ignores_file_name(tmp_path: Path) -> None:
    disguised = tmp_path / "holiday.mp4"
    shutil.copyfile(MEDIA / "chelsea.png", disguised)
    assert sniff(disguised) == "image"
    video_as_jpg = tmp_path / "cat.jpg"
    shutil.copyfile(MEDIA / "city_vp8.webm", video_as_jpg)
    assert sniff(video_as_jpg) == "video"


def test_text_named_jpg_is_unsupported(tmp_path: Path, workdir: Path) -> None:
    fake = tmp_path / "x.jpg"
    fake.write_text("this is not a picture\n" * 20)
    with pytest.raises(UnsupportedMedia) as err:
        sniff(fake)
    assert err.value.status == 415
    with pytest.raises(UnsupportedMedia):
        process_media(fake, workdir, LIMITS)
    assert files_in(workdir) == []


def test_gif_is_unsupported(tmp_path: Path, workdir: Path) -> None:
    gif = tmp_path / "anim.gif"
    Image.open(MEDIA / "chelsea.png").save(gif, "GIF")
    with pytest.raises(UnsupportedMedia, match="GIF"):
        process_media(gif, workdir, LIMITS)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x00\x00\x00\x14ftypqt  \x00\x00\x02\x00qt  ", "mov"),
        (b"\x00\x00\x00\x08wide\x00\x00\x00\x00mdat", "mov"),
        (b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom", "mp4"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "heif"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1avif", "avif"),
        (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska", "matroska"),
        (b"\x47" + bytes(187) + b"\x47" + bytes(11), "mpeg-ts"),
        (bytes(4) + b"\x47" + bytes(191) + b"\x47" + bytes(3), "mpeg-ts"),
        (b"GIF89a" + bytes(10), "gif"),
        (b"%PDF-1.7\n", None),
        (b"", None),
    ],
)
def test_detect_format(head: bytes, expected: str | None) -> None:
    assert detect_format(head) == expected


def test_avif(tmp_path: Path, workdir: Path) -> None:
    avif = tmp_path / "photo.avif"
    Image.open(MEDIA / "chelsea.png").save(avif, "AVIF")
    if images.AVIF_AVAILABLE:  # this Pillow build has libavif: decoded like any image
        result = process_media(avif, workdir, LIMITS)
        assert (result.width, result.height, result.ext) == (451, 300, "jpg")
    else:  # pragma: no cover - depends on the Pillow build
        with pytest.raises(UnsupportedMedia):
            process_media(avif, workdir, LIMITS)


def test_too_many_bytes(workdir: Path) -> None:
    with pytest.raises(PayloadTooLarge):
        process_media(MEDIA / "rocket.jpg", workdir, MediaLimits(max_bytes=1000))
    assert files_in(workdir) == []


# ---------------------------------------------------------------- images


@pytest.mark.parametrize("name", IMAGES)
def test_image_reencoded_without_metadata(name: str, workdir: Path) -> None:
    result = process_media(MEDIA / name, workdir, LIMITS)
    assert (result.kind, result.mime, result.ext) == ("image", "image/jpeg", "jpg")
    assert result.transcoded is True and result.duration_ms is None
    assert result.path.parent == workdir and result.path.suffix == ".jpg"
    with Image.open(result.path) as im:
        assert im.size == (result.width, result.height)
    assert_no_metadata(result.path)
    assert_poster(result)
    assert set(files_in(workdir)) == {result.path.name, result.poster_path.name}


def test_exif_orientation_applied(workdir: Path) -> None:
    source = Image.open(MEDIA / "chelsea_exif_orientation6.jpg")
    assert source.size == (300, 451) and source.getexif().get(0x0112) == 6
    result = process_media(MEDIA / "chelsea_exif_orientation6.jpg", workdir, LIMITS)
    assert (result.width, result.height) == (451, 300)
    reference = Image.open(MEDIA / "chelsea.png")
    out = Image.open(result.path)
    assert mean_diff(out, reference) < 8  # JPEG noise only
    assert mean_diff(out, reference.transpose(Image.Transpose.ROTATE_180)) > 20  # wrong way round
    assert_no_metadata(result.path)


def test_gps_icc_xmp_stripped(tmp_path: Path, workdir: Path) -> None:
    exif = Image.Exif()
    exif[0x010F] = "PhoneMaker"
    exif.get_ifd(0x8825)[2] = (48.0, 51.0, 29.0)  # GPSLatitude
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    xmp = b'<x:xmpmeta xmlns:x="adobe:ns:meta/">http://ns.adobe.com/xap/1.0/</x:xmpmeta>'
    tagged = tmp_path / "tagged.jpg"
    Image.open(MEDIA / "coffee.png").save(tagged, exif=exif, icc_profile=srgb, xmp=xmp)
    with Image.open(tagged) as im:
        assert {"exif", "icc_profile"} <= set(im.info)
    result = process_media(tagged, workdir, LIMITS)
    assert_no_metadata(result.path)
    assert b"PhoneMaker" not in result.path.read_bytes()


def test_long_side_capped(workdir: Path) -> None:
    limits = MediaLimits(max_long_side_px=200)
    square = process_media(MEDIA / "astronaut.png", workdir, limits)
    assert (square.width, square.height) == (200, 200)
    tall = process_media(MEDIA / "chelsea_exif_orientation6.jpg", workdir, limits)
    assert (tall.width, tall.height) == (200, 133)  # 451x300 upright, aspect kept
    assert Image.open(tall.path).size == (200, 133)


def test_poster_of_big_image_is_640(tmp_path: Path, workdir: Path) -> None:
    big = tmp_path / "big.png"
    Image.open(MEDIA / "coffee.png").resize((1800, 1200)).save(big)
    result = process_media(big, workdir, LIMITS)
    assert (result.width, result.height) == (1800, 1200)
    assert assert_poster(result).size == (640, 427)


def test_alpha_flattened_onto_white(tmp_path: Path, workdir: Path) -> None:
    clear = tmp_path / "clear.png"
    Image.new("RGBA", (40, 30), (255, 0, 0, 0)).save(clear)
    result = process_media(clear, workdir, LIMITS)
    assert Image.open(result.path).convert("RGB").getpixel((20, 15)) == (255, 255, 255)


def test_webp_and_heic_accepted(tmp_path: Path, workdir: Path) -> None:
    reference = Image.open(MEDIA / "chelsea.png")
    webp = tmp_path / "photo.webp"
    reference.save(webp, "WEBP", quality=90)
    heic = tmp_path / "photo.heic"  # pillow_heif is a dependency; it registers "HEIF"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways like a phone portrait, must come out upright
    reference.transpose(Image.Transpose.ROTATE_90).save(heic, "HEIF", exif=exif.tobytes())
    for path in (webp, heic):
        assert sniff(path) == "image"
        result = process_media(path, workdir, LIMITS)
        assert (result.width, result.height) == (451, 300)
        assert mean_diff(Image.open(result.path), reference) < 8
        assert_no_metadata(result.path)


def test_pixel_cap_refused(workdir: Path) -> None:
    with pytest.raises(InvalidMedia, match="pixels") as err:
        process_media(MEDIA / "coffee.png", workdir, MediaLimits(max_pixels=100_000))
    assert err.value.status == 422
    assert files_in(workdir) == []


def test_bomb_header_refused_before_decoding(tmp_path: Path, workdir: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_header_only(40_000, 40_000))  # 1.6 Gpx claimed, 57 bytes on disk
    with pytest.raises(InvalidMedia):
        process_media(bomb, workdir, LIMITS)
    assert files_in(workdir) == []


@pytest.mark.parametrize("name", ["rocket.jpg", "chelsea.png"])
def test_truncated_image_invalid(name: str, tmp_path: Path, workdir: Path) -> None:
    data = (MEDIA / name).read_bytes()
    cut = tmp_path / name
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidMedia):
        process_media(cut, workdir, LIMITS)
    assert files_in(workdir) == []


# ---------------------------------------------------------------- video: kept


def test_h264_mp4_kept(workdir: Path) -> None:
    src = MEDIA / "city_vertical_h264.mp4"
    result = process_media(src, workdir, LIMITS)
    assert (result.kind, result.mime, result.ext, result.transcoded) == (
        "video",
        "video/mp4",
        "mp4",
        False,
    )
    assert result.path.read_bytes() == src.read_bytes()
    assert (result.width, result.height) == (720, 1280)
    assert abs((result.duration_ms or 0) - 7600) <= 100
    assert_poster(result)
    assert set(files_in(workdir)) == {result.path.name, result.poster_path.name}


def test_webm_kept(workdir: Path) -> None:
    src = MEDIA / "city_vp8.webm"
    result = process_media(src, workdir, LIMITS)
    assert (result.mime, result.ext, result.transcoded) == ("video/webm", "webm", False)
    assert result.path.read_bytes() == src.read_bytes()
    assert (result.width, result.height) == (360, 640)
    assert abs((result.duration_ms or 0) - 7600) <= 100
    assert assert_poster(result).size == (360, 640)


def test_kept_video_renamed_when_consumed(workdir: Path, tmp_path: Path) -> None:
    """With `consume` (the media pool's way) the upload is renamed into place, not copied."""
    src = tmp_path / "upload"
    shutil.copyfile(MEDIA / "city_vp8.webm", src)
    inode = src.stat().st_ino
    result = process_media(src, workdir, LIMITS, consume=True)
    assert result.transcoded is False and not src.exists()
    assert result.path.stat().st_ino == inode
    assert result.path.read_bytes() == (MEDIA / "city_vp8.webm").read_bytes()
    kept = process_media(MEDIA / "city_vp8.webm", workdir, LIMITS)  # without it: a copy
    assert (MEDIA / "city_vp8.webm").exists() and kept.path.stat().st_ino != inode


def test_kept_format_still_transcoded_when_too_big(workdir: Path) -> None:
    result = process_media(MEDIA / "city_vp8.webm", workdir, MediaLimits(max_long_side_px=320))
    assert (result.transcoded, result.mime, result.width, result.height) == (
        True,
        "video/mp4",
        180,
        320,
    )
    assert abs((result.duration_ms or 0) - 7600) <= 300


def test_h264_aac_faststart_kept_but_moov_at_end_transcoded(synth: Path, workdir: Path) -> None:
    fast = make_video(
        synth / "fast.mp4",
        fmt="mp4",
        vcodec="libx264",
        acodec="aac",
        options={"movflags": "+faststart"},
    )
    late = make_video(synth / "late.mp4", fmt="mp4", vcodec="libx264", acodec="aac")
    assert mp4_top_level_boxes(fast).index("moov") < mp4_top_level_boxes(fast).index("mdat")
    assert mp4_top_level_boxes(late).index("moov") > mp4_top_level_boxes(late).index("mdat")
    assert process_media(fast, workdir, LIMITS).transcoded is False
    result = process_media(late, workdir, LIMITS)
    assert result.transcoded is True
    boxes = mp4_top_level_boxes(result.path)
    assert boxes.index("moov") < boxes.index("mdat")


def test_gps_tagged_mp4_transcoded(synth: Path, workdir: Path) -> None:
    tagged = make_video(
        synth / "gps.mp4",
        fmt="mp4",
        vcodec="libx264",
        seconds=1,
        options={"movflags": "+faststart"},
        metadata={"location": "+48.8584+002.2945/"},
    )
    result = process_media(tagged, workdir, LIMITS)
    assert result.transcoded is True
    with av.open(str(result.path)) as out:
        assert not any(key.startswith("location") for key in out.metadata)


# ---------------------------------------------------------------- video: transcoded


def test_city_mpg_transcoded_to_h264(city_mpg: ProcessedMedia) -> None:
    result = city_mpg
    assert (result.mime, result.ext, result.transcoded) == ("video/mp4", "mp4", True)
    assert (result.width, result.height) == (720, 404)  # 405 rounded to even
    boxes = mp4_top_level_boxes(result.path)
    assert boxes[0] == "ftyp" and boxes.index("moov") < boxes.index("mdat")
    with av.open(str(MEDIA / "city.mpg")) as src:
        source_ms = (src.duration or 0) // 1000
    with av.open(str(result.path)) as out:
        stream = out.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.codec_context.pix_fmt == "yuv420p"
        assert (stream.codec_context.width, stream.codec_context.height) == (720, 404)
        assert not out.streams.audio
        assert abs((out.duration or 0) // 1000 - source_ms) <= 300
        frames = sum(1 for _ in out.decode(stream))
    assert frames >= 180
    assert abs((result.duration_ms or 0) - source_ms) <= 300
    assert assert_poster(result).size == (640, 360)  # from the 720x405 source frame


def test_rotated_mp4_transcoded_upright(synth: Path, workdir: Path) -> None:
    src = remux_rotated(MEDIA / "city_vertical_h264.mp4", synth / "rot90.mp4", 90)
    assert first_frame(src).rotation == 90
    result = process_media(src, workdir, MediaLimits(max_long_side_px=640))
    assert result.transcoded is True
    assert (result.width, result.height) == (640, 360)  # 720x1280 turned on its side
    out_frame = first_frame(result.path)
    assert out_frame.rotation == 0  # the turn is baked in, not signalled
    raw = first_frame(MEDIA / "city_vertical_h264.mp4").to_image()
    ccw = raw.transpose(Image.Transpose.ROTATE_90).resize((640, 360))
    cw = raw.transpose(Image.Transpose.ROTATE_270).resize((640, 360))
    assert mean_diff(out_frame.to_image(), ccw) < 10
    assert mean_diff(out_frame.to_image(), cw) > 2 * mean_diff(out_frame.to_image(), ccw)
    poster = assert_poster(result)
    assert mean_diff(poster.resize((640, 360)), ccw) < 10


@pytest.mark.parametrize(
    ("degrees", "turn"), [(-90, Image.Transpose.ROTATE_270), (180, Image.Transpose.ROTATE_180)]
)
def test_upright_image_directions(synth: Path, degrees: int, turn: Image.Transpose) -> None:
    src = remux_rotated(
        MEDIA / "city_vertical_h264.mp4", synth / f"rot{degrees}.mp4", degrees, packets=3
    )
    frame = first_frame(src)
    rotation = round(frame.rotation / 90) * 90 % 360
    upright = upright_image(frame, Fraction(1), rotation)
    assert mean_diff(upright, frame.to_image().transpose(turn)) < 1


def test_mov_transcoded_even_with_h264(synth: Path, workdir: Path) -> None:
    mov = remux_rotated(MEDIA / "city_vertical_h264.mp4", synth / "clip.mov", 0, fmt="mov")
    assert sniff(mov) == "video" and mov.read_bytes()[4:12] == b"ftypqt  "
    result = process_media(mov, workdir, MediaLimits(max_long_side_px=320))
    assert (result.transcoded, result.ext, result.width, result.height) == (True, "mp4", 180, 320)


def test_hevc_transcoded(synth: Path, workdir: Path) -> None:
    hevc = make_video(
        synth / "hevc.mp4",
        fmt="mp4",
        vcodec="libx265",
        seconds=1,
        options={"movflags": "+faststart"},
    )
    assert first_frame(hevc) is not None
    result = process_media(hevc, workdir, LIMITS)
    assert (result.transcoded, result.ext, result.width, result.height) == (True, "mp4", 360, 640)
    with av.open(str(result.path)) as out:
        assert out.streams.video[0].codec_context.name == "h264"


def test_audio_transcoded_to_aac_48k_stereo(synth: Path, workdir: Path) -> None:
    ts = make_video(synth / "clip.ts", fmt="mpegts", vcodec="libx264", acodec="mp2")
    assert sniff(ts) == "video"
    result = process_media(ts, workdir, LIMITS)
    assert result.transcoded is True
    assert abs((result.duration_ms or 0) - 2000) <= 100
    with av.open(str(result.path)) as out:
        audio = out.streams.audio[0].codec_context
        assert (audio.name, audio.sample_rate, audio.layout.name) == ("aac", 48_000, "stereo")
        assert audio.format.name == "fltp"
        assert out.streams.video[0].codec_context.name == "h264"
        assert abs((out.duration or 0) / 1000 - 2000) <= 150


# ---------------------------------------------------------------- video: refused


def test_too_long_video_refused(workdir: Path) -> None:
    with pytest.raises(InvalidMedia, match=r"limit is 5\.0 s") as err:
        process_media(MEDIA / "city_vp8.webm", workdir, MediaLimits(max_video_ms=5000))
    assert err.value.status == 422
    assert files_in(workdir) == []


def test_video_pixel_cap_refused(workdir: Path) -> None:
    with pytest.raises(InvalidMedia, match="pixels"):
        process_media(MEDIA / "city_vp8.webm", workdir, MediaLimits(max_pixels=200_000))
    assert files_in(workdir) == []


def test_truncated_mp4_invalid(tmp_path: Path, workdir: Path) -> None:
    data = (MEDIA / "city_vertical_h264.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: int(len(data) * 0.3)])
    with pytest.raises(InvalidMedia):
        process_media(cut, workdir, LIMITS)
    assert files_in(workdir) == []


def test_mp4_without_moov_invalid(synth: Path, tmp_path: Path, workdir: Path) -> None:
    late = make_video(synth / "late_for_cut.mp4", fmt="mp4", vcodec="libx264", seconds=1)
    data = late.read_bytes()
    no_moov = tmp_path / "no_moov.mp4"
    no_moov.write_bytes(data[: data.index(b"moov") - 4])  # cut right before the moov box
    assert "moov" not in mp4_top_level_boxes(no_moov)
    with pytest.raises(InvalidMedia):
        process_media(no_moov, workdir, LIMITS)
    assert files_in(workdir) == []


def test_truncated_webm_invalid(tmp_path: Path, workdir: Path) -> None:
    data = (MEDIA / "city_vp8.webm").read_bytes()
    cut = tmp_path / "cut.webm"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(InvalidMedia, match="truncated"):
        process_media(cut, workdir, LIMITS)
    assert files_in(workdir) == []


def test_audio_only_mp4_unsupported(tmp_path: Path, workdir: Path) -> None:
    voice = tmp_path / "voice.m4a"
    with av.open(str(voice), "w", format="mp4") as out:
        stream = out.add_stream("aac", rate=44_100, layout="mono")
        sound = av.AudioFrame(format="s16", layout="mono", samples=1024)
        sound.planes[0].update(tone(0, 1024, 44_100))
        sound.sample_rate, sound.pts = 44_100, 0
        out.mux(stream.encode(sound))
        out.mux(stream.encode(None))
    with pytest.raises(UnsupportedMedia, match="no video"):
        process_media(voice, workdir, LIMITS)
    assert files_in(workdir) == []


def test_mp4_top_level_boxes() -> None:
    assert mp4_top_level_boxes(MEDIA / "city_vertical_h264.mp4")[:2] == ["ftyp", "moov"]
    assert "moov" not in mp4_top_level_boxes(MEDIA / "chelsea.png")  # garbage: no error
