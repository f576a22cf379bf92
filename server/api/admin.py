"""HTTP: the admin API (rollout gate), behind `settings.admin_token`; health probes."""

from __future__ import annotations

import hmac

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.api.common import client_key, limited, read_json, services
from server.api.responses import JSONResponse
from server.core.auth import bearer_token
from server.core.errors import NotFound, Unauthorized
from server.store.rollout import Gate


def _admin(request: Request) -> None:
    """404 when the admin API is off; 401 for a wrong token."""
    expected = services(request).settings.admin_token
    if not expected:
        raise NotFound("the admin API is not enabled")
    token = bearer_token(request.headers.get("authorization")) or ""
    if not hmac.compare_digest(token.encode(), expected.encode()):
        raise Unauthorized("admin token required")


async def get_rollout(request: Request) -> Response:
    _admin(request)
    return JSONResponse((await services(request).rollout.get()).to_json())


async def put_rollout(request: Request) -> Response:
    """`PUT /admin/rollout {"open"?, "allow"?, "percent"?, "countries"?}` → the gate."""
    _admin(request)
    svc = services(request)
    await limited(
        request, "admin writes", client_key(request), svc.settings.admin_writes_per_minute
    )
    gate = Gate.parse(await read_json(request))
    await svc.rollout.set(gate)
    return JSONResponse(gate.to_json())


async def healthz(request: Request) -> Response:
    """The process is alive."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    """Redis answers (and, with push, the process receives its own canary): 200, else 503.

    While the process drains (SIGTERM) it is 503 at once, without asking Redis.
    """
    svc = services(request)
    checks: dict[str, str] = {}
    if svc.hub.draining:
        checks["redis"] = "not checked"
    else:
        try:
            await svc.store.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:  # any failure means "not ready"
            checks["redis"] = f"down: {type(exc).__name__}"
    for name, probe in svc.readiness.items():
        checks[name] = probe()
    ready = all(v == "ok" for v in checks.values())
    headers = {} if ready else {"Retry-After": str(svc.settings.redis_retry_after_s)}
    body = {"status": "ready" if ready else "unavailable", "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503, headers=headers)


admin_routes = [
    Route("/admin/rollout", get_rollout, methods=["GET"]),
    Route("/admin/rollout", put_rollout, methods=["PUT"]),
]
health_routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
]
