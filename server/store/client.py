"""The Redis client every part of one process shares."""

from __future__ import annotations

import redis.asyncio as aioredis


def redis_client(url: str, max_connections: int = 100) -> aioredis.Redis:
    """An asyncio client with short timeouts, so an outage turns into 503s quickly.

    The pool is a blocking one: past `max_connections` a command waits (up to
    5 s) for a free connection instead of failing. Sockets signing in never
    get that far: the hub's sign-in gate (`server/push/admission.py`) admits fewer at once
    than the pool holds (`ws_sign_in_concurrency`) and tells the rest to retry.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=5,
        socket_timeout=5,
        socket_connect_timeout=2,
        health_check_interval=10,
    )
    return aioredis.Redis(connection_pool=pool)
