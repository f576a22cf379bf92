"""HTTP: live capture over WebRTC (PROTOCOL.md "Live capture").

The capture → item step is not here: `server/live/publish.py` posts a finished
recording and pushes `capture.finished` / `capture.failed`.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.api.checks import check_audience, check_caption, check_fields
from server.api.common import caller, limited, post_gate, read_json, services
from server.api.responses import JSONResponse, no_content
from server.core.errors import field_error


async def start_capture(request: Request) -> Response:
    """`POST /captures {"sdp", "type": "offer", "caption"?, "audience"?}` → 201 answer."""
    _, user = await post_gate(request)
    svc = services(request)
    body = await read_json(request, max_bytes=svc.captures.config.max_sdp_bytes + 8192)
    check_fields(body, {"sdp", "type", "caption", "audience"})
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
    """`DELETE /captures/{id}` → 204: the capture ends and nothing is posted."""
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
