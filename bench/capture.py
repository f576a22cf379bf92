"""Live-capture benchmark: N concurrent WebRTC captures of real footage into `CaptureManager`.

`python bench/capture.py` runs, for 480x854 (N = 1-4) and 720x1280 (N = 1, 2) city.mpg
footage paced in real time at 25 fps with a 440 Hz tone (the aiortc `Client` of
tests/test_capture_core.py, VP8 + Opus as aiortc negotiates by default):

* the server side in a fresh `multiprocessing` (spawn) child per run, so its CPU and RSS
  are its own: either a `CaptureManager` (the recorder) or, as the baseline, a plain
  `RTCPeerConnection` whose tracks go to aiortc's `MediaBlackhole` (receive + decode only);
* the client senders in this process; the SDP offer and answer travel over a pipe.

Per run it measures the server process's CPU seconds per captured second (psutil, all
threads, over the window in which all N captures are sending), frames sent by the clients
versus frames delivered by aiortc and encoded by the recorder, the RSS peak over the
process's own baseline, `CaptureManager.stop()` latency (with the `StoryRecorder.stop()`
part) and, after the run, decodes every file with PyAV. Both sides use
`RTCConfiguration(iceServers=[])` and offer only 127.0.0.1 as ICE host candidate: no
packet leaves the machine. Every child process is stopped by its PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
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

NAME = "capture"
P480, P720 = (480, 854), (720, 1280)  # (width, height) sent by the clients
# (label, size, N, capture seconds): each runs twice, baseline sink first, then the recorder
SCENARIOS: list[tuple[str, tuple[int, int], int, float]] = [
    ("480p", P480, 1, 8.0),
    ("480p", P480, 2, 8.0),
    ("480p", P480, 3, 8.0),
    ("480p", P480, 4, 8.0),
    ("720p", P720, 1, 15.0),
    ("720p", P720, 2, 8.0),
]
BASELINE_MAX_S = 8.0  # the baseline sink's capture length (CPU per second is a rate)
DRAIN_S = 0.6  # after the clients stop sending video, before stop(): frames in flight land
SAMPLE_S = 0.2  # RSS / thread sampling of the server process
PROBE_S = 0.05  # event-loop lag and decoded-frame backlog probe inside the server process
TARGET_STOP_S = 0.5  # stop -> playable item for a 15 s 720p capture
TARGET_LOSS_PCT = 2.0
TARGET_N_480 = 3
MB = 1024 * 1024
FPS = 25  # CityVideo's rate
IDLE_PROBE_S = 3.0


def loopback_only() -> None:
    """aioice skips 127.0.0.1 by default; offer only loopback so nothing leaves the host."""
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]


# =========================================================================== server process


def count_frames(track: Any, counts: Counter[str], total: Counter[str]) -> None:
    """Count every frame `track.recv()` hands out (instance attribute wraps the method)."""
    recv = track.recv

    async def counting_recv() -> Any:
        frame = await recv()
        counts[track.kind] += 1
        total[track.kind] += 1
        return frame

    track.recv = counting_recv


class Probe:
    """Max event-loop lag (50 ms sleeps) and max decoded-frame backlog of the video tracks."""

    def __init__(self) -> None:
        self.tracks: list[Any] = []
        self.delivered: Counter[str] = Counter()  # frames consumed, every track of the process
        self.lag_s = 0.0
        self.backlog = 0

    def mark(self) -> None:
        self.lag_s, self.backlog = 0.0, 0

    async def run(self) -> None:
        while True:
            t0 = time.perf_counter()
            await asyncio.sleep(PROBE_S)
            self.lag_s = max(self.lag_s, time.perf_counter() - t0 - PROBE_S)
            for track in self.tracks:  # aiortc's unbounded RemoteStreamTrack queue
                queue = getattr(track, "_queue", None)
                if queue is not None and track.kind == "video":
                    self.backlog = max(self.backlog, queue.qsize())


class RecorderSide:
    """The system under test: `CaptureManager` with its `StoryRecorder`s."""

    def __init__(self, workdir: Path, probe: Probe) -> None:
        from server.captures import CaptureConfig, CaptureManager
        from server.recorder import StoryRecorder

        self.probe = probe
        self.counts: dict[str, Counter[str]] = {}
        self.captures: dict[str, Any] = {}
        self.recorders: dict[str, Any] = {}
        self.failed: list[str] = []
        self.stop_times: dict[int, float] = {}

        # instrumentation only: count delivered frames, time StoryRecorder.stop()
        add_track, stop = StoryRecorder.add_track, StoryRecorder.stop
        finish = StoryRecorder._finish_sync
        self.stop_started: dict[int, float] = {}
        self.stop_parts: dict[int, dict[str, float]] = {}
        side = self

        def counting_add_track(rec: Any, track: Any) -> None:
            counts = side.counts.setdefault(str(rec.path.stem), Counter())
            count_frames(track, counts, side.probe.delivered)
            side.probe.tracks.append(track)
            add_track(rec, track)

        async def timed_stop(rec: Any) -> Any:
            t0 = time.perf_counter()
            side.stop_started.setdefault(id(rec), t0)
            try:
                return await stop(rec)
            finally:
                side.stop_times.setdefault(id(rec), time.perf_counter() - t0)

        def timed_finish(rec: Any) -> Any:
            """Split `_finish_sync` (encoder thread): flushes, close (moov), publish."""
            parts: dict[str, float] = {}
            t0 = time.perf_counter()
            parts["halt_and_queue"] = t0 - side.stop_started.get(id(rec), t0)

            def timed(name: str, fn: Any) -> Any:
                def run(*args: Any) -> Any:
                    t = time.perf_counter()
                    try:
                        return fn(*args)
                    finally:
                        parts[name] = time.perf_counter() - t

                return run

            for name, out in (("x264_flush", rec._video), ("aac_flush", rec._audio)):
                if out is not None:
                    out.flush = timed(name, out.flush)
            rec._publish_sync = timed("publish", rec._publish_sync)
            try:
                return finish(rec)
            finally:
                total = time.perf_counter() - t0
                parts["close"] = total - sum(
                    parts.get(k, 0.0) for k in ("x264_flush", "aac_flush", "publish")
                )
                side.stop_parts[id(rec)] = {k: round(v * 1000, 1) for k, v in parts.items()}

        StoryRecorder.add_track = counting_add_track  # type: ignore[method-assign]
        StoryRecorder.stop = timed_stop  # type: ignore[method-assign]
        StoryRecorder._finish_sync = timed_finish  # type: ignore[method-assign]

        async def on_finished(capture: Any, result: Any) -> dict[str, Any]:
            return {
                "path": str(result.path),
                "poster": str(result.poster_path) if result.poster_path else None,
                "duration_ms": result.duration_ms,
                "video_frames": result.video_frames,
                "audio_frames": result.audio_frames,
            }

        async def on_failed(capture: Any, detail: str) -> None:
            self.failed.append(f"{capture.user_id}: {capture.ended_by}: {detail}")

        # cap well above the longest capture so no frame is dropped by the cap
        config = CaptureConfig(max_duration_ms=30_000, max_concurrent=8)
        self.manager = CaptureManager(config, workdir, on_finished, on_failed)

    async def offer(self, user: str, sdp: str) -> str:
        capture = await self.manager.offer(user, sdp, "offer", {})
        self.captures[user], self.recorders[user] = capture, capture.recorder
        return str(capture.answer_sdp)

    async def stop(self, user: str) -> dict[str, Any]:
        capture, recorder = self.captures[user], self.recorders[user]
        queued = recorder._tracks["video"]._queue.qsize()  # decoded, not yet consumed
        t0 = time.perf_counter()
        out: dict[str, Any] = {"backlog_at_stop": queued}
        try:
            out["result"] = await self.manager.stop(user, capture.id)
        except Exception as exc:
            out["error"] = f"{type(exc).__name__}: {exc}"
        out["stop_s"] = time.perf_counter() - t0
        out["recorder_stop_s"] = self.stop_times.get(id(recorder))
        out["recorder_stop_ms_parts"] = self.stop_parts.get(id(recorder))
        out["ended_by"] = capture.ended_by
        out["delivered"] = dict(self.counts.get(capture.id, Counter()))
        return out

    def forget(self) -> None:
        """Drop the benchmark's own references, so a leak check sees only the server's."""
        self.captures.clear()
        self.recorders.clear()
        self.probe.tracks.clear()

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
            count_frames(track, counts, self.probe.delivered)
            self.probe.tracks.append(track)
            hole.addTrack(track)

        await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        await hole.start()
        await pc.setLocalDescription(await pc.createAnswer())
        return str(pc.localDescription.sdp)

    async def stop(self, user: str) -> dict[str, Any]:
        from server.captures import close_peer_connection

        pc, hole, counts = self.peers.pop(user)
        t0 = time.perf_counter()
        await hole.stop()
        await close_peer_connection(pc)
        return {"stop_s": time.perf_counter() - t0, "delivered": dict(counts)}

    def forget(self) -> None:
        self.probe.tracks.clear()

    async def close(self) -> None:
        for user in list(self.peers):
            await self.stop(user)


def live_objects() -> dict[str, int]:
    """Server objects still alive (after gc) and the thread count of the process."""
    from aiortc import RTCPeerConnection

    from server.recorder import StoryRecorder

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
                probe.mark()
                reply["video_delivered"] = probe.delivered["video"]
            elif cmd == "progress":
                reply["video_delivered"] = probe.delivered["video"]
            elif cmd == "stop":
                lag_s, backlog = probe.lag_s, probe.backlog
                reply["stops"] = await asyncio.gather(*(side.stop(u) for u in msg["users"]))
                reply["loop_lag_max_ms"] = round(lag_s * 1000, 1)
                reply["video_backlog_max"] = backlog
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


async def run_once(
    mode: str, label: str, size: tuple[int, int], n: int, capture_s: float, workdir: Path
) -> dict[str, Any]:
    """One server process, N clients sending `capture_s` seconds each, stop, measure."""
    from tests.test_capture_core import Client, until

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
        clients = [Client(sizes=[size]) for _ in range(n)]
        users = [f"u{i}" for i in range(n)]

        async def connect(user: str, client: Any) -> tuple[str, float]:
            sdp = await client.offer_sdp()
            t0 = time.perf_counter()
            reply = await rpc.call("offer", user=user, sdp=sdp)
            offer_s = time.perf_counter() - t0
            await client.accept(reply["sdp"])
            return video_codec(reply["sdp"]), offer_s

        t_connect = time.monotonic()
        connected = await asyncio.gather(
            *(connect(u, c) for u, c in zip(users, clients, strict=True))
        )
        await until(lambda: all(c.video.first_sent_at is not None for c in clients), 30)
        connect_s = time.monotonic() - t_connect

        # the window: every client is sending, until the earliest one has sent `capture_s`
        w0 = (time.perf_counter(), server.cpu_s(), self_cpu_s(), system_busy_s())
        sent0 = sum(c.video.sent for c in clients)
        done0 = (await rpc.call("mark"))["video_delivered"]
        end = min(c.video.first_sent_at for c in clients) + capture_s
        await asyncio.sleep(max(0.0, end - time.monotonic()))
        w1 = (time.perf_counter(), server.cpu_s(), self_cpu_s(), system_busy_s())
        sent1 = sum(c.video.sent for c in clients)
        done1 = (await rpc.call("progress"))["video_delivered"]
        rss_end = sampler.sample()
        frozen_at = time.monotonic()
        for c in clients:
            c.video.frozen.set()  # video stops; audio goes on, as a browser would
        sent = [c.video.sent for c in clients]  # the last one stays in the jitter buffer
        audio_sent = [c.pc.getTransceivers()[1].sender.track.sent for c in clients]
        await asyncio.sleep(DRAIN_S)

        s0 = (time.perf_counter(), server.cpu_s())
        stopped = await rpc.call("stop", users=users, timeout_s=60)
        s1 = (time.perf_counter(), server.cpu_s())
        await sampler.stop()
        await asyncio.sleep(0.5)
        rss_after = sampler.sample()
    finally:
        await sampler.stop()
        for c in clients:
            with contextlib.suppress(Exception):
                await c.close()
        await server.stop()

    window_s = w1[0] - w0[0]
    server_cpu = w1[1] - w0[1]
    captures = []
    for i, stop in enumerate(stopped["stops"]):
        client = clients[i]
        assert client.video.first_sent_at is not None
        sending_s = frozen_at - client.video.first_sent_at
        delivered = stop.get("delivered", {}).get("video", 0)
        result = stop.get("result") or {}
        received = result.get("video_frames", delivered) if mode == "recorder" else delivered
        # aiortc's jitter buffer emits a frame when the next frame's first packet arrives,
        # so the last frame sent before the client stops can never come out: not counted
        expected = sent[i] - 1
        cap: dict[str, Any] = {
            "codec": connected[i][0],
            "offer_s": round(connected[i][1], 3),
            "sent": sent[i],
            "expected": expected,
            "client_fps": round(sent[i] / sending_s, 2),
            "delivered": delivered,
            "received": received,
            "lost": expected - received,
            "lost_pct": round(100 * (expected - received) / expected, 2) if expected else None,
            "audio_sent": audio_sent[i],
            "audio_delivered": stop.get("delivered", {}).get("audio", 0),
            "stop_s": round(stop["stop_s"], 3),
        }
        if mode == "recorder":
            rec_stop = stop.get("recorder_stop_s")
            cap |= {
                "recorder_stop_s": round(rec_stop, 3) if rec_stop is not None else None,
                "recorder_stop_ms_parts": stop.get("recorder_stop_ms_parts"),
                "backlog_at_stop": stop.get("backlog_at_stop"),
                # where the lost frames went: still queued (decoded) when stop() came,
                # never released by aiortc (network, jitter buffer, decoder), or taken
                # from the track but not encoded
                "lost_queued_at_stop": stop.get("backlog_at_stop"),
                "lost_in_transport": expected - delivered - (stop.get("backlog_at_stop") or 0),
                "lost_in_recorder": delivered - received,
                "ended_by": stop.get("ended_by"),
                "result": result,
                "error": stop.get("error"),
                "verify": await asyncio.to_thread(
                    verify, result.get("path"), result.get("poster"), result.get("video_frames", 0)
                ),
            }
        captures.append(cap)

    total_sent = sum(c["expected"] for c in captures)
    total_received = sum(c["received"] for c in captures)
    run = {
        "mode": mode,
        "label": label,
        "size": f"{size[0]}x{size[1]}",
        "n": n,
        "capture_s": capture_s,
        "connect_s": round(connect_s, 3),
        "window_s": round(window_s, 3),
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_per_captured_s": round(server_cpu / (n * window_s), 4),
        # frames the sink consumed in the window over frames the clients sent in it:
        # below 100 % the sink falls behind
        "frames_sent_in_window": sent1 - sent0,
        "frames_processed_in_window": done1 - done0,
        "throughput_pct": round(100 * (done1 - done0) / max(1, sent1 - sent0), 1),
        "server_cpu_per_processed_s": round(server_cpu / max(1, done1 - done0) * FPS, 4),
        "live_after_stop": stopped["live_after_stop"],
        "server_cores_busy": round(server_cpu / window_s, 3),
        "client_cores_busy": round((w1[2] - w0[2]) / window_s, 3),
        "other_cores_busy": round(((w1[3] - w0[3]) - server_cpu - (w1[2] - w0[2])) / window_s, 3),
        "rss_base_mb": round(rss_base / MB, 1),
        "rss_peak_mb": round(sampler.peak_rss / MB, 1),
        "rss_at_window_end_mb": round(rss_end / MB, 1),
        "rss_after_stop_mb": round(rss_after / MB, 1),
        "rss_per_capture_mb": round((sampler.peak_rss - rss_base) / MB / n, 1),
        "threads_peak": sampler.peak_threads,
        "loop_lag_max_ms": stopped["loop_lag_max_ms"],
        "video_backlog_max": stopped["video_backlog_max"],
        "stop_all_s": round(s1[0] - s0[0], 3),
        "finalize_cpu_s": round(s1[1] - s0[1], 3),
        "failed": stopped["failed"],
        "frames_sent": total_sent,
        "frames_received": total_received,
        "lost_pct": round(100 * (total_sent - total_received) / total_sent, 2),
        "worst_lost_pct": max(c["lost_pct"] for c in captures),
        "captures": captures,
    }
    if mode == "recorder":
        stops = [c["stop_s"] for c in captures]
        run["stop_s_max"] = max(stops)
        run["stop_s_median"] = round(statistics.median(stops), 3)
        run["all_playable"] = all(c["verify"].get("playable") for c in captures)
    return run


def describe(run: dict[str, Any]) -> str:
    line = (
        f"{run['mode']:9} {run['label']} N={run['n']} {run['window_s']:5.1f} s: "
        f"server CPU {run['server_cpu_per_captured_s']:.3f} s/captured s "
        f"(server {run['server_cores_busy']:.2f} cores, clients {run['client_cores_busy']:.2f}, "
        f"others {run['other_cores_busy']:.2f}); frames {run['frames_received']}/"
        f"{run['frames_sent']} (lost {run['lost_pct']} %, worst {run['worst_lost_pct']} %); "
        f"RSS +{run['rss_per_capture_mb']} MB/capture; lag max {run['loop_lag_max_ms']} ms; "
        f"backlog max {run['video_backlog_max']}"
    )
    if run["mode"] == "recorder":
        line += (
            f"; stop max {run['stop_s_max'] * 1000:.0f} ms; "
            f"playable {'yes' if run['all_playable'] else 'NO'}"
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


async def main_async() -> dict[str, Any]:
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
        for i, (label, size, n, capture_s) in enumerate(SCENARIOS):
            for mode in ("blackhole", "recorder"):
                length = min(capture_s, BASELINE_MAX_S) if mode == "blackhole" else capture_s
                workdir = Path(raw) / f"{i}-{mode}"
                run = await run_once(mode, label, size, n, length, workdir)
                print(describe(run), flush=True)
                runs.append(run)
    m["loadavg_at_end"] = h.loadavg()
    return {
        "name": NAME,
        "date": h.now_utc(),
        "machine": m,
        "config": {
            "scenarios": [
                {"label": lb, "size": f"{s[0]}x{s[1]}", "n": n, "capture_s": c}
                for lb, s, n, c in SCENARIOS
            ],
            "baseline_max_s": BASELINE_MAX_S,
            "fps": FPS,
            "drain_s": DRAIN_S,
            "target_stop_s": TARGET_STOP_S,
            "target_loss_pct": TARGET_LOSS_PCT,
            "target_n_480p": TARGET_N_480,
        },
        "runs": runs,
        "summary": summarize(runs),
        "duration_s": round(time.perf_counter() - started, 1),
    }


# =========================================================================== report


def pairs(runs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(baseline, recorder) per scenario."""
    base = {(r["label"], r["n"]): r for r in runs if r["mode"] == "blackhole"}
    return [(base[(r["label"], r["n"])], r) for r in runs if r["mode"] == "recorder"]


