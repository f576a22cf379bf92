"""Secrets the deployment generates for itself, kept in Redis so every host agrees.

When `jwt_secret` / `media_secret` are not configured, the first process to start
on a Redis generates each (32 random bytes, URL-safe) and stores it with `SET NX`;
every other process and host reads the same value, so a dev-login token or a
media URL issued by one host is good on all of them. One key per secret
(`Keys.deployment_secret`), no expiry, one Cluster slot each.

A data dir from before this lived in Redis holds `<data_dir>/secrets/<name>`: its
value is offered first, so tokens and URLs issued then keep working. Losing the
Redis data (FLUSHALL, a new Redis without persistence) makes a new secret, which
signs out every dev-login user and invalidates issued media URLs; a production
deployment sets both secrets instead.
"""

from __future__ import annotations

import secrets
from pathlib import Path

from redis.asyncio import Redis

from server.core.keys import Keys

NAMES = ("jwt", "media")


async def deployment_secret(redis: Redis, keys: Keys, name: str, data_dir: Path | None) -> bytes:
    """The deployment's secret `name` ("jwt" or "media"), created on first use.

    Two round trips (`SET NX`, `GET`); the `GET` makes concurrent first starts on
    many hosts agree on whichever value won. Raises redis errors when Redis is down.
    """
    legacy = data_dir / "secrets" / name if data_dir else None
    offered = legacy.read_bytes() if legacy and legacy.is_file() else None
    key = keys.deployment_secret(name)
    await redis.set(key, offered or secrets.token_urlsafe(32).encode(), nx=True)
    value = await redis.get(key)
    if not value:
        raise RuntimeError(f"the deployment secret {name!r} vanished from Redis")
    return bytes(value)
