"""Upload memory is bounded: header estimates, the media pool's budget, a real server's peak.

(a) `MemoryBudget` on its own: FIFO admission, waiting, cancellation, refusal.
(b) For each format, `process_media` run in a fresh Python process on a big,
    highly compressible file made here: its peak RSS (VmHWM, reset through
    /proc/self/clear_refs after a warm-up on a small file of the same kind)
    stays within `media.estimate_bytes` for that file.
(c) A real `python -m server serve`: three 7000x7000 RGBA PNGs (~200 KiB each,
    ~190 MiB decoded) posted at once all succeed, and the server's peak RSS
    stays within `media_memory_budget_bytes` (+ a fixed slack) of its idle RSS.
    Before the budget this peaked at ~1.6 GiB (two decodes at ~800 MiB each).
(d) An upload that needs more than the whole budget on its own gets a 422.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import av
import httpx
import pytest
from PIL import Image, ImageDraw
from starlette.testclient import TestClient

from server.app import create_app
from server.core.settings import Settings
from server.media import images
from server.media.membudget import MIB, MemoryBudget, OverBudget
from server.media.pipeline import MediaLimits, estimate_bytes, process_media
from tests.test_push_processes import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
SLACK_MIB = 64  # allocator and interpreter noise beyond the budget, in a busy server


# ---------------------------------------------------------------- (a) the budget


async def test_budget_admits_in_order_and_waits_for_room() -> None:
    budget = MemoryBudget(100)
    order: list[str] = []
    release = {name: asyncio.Event() for name in ("big", "bigger", "small")}

    async def job(name: str, nbytes: int) -> None:
        async with budget.hold(nbytes):
            order.append(name)
            await release[name].wait()

    big = asyncio.create_task(job("big", 70))
    await asyncio.sleep(0)
    bigger = asyncio.create_task(job("bigger", 60))  # does not fit beside "big": waits
    await asyncio.sleep(0)
    small = asyncio.create_task(job("small", 20))  # would fit, but "bigger" came first
    await asyncio.sleep(0)
    assert order == ["big"] and budget.in_use_bytes == 70 and budget.waiting == 2
    release["big"].set()
    await big
    await asyncio.sleep(0)
    assert order == ["big", "bigger", "small"] and budget.in_use_bytes == 80
    release["bigger"].set()
    release["small"].set()
    await asyncio.gather(bigger, small)
    assert budget.in_use_bytes == 0 and budget.waiting == 0


async def test_cancelled_waiter_gives_its_place_up() -> None:
    budget = MemoryBudget(100)
    async with budget.hold(90):
        head = asyncio.create_task(budget.hold(50).__aenter__())
        await asyncio.sleep(0)
        behind = asyncio.create_task(budget.hold(10).__aenter__())
        await asyncio.sleep(0)
        assert budget.waiting == 2 and not behind.done()
        head.cancel()
        with pytest.raises(asyncio.CancelledError):
            await head
        await asyncio.sleep(0)
        assert behind.done() and budget.in_use_bytes == 100  # 90 + 10: the head no longer blocks
    assert budget.in_use_bytes == 10  # only `behind` (entered by hand, never exited) is held


async def test_request_over_the_whole_budget_is_refused_at_once() -> None:
    budget = MemoryBudget(100)
    with pytest.raises(OverBudget):
        async with budget.hold(101):
            pass  # never reached
    assert budget.in_use_bytes == 0 and budget.waiting == 0


# ---------------------------------------------------------------- (b) estimates


def _stripes(mode: str, size: tuple[int, int]) -> Image.Image:
    """A compressible picture: a flat colour with wide stripes (half-transparent for RGBA)."""
    fill = (10, 200, 30, 128) if mode == "RGBA" else (10, 200, 30)
    stripe = (200, 20, 90, 255) if mode == "RGBA" else (200, 20, 90)
    im = Image.new(mode, size, fill)
    draw = ImageDraw.Draw(im)
    for x in range(0, size[0], 400):
        draw.rectangle([x, 0, x + 200, size[1]], fill=stripe)
    return im


Maker = Callable[[Path, tuple[int, int]], Path]


def _image(mode: str, ext: str, **params: object) -> Maker:
    def make(folder: Path, size: tuple[int, int]) -> Path:
        path = folder / f"{size[0]}x{size[1]}{ext}"
        _stripes(mode, size).save(path, **params)
        return path

    return make


def _video(codec: str, ext: str, frames: int, **options: str) -> Maker:
    """A video of moving squares, so that the encoder really uses its references."""

    def make(folder: Path, size: tuple[int, int]) -> Path:
        path = folder / f"{size[0]}x{size[1]}{ext}"
        with av.open(str(path), "w") as out:
            stream = out.add_stream(codec, rate=10, options=options)
            stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
            for i in range(frames):
                im = Image.new("RGB", size, (0, 120, 0))
                draw = ImageDraw.Draw(im)
                for k in range(8):
                    x, y = (i * 61 + k * size[0] // 8) % size[0], k * size[1] // 8
                    draw.rectangle([x, y, x + 100, y + 100], fill=(255, 30 * k, 0))
                frame = av.VideoFrame.from_image(im)
                frame.pts = i
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        return path

    return make


def _heic_10_bit(folder: Path, size: tuple[int, int]) -> Path:
    """A 10-bit 4:4:4 HEIC (HDR phone photos are 10-bit): libheif's largest buffers."""
    import pillow_heif

    path = folder / f"{size[0]}x{size[1]}-10bit.heic"
    row = bytes(range(256)) * (size[0] * 6 // 256 + 2)
    data = b"".join(row[y % 7 * 2 : y % 7 * 2 + size[0] * 6] for y in range(size[1]))
    pillow_heif.from_bytes(mode="RGB;16", size=size, data=data).save(path, quality=50, chroma=444)
    return path


# name -> (how to make it, the big size measured); each is warmed up on a 64x64 twin
CASES: dict[str, tuple[Maker, tuple[int, int]]] = {
    "png-rgba": (_image("RGBA", ".png", compress_level=9), (4000, 4000)),
    "jpeg-baseline": (_image("RGB", ".jpg", quality=90), (6000, 4000)),
    "jpeg-progressive": (_image("RGB", ".jpg", quality=90, progressive=True), (6000, 4000)),
    "webp-lossless-rgba": (_image("RGBA", ".webp", lossless=True, method=0), (3000, 3000)),
    "heic": (_image("RGB", ".heic", quality=50), (3000, 2000)),
    "heic-10-bit-444": (_heic_10_bit, (2500, 2500)),
    "h264-16-refs": (
        _video("libx264", ".mp4", 24, preset="ultrafast", **{"x264-params": "ref=16:bframes=3"}),
        (1920, 1080),
    ),
    "vp9": (
        _video("libvpx-vp9", ".webm", 12, deadline="realtime", **{"cpu-used": "8"}),
        (2560, 1440),  # over the long side cap: transcoded, not kept
    ),
}
if images.AVIF_AVAILABLE:
    CASES["avif-rgba"] = (_image("RGBA", ".avif", quality=50, speed=10), (4000, 4000))

MEASURE = textwrap.dedent(
    """
    import json, sys, tempfile
    from pathlib import Path
    from server.media.pipeline import MediaLimits, process_media

    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

    warm, src = Path(sys.argv[1]), Path(sys.argv[2])
    process_media(warm, Path(tempfile.mkdtemp()), MediaLimits())  # libraries loaded, pools made
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM to the current RSS
    media = process_media(src, Path(tempfile.mkdtemp()), MediaLimits())
    print(json.dumps({"peak": status("VmHWM") - before, "size": [media.width, media.height]}))
    """
)


@pytest.mark.parametrize("case", sorted(CASES))
def test_estimate_bounds_the_measured_peak(case: str, tmp_path: Path) -> None:
    make, size = CASES[case]
    src, warm = make(tmp_path, size), make(tmp_path, (64, 64))
    estimate = estimate_bytes(src, MediaLimits())
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(warm), str(src)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    measured = json.loads(out.stdout.splitlines()[-1])
    assert max(measured["size"]) <= MediaLimits().max_long_side_px
    peak = measured["peak"]
    assert peak <= estimate, f"{case}: peak {peak // MIB} MiB > estimate {estimate // MIB} MiB"


def test_estimate_is_refused_like_processing(tmp_path: Path) -> None:
    from server.core.errors import InvalidMedia, UnsupportedMedia

    text = tmp_path / "notes.png"
    text.write_text("hello")
    with pytest.raises(UnsupportedMedia):
        estimate_bytes(text, MediaLimits())
    big = _image("RGB", ".png")(tmp_path, (2000, 2000))
    with pytest.raises(InvalidMedia, match="pixels"):
        estimate_bytes(big, MediaLimits(max_pixels=1_000_000))


def test_reduced_alpha_is_flattened_onto_white_without_fringes(tmp_path: Path) -> None:
    """Strip-wise reduction must keep what flattening the full picture gives."""
    im = Image.new("RGBA", (4000, 1000), (255, 0, 0, 0))  # invisible red...
    ImageDraw.Draw(im).rectangle([0, 0, 1999, 999], fill=(0, 0, 255, 255))  # ...beside opaque blue
    src = tmp_path / "half.png"
    im.save(src)
    result = process_media(src, tmp_path, MediaLimits(max_long_side_px=500))
    out = Image.open(result.path).convert("RGB")
    assert out.size == (500, 125)
    r, g, b = out.getpixel((400, 60))
    assert min(r, g, b) >= 250  # white: no red leaked from the transparent pixels
    r, g, b = out.getpixel((100, 60))
    assert b >= 240 and r <= 10 and g <= 10


def test_reduced_image_is_turned_upright(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 270 to show
    im = Image.new("RGB", (6000, 2000), (255, 255, 255))
    ImageDraw.Draw(im).rectangle([0, 0, 1999, 1999], fill=(0, 0, 0))  # black at the stored left
    src = tmp_path / "sideways.png"
    im.save(src, exif=exif)
    result = process_media(src, tmp_path, MediaLimits())
    out = Image.open(result.path).convert("L")
    assert out.size == (640, 1920)
    assert out.getpixel((320, 100)) < 20 and out.getpixel((320, 1800)) > 235  # black on top


# ---------------------------------------------------------------- (c) a real server


def _worst_png(path: Path) -> Path:
    Image.new("RGBA", (7000, 7000), (10, 200, 30, 128)).save(path, compress_level=9)
    return path


def _rss(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {key} for {pid}")


def test_concurrent_worst_case_pngs_stay_within_the_budget(redis_url: str, tmp_path: Path) -> None:
    budget = 320 * MIB  # room for one 7000x7000 RGBA decode (~250 MiB estimated), not two
    png = _worst_png(tmp_path / "worst.png").read_bytes()
    assert len(png) < 300 * 1024
    env = {
        "STORIES_REDIS_PREFIX": f"tmem{uuid.uuid4().hex[:8]}:",
        "STORIES_POSTS_PER_MINUTE": "1000",
        "STORIES_MEDIA_MEMORY_BUDGET_BYTES": str(budget),
        "STORIES_MEDIA_WORKERS": "2",
    }
    server = ServerProcess(tmp_path, "mem", env, "--redis-url", redis_url)
    try:
        server.wait_ready()
        url = server.endpoint.url
        token = httpx.post(url + "/api/v1/auth/dev-login", json={"handle": "big_poster"}).json()[
            "token"
        ]
        headers = {"Authorization": f"Bearer {token}"}

        def post(data: bytes) -> httpx.Response:
            files = {"media": ("x.png", data, "application/octet-stream")}
            return httpx.post(url + "/api/v1/stories", headers=headers, files=files, timeout=120)

        warm = tmp_path / "warm.png"
        Image.new("RGBA", (300, 300), (1, 2, 3, 4)).save(warm)
        assert post(warm.read_bytes()).status_code == 201  # Pillow and friends loaded
        idle = _rss(server.proc.pid, "VmRSS")
        Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
        with ThreadPoolExecutor(3) as pool:
            answers = list(pool.map(post, [png] * 3))
        assert [a.status_code for a in answers] == [201] * 3, [a.text for a in answers]
        assert {(a.json()["media"]["width"], a.json()["media"]["height"]) for a in answers} == {
            (1920, 1920)
        }
        peak = _rss(server.proc.pid, "VmHWM") - idle
    finally:
        server.stop()
    assert peak <= budget + SLACK_MIB * MIB, (
        f"3 concurrent 7000x7000 PNGs: peak {peak // MIB} MiB over idle; "
        f"bound {budget // MIB} + {SLACK_MIB} MiB\n{server.output()}"
    )


# ---------------------------------------------------------------- (d) refused alone


def test_upload_needing_more_than_the_budget_is_a_422(settings: Settings, tmp_path: Path) -> None:
    settings.media_memory_budget_bytes = 64 * MIB
    big = _image("RGBA", ".png", compress_level=9)(tmp_path, (5000, 5000))  # ~95 MiB decoded
    with TestClient(create_app(settings)) as client:
        token = client.post("/api/v1/auth/dev-login", json={"handle": "greedy"}).json()["token"]
        headers = {"Authorization": f"Bearer {token}"}
        files = {"media": ("big.png", big.read_bytes(), "image/png")}
        refused = client.post("/api/v1/stories", headers=headers, files=files)
        assert refused.status_code == 422
        assert refused.headers["content-type"].startswith("application/problem+json")
        body = refused.json()
        assert body["type"] == "/problems/invalid-media"
        assert "MiB of memory" in body["detail"] and "at most 64 MiB" in body["detail"]
        small = {
            "media": ("small.jpg", (ROOT / "tests/media/rocket.jpg").read_bytes(), "image/jpeg")
        }
        assert client.post("/api/v1/stories", headers=headers, files=small).status_code == 201
