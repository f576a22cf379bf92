"""Live-capture benchmark: N concurrent WebRTC captures of real footage into `CaptureManager`.

`python bench/capture.py` runs these phases, each with N aiortc clients sending city.mpg
footage (480x854 or 720x1280, paced in real time) and a 440 Hz tone (the `Client` of
tests/test_capture_core.py, VP8 + Opus as aiortc negotiates by default):

* concurrency: 480p at 30 fps, N = 1 .. `capture_max_concurrent` + 1 (the default of
  `Settings`; the bench's own manager admits more, to show where quality drops);
* frame rate: 5 and 60 fps at N = `capture_max_concurrent`;
* one long 720p capture (stop -> playable of a 15 s file);
* the baseline: the same clients into a plain `RTCPeerConnection` whose tracks go to
  aiortc's `MediaBlackhole` (receive + decode only), at N = 1 and at the maximum.

Every capture is stopped while its client is still sending, as a user taps stop: the
frames sent before the stop must be in the file, those sent after it must not. Per
capture it records frames sent before the stop against frames stored (and the
recorder's own counts of frames dropped because its encoder fell behind and frames
skipped above 30 fps), the stored duration against the time the client sent, audio
against video duration, and `CaptureManager.stop()` latency (stop -> playable file)
with its parts. The server side runs in a fresh `multiprocessing` (spawn) child per
run, so its CPU and RSS are its own; the clients run in this process; offer and answer
cross a pipe. Both sides use `iceServers: []` and offer only 127.0.0.1: no packet leaves
the machine. Every child process is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aioice.ice
import aiortc
import av
import psutil

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import harness as h  # noqa: E402
from server.core.settings import Settings  # noqa: E402
from server.live.recorder import VIDEO_QUEUE_MAX  # noqa: E402

NAME = "capture"
P480, P720 = (480, 854), (720, 1280)  # (width, height) sent by the clients
MAX_N = Settings().capture_max_concurrent  # the shipped default
CAPTURE_S = 8.0
SAMPLE_S = 0.2  # RSS / thread sampling of the server process
PROBE_S = 0.05  # event-loop lag probe inside the server process
TARGET_KEPT_PCT = 98.0  # of the frames sent before the stop, at MAX_N captures
TARGET_DURATION_S = 0.3  # stored vs sent, at 5-60 fps
TARGET_AV_S = 0.1  # audio vs video duration in the file
TARGET_STOP_S = 0.5  # stop -> playable, with the machine loaded
MB = 1024 * 1024
IDLE_PROBE_S = 3.0
EDGE_S = 0.01  # frames sent this close before the stop are not counted as "before" it


def phases() -> list[dict[str, Any]]:
    """Every run: phase, footage label and size, N, capture seconds, fps, mode."""
    runs = []

    def add(phase: str, label: str, size: tuple[int, int], n: int, secs: float, fps: int,
            mode: str = "recorder") -> None:  # fmt: skip
        runs.append({"phase": phase, "label": label, "size": size, "n": n, "capture_s": secs,
                     "fps": fps, "mode": mode})  # fmt: skip

    for n in (1, MAX_N):
        add("baseline", "480p", P480, n, CAPTURE_S, 30, "blackhole")
    for n in range(1, MAX_N + 2):
        add("concurrency", "480p", P480, n, CAPTURE_S, 30)
    for fps in (5, 60):
        add("frame rate", "480p", P480, MAX_N, CAPTURE_S, fps)
    add("long 720p", "720p", P720, 1, 15.0, 30)
    return runs


def loopback_only() -> None:
    """aioice skips 127.0.0.1 by default; offer only loopback so nothing leaves the host."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


# =========================================================================== server process


def count_frames(track: Any, counts: Counter[str]) -> None:
    """Count every frame `track.recv()` hands out (instance attribute wraps the method)."""
    recv = track.recv

    async def counting_recv() -> Any:
        frame = await recv()
        counts[track.kind] += 1
        return frame

    track.recv = counting_recv


