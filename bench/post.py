"""Posting benchmark: photo and video posts per second, end to end over HTTP.

`python bench/post.py` starts Redis and the server, then posts real files from
`tests/media/` with `POST /api/v1/stories` (multipart), one at a time and two at
a time: two photos (re-encoded JPEG, one with EXIF orientation 6), an H.264 MP4
that is kept as it is, and an MPEG-2 file that is transcoded to H.264/AAC MP4.
To show where the time goes it also measures, in-process on the same files,
`server.media.process_media` (the media work) and the Redis side of a post
(`StoryWriter.create`, and the handler's whole Redis path around it), counting
round trips. The baseline, interleaved with the posts, is an authenticated
`GET /api/v1/me` round trip.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import harness as h  # noqa: E402

NAME = "post"
BASELINE_BLOCK_S = 0.6  # of GET /api/v1/me before each block of concurrent posts
REDIS_PATH_CALLS = 40


@dataclass(frozen=True)
class Case:
    file: str
    label: str
    sequential: int  # HTTP posts one at a time (as many process_media calls, 422 uploads)
    concurrent: int  # HTTP posts two at a time


CASES = (
    Case("rocket.jpg", "photo, JPEG 112 kB", 30, 40),
    Case("chelsea_exif_orientation6.jpg", "photo, JPEG 35 kB, EXIF orientation 6", 30, 40),
    Case("city_vertical_h264.mp4", "video, H.264 MP4 2.2 MB, kept as is", 12, 16),
    Case("city.mpg", "video, MPEG-2 4.6 MB, transcoded", 4, 4),
)


def media_once(src: Path, tmp: Path, into: list[float]) -> Any:
    """One timed `process_media` call on `src` with the server's default limits."""
    from server.media.pipeline import MediaLimits, process_media

    work = Path(tempfile.mkdtemp(dir=tmp))
    t0 = time.perf_counter()
    media = process_media(src, work, MediaLimits())
    into.append(time.perf_counter() - t0)
    return media


def describe(media: Any, src: Path) -> dict[str, Any]:
    return {"kind": media.kind, "mime": media.mime, "size": [media.width, media.height],
            "transcoded": media.transcoded, "bytes_in": src.stat().st_size,
            "bytes_out": media.path.stat().st_size}  # fmt: skip


async def timed(call: h.Call, client: Any, samples: h.Samples, expect: int) -> None:
    await h.closed_loop(call, [client], concurrency=1, count=1, expect=expect, into=samples)


class ServerCpu:
    """The server's CPU seconds spent inside `with` blocks, added up."""

    def __init__(self, server: h.ServerProcess) -> None:
        self.server, self.cpu_s, self.wall_s = server, 0.0, 0.0

    def __enter__(self) -> None:
        self._cpu, self._t = self.server.cpu_s(), time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.cpu_s += self.server.cpu_s() - self._cpu
        self.wall_s += time.perf_counter() - self._t

    def per(self, count: int) -> dict[str, float]:
        return {"server_cpu_ms_per_post": round(self.cpu_s * 1000 / count, 1),
                "server_cpu_per_wall": round(self.cpu_s / self.wall_s, 2)}  # fmt: skip


def fresh_copy(media: Any, tmp: Path) -> Any:
    """A copy of processed media files (create() moves them into storage)."""
    work = Path(tempfile.mkdtemp(dir=tmp))
    path, poster = work / media.path.name, work / media.poster_path.name
    shutil.copyfile(media.path, path)
    shutil.copyfile(media.poster_path, poster)
    return replace(media, path=path, poster_path=poster)


async def redis_in_process(url: str, prefix: str, tmp: Path, media: Any) -> dict[str, Any]:
    """Time and round trips of `StoryWriter.create` and of the post handler's Redis path."""
    from server.store.limits import rate_limit
    from server.store.rollout import Rollout
    from server.stories.writer import StoryWriter

    store = h.in_process_store(url, prefix, tmp / "in-process-data")
    writer = StoryWriter(store)
    rollout = Rollout(store.redis, store.keys.rollout())
    try:
        user = await store.users.ensure("bench_inproc", {"handle": "bench_inproc"})

        async def create() -> Any:
            return await writer.create(user, fresh, caption="bench", audience="followers",
                                       lifetime_h=24, source="upload")  # fmt: skip

        async def handler_path() -> None:  # what post_story does around the media work
            await store.users.ensure(user["id"], {})
            await rollout.check(user["id"], user["handle"], None)
            await rate_limit(store.redis, store.keys, user["id"], "posts", 10**9,
                             store.clock.now_ms())  # fmt: skip
            await create()  # the StoryItem answered is rendered once, by the writer

        async def after_media() -> None:  # the Redis work once the media is ready
            await create()

        out: dict[str, Any] = {}
        calls = (("create", create), ("after_media", after_media), ("handler", handler_path))
        for name, call in calls:
            fresh = fresh_copy(media, tmp)
            await call()  # warm: connection open, scripts loaded
            fresh = fresh_copy(media, tmp)
            with h.count_redis() as tally:
                await call()
            times = []
            for _ in range(REDIS_PATH_CALLS):
                fresh = fresh_copy(media, tmp)
                t0 = time.perf_counter()
                await call()
                times.append(time.perf_counter() - t0)
            out[name] = {
                **h.summary(times, sum(times)),
                "round_trips": tally.round_trips,
                "commands": dict(tally.commands),
            }
        return out
    finally:
        await store.redis.aclose()


