"""One error vocabulary: a small exception tree mapped to problem+json (RFC 9457).

Every error reported to a client is a `StoriesError` subclass carrying its HTTP
status, a problem `type` slug, a human `detail` and the WebSocket close code it
ends a socket with when it must (`codes.py`). `app.py` maps them to
`application/problem+json` in one place; nothing else builds error bodies.
Problem types are relative URIs `/problems/<slug>` (RFC 9457 section 3.1.1).

One tree, not one per transport: a refused `seen` op over `/ws` answers an
`error` frame with the same `status` and `detail` as `POST /stories/{id}/seen`,
so each error is described once, for both. `close_code` matters only where an
error ends a socket: `ProtocolError` 1008, `Unauthorized` 4001, a bug 1011.
"""

from __future__ import annotations

from typing import Any

from server.core import codes

PROBLEM_BASE = "/problems/"


class StoriesError(Exception):
    """Base of every error reported to a client.

    Attributes: `status` (HTTP status), `slug` (problem type suffix), `title`,
    `detail` (human text), `errors` (field problems, `[{"field", "detail"}]`),
    `headers` (extra response headers, e.g. Retry-After), `close_code` (the
    WebSocket close code, `codes.WS_*`, when the error ends a socket).
    Instantiated directly it is a server fault: 500, or close 1011.
    """

    status = 500
    slug = "internal"
    title = "Internal error"
    close_code = codes.WS_1011_INTERNAL_ERROR

    def __init__(
        self,
        detail: str = "",
        *,
        errors: list[dict[str, str]] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = errors
        self.headers = headers or {}

    @property
    def type(self) -> str:
        return PROBLEM_BASE + self.slug

    def problem(self) -> dict[str, Any]:
        """The RFC 9457 body: `{"type", "title", "status", "detail"[, "errors"]}`."""
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = self.errors
        return body


class HttpError(StoriesError):
    """An HTTP error raised by the framework, not by us: Starlette's 404 for an
    unknown route or file, its 405 for a method a route does not take.

    `status` is the framework's status code and `detail` its text (Starlette's
    default is the status phrase, "Method Not Allowed"), which is the title too;
    the slug is `not-found` (404), `method-not-allowed` (405) or `http-error`.
    """

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = detail
        self.slug = _FRAMEWORK_SLUGS.get(status, "http-error")


_FRAMEWORK_SLUGS = {404: "not-found", 405: "method-not-allowed"}


class BadRequest(StoriesError):
    status, slug, title = 400, "malformed", "Malformed request"


class ProtocolError(BadRequest):
    """A client frame on `/ws` that breaks the protocol (`frames.parse_op`): close 1008.

    A `BadRequest`, because it is the socket's malformed request: had it come
    over HTTP it would be a 400; over `/ws` it ends the socket with
    `close_code` and `detail` as the close reason.
    """

    close_code = codes.WS_1008_POLICY_VIOLATION


class Unauthorized(StoriesError):
    status, slug, title = 401, "unauthorized", "Missing or invalid token"
    close_code = codes.WS_4001_UNAUTHORIZED


class Forbidden(StoriesError):
    status, slug, title = 403, "forbidden", "Not allowed"


class StoriesNotEnabled(Forbidden):
    slug, title = "stories-not-enabled", "Posting stories is not enabled for this user"


class NotFound(StoriesError):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(StoriesError):
    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(StoriesError):
    status, slug, title = 413, "too-large", "Payload too large"


class UnsupportedMedia(StoriesError):
    status, slug, title = 415, "unsupported-media", "Unsupported media"


class InvalidField(StoriesError):
    status, slug, title = 422, "invalid", "Invalid field"


class InvalidMedia(InvalidField):
    slug, title = "invalid-media", "Media cannot be used"


class RateLimited(StoriesError):
    status, slug, title = 429, "rate-limited", "Too many requests"

    def __init__(self, detail: str = "", *, retry_after_s: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after_s))})


class ServiceUnavailable(StoriesError):
    status, slug, title = 503, "unavailable", "A dependency is down"

    def __init__(self, detail: str = "", *, retry_after_s: int = 2) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after_s))})


class Restarting(ServiceUnavailable):
    """The process is draining for a restart: connect again (anywhere) after Retry-After."""

    slug, title = "restarting", "The server is restarting"


def field_error(field: str, detail: str) -> InvalidField:
    """A 422 for one field: `errors == [{"field": field, "detail": detail}]`."""
    return InvalidField(f"{field}: {detail}", errors=[{"field": field, "detail": detail}])


class LengthRequired(StoriesError):
    status, slug, title = 411, "length-required", "Content-Length required"


class RangeNotSatisfiable(StoriesError):
    """416 with `Content-Range: bytes */<size>` (RFC 9110 section 15.5.17)."""

    status, slug, title = 416, "range-not-satisfiable", "Range not satisfiable"

    def __init__(self, size: int, detail: str = "") -> None:
        super().__init__(
            detail or f"no requested range starts within the {size} bytes",
            headers={"Content-Range": f"bytes */{size}"},
        )


class StorageUnavailable(ServiceUnavailable):
    """The media store (local disk or object store) did not answer; retry shortly."""

    slug, title = "storage-unavailable", "Media storage is unavailable"