def passes(run: dict[str, Any]) -> bool:
    return bool(run["all_playable"]) and run["worst_lost_pct"] < TARGET_LOSS_PCT


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rec = [r for r in runs if r["mode"] == "recorder"]
    largest = {
        label: max((r["n"] for r in rec if r["label"] == label and passes(r)), default=0)
        for label in ("480p", "720p")
    }
    long720 = max(
        (r for r in rec if r["label"] == "720p" and r["n"] == 1), key=lambda r: r["capture_s"]
    )
    stop_s = long720["stop_s_max"]
    ratios = {
        f"{r['label']}_n{r['n']}": round(
            r["server_cpu_per_processed_s"] / b["server_cpu_per_processed_s"], 1
        )
        for b, r in pairs(runs)
    }
    by_n = {r["n"]: r for r in rec if r["label"] == "480p"}
    marginal = (
        round((by_n[max(by_n)]["rss_peak_mb"] - by_n[1]["rss_peak_mb"]) / (max(by_n) - 1), 1)
        if 1 in by_n and max(by_n) > 1
        else None
    )
    costs = [r["server_cpu_per_processed_s"] for r in rec]
    return {
        "stop_parts_720p_ms": stop_parts(long720),
        "recorder_cpu_s_per_footage_s_median": round(statistics.median(costs), 3),
        "rss_marginal_mb_per_480p_capture": marginal,
        "stop_to_playable_720p_s": stop_s,
        "stop_to_playable_720p_capture_s": long720["capture_s"],
        "stop_target_met": stop_s <= TARGET_STOP_S and bool(long720["all_playable"]),
        "largest_n_under_loss_target": largest,
        "concurrency_target_met": largest["480p"] >= TARGET_N_480,
        "non_monotonic": {
            label: [r["n"] for r in rec if r["label"] == label and not passes(r)]
            for label in largest
            if any(r["n"] < largest[label] and not passes(r) for r in rec if r["label"] == label)
        },
        "cpu_ratio_recorder_over_blackhole": ratios,
    }


