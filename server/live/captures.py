"""Live captures: the registry of WebRTC story recordings in one process (no HTTP here).

`CaptureManager.offer()` answers a browser's SDP offer (non-trickle: the answer
carries every server ICE candidate) and starts a `StoryRecorder`. A capture ends
by exactly one idempotent finalize, whatever triggers it:

* `stop()` (explicit), `discard()` (explicit, nothing kept), `close()` (shutdown);
* the recorder reaching `max_duration_ms` ("cap") or every track ending ("ended");
* `connectionState` "failed"/"closed" ("connection-failed"/"connection-closed");
* the watchdog: no media since the offer ("no-media"), frames stopped ("stalled"),
  or frames still arriving long past the cap ("deadline").

Finalize stops the recorder (or discards it), closes the peer connection and
removes the registry entry; then either `on_finished(capture, result)` (once) or,
on a non-explicit end without a usable segment, `on_failed(capture, detail)`.
`on_finished` takes over `result.path` and `result.poster_path` (move or delete them).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc import sdp as aiortc_sdp

from server.core import errors
from server.live.recorder import RecordingResult, StoryRecorder

log = logging.getLogger(__name__)

MAX_SEGMENT_MS = 60_000
WATCH_TICK_S = 0.1
OUTCOME_TTL_S = 120.0  # how long stop()/discard() still answer for an ended capture
MAX_OUTCOMES = 1_000
CONSENT_WAIT_S = 1.0  # see close_peer_connection()
BEHIND_RETRY_S = 3  # Retry-After when refusing because an encoder is behind


@dataclass
class CaptureConfig:
    """Limits of live capture (milliseconds unless named otherwise).

    `ice_servers`: `[{"urls": ..., "username": ..., "credential": ...}]` for
    `RTCIceServer`; empty by default (no implicit public STUN).
    Raises ValueError from `__post_init__` when a limit is out of range.
    """

    max_duration_ms: int = 15_000
    max_concurrent: int = 2
    max_sdp_bytes: int = 20_000
    min_keep_ms: int = 1_000
    no_media_timeout_ms: int = 10_000
    stall_timeout_ms: int = 3_000
    ice_servers: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not 0 < self.max_duration_ms <= MAX_SEGMENT_MS:
            raise ValueError(f"max_duration_ms must be in 1..{MAX_SEGMENT_MS}")
        if self.max_concurrent < 1 or self.max_sdp_bytes < 1:
            raise ValueError("max_concurrent and max_sdp_bytes must be positive")
        if min(self.min_keep_ms, self.no_media_timeout_ms, self.stall_timeout_ms) < 0:
            raise ValueError("timeouts must not be negative")


@dataclass(eq=False)
class Capture:
    """One live capture.

    `id`: opaque token; `user_id`, `meta`: as given to `offer()`; `answer_sdp`,
    `answer_type` ("answer"): the reply for the client; `created_at`: time.monotonic();
    `ended_by`: None while live, then the finalize reason ("stop", "cap", "stalled", ...).
    `pc` and `recorder` are set while live and cleared after finalize.
    """

    id: str
    user_id: str
    meta: dict[str, Any]
    answer_sdp: str = ""
    answer_type: str = "answer"
    created_at: float = field(default_factory=time.monotonic)
    ended_by: str | None = None
    pc: RTCPeerConnection | None = field(default=None, repr=False)
    recorder: StoryRecorder | None = field(default=None, repr=False)
    _negotiated: asyncio.Event = field(default_factory=asyncio.Event, init=False, repr=False)
    _watchdog: asyncio.Task[None] | None = field(default=None, init=False, repr=False)
    _finalizer: asyncio.Task[_Outcome] | None = field(default=None, init=False, repr=False)


@dataclass
class _Outcome:
    """What stop() answers for an ended capture: on_finished's value or an error."""

    user_id: str
    value: Any = None
    error: BaseException | None = None
    expires_at: float = field(default_factory=lambda: time.monotonic() + OUTCOME_TTL_S)

    def unwrap(self) -> Any:
        """The value, or raise a copy of the error (a raised exception's traceback
        would keep the caller's frames alive for as long as the outcome is kept)."""
        if self.error is None:
            return self.value
        try:
            error = copy.copy(self.error)
        except Exception:
            error = self.error
        raise error