class Probe:
    """Max event-loop lag (50 ms sleeps) in the server process."""

    def __init__(self) -> None:
        self.lag_s = 0.0

    async def run(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(PROBE_S)
            self.lag_s = max(self.lag_s, time.perf_counter() - t0 - PROBE_S)


class StopClock:
    """Times the parts of `StoryRecorder.stop()` (instrumentation only, wraps methods):
    waiting for frames in flight, draining the lanes (backlog), finishing the file."""

    def __init__(self) -> None:
        from server.live.recorder import StoryRecorder

        self.marks: dict[int, dict[str, float]] = {}
        clock = self

        def wrap_async(name: str) -> None:
            original = getattr(StoryRecorder, name)

            async def timed(rec: Any, *args: Any) -> Any:
                marks, t0 = clock.marks.setdefault(id(rec), {}), time.perf_counter()
                marks.setdefault(f"{name}_at", t0)
                try:
                    return await original(rec, *args)
                finally:
                    marks.setdefault(name, time.perf_counter() - t0)

            setattr(StoryRecorder, name, timed)

        def wrap_sync(name: str) -> None:
            original = getattr(StoryRecorder, name)

            def timed(rec: Any, *args: Any) -> Any:
                t0 = time.perf_counter()
                try:
                    return original(rec, *args)
                finally:
                    clock.marks.setdefault(id(rec), {})[name] = time.perf_counter() - t0

            setattr(StoryRecorder, name, timed)

        for name in ("stop", "_halt", "_settle_lanes"):
            wrap_async(name)
        wrap_sync("_finish_sync")

    def parts_ms(self, rec: Any) -> dict[str, float]:
        m = self.marks.get(id(rec), {})
        if not {"stop_at", "_halt_at", "_settle_lanes"} <= set(m):
            return {}
        return {
            "in_flight": round((m["_halt_at"] - m["stop_at"]) * 1000, 1),
            "backlog": round(m["_settle_lanes"] * 1000, 1),
            "finish": round(m.get("_finish_sync", 0.0) * 1000, 1),
        }


class RecorderSide:
    """The system under test: `CaptureManager` with its `StoryRecorder`s."""

    def __init__(self, workdir: Path, probe: Probe) -> None:
        from server.live.captures import CaptureConfig, CaptureManager
        from server.live.recorder import StoryRecorder

        self.probe = probe
        self.clock = StopClock()
        self.counts: dict[str, Counter[str]] = {}
        self.captures: dict[str, Any] = {}
        self.recorders: dict[str, Any] = {}
        self.failed: list[str] = []
        add_track = StoryRecorder.add_track
        side = self

        def counting_add_track(rec: Any, track: Any) -> None:
            count_frames(track, side.counts.setdefault(str(rec.path.stem), Counter()))
            add_track(rec, track)

        StoryRecorder.add_track = counting_add_track  # type: ignore[method-assign]

        async def on_finished(capture: Any, result: Any) -> dict[str, Any]:
            return {
                "path": str(result.path),
                "poster": str(result.poster_path) if result.poster_path else None,
                "duration_ms": result.duration_ms,
                "video_ms": result.video_ms,
                "audio_ms": result.audio_ms,
                "video_frames": result.video_frames,
                "audio_frames": result.audio_frames,
                "video_dropped": result.video_dropped,
                "video_skipped": result.video_skipped,
            }

        async def on_failed(capture: Any, detail: str) -> None:
            self.failed.append(f"{capture.user_id}: {capture.ended_by}: {detail}")

        # the cap well above the longest capture; admits more than the shipped default,
        # to measure where quality drops (the `behind` check still applies)
        config = CaptureConfig(max_duration_ms=30_000, max_concurrent=16)
        self.manager = CaptureManager(config, workdir, on_finished, on_failed)

    async def offer(self, user: str, sdp: str) -> str:
        capture = await self.manager.offer(user, sdp, "offer", {})
        self.captures[user], self.recorders[user] = capture, capture.recorder
        return str(capture.answer_sdp)

    async def stop(self, user: str) -> dict[str, Any]:
        capture, recorder = self.captures[user], self.recorders[user]
        lanes = recorder._lanes
        backlog = lanes["video"].backlog if "video" in lanes else 0
        t0 = time.perf_counter()
        out: dict[str, Any] = {"backlog_at_stop": backlog}
        try:
            out["result"] = await self.manager.stop(user, capture.id)
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
        out["stop_s"] = time.perf_counter() - t0
        out["stop_parts_ms"] = self.clock.parts_ms(recorder)
        out["ended_by"] = capture.ended_by
        out["delivered"] = dict(self.counts.get(capture.id, Counter()))
        return out

    def forget(self) -> None:
        """Drop the benchmark's own references, so a leak check sees only the server's."""
        self.captures.clear()
        self.recorders.clear()

    async def close(self) -> None:
        await self.manager.close()


class BlackholeSide:
    """The baseline: receive and decode every track, drop the frames (`MediaBlackhole`)."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.peers: dict[str, tuple[Any, Any, Counter[str]]] = {}
        self.failed: list[str] = []

    async def offer(self, user: str, sdp: str) -> str:
        from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
        from aiortc.contrib.media import MediaBlackhole

        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        hole, counts = MediaBlackhole(), Counter[str]()
        self.peers[user] = (pc, hole, counts)

        @pc.on("track")
        def on_track(track: Any) -> None:
            count_frames(track, counts)
            hole.addTrack(track)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await hole.start()
        await pc.setLocalDescription(await pc.createAnswer())
        return str(pc.localDescription.sdp)

    async def stop(self, user: str) -> dict[str, Any]:
        from server.live.captures import close_peer_connection

        pc, hole, counts = self.peers.pop(user)
        t0 = time.perf_counter()
        await hole.stop()
        await close_peer_connection(pc)
        return {"stop_s": time.perf_counter() - t0, "delivered": dict(counts)}

    def forget(self) -> None:
        pass

    async def close(self) -> None:
        for user in list(self.peers):
            await self.stop(user)


def live_objects() -> dict[str, int]:
    """Server objects still alive (after gc) and the thread count of the process."""
    from aiortc import RTCPeerConnection

    from server.live.recorder import StoryRecorder

    alive = Counter(
        type(o).__name__
        for o in gc.get_objects()
        if isinstance(o, RTCPeerConnection | StoryRecorder)
    )
    return {
        "StoryRecorder": alive["StoryRecorder"],
        "RTCPeerConnection": alive["RTCPeerConnection"],
        "threads": threading.active_count(),
    }


def server_main(conn: Any, mode: str, workdir: str) -> None:
    """Entry point of the server child process (spawned)."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    loopback_only()
    asyncio.run(serve(conn, mode, Path(workdir)))


async def serve(conn: Any, mode: str, workdir: Path) -> None:
    """Answer the parent's commands until "quit" or EOF; each command runs as its own task."""
    loop = asyncio.get_running_loop()
    inbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()

    def readable() -> None:
        try:
            inbox.put_nowait(conn.recv())
        except (EOFError, OSError):
            loop.remove_reader(conn.fileno())
            inbox.put_nowait(None)

    loop.add_reader(conn.fileno(), readable)
    probe = Probe()
    side: RecorderSide | BlackholeSide = (
        RecorderSide(workdir, probe) if mode == "recorder" else BlackholeSide(probe)
    )
    probe_task = asyncio.create_task(probe.run())
    tasks: set[asyncio.Task[None]] = set()

    async def handle(msg: dict[str, Any]) -> None:
        reply: dict[str, Any] = {"id": msg["id"]}
        try:
            cmd = msg["cmd"]
            if cmd == "ping":
                reply["pid"] = os.getpid()
            elif cmd == "offer":
                reply["sdp"] = await side.offer(msg["user"], msg["sdp"])
            elif cmd == "mark":
                probe.lag_s = 0.0
            elif cmd == "stop":
                lag_s = probe.lag_s
                reply["stops"] = await asyncio.gather(*(side.stop(u) for u in msg["users"]))
                reply["loop_lag_max_ms"] = round(lag_s * 1000, 1)
                reply["failed"] = side.failed
                side.forget()
                await asyncio.sleep(0.05)  # aiortc's own tasks of the closed connections end
                gc.collect()
                reply["live_after_stop"] = live_objects()
            elif cmd == "quit":
                await side.close()
        except Exception as exc:
            reply["error"] = f"{type(exc).__name__}: {exc}"
        conn.send(reply)

    try:
        while (msg := await inbox.get()) is not None:
            task = asyncio.create_task(handle(msg))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if msg["cmd"] == "quit":
                await task
                break
    finally:
        probe_task.cancel()
        with contextlib.suppress(Exception):
            loop.remove_reader(conn.fileno())
        conn.close()


# =========================================================================== client process


class Rpc:
    """Request/response over a multiprocessing pipe, read by the event loop."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.loop = asyncio.get_running_loop()
        self.futures: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.next_id = 0
        self.loop.add_reader(conn.fileno(), self._readable)

    def _readable(self) -> None:
        try:
            msg = self.conn.recv()
        except (EOFError, OSError):
            self.close()
            for fut in self.futures.values():
                if not fut.done():
                    fut.set_exception(RuntimeError("server process closed the pipe"))
            return
        fut = self.futures.pop(msg["id"], None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    async def call(self, cmd: str, timeout_s: float = 60.0, **args: Any) -> dict[str, Any]:
        self.next_id += 1
        fut = self.futures[self.next_id] = self.loop.create_future()
        self.conn.send({"id": self.next_id, "cmd": cmd, **args})
        reply = await asyncio.wait_for(fut, timeout_s)
        if "error" in reply:
            raise RuntimeError(f"server {cmd}: {reply['error']}")
        return reply

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.loop.remove_reader(self.conn.fileno())


class ServerChild:
    """The spawned server process; `stop()` ends it by its PID (quit, then SIGTERM/SIGKILL)."""

    def __init__(self, mode: str, workdir: Path) -> None:
        ctx = mp.get_context("spawn")
        self.conn, child_conn = ctx.Pipe()
        self.proc = ctx.Process(
            target=server_main, args=(child_conn, mode, str(workdir)), name=f"bench-{mode}"
        )
        self.proc.start()
        child_conn.close()
        assert self.proc.pid is not None
        self.ps = psutil.Process(self.proc.pid)
        self.rpc: Rpc | None = None

    async def ready(self) -> Rpc:
        self.rpc = Rpc(self.conn)
        await self.rpc.call("ping", timeout_s=120)
        return self.rpc

    def cpu_s(self) -> float:
        t = self.ps.cpu_times()
        return float(t.user + t.system)

    async def stop(self) -> None:
        if self.rpc is not None:
            with contextlib.suppress(Exception):
                await self.rpc.call("quit", timeout_s=15)
            self.rpc.close()
        await asyncio.to_thread(self.proc.join, 10)
        if self.proc.is_alive():
            self.proc.terminate()  # SIGTERM to this PID
            await asyncio.to_thread(self.proc.join, 5)
        if self.proc.is_alive():
            self.proc.kill()
            await asyncio.to_thread(self.proc.join)
        self.conn.close()


class Sampler:
    """RSS and thread count of the server process every SAMPLE_S seconds."""

    def __init__(self, ps: psutil.Process) -> None:
        self.ps = ps
        self.peak_rss = 0
        self.peak_threads = 0
        self.task: asyncio.Task[None] | None = None

    def sample(self) -> int:
        rss = int(self.ps.memory_info().rss)
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_threads = max(self.peak_threads, self.ps.num_threads())
        return rss

    async def run(self) -> None:
        while True:
            with contextlib.suppress(psutil.Error):
                self.sample()
            await asyncio.sleep(SAMPLE_S)

    def start(self) -> None:
        self.task = asyncio.create_task(self.run())

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task


def system_busy_s() -> float:
    """CPU seconds all processes of the machine have used (every CPU)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0))