async def measure(server: h.ServerProcess, tmp: Path) -> dict[str, Any]:
    """Per file: in turn process_media in-process, a 422 upload, a post and 3 `GET /me`;
    then posts two at a time after a block of `GET /me` two at a time."""
    async with h.http_clients(server.base_url, 2) as clients:
        client = clients[0]
        token, user = await h.dev_login(client, "bench_poster")
        auth = {"Authorization": f"Bearer {token}"}

        async def me(cl: Any) -> Any:
            return await cl.get("/api/v1/me", headers=auth)

        baseline = {1: h.Samples(), 2: h.Samples()}
        await h.closed_loop(me, clients, concurrency=2, count=50)
        posts: dict[str, Any] = {}
        media: dict[str, Any] = {}
        kept: dict[str, Any] = {}
        for case in CASES:
            src = tmp / f"source-{case.file}"  # like the server's work dir: same file system
            shutil.copyfile(h.MEDIA_DIR / case.file, src)
            data = src.read_bytes()

            async def post(
                cl: Any, data: bytes = data, name: str = case.file, **fields: str
            ) -> Any:
                files = {"media": (name, data, "application/octet-stream")}
                return await cl.post("/api/v1/stories", headers=auth, files=files,
                                     data={"caption": "bench", **fields})  # fmt: skip

            async def upload_only(cl: Any, data: bytes = data, name: str = case.file) -> Any:
                # lifetime_h=7 is refused (422) after the form is parsed and the file is
                # written to the work dir, before any media work: auth, gate, rate limit,
                # upload and multipart parsing, and nothing else.
                return await post(cl, data, name, lifetime_h="7")

            # warm-up, and a check that the server made what process_media makes
            want = describe(media_once(src, tmp, []), src)
            first = await post(client)
            assert first.status_code == 201, first.text
            item = first.json()
            got = [item["media"]["kind"], item["media"]["mime"],
                   [item["media"]["width"], item["media"]["height"]]]  # fmt: skip
            assert got == [want["kind"], want["mime"], want["size"]], (case.file, got, want)
            assert item["owner"]["id"] == user["id"] and item["caption"] == "bench"
            refused = await upload_only(client)
            assert refused.status_code == 422 and "lifetime_h" in refused.text, refused.text

            # one at a time: each sample of every part taken in turn, so all see the same noise
            media_s: list[float] = []
            seq, up = h.Samples(), h.Samples()
            cpu1, cpu2 = ServerCpu(server), ServerCpu(server)
            for _ in range(case.sequential):
                kept[case.file] = media_once(src, tmp, media_s)
                await timed(upload_only, client, up, 422)
                with cpu1:
                    await timed(post, client, seq, 201)
                for _ in range(3):
                    await timed(me, client, baseline[1], 200)
            media[case.file] = {**describe(kept[case.file], src),
                                **h.summary(media_s, sum(media_s))}  # fmt: skip
            row: dict[str, Any] = {"bytes": len(data), "upload_only": up.summary(),
                                   "c1": {**seq.summary(), **cpu1.per(case.sequential)}}  # fmt: skip
            await h.closed_loop(
                me, clients, concurrency=2, duration_s=BASELINE_BLOCK_S, into=baseline[2]
            )
            with cpu2:
                conc = await h.closed_loop(
                    post, clients, concurrency=2, count=case.concurrent, expect=201
                )
            row["c2"] = {**conc.summary(), **cpu2.per(case.concurrent)}
            posts[case.file] = row
    return {
        "media": media,
        "http": {
            "posts": posts,
            "baseline_me": {f"c{c}": s.summary() for c, s in baseline.items()},
        },
        "kept": kept,
    }


