"""HTTP: live capture over WebRTC (PROTOCOL.md "Live capture"), and its publishing.

`publish_capture` is the capture manager's `on_finished`: the recorded MP4 goes
through exactly the upload path (content checks, storage, events) with
`source: "capture"`, then `capture.finished` is pushed to the capturing user.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.api.common import caller, limited, read_json, services
from server.api.forms import workdir
from server.api.responses import JSONResponse, no_content
from server.api.stories import _gate, check_audience, check_caption
from server.core import events
from server.core.errors import NotFound, field_error
from server.media.pipeline import MediaLimits

if TYPE_CHECKING:
    from server.live.captures import Capture
    from server.live.recorder import RecordingResult
    from server.services import Services


async def publish_capture(
    svc: Services, capture: Capture, result: RecordingResult
) -> dict[str, Any]:
    """Post the finished recording as a story item; returns the owner's StoryItem."""
    store = svc.store
    user = await store.users.get(capture.user_id)
    if user is None:
        raise NotFound("the capturing user no longer exists")
    s = svc.settings
    limits = MediaLimits(max_bytes=s.max_upload_bytes, max_video_ms=max(s.max_video_ms, s.capture_max_duration_ms + 1000),
                         max_pixels=s.max_pixels, max_long_side_px=s.max_long_side_px)  # fmt: skip
    try:
        async with workdir(store.storage.tmp_dir()) as folder:
            media = await svc.media.process(Path(result.path), folder, limits)
            rec = await svc.writer.create(user, media, caption=capture.meta.get("caption"),
                                          audience=capture.meta.get("audience", "followers"),
                                          lifetime_h=s.default_lifetime_h, source="capture")  # fmt: skip
    finally:
        for path in (result.path, result.poster_path):
            if path:
                Path(path).unlink(missing_ok=True)  # noqa: ASYNC240 (one unlink, local disk)
    item = (await svc.reader.render_many(user["id"], [rec]))[0]
    event = events.capture_finished(capture.id, item)
    await store.redis.publish(store.keys.inbox_channel(user["id"]), events.encode(event))
    return item


async def report_failure(svc: Services, capture: Capture, detail: str) -> None:
    """The manager's `on_failed`: push `capture.failed` to the capturing user."""
    store = svc.store
    event = events.capture_failed(capture.id, detail)
    await store.redis.publish(store.keys.inbox_channel(capture.user_id), events.encode(event))


async def start_capture(request: Request) -> Response:
    """`POST /captures {"sdp", "type": "offer", "caption"?, "audience"?}` → 201 answer."""
    _, user = await _gate(request)
    svc = services(request)
    body = await read_json(request, max_bytes=svc.captures.config.max_sdp_bytes + 8192)
    sdp = body.get("sdp")
    if not isinstance(sdp, str):
        raise field_error("sdp", "an SDP offer is required")
    meta = {
        "caption": check_caption(body.get("caption"), svc.settings.max_caption_chars),
        "audience": check_audience(body.get("audience")),
    }
    capture = await svc.captures.offer(user["id"], sdp, str(body.get("type", "")), meta)
    answer = {"id": capture.id, "sdp": capture.answer_sdp, "type": capture.answer_type,
              "max_duration_ms": svc.captures.config.max_duration_ms}  # fmt: skip
    return JSONResponse(answer, status_code=201)


async def stop_capture(request: Request) -> Response:
    """`POST /captures/{id}/stop` → 201 StoryItem (the finished segment)."""
    _, user = await caller(request)
    svc = services(request)
    await limited(request, "edits", user["id"], svc.settings.edits_per_minute)
    item = await svc.captures.stop(user["id"], request.path_params["id"])
    return JSONResponse(item, status_code=201)


async def discard_capture(request: Request) -> Response:
    _, user = await caller(request)
    svc = services(request)
    await limited(request, "edits", user["id"], svc.settings.edits_per_minute)
    await svc.captures.discard(user["id"], request.path_params["id"])
    return no_content()


routes = [
    Route("/captures", start_capture, methods=["POST"]),
    Route("/captures/{id}/stop", stop_capture, methods=["POST"]),
    Route("/captures/{id}", discard_capture, methods=["DELETE"]),
]