def self_cpu_s() -> float:
    t = psutil.Process().cpu_times()
    return float(t.user + t.system)


def video_codec(sdp: str) -> str:
    """The first (negotiated) codec of the answer's video m-line, e.g. "VP8"."""
    section = sdp.split("m=video", 1)[1].split("\r\nm=", 1)[0]
    first_pt = section.split("\r\n", 1)[0].split()[2]  # " 9 UDP/TLS/RTP/SAVPF <pt> ..."
    for line in section.split("\r\n"):
        if line.startswith(f"a=rtpmap:{first_pt} "):
            return line.split()[1].split("/")[0]
    return "?"


def verify(path: str | None, poster: str | None, video_frames: int) -> dict[str, Any]:
    """Open the finished file with PyAV and decode every frame (outside the measured run)."""
    from tests.test_capture_core import top_level_boxes

    if path is None:
        return {"playable": False, "error": "no file"}
    t0 = time.perf_counter()
    try:
        boxes = top_level_boxes(Path(path))
        with av.open(path) as container:
            video = container.streams.video[0]
            audio = container.streams.audio[0] if container.streams.audio else None
            profile = video.codec_context.profile
            codec = f"{video.codec_context.name} {profile}"
            sizes = set()
            frames = 0
            for frame in container.decode(video=0):
                frames += 1
                sizes.add(f"{frame.width}x{frame.height}")
            duration_ms = (container.duration or 0) // 1000
            audio_desc = f"{audio.codec_context.name} {audio.rate} Hz" if audio else None
        out = {
            "playable": frames == video_frames and frames > 0,
            "frames_decoded": frames,
            "codec": codec,
            "sizes": sorted(sizes),
            "audio": audio_desc,
            "duration_ms": duration_ms,
            "moov_before_mdat": boxes.index("moov") < boxes.index("mdat"),
            "poster": bool(poster and Path(poster).is_file()),
            "bytes": Path(path).stat().st_size,
        }
    except Exception as exc:
        out = {"playable": False, "error": f"{type(exc).__name__}: {exc}"}
    out["decode_s"] = round(time.perf_counter() - t0, 3)
    return out


