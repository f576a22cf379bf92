"""The ASGI application: routes, the lifespan that builds `Services`, error mapping.

Errors map to problem+json in one place (`_problem_handlers`): our own
`StoriesError` tree, Starlette's HTTP errors (unknown route, wrong method), a
client gone mid-request (logged at info, no traceback),
Redis being unreachable (503 with Retry-After, never a false success), and
anything unexpected (500, logged).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import redis.exceptions
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Mount, Router
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from server.api import admin as http_admin
from server.api import captures as http_captures
from server.api import media as http_media
from server.api import redact, ws
from server.api import stories as http_stories
from server.api import users as http_users
from server.api.responses import problem_response
from server.core.clock import Clock
from server.core.errors import BadRequest, HttpError, ServiceUnavailable, StoriesError
from server.core.settings import Settings
from server.push import drain
from server.services import Services

log = logging.getLogger("stories")
DEMO_DIR = Path(__file__).resolve().parent.parent / "client_demo"


async def _stories_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StoriesError)
    return problem_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return problem_response(HttpError(exc.status_code, str(exc.detail)))


async def _redis_down(request: Request, exc: Exception) -> Response:
    settings: Settings = request.app.state.settings
    log.warning("redis unavailable: %s", exc)
    return problem_response(
        ServiceUnavailable(
            "the database (Redis) is unavailable; retry shortly",
            retry_after_s=settings.redis_retry_after_s,
        )
    )


async def _client_gone(request: Request, exc: Exception) -> Response:
    """The client closed its connection mid-request (say, mid-upload): nothing to answer.

    Whatever the request had begun is undone on the way out (scratch folder,
    Idempotency-Key); the 400 is for the log line only, no one reads it.
    """
    log.info("client disconnected during %s %s", request.method, request.url.path)
    return problem_response(BadRequest("the client disconnected before the request ended"))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem_response(StoriesError("unexpected server error"))


_problem_handlers: dict[Any, Any] = {
    StoriesError: _stories_error,
    HTTPException: _http_error,
    ClientDisconnect: _client_gone,
    redis.exceptions.ConnectionError: _redis_down,
    redis.exceptions.TimeoutError: _redis_down,
    redis.exceptions.BusyLoadingError: _redis_down,
    redis.exceptions.ClusterDownError: _redis_down,  # a shard without a primary (failover)
    redis.exceptions.TryAgainError: _redis_down,  # a slot in the middle of a resharding
    redis.exceptions.SlotNotCoveredError: _redis_down,
    Exception: _unexpected,
}


class StoriesApp(Starlette):
    """Starlette, except that `/ws` sockets go straight to `ws.serve`.

    A socket lives for hours and keeps every coroutine frame on its way in
    alive; Starlette's middleware and routing frames cost about 5 KB per idle
    socket (measured with tracemalloc), more than all of our own state. `/ws`
    needs none of them: it answers its own errors with close codes. Everything
    else (HTTP, lifespan) takes Starlette's way. (`__call__` stays a coroutine
    function: servers tell ASGI 3 apps by it.)
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket" and _app_path(scope) == "/ws":
            scope["app"] = self
            await ws.serve(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


def _app_path(scope: Scope) -> str:
    """The path below the app's mount point (`root_path`), as Starlette's router sees it."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


def create_app(settings: Settings, clock: Clock | None = None) -> Starlette:
    """The app for `settings` (with `redis_url` set); `clock` is injectable for tests."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        services = await Services.start(settings, clock)
        app.state.services = services
        uninstall = drain.install(services.drain.run)
        try:
            if settings.demo:
                from server.seed import seed_demo

                await seed_demo(services)
            yield
        finally:
            uninstall()
            await services.close()

    api = http_users.routes + http_stories.routes + http_captures.routes + http_admin.admin_routes
    routes: list[Any] = [
        Mount("/api/v1", app=Router(routes=api, redirect_slashes=False)),
        *http_media.routes,
        *http_admin.health_routes,
    ]
    if DEMO_DIR.is_dir():
        routes.append(Mount("/", app=StaticFiles(directory=DEMO_DIR, html=True), name="demo"))
    redact.install()
    app = StoriesApp(routes=routes, lifespan=lifespan, exception_handlers=_problem_handlers)
    app.router.redirect_slashes = False  # `/api/v1/tray/` is a 404 problem, not a 307
    app.state.settings = settings
    return app


def app_from_env() -> Starlette:
    """uvicorn factory for worker processes: settings come resolved from the CLI."""
    raw = os.environ.get("STORIES_RESOLVED_SETTINGS")
    if not raw:
        from server.core.settings import load_settings

        return create_app(load_settings())
    return create_app(Settings.from_json(raw))
