"""JSON and problem+json responses, encoded with orjson."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from server.core.errors import StoriesError


class JSONResponse(Response):
    """`application/json` encoded once with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def problem_response(exc: StoriesError) -> Response:
    """RFC 9457 `application/problem+json` for `exc`, with its extra headers."""
    return Response(
        orjson.dumps(exc.problem()),
        status_code=exc.status,
        media_type="application/problem+json",
        headers=exc.headers,
    )


def no_content() -> Response:
    return Response(status_code=204)