async def run_once(spec: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """One server process, N clients sending `capture_s` seconds each, stop while sending."""
    from tests.test_capture_core import Client, until

    mode, n, fps, capture_s = spec["mode"], spec["n"], spec["fps"], spec["capture_s"]
    workdir.mkdir(parents=True, exist_ok=True)
    server = ServerChild(mode, workdir)
    clients: list[Any] = []
    sampler = Sampler(server.ps)
    try:
        rpc = await server.ready()
        await asyncio.sleep(0.3)  # let the freshly imported process settle
        rss_base = sampler.sample()
        sampler.peak_rss = rss_base
        sampler.start()
        clients = [Client(sizes=[spec["size"]], fps=fps) for _ in range(n)]
        users = [f"u{i}" for i in range(n)]

        async def connect(user: str, client: Any) -> tuple[str, float]:
            sdp = await client.offer_sdp()
            t0 = time.perf_counter()
            reply = await rpc.call("offer", user=user, sdp=sdp)
            offer_s = time.perf_counter() - t0
            await client.accept(reply["sdp"])
            return video_codec(reply["sdp"]), offer_s

        connected = await asyncio.gather(
            *(connect(u, c) for u, c in zip(users, clients, strict=True))
        )
        await until(lambda: all(c.video.first_sent_at is not None for c in clients), 30)
        await rpc.call("mark")
        # the window: every client is sending, until the earliest one has sent `capture_s`
        w0 = (time.perf_counter(), server.cpu_s(), self_cpu_s(), system_busy_s())
        end = min(c.video.first_sent_at for c in clients) + capture_s
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        w1 = (time.perf_counter(), server.cpu_s(), self_cpu_s(), system_busy_s())
        # stop while the clients go on sending, as a user taps stop
        stop_mono = time.monotonic()
        sent = [sent_before(c, stop_mono) for c in clients]
        stopped = await rpc.call("stop", users=users, timeout_s=60)
        await sampler.stop()
    finally:
        await sampler.stop()
        for c in clients:
            with contextlib.suppress(Exception):
                await c.close()
        await server.stop()
    window_s = w1[0] - w0[0]
    captures = [
        capture_figures(mode, stop, clients[i], sent[i], stop_mono, connected[i])
        for i, stop in enumerate(stopped["stops"])
    ]
    if mode == "recorder":
        for cap in captures:
            result = cap.get("result") or {}
            cap["verify"] = await asyncio.to_thread(
                verify, result.get("path"), result.get("poster"), result.get("video_frames", 0)
            )
    return run_figures(spec, captures, stopped, window_s, w0, w1, rss_base, sampler)


def sent_before(client: Any, stop_mono: float) -> tuple[int, int]:
    """(video, audio) frames `client` had sent at least EDGE_S before `stop_mono`.

    A frame handed to the sender's encoder in the last EDGE_S before the stop is not
    counted: it is still being encoded and in transit when the stop comes, and no
    receiver can tell it from one sent after (at 5 fps that one frame is 2.5 %).
    """

    def count(sent: int, first: float | None, interval_s: float) -> int:
        if first is None:
            return 0
        return max(0, min(sent, math.ceil((stop_mono - EDGE_S - first) / interval_s)))

    video = count(client.video.sent, client.video.first_sent_at, 1 / client.video.fps)
    audio = client.audio
    return video, count(audio.sent, audio.start, 0.02) if audio else 0


def capture_figures(
    mode: str, stop: dict[str, Any], client: Any, sent: tuple[int, int], stop_mono: float,
    connected: tuple[str, float],
) -> dict[str, Any]:  # fmt: skip
    """One capture's frames, durations and stop latency."""
    video_sent, audio_sent = sent
    wall_ms = (stop_mono - client.video.first_sent_at) * 1000
    # what the sender had stamped when stopped: a starved sender's clock (it stamps frames
    # by count) falls behind the wall clock, and the file follows the sender's clock
    sent_ms = max(video_sent / client.video.fps, audio_sent * 0.02) * 1000
    delivered = stop.get("delivered", {})
    cap: dict[str, Any] = {
        "codec": connected[0], "offer_s": round(connected[1], 3),
        "video_sent": video_sent, "audio_sent": audio_sent, "sent_ms": round(sent_ms),
        "wall_ms": round(wall_ms),
        "client_fps": round(client.video.sent / (time.monotonic() - client.video.first_sent_at), 1),
        "delivered": delivered, "stop_s": round(stop["stop_s"], 3),
    }  # fmt: skip
    if mode == "blackhole":
        cap["kept_pct"] = round(100 * delivered.get("video", 0) / max(1, video_sent), 2)
        return cap
    result = stop.get("result") or {}
    due = video_sent - result.get("video_skipped", 0)  # sent before the stop, <= 30 fps
    stored = result.get("video_frames", 0)
    cap |= {
        "result": result, "error": stop.get("error"), "ended_by": stop.get("ended_by"),
        "backlog_at_stop": stop.get("backlog_at_stop"), "stop_parts_ms": stop.get("stop_parts_ms"),
        "due": due, "kept_pct": round(100 * stored / max(1, due), 2),
        # of the frames that reached the recorder for the story, the share it stored
        "recorder_kept_pct": round(
            100 * stored / max(1, stored + result.get("video_dropped", 0)), 2),
        "duration_err_ms": result.get("duration_ms", 0) - round(sent_ms),
        "av_diff_ms": abs(result.get("video_ms", 0) - result.get("audio_ms", 0)),
        "audio_kept_pct": round(100 * result.get("audio_frames", 0) / max(1, audio_sent), 2),
    }  # fmt: skip
    return cap


def run_figures(
    spec: dict[str, Any], captures: list[dict[str, Any]], stopped: dict[str, Any],
    window_s: float, w0: tuple[float, ...], w1: tuple[float, ...], rss_base: int, sampler: Sampler,
) -> dict[str, Any]:  # fmt: skip
    n = spec["n"]
    server_cpu, client_cpu = w1[1] - w0[1], w1[2] - w0[2]
    run: dict[str, Any] = {
        **{k: v for k, v in spec.items() if k != "size"},
        "size": f"{spec['size'][0]}x{spec['size'][1]}",
        "window_s": round(window_s, 3),
        "server_cpu_per_capture_s": round(server_cpu / (n * window_s), 4),
        "server_cores_busy": round(server_cpu / window_s, 3),
        "client_cores_busy": round(client_cpu / window_s, 3),
        "other_cores_busy": round(((w1[3] - w0[3]) - server_cpu - client_cpu) / window_s, 3),
        "rss_base_mb": round(rss_base / MB, 1),
        "rss_per_capture_mb": round((sampler.peak_rss - rss_base) / MB / n, 1),
        "threads_peak": sampler.peak_threads,
        "loop_lag_max_ms": stopped["loop_lag_max_ms"],
        "live_after_stop": stopped["live_after_stop"],
        "failed": stopped["failed"],
        "kept_pct_worst": min(c["kept_pct"] for c in captures),
        "client_fps_min": min(c["client_fps"] for c in captures),
        "stop_s_max": max(c["stop_s"] for c in captures),
        "captures": captures,
    }
    if spec["mode"] == "recorder":
        run |= {
            "dropped": sum(
                c["result"].get("video_dropped", 0) for c in captures if c.get("result")
            ),
            "duration_err_ms_max": max(abs(c["duration_err_ms"]) for c in captures),
            "av_diff_ms_max": max(c["av_diff_ms"] for c in captures),
            "audio_kept_pct_worst": min(c["audio_kept_pct"] for c in captures),
            "recorder_kept_pct_worst": min(c["recorder_kept_pct"] for c in captures),
            "all_playable": all(c["verify"].get("playable") for c in captures),
            "stop_s_median": round(statistics.median(c["stop_s"] for c in captures), 3),
        }
    return run


def describe(run: dict[str, Any]) -> str:
    line = (
        f"{run['mode']:9} {run['phase']:11} {run['label']} {run['fps']:2d} fps N={run['n']}: "
        f"kept worst {run['kept_pct_worst']} %; server {run['server_cores_busy']:.2f} cores, "
        f"clients {run['client_cores_busy']:.2f}, others {run['other_cores_busy']:.2f}; "
        f"client fps min {run['client_fps_min']}; stop max {run['stop_s_max'] * 1000:.0f} ms"
    )
    if run["mode"] == "recorder":
        slowest = max(run["captures"], key=lambda c: c["stop_s"]).get("stop_parts_ms") or {}
        line += (
            f" ({' / '.join(f'{v:.0f}' for v in slowest.values())} ms in flight / backlog / "
            f"finish); dropped {run['dropped']}; duration err max {run['duration_err_ms_max']} "
            f"ms; A/V max {run['av_diff_ms_max']} ms; playable "
            f"{'yes' if run['all_playable'] else 'NO'}"
        )
    return line


def machine() -> dict[str, Any]:
    """harness.machine() without Redis, plus the media stack's versions."""
    cpu = h._cpuinfo()
    libs = av.library_versions
    return {
        "cpu_model": cpu.get("model name") or platform.processor() or platform.machine(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)),
        "ram_gib": h._meminfo_gib(),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "os": f"{h._os_name()}; {platform.system()} {platform.release()} {platform.machine()}",
        "media": f"aiortc {aiortc.__version__}, PyAV {av.__version__} "
        f"(libavcodec {'.'.join(map(str, libs['libavcodec']))})",
        "loadavg_at_start": h.loadavg(),
    }