def stop_parts(r: dict[str, Any]) -> str:
    slowest = max(r["captures"], key=lambda c: c.get("recorder_stop_s") or 0)
    parts = slowest.get("recorder_stop_ms_parts") or {}
    keys = ("halt_and_queue", "x264_flush", "aac_flush", "close", "publish")
    return " / ".join(f"{parts.get(k, float('nan')):.0f}" for k in keys)


def report(run: dict[str, Any]) -> tuple[str, str]:
    """(console text, Markdown section)."""
    s, m = run["summary"], run["machine"]
    rows = []
    for b, r in pairs(run["runs"]):
        caps = r["captures"]
        rows.append([
            r["label"], r["n"], f"{r['window_s']:.1f}",
            f"{r['server_cpu_per_captured_s']:.3f}", f"{b['server_cpu_per_captured_s']:.3f}",
            f"{r['throughput_pct']:.0f}",
            f"{r['server_cpu_per_processed_s']:.3f}", f"{b['server_cpu_per_processed_s']:.3f}",
            h.ratio(r["server_cpu_per_processed_s"], b["server_cpu_per_processed_s"]),
            f"{r['frames_received']} / {r['frames_sent']}",
            f"{r['lost_pct']} (worst {r['worst_lost_pct']})",
            f"{b['lost_pct']}",
            f"{min(c['client_fps'] for c in caps):.1f}",
            r["rss_per_capture_mb"], b["rss_per_capture_mb"],
            f"{r['stop_s_median'] * 1000:.0f} / {r['stop_s_max'] * 1000:.0f}",
            f"{max(c['recorder_stop_s'] or 0 for c in caps) * 1000:.0f}",
            "yes" if r["all_playable"] else "NO",
            f"{r['server_cores_busy']:.2f} / {r['client_cores_busy']:.2f} / "
            f"{r['other_cores_busy']:.2f}",
        ])  # fmt: skip
    table = h.table(["footage", "N", "window s", "server CPU s per captured s: recorder",
                     "baseline sink", "recorder kept up: frames consumed ÷ sent in the window, %",
                     "server CPU s per second of footage processed: recorder", "baseline sink",
                     "recorder ÷ baseline", "frames in the file / sent",
                     "lost %", "baseline lost %", "client fps (min)",
                     "RSS per capture MB: recorder", "baseline",
                     "stop → playable ms (median / max)", "of it StoryRecorder.stop() ms (max)",
                     "decodes", "cores busy: server / clients / others"], rows)  # fmt: skip
    diag_rows = [
        [r["label"], r["n"], f"{r['connect_s']:.2f}",
         f"{max(c['offer_s'] for c in r['captures']) * 1000:.0f}",
         r["rss_base_mb"], r["rss_peak_mb"], r["rss_after_stop_mb"], r["threads_peak"],
         r["loop_lag_max_ms"], r["video_backlog_max"],
         max(c["backlog_at_stop"] or 0 for c in r["captures"]),
         sum(c["delivered"] for c in r["captures"]), r["finalize_cpu_s"],
         "{StoryRecorder} / {RTCPeerConnection} / {threads}".format(**r["live_after_stop"]),
         stop_parts(r),
         ", ".join(f"{c['verify'].get('duration_ms', 0) / 1000:.1f}" for c in r["captures"])]
        for _, r in pairs(run["runs"])
    ]  # fmt: skip
    diag = h.table(["footage", "N", "connect s", "offer() max ms", "RSS base MB", "RSS peak MB",
                    "RSS after stop MB", "threads peak", "loop lag max ms",
                    "decoded-frame backlog max", "backlog at stop", "frames delivered by aiortc",
                    "finalize CPU s (all N)",
                    "alive after stop + gc: recorders / peer connections / threads",
                    "StoryRecorder.stop() of the slowest capture, ms: halt + executor queue / "
                    "x264 flush / AAC flush / close (moov, faststart) / publish (rename, "
                    "re-open for the duration)",
                    "file durations s"], diag_rows)  # fmt: skip
    largest = s["largest_n_under_loss_target"]
    stop_verdict = "met" if s["stop_target_met"] else "NOT met"
    conc_verdict = "met" if s["concurrency_target_met"] else "NOT met"
    first = next(r for _, r in pairs(run["runs"]))
    codec = first["captures"][0]["codec"]
    verified = next(
        (
            c["verify"]
            for _, r in pairs(run["runs"])
            for c in r["captures"]
            if c["verify"].get("codec")
        ),
        {},
    )
    note = ""
    if s["non_monotonic"]:
        note = (
            f" A smaller N missed the loss target although a larger one met it "
            f"({s['non_monotonic']}): the machine's other load varies from run to run."
        )
    lossy = [r for _, r in pairs(run["runs"]) if r["lost_pct"] > 0]
    if lossy:
        lost = sum(c["lost"] for r in lossy for c in r["captures"])
        queued = sum(c["lost_queued_at_stop"] or 0 for r in lossy for c in r["captures"])
        transport = sum(c["lost_in_transport"] for r in lossy for c in r["captures"])
        where = ", ".join(f"{r['label']} N={r['n']}" for r in lossy)
        note += (
            f"\n\nWhere the lost frames went ({where}): {queued} of {lost} were decoded and"
            f" still waiting in aiortc's track queue when `stop()` came (the recorder had"
            f" fallen behind real time and `stop()` cancels its consumers without draining"
            f" them, so the end of the capture is cut), {transport} never came out of"
            f" aiortc (network, jitter buffer, decoder)."
        )
    shares = [
        c["recorder_stop_ms_parts"]["x264_flush"] / (c["recorder_stop_s"] * 1000)
        for _, r in pairs(run["runs"])
        for c in r["captures"]
        if c.get("recorder_stop_ms_parts") and c.get("recorder_stop_s")
    ]
    flush_note = (
        f"The x264 flush (`encode(None)`: the frames x264 still holds for its lookahead and"
        f" frame threads) is a median {100 * statistics.median(shares):.0f} % of"
        f" `StoryRecorder.stop()` over all captures."
        if shares
        else ""
    )
    md = f"""## Live capture: `CaptureManager` + `StoryRecorder`

Run {run["date"]} on {machine_line(m)}. Command: `python bench/capture.py`
(about {run["duration_s"]:.0f} s).

N aiortc clients send city.mpg frames (`tests/media/city.mpg`, scaled to 480x854 or
720x1280, 25 fps paced in real time) and a 440 Hz tone (Opus), negotiated as {codec} +
Opus (aiortc's default order), over loopback only (`iceServers: []`, ICE host candidate
127.0.0.1). The server side runs in a fresh spawned process per run: either a
`CaptureManager` whose `StoryRecorder`s write H.264 720x1280 + AAC MP4s, or the baseline,
a plain `RTCPeerConnection` whose tracks go to aiortc's `MediaBlackhole` (receive and
decode only, nothing encoded). The clients run in the benchmark process, so their CPU is
not the server's; the SDP offer and answer cross a pipe. Each scenario runs the baseline
first, then the recorder.

Server CPU is the server process's user + system time (psutil, all threads) over the
window in which all N clients are sending, divided by N x the window ("per captured
s"). When the recorder falls behind real time its decoded frames pile up in aiortc's
queue and that figure shrinks, so it is also given per second of footage the sink
actually consumed in the window (frames taken from the tracks / 25): that is the cost
figure, and "recorder ÷ baseline" compares it with plain receiving. Frames: the clients'
sent video frames (less the last one of each client: aiortc's jitter buffer only releases
a frame when the next one starts arriving) versus `RecordingResult.video_frames`
(baseline: frames the sink received). At the end the clients stop sending video,
{DRAIN_S} s pass for frames in flight, then every capture is stopped at once
(`CaptureManager.stop()`, which includes closing the peer connection; "stop → playable"
is its duration). RSS per capture is the process's peak RSS over its own level before
the first offer, divided by N (from N = 1 to the largest 480p N, each extra 480p capture
added {s["rss_marginal_mb_per_480p_capture"]} MB of peak RSS). Every file is then decoded
to the last frame with PyAV ({verified.get("codec", "?")},
{", ".join(verified.get("sizes", []))}, audio {verified.get("audio")}, moov before mdat:
{verified.get("moov_before_mdat")}).

**Target: stop → playable item ≤ {TARGET_STOP_S} s for a {s["stop_to_playable_720p_capture_s"]:.0f} s
720p capture — {stop_verdict} ({s["stop_to_playable_720p_s"] * 1000:.0f} ms; StoryRecorder.stop()
parts as in the diagnostics table: {s["stop_parts_720p_ms"]}).**
**Target: ≥ {TARGET_N_480} concurrent 480p captures with < {TARGET_LOSS_PCT:.0f} % of frames lost
(every capture) — {conc_verdict}: largest N meeting it {largest["480p"]} at 480p (tried
1-4), {largest["720p"]} at 720p (tried 1-2).**{note}

{table}

"Cores busy" splits the machine's CPU over the same window: the server process, the
benchmark's own process (the N sending clients: VP8/Opus encoding) and everything else
running on this shared machine ({m.get("other_cores_busy_at_start", "?")} cores were
busy with other work in the {IDLE_PROBE_S:.0f} s before the run started). "Client fps"
below 25 means the senders themselves did not get enough CPU to keep real time. The
recorder's output is always 720x1280, so 480p footage is scaled up and encoded at 720p:
its cost hardly depends on the input size (median {s["recorder_cpu_s_per_footage_s_median"]}
CPU-s per second of footage over all runs). At that rate {m["usable_cpus"]} cores with nothing
else on them would keep up with at most
{m["usable_cpus"] / s["recorder_cpu_s_per_footage_s_median"]:.1f} captures (an
extrapolation, not measured); the N at which a run fell behind depends on what the clients
and the machine's other work left over.

Diagnostics (recorder runs). *Backlog*: decoded video frames waiting in aiortc's unbounded
`RemoteStreamTrack` queue (sampled every {PROBE_S * 1000:.0f} ms); a growing backlog means the
recorder is not keeping up, and frames still queued at stop are not in the file. *Loop
lag*: the largest overshoot of a {PROBE_S * 1000:.0f} ms `asyncio.sleep` in the server process.
*File durations* include the {DRAIN_S} s of audio that still arrives after the clients stop
sending video, and follow the frames' timestamps: the test client stamps its frames by count
at 25 fps, so a client that could not keep real time yields a shorter file. {flush_note}

{diag}
"""
    return md.replace("**", ""), md


def main() -> int:
    if sys.argv[1:] == ["--report-only"]:  # re-render the last results without measuring
        run = json.loads((h.RESULTS_DIR / f"{NAME}.json").read_text())
    else:
        run = asyncio.run(main_async())
        print(f"results: {h.write_results(NAME, run)}")
    text, md = report(run)
    print(text)
    print(f"docs:    {h.update_doc(NAME, md)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