async def close_peer_connection(pc: RTCPeerConnection) -> None:
    """`pc.close()`, plus a workaround for a task leak in aioice 0.13.

    When `close()` lands while ICE is finishing, aioice's `Connection.connect()`
    (which polls its check list every 20 ms) can still succeed afterwards and start
    its consent-freshness task, which nothing cancels any more: it then wakes every
    ~5 s forever. So wait (at most CONSENT_WAIT_S) for a connect still in progress
    to return, and cancel that task. Uses private attributes of aiortc/aioice and
    does nothing if they are missing.
    """
    transports = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        transports.append(pc.sctp.transport)
    ices = list({id(d.transport): d.transport for d in transports if d is not None}.values())
    await pc.close()
    for ice in ices:
        started = getattr(ice, "_RTCIceTransport__start", None)
        if isinstance(started, asyncio.Event) and not started.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(started.wait(), CONSENT_WAIT_S)
        task = getattr(getattr(ice, "_connection", None), "_query_consent_task", None)
        if isinstance(task, asyncio.Task):
            task.cancel()


OnFinished = Callable[[Capture, RecordingResult], Awaitable[Any]]
OnFailed = Callable[[Capture, str], Awaitable[None]]


class CaptureManager:
    """Registry of the live captures of one process.

    `workdir`: where segments are written (`<capture id>.mp4` / `.jpg`).
    `on_finished(capture, result)`: awaited once per kept segment; its return value is
    what `stop()` returns. `on_failed(capture, detail)`: awaited when a capture ends
    without a segment and nobody asked for it (too short, no media, recording error).
    """

    def __init__(
        self, config: CaptureConfig, workdir: Path, on_finished: OnFinished, on_failed: OnFailed
    ) -> None:
        self.config = config
        self.workdir = Path(workdir)
        self._on_finished = on_finished
        self._on_failed = on_failed
        self._ice_servers = [RTCIceServer(**server) for server in config.ice_servers]
        self._captures: dict[str, Capture] = {}
        self._by_user: dict[str, str] = {}
        self._outcomes: dict[str, _Outcome] = {}
        self._closed = False

    # ----------------------------------------------------------------- public API

    def active_count(self) -> int:
        """Captures holding resources (negotiating, live or finalizing)."""
        return len(self._captures)

    async def offer(self, user_id: str, sdp: str, type_: str, meta: dict[str, Any]) -> Capture:
        """Answer an SDP offer and start recording; returns the `Capture` (`.id`, `.answer_sdp`).

        ICE gathering is complete when this returns. Raises errors.PayloadTooLarge (SDP
        over `max_sdp_bytes`), errors.BadRequest (type not "offer", malformed SDP, no video
        to receive), errors.Conflict (the user already has a capture), errors.RateLimited
        (`max_concurrent` reached, or a live capture's encoder is behind real time: one
        more would make every capture lose frames), errors.ServiceUnavailable (shutting down).
        """
        self._check_offer(sdp, type_)
        self._admit(user_id)
        cap = Capture(id=uuid.uuid4().hex, user_id=user_id, meta=dict(meta))
        self._captures[cap.id] = cap
        self._by_user[user_id] = cap.id
        try:
            await self._negotiate(cap, sdp)
            if self._closed:
                raise errors.ServiceUnavailable("live capture is shutting down")
        except BaseException:
            await self._abandon(cap)
            raise
        finally:
            cap._negotiated.set()
        cap._watchdog = asyncio.create_task(self._watch(cap), name=f"capture-watch-{cap.id}")
        return cap

    async def stop(self, user_id: str, capture_id: str) -> Any:
        """Finalize the capture and return `on_finished`'s value (again on repeated calls).

        Raises errors.NotFound (unknown id or another user's), errors.InvalidField
        (shorter than `min_keep_ms` or no media: discarded), or whatever `on_finished`
        raised (the files are removed then).
        """
        cap = self._owned(user_id, capture_id)
        if cap is None:
            return self._past(user_id, capture_id).unwrap()
        outcome = await self._finalize(cap, "stop", explicit=True)
        return outcome.unwrap()

    async def discard(self, user_id: str, capture_id: str) -> None:
        """End the capture without keeping anything (no callbacks). Idempotent.

        A capture already being finalized is awaited instead. Raises errors.NotFound.
        """
        cap = self._owned(user_id, capture_id)
        if cap is None:
            self._past(user_id, capture_id)
            return
        await self._finalize(cap, "discard", drop=True)

    async def close(self) -> None:
        """Shutdown: end every capture (kept if >= `min_keep_ms`, else discarded)."""
        self._closed = True
        while self._captures:
            caps = list(self._captures.values())
            await asyncio.gather(*(self._shutdown_one(c) for c in caps), return_exceptions=True)

    # ----------------------------------------------------------------- offer

    def _check_offer(self, sdp: str, type_: str) -> None:
        if len(sdp.encode("utf-8", "replace")) > self.config.max_sdp_bytes:
            raise errors.PayloadTooLarge(f"SDP offer larger than {self.config.max_sdp_bytes} bytes")
        if type_ != "offer":
            raise errors.BadRequest(f'SDP type must be "offer", not {type_!r}')
        try:
            parsed = aiortc_sdp.SessionDescription.parse(sdp)
        except Exception as exc:
            raise errors.BadRequest(f"malformed SDP offer: {exc}") from exc
        if not any(media.kind == "video" for media in parsed.media):
            raise errors.BadRequest("SDP offer has no video m-line")

    def _admit(self, user_id: str) -> None:
        self._prune_outcomes()
        if self._closed:
            raise errors.ServiceUnavailable("live capture is shutting down")
        if user_id in self._by_user:
            raise errors.Conflict("a live capture is already running for this user")
        retry = math.ceil(self.config.max_duration_ms / 1000)
        if self.active_count() >= self.config.max_concurrent:
            raise errors.RateLimited("too many live captures; retry later", retry_after_s=retry)
        if any(c.recorder is not None and c.recorder.behind for c in self._captures.values()):
            detail = "live capture is at capacity (encoders are behind real time); retry later"
            raise errors.RateLimited(detail, retry_after_s=BEHIND_RETRY_S)

    async def _negotiate(self, cap: Capture, sdp: str) -> None:
        """setRemoteDescription -> recorder.start() -> answer with every ICE candidate."""
        pc = cap.pc = RTCPeerConnection(RTCConfiguration(iceServers=self._ice_servers))
        recorder = cap.recorder = StoryRecorder(
            self.workdir / f"{cap.id}.mp4", max_duration_ms=self.config.max_duration_ms
        )
        pc.on("track", recorder.add_track)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:
            raise errors.BadRequest(f"unusable SDP offer: {exc}") from exc
        if not recorder.has_video:
            raise errors.BadRequest("SDP offer sends no video")
        await recorder.start()
        await pc.setLocalDescription(await pc.createAnswer())
        cap.answer_sdp = pc.localDescription.sdp
        cap.answer_type = pc.localDescription.type
        pc.on("connectionstatechange", lambda: self._on_state(cap))

    async def _abandon(self, cap: Capture) -> None:
        """Undo a failed offer: no files, no peer connection, no registry entry."""
        if cap.recorder is not None:
            await cap.recorder.discard()
        await self._close_pc(cap)
        self._unregister(cap)

    # ----------------------------------------------------------------- end triggers

    def _on_state(self, cap: Capture) -> None:
        state = cap.pc.connectionState if cap.pc is not None else "closed"
        if state in ("failed", "closed"):
            self._trigger(cap, f"connection-{state}")

    def _trigger(self, cap: Capture, reason: str) -> None:
        """Start the finalize of `cap` from a callback (no-op when already started)."""
        if cap._finalizer is None:
            cap._finalizer = asyncio.create_task(self._run_finalize(cap, reason, False, False))

    async def _watch(self, cap: Capture) -> None:
        """Poll the recorder every WATCH_TICK_S; trigger finalize on cap/end/timeouts."""
        recorder = cap.recorder
        assert recorder is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(recorder.finished.wait(), WATCH_TICK_S)
            reason = self._watch_reason(cap, recorder, time.monotonic())
            if reason is not None:
                self._trigger(cap, reason)
                return

    def _watch_reason(self, cap: Capture, rec: StoryRecorder, now: float) -> str | None:
        cfg = self.config
        if rec.finished.is_set():
            return rec.finish_reason or "ended"
        if rec.last_frame_at is None or rec.first_frame_at is None:
            waited_ms = (now - cap.created_at) * 1000
            return "no-media" if waited_ms >= cfg.no_media_timeout_ms else None
        if (now - rec.last_frame_at) * 1000 >= cfg.stall_timeout_ms:
            return "stalled"
        if (now - rec.first_frame_at) * 1000 >= cfg.max_duration_ms + cfg.stall_timeout_ms:
            return "deadline"
        return None

    async def _shutdown_one(self, cap: Capture) -> None:
        await cap._negotiated.wait()
        if cap.id in self._captures:
            await self._finalize(cap, "shutdown")

    # ----------------------------------------------------------------- finalize

    async def _finalize(
        self, cap: Capture, reason: str, *, explicit: bool = False, drop: bool = False
    ) -> _Outcome:
        """The one idempotent end of a capture; later callers await the first one's outcome."""
        if cap._finalizer is None:
            cap._finalizer = asyncio.create_task(self._run_finalize(cap, reason, explicit, drop))
        return await asyncio.shield(cap._finalizer)

    async def _run_finalize(
        self, cap: Capture, reason: str, explicit: bool, drop: bool
    ) -> _Outcome:
        cap.ended_by = reason
        if cap._watchdog is not None:
            cap._watchdog.cancel()
        outcome = _Outcome(cap.user_id, error=errors.StoriesError("capture ended abnormally"))
        try:
            try:
                result, failure = await self._settle(cap, reason, drop)
            finally:
                await self._close_pc(cap)
            outcome = await self._notify(cap, result, failure, explicit, drop)
        finally:
            self._unregister(cap, outcome)
        return outcome

    async def _settle(
        self, cap: Capture, reason: str, drop: bool
    ) -> tuple[RecordingResult | None, errors.StoriesError | None]:
        """Stop or discard the recorder -> (kept result, None) or (None, why not kept)."""
        rec = cap.recorder
        assert rec is not None
        if drop or rec.first_frame_at is None:
            await rec.discard()
            return None, None if drop else self._no_media(reason)
        try:
            result = await rec.stop()
        except Exception as exc:
            log.exception("capture %s: finalizing the recording failed", cap.id)
            await rec.discard()
            return None, errors.StoriesError(f"recording failed: {exc}")
        failure = self._unusable(result)
        if failure is not None:
            await rec.discard()
            return None, failure
        return result, None

    def _unusable(self, result: RecordingResult) -> errors.StoriesError | None:
        if result.video_frames == 0:
            return errors.InvalidMedia("no video received")
        if result.duration_ms < self.config.min_keep_ms:
            detail = f"too short: {result.duration_ms} ms < {self.config.min_keep_ms} ms"
            return errors.InvalidField(detail)
        return None

    def _no_media(self, reason: str) -> errors.StoriesError:
        if reason == "no-media":
            timeout = self.config.no_media_timeout_ms
            return errors.InvalidMedia(f"no media received within {timeout} ms")
        return errors.InvalidMedia("no media received")

    async def _notify(
        self,
        cap: Capture,
        result: RecordingResult | None,
        failure: errors.StoriesError | None,
        explicit: bool,
        drop: bool,
    ) -> _Outcome:
        """Call on_finished (kept) or on_failed (lost, non-explicit) -> the stop() outcome."""
        if drop:
            return _Outcome(cap.user_id, error=errors.NotFound("the capture was discarded"))
        if result is None:
            if failure is not None and not explicit:
                await self._call_failed(cap, failure.detail)
            return _Outcome(cap.user_id, error=failure)
        try:
            return _Outcome(cap.user_id, value=await self._on_finished(cap, result))
        except Exception as exc:
            log.exception("capture %s: on_finished failed", cap.id)
            exc.__traceback__ = None  # the outcome outlives this frame
            for path in (result.path, result.poster_path):
                if path is not None:
                    path.unlink(missing_ok=True)
            if not explicit:
                await self._call_failed(cap, f"publishing failed: {exc}")
            return _Outcome(cap.user_id, error=exc)

    async def _call_failed(self, cap: Capture, detail: str) -> None:
        try:
            await self._on_failed(cap, detail)
        except Exception:
            log.exception("capture %s: on_failed failed", cap.id)

    async def _close_pc(self, cap: Capture) -> None:
        pc = cap.pc
        if pc is None:
            return
        pc.remove_all_listeners()  # our own close must not trigger a finalize
        try:
            await close_peer_connection(pc)
        except Exception:
            log.exception("capture %s: closing the peer connection failed", cap.id)

    # ----------------------------------------------------------------- registry

    def _owned(self, user_id: str, capture_id: str) -> Capture | None:
        cap = self._captures.get(capture_id)
        if cap is None or not cap._negotiated.is_set():
            return None
        if cap.user_id != user_id:
            raise errors.NotFound("no such capture")
        return cap

    def _past(self, user_id: str, capture_id: str) -> _Outcome:
        self._prune_outcomes()
        outcome = self._outcomes.get(capture_id)
        if outcome is None or outcome.user_id != user_id:
            raise errors.NotFound("no such capture")
        return outcome

    def _unregister(self, cap: Capture, outcome: _Outcome | None = None) -> None:
        self._captures.pop(cap.id, None)
        if self._by_user.get(cap.user_id) == cap.id:
            del self._by_user[cap.user_id]
        if outcome is not None:
            self._outcomes[cap.id] = outcome
        cap.pc = None
        cap.recorder = None
        cap._watchdog = None

    def _prune_outcomes(self) -> None:
        now = time.monotonic()
        for key in [k for k, o in self._outcomes.items() if o.expires_at <= now]:
            del self._outcomes[key]
        while len(self._outcomes) > MAX_OUTCOMES:
            del self._outcomes[next(iter(self._outcomes))]