def machine_line(m: dict[str, Any]) -> str:
    return (
        f"{m['cpu_model']}, {m['usable_cpus']} of {m['logical_cpus']} logical CPUs usable, "
        f"{m['ram_gib']} GiB RAM; {m['os']}; {m['python']}; {m['media']}; "
        f"load average (1/5/15 min) at start {' / '.join(map(str, m['loadavg_at_start']))}"
        + (f", at end {' / '.join(map(str, m['loadavg_at_end']))}" if "loadavg_at_end" in m else "")
    )


async def main_async(only: set[str] | None = None) -> dict[str, Any]:
    from tests.test_capture_core import city_planes, tone_frames

    started = time.perf_counter()
    m = machine()
    print(f"machine: {machine_line(m)}", flush=True)
    loopback_only()
    for size in (P480, P720):  # decode and scale the footage before anything is measured
        city_planes(*size)
    tone_frames()
    busy0, t0 = system_busy_s(), time.perf_counter()
    await asyncio.sleep(IDLE_PROBE_S)  # what the rest of the machine uses before we start
    m["other_cores_busy_at_start"] = round(
        (system_busy_s() - busy0) / (time.perf_counter() - t0), 2
    )
    print(
        f"other processes before the run: {m['other_cores_busy_at_start']} cores busy", flush=True
    )
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="stories-bench-capture-") as raw:
        for i, spec in enumerate(phases()):
            if only and spec["phase"] not in only:
                continue
            run = await run_once(spec, Path(raw) / str(i))
            print(describe(run), flush=True)
            runs.append(run)
    m["loadavg_at_end"] = h.loadavg()
    return {
        "name": NAME, "date": h.now_utc(), "machine": m,
        "config": {"capture_max_concurrent": MAX_N, "capture_s": CAPTURE_S,
                   "target_kept_pct": TARGET_KEPT_PCT, "target_duration_s": TARGET_DURATION_S,
                   "target_av_s": TARGET_AV_S, "target_stop_s": TARGET_STOP_S},
        "runs": runs, "summary": summarize(runs),
        "duration_s": round(time.perf_counter() - started, 1),
    }  # fmt: skip