def report(run: dict[str, Any]) -> tuple[str, str]:
    """(console text, Markdown section)."""
    posts, media, base = run["http"]["posts"], run["media"], run["http"]["baseline_me"]
    handler, after, create = (
        run["redis"]["handler"],
        run["redis"]["after_media"],
        run["redis"]["create"],
    )
    rows, where = [], []
    for case in CASES:
        p = posts[case.file]
        s1, s2, up = p["c1"], p["c2"], p["upload_only"]
        rows.append([case.file, case.label, s1["p50_ms"], s1["p99_ms"], s1["rps"], s2["p50_ms"],
                     s2["rps"], h.ratio(s2["rps"], s1["rps"]),
                     h.ratio(s1["p50_ms"], base["c1"]["p50_ms"]), s1["server_cpu_ms_per_post"],
                     s2["server_cpu_per_wall"], f"{s1['n']}+{s2['n']}"])  # fmt: skip
        total = s1["p50_ms"]
        parts = [up["p50_ms"], media[case.file]["p50_ms"], after["p50_ms"]]
        rest = total - sum(parts)
        where.append([case.file, total,
                      *(f"{x:.1f} ({round(100 * x / total)} %)" for x in (*parts, rest))])  # fmt: skip
    post_table = h.table(["file", "what", "1 at a time: p50 ms", "p99 ms", "posts/s",
                          "2 at a time: p50 ms", "posts/s", "speed-up (x)",
                          "p50 ÷ GET /me p50", "server CPU per post ms",
                          "server CPU ÷ wall, 2 at a time", "posts"], rows)  # fmt: skip
    where_table = h.table(["file", "HTTP post p50 ms",
                           "HTTP up to the parsed upload (422 request) ms", "process_media ms",
                           "Redis after the media ms", "rest ms"], where)  # fmt: skip
    create_cmds = ", ".join(f"{k} {v}" for k, v in create["commands"].items())
    path_cmds = ", ".join(f"{k} {v}" for k, v in handler["commands"].items())
    m = run["machine"]
    md = f"""## Posting: `POST /api/v1/stories`

Run {run["date"]} on {h.machine_line(m)}. Command: `python bench/post.py`
(about {run["duration_s"]:.0f} s).

Real files from `tests/media/` are posted as multipart uploads over keep-alive
`httpx` connections to the server (one uvicorn worker, the default
`media_workers = 2`, rate limit raised), first one at a time, then two at a
time. Every response is checked against what `process_media` makes of the
same file. Baseline: an authenticated `GET /api/v1/me` (JWT check + one Redis
read) interleaved with the posts: p50 {base["c1"]["p50_ms"]} ms, p99
{base["c1"]["p99_ms"]} ms one at a time; p50 {base["c2"]["p50_ms"]} ms two at a time.

{post_table}

Server CPU comes from `/proc/<pid>/stat` (all threads, 10 ms ticks) around the
posts. Two at a time can only go faster when the server gets a second core:
"server CPU ÷ wall" near 2 means it did, near 1 means the machine (shared with
the load generator, Redis and other work; see the load average) did not give it one.

Where the time of one post goes (one at a time, p50 ms, share of the post).
*Up to the parsed upload*: the same multipart POST with `lifetime_h=7`, which
the handler refuses (422) right after auth, the rollout gate, the rate limit,
the upload and the multipart parsing into the work dir — before any media work.
*process_media*: called in-process on a copy of the same file. The three are
sampled in turn (process_media, 422 request, post, then three `GET /me`), so
they see the same machine noise. *Redis after the media*: `StoryWriter.create` (moves the
files into storage, then Redis) and rendering the answer, replayed in-process
x{REDIS_PATH_CALLS}: {after["round_trips"]} round trips. *Rest*: what the sum leaves
unexplained (thread hand-off to the media pool, the response; parts measured
separately on a noisy machine can also sum to more than the whole).

{where_table}

The handler's whole Redis path (user lookup, rollout gate, rate limit, create,
render) is {handler["round_trips"]} round trips, p50 {handler["p50_ms"]} ms in-process;
`StoryWriter.create` alone is {create["round_trips"]} round trips ({create_cmds}),
p50 {create["p50_ms"]} ms.
All commands of the path: {path_cmds}.
"""
    return md.replace("**", ""), md


async def main_async() -> dict[str, Any]:
    started = time.perf_counter()
    env = {"STORIES_POSTS_PER_MINUTE": "1000000"}
    with h.bench_environment(NAME, env) as (url, prefix, server):
        m = h.machine(url)
        tmp = server.data_dir.parent / "bench-work"
        tmp.mkdir(parents=True)
        server.start()
        measured = await measure(server, tmp)
        redis_path = await redis_in_process(url, prefix, tmp, measured["kept"]["rocket.jpg"])
        media, http = measured["media"], measured["http"]
    m["loadavg_at_end"] = h.loadavg()
    return {
        "name": NAME,
        "date": h.now_utc(),
        "machine": m,
        "config": {
            "cases": [c.__dict__ for c in CASES],
            "baseline_block_s": BASELINE_BLOCK_S,
            "redis_path_calls": REDIS_PATH_CALLS,
        },
        "media": media,
        "redis": redis_path,  # in-process: create, after_media (create + render), handler
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
    errors = [
        row[c].get("errors")
        for row in run["http"]["posts"].values()
        for c in ("c1", "c2", "upload_only")
    ]
    return 1 if any(errors) else 0


if __name__ == "__main__":
    raise SystemExit(main())
