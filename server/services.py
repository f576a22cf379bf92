"""Everything the app's lifespan builds, in start order, and its ordered shutdown."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from server.api.captures import publish_capture, report_failure
from server.core.auth import Authenticator, load_or_create_secret
from server.core.clock import Clock, SystemClock
from server.core.keys import Keys
from server.core.settings import Settings
from server.core.signing import MediaSigner
from server.live.captures import CaptureConfig, CaptureManager
from server.media.pool import MediaPool
from server.push.broker import Broker
from server.push.drain import Drain
from server.push.gcpolicy import freeze_on_growth
from server.push.hub import Hub
from server.push.source import RedisHubSource
from server.store.graph import Graph
from server.store.limits import Idempotency
from server.store.rollout import Rollout
from server.store.scratch import process_dir, sweep_data_dir
from server.store.scripts import Scripts
from server.store.storage import LocalStorage
from server.store.store import Store
from server.store.users import UserStore
from server.stories.reader import StoryReader
from server.stories.seen import SeenBook
from server.stories.sweeper import Sweeper
from server.stories.writer import StoryWriter

log = logging.getLogger("stories")


def redis_client(url: str, max_connections: int = 100) -> aioredis.Redis:
    """An asyncio client with short timeouts, so an outage turns into 503s quickly.

    The pool is a blocking one: past `max_connections` a command waits (up to
    5 s) for a free connection instead of failing. Sockets signing in never
    get that far: the hub's sign-in gate (`admission.py`) admits fewer at once
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


def capture_config(settings: Settings) -> CaptureConfig:
    """Live-capture limits from settings; ICE server URLs become `{"urls": url}`."""
    return CaptureConfig(
        max_duration_ms=settings.capture_max_duration_ms,
        max_concurrent=settings.capture_max_concurrent,
        ice_servers=[{"urls": url} for url in settings.capture_ice_servers],
    )


@dataclass
class Services:
    """The server's parts, handed to handlers through `app.state.services`."""

    settings: Settings
    store: Store
    auth: Authenticator
    writer: StoryWriter
    reader: StoryReader
    seen: SeenBook
    rollout: Rollout
    idempotency: Idempotency
    media: MediaPool
    sweeper: Sweeper
    hub: Hub
    broker: Broker
    captures: CaptureManager
    drain: Drain
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    readiness: dict[str, Callable[[], str]] = field(default_factory=dict)  # name → "ok" | why not

    @classmethod
    async def start(cls, settings: Settings, clock: Clock | None = None) -> Services:
        """Connect to Redis (settings.redis_url must be set) and build every part."""
        if not settings.redis_url:
            raise RuntimeError("redis_url is not set; the CLI starts the embedded Redis")
        redis = redis_client(settings.redis_url, settings.redis_max_connections)
        keys = Keys(settings.redis_prefix)
        data = settings.data_path.resolve()
        media_secret = (settings.media_secret or "").encode() or load_or_create_secret(
            data, "media"
        )
        store = Store(
            redis=redis, keys=keys, scripts=Scripts(redis), users=UserStore(redis, keys),
            graph=Graph(redis, keys), signer=MediaSigner(media_secret),
            storage=LocalStorage(data), clock=clock or SystemClock(), settings=settings,
        )  # fmt: skip
        writer, reader = StoryWriter(store), StoryReader(store)
        hub = Hub(RedisHubSource(store, reader), keys, settings, store.clock)
        sweep_data_dir(data)  # partial files of captures and uploads of dead processes
        captures = CaptureManager(capture_config(settings), process_dir(data / "captures"),
                                  on_finished=lambda c, r: publish_capture(svc, c, r),
                                  on_failed=lambda c, d: report_failure(svc, c, d))  # fmt: skip
        broker = Broker(redis, hub, keys.canary_channel(secrets.token_hex(6)))
        svc = cls(
            settings=settings, store=store, auth=Authenticator(settings), writer=writer,
            reader=reader, seen=SeenBook(store, reader), rollout=Rollout(redis, keys.rollout()),
            idempotency=Idempotency(redis, keys),
            media=MediaPool(settings.media_workers, settings.media_queue,
                             settings.media_memory_budget_bytes),
            sweeper=Sweeper(store, writer), hub=hub, broker=broker, captures=captures,
            drain=Drain(hub, settings),
        )  # fmt: skip
        hub.bind(broker)
        await broker.start()
        svc.readiness["pubsub"] = broker.readiness
        svc.readiness["accepting"] = svc.drain.readiness  # 503 from the first moment of a drain
        svc.tasks.append(asyncio.create_task(svc.sweeper.run(), name="sweeper"))
        gc_task = freeze_on_growth(lambda: len(hub.conns))
        svc.tasks.append(asyncio.create_task(gc_task, name="gc-freeze"))
        return svc

    async def close(self) -> None:
        """Drain sockets (1012), stop captures, background tasks, the broker, media pool, Redis.

        The drain is the one SIGTERM started, if any (else it runs now); every
        later step is bounded by what is left of its teardown budget
        (`drain.Budget.teardown_by`: `ws_drain_timeout_s + drain.TEARDOWN_S`
        after the drain began).
        """
        await self.drain.run()
        left = self.drain.teardown_left
        await _bounded("captures", self.captures.close(), left(10))
        for task in self.tasks:
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=left(5))
        await _bounded("broker", self.broker.close(), left(5))
        self.media.close()
        await _bounded("redis", self.store.redis.aclose(), left(5))


async def _bounded(name: str, step: Awaitable[None], timeout_s: float) -> None:
    """One shutdown step, given at most `timeout_s`; a stuck step is logged, not waited on."""
    try:
        await asyncio.wait_for(step, timeout_s)
    except TimeoutError:
        log.error("shutdown: %s did not finish within %.1f s", name, timeout_s)
    except Exception:
        log.exception("shutdown: %s failed", name)