# =========================================================================== report


def passes(run: dict[str, Any]) -> bool:
    return bool(run["all_playable"]) and run["kept_pct_worst"] >= TARGET_KEPT_PCT


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rec = [r for r in runs if r["mode"] == "recorder"]
    conc = [r for r in rec if r["phase"] == "concurrency"]
    at_max = [r for r in rec if r["n"] == MAX_N and r["label"] == "480p"]
    base = {r["n"]: r for r in runs if r["mode"] == "blackhole"}
    ratios = {
        f"n{r['n']}": h.ratio(r["server_cpu_per_capture_s"], base[r["n"]]["server_cpu_per_capture_s"])
        for r in conc if r["n"] in base
    }  # fmt: skip
    largest = max((r["n"] for r in conc if passes(r)), default=0)
    return {
        "largest_n_kept_target": largest,
        "kept_target_met_at_max": bool(at_max) and all(passes(r) for r in at_max),
        "duration_target_met": all(r["duration_err_ms_max"] <= TARGET_DURATION_S * 1000 for r in rec),
        "av_target_met_at_max": all(r["av_diff_ms_max"] <= TARGET_AV_S * 1000 for r in at_max),
        "stop_target_met_at_max": all(r["stop_s_max"] <= TARGET_STOP_S for r in at_max),
        "stop_s_max_at_max": max((r["stop_s_max"] for r in at_max), default=None),
        "cpu_ratio_recorder_over_blackhole": ratios,
        "recorder_cpu_per_capture_s_median": round(
            statistics.median(r["server_cpu_per_capture_s"] for r in conc), 3) if conc else None,
    }  # fmt: skip


def met(flag: bool) -> str:
    return "met" if flag else "NOT met"


def report(run: dict[str, Any]) -> tuple[str, str]:
    """(console text, Markdown section)."""
    s, m = run["summary"], run["machine"]
    base = {r["n"]: r for r in run["runs"] if r["mode"] == "blackhole"}
    rows = []
    for r in run["runs"]:
        if r["mode"] != "recorder":
            continue
        b = base.get(r["n"]) if r["phase"] == "concurrency" else None
        parts = (
            max((c for c in r["captures"]), key=lambda c: c["stop_s"]).get("stop_parts_ms") or {}
        )
        rows.append([
            r["phase"], r["label"], r["fps"], r["n"] if r["n"] != MAX_N else f"**{r['n']}**",
            f"{r['kept_pct_worst']}", f"{r['recorder_kept_pct_worst']}", r["dropped"],
            f"{r['audio_kept_pct_worst']}",
            r["duration_err_ms_max"], r["av_diff_ms_max"],
            f"{r['stop_s_median'] * 1000:.0f} / {r['stop_s_max'] * 1000:.0f}",
            " / ".join(f"{parts.get(k, float('nan')):.0f}" for k in ("in_flight", "backlog", "finish")),
            "yes" if r["all_playable"] else "NO",
            f"{r['server_cpu_per_capture_s']:.3f}",
            f"{b['server_cpu_per_capture_s']:.3f} ({h.ratio(r['server_cpu_per_capture_s'], b['server_cpu_per_capture_s'])}x)" if b else "",
            r["client_fps_min"], r["rss_per_capture_mb"], r["loop_lag_max_ms"],
            f"{r['server_cores_busy']:.2f} / {r['client_cores_busy']:.2f} / {r['other_cores_busy']:.2f}",
        ])  # fmt: skip
    table = h.table(["phase", "footage", "fps sent", "N",
                     "video frames stored ÷ sent before stop, worst capture %",
                     "stored ÷ reached the recorder, worst %",
                     "dropped (encoder behind), all N", "audio frames kept, worst %",
                     "stored - sent duration, worst ms", "audio - video duration, worst ms",
                     "stop → playable ms (median / max)",
                     "slowest stop ms: in flight / backlog / finish",
                     "decodes", "server CPU s per captured s", "baseline sink (ratio)",
                     "client fps (min)", "RSS per capture MB", "loop lag max ms",
                     "cores busy: server / clients / others"], rows)  # fmt: skip
    verified = next((c["verify"] for r in run["runs"] if r["mode"] == "recorder"
                     for c in r["captures"] if c["verify"].get("codec")), {})  # fmt: skip
    codec = next(c["codec"] for r in run["runs"] for c in r["captures"])
    md = f"""## Live capture: `CaptureManager` + `StoryRecorder`

Run {run["date"]} on {machine_line(m)}. Command: `python bench/capture.py`
(about {run["duration_s"]:.0f} s; {m.get("other_cores_busy_at_start", "?")} cores were busy with
other work in the {IDLE_PROBE_S:.0f} s before it started).

N aiortc clients send city.mpg (scaled to 480x854 or 720x1280, paced in real time at the
given fps) and a 440 Hz tone, as {codec} + Opus, over loopback only, to a server process
of their own (a fresh spawned process per run, so its CPU is its own): a `CaptureManager`
whose `StoryRecorder`s write H.264 720x1280 + AAC MP4s, or, as the baseline, plain
`RTCPeerConnection`s whose tracks go to aiortc's `MediaBlackhole` (receive and decode
only). **Every capture is stopped while its client is still sending** (as a user taps
stop). *Kept*: frames stored ÷ frames the client sent before the stop (less those the
recorder skips to store at most 30 fps: at 60 fps every other frame). *Dropped*: frames
the recorder dropped because its video encoder fell {VIDEO_QUEUE_MAX} frames behind. *Stored - sent*:
the file's duration against the time the client had been sending when stopped. *Stop →
playable*: `CaptureManager.stop()` (wait for frames still in flight, encode the backlog,
flush and close the file, close the peer connection), with all N stopped at once.
Every file is then decoded to the last frame with PyAV ({verified.get("codec", "?")},
{", ".join(verified.get("sizes", []))}, audio {verified.get("audio")}, moov before mdat:
{verified.get("moov_before_mdat")}). `capture_max_concurrent` is {MAX_N} (bold rows);
the bench's own manager admits more, to show where quality drops.

**Targets at N = {MAX_N} (480p):** ≥ {TARGET_KEPT_PCT:.0f} % of frames kept —
{met(s["kept_target_met_at_max"])}; audio and video durations within {TARGET_AV_S * 1000:.0f} ms —
{met(s["av_target_met_at_max"])}; stop → playable ≤ {TARGET_STOP_S} s —
{met(s["stop_target_met_at_max"])} (max {(s["stop_s_max_at_max"] or 0) * 1000:.0f} ms).
**At 5-60 fps, stored duration within {TARGET_DURATION_S} s of what was sent** —
{met(s["duration_target_met"])}. Largest N keeping ≥ {TARGET_KEPT_PCT:.0f} % in the
concurrency phase: {s["largest_n_kept_target"]}.

{table}

`capture_max_concurrent` defaults to {MAX_N}: the row at N = {MAX_N + 1} is what one more
costs on these 2 cores (server and senders together saturate them, and the recorders
drop frames); with senders elsewhere the server alone needs about
{s["recorder_cpu_per_capture_s_median"]} of a core per capture.

"Cores busy" splits the machine over the sending window: the server process, the
benchmark's own process (the N clients encoding VP8/Opus) and everything else on this
shared machine. "Client fps" below the rate sent means the senders themselves did not get
enough CPU: they stamp frames by count, so their clock falls behind the wall clock, the
file follows their clock, and frames they send just after the stop still carry
timestamps before it (stored ÷ sent can then pass 100 %, and the recorder waits the whole
0.25 s for a frame stamped after the stop). "Stored ÷ reached the recorder" is the
recorder's own loss, whatever the senders did. The recorder always encodes 720x1280, so 480p footage is scaled up; x264 runs
at `superfast` (about half of `veryfast`'s CPU per frame here, same High profile).
"""
    return md.replace("**", ""), md


def main() -> int:
    args = sys.argv[1:]
    if args == ["--report-only"]:  # re-render the last results without measuring
        run = json.loads((h.RESULTS_DIR / f"{NAME}.json").read_text())
    else:
        only = set(args[1].split(",")) if args[:1] == ["--only"] and len(args) > 1 else None
        run = asyncio.run(main_async(only))
        if only:
            print(json.dumps(run["summary"], indent=2))
            return 0
        print(f"results: {h.write_results(NAME, run)}")
    text, md = report(run)
    print(text)
    print(f"docs:    {h.update_doc(NAME, md)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
