"""Everything the app's lifespan builds, in start order, and its ordered shutdown."""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from server.core.auth import Authenticator
from server.core.clock import Clock, SystemClock
from server.core.keys import Keys
from server.core.settings import Settings
from server.core.signing import MediaSigner
from server.live.captures import CaptureConfig, CaptureManager
from server.live.publish import CapturePublisher
from server.media.pool import MediaPool
from server.push.broker import Broker
from server.push.drain import Drain
from server.push.gcpolicy import freeze_on_growth
from server.push.hub import Hub
from server.push.sharded import ShardedBroker
from server.push.source import RedisHubSource
from server.store.client import cluster_nodes, is_cluster_url, redis_client
from server.store.graph import Graph
from server.store.limits import Idempotency
from server.store.migrate import move_legacy_indexes
from server.store.rollout import Rollout
from server.store.scratch import process_dir, remove_own_dirs, sweep_data_dir
from server.store.scripts import Scripts
from server.store.secrets import deployment_secret
from server.store.storage import LocalStorage, Storage
from server.store.store import Store
from server.store.users import UserStore
from server.stories.reader import StoryReader
from server.stories.seen import SeenBook
from server.stories.sweeper import Sweeper
from server.stories.writer import StoryWriter

log = logging.getLogger("stories")


def capture_config(settings: Settings) -> CaptureConfig:
    """Live-capture limits from settings; ICE server URLs become `{"urls": url}`."""
    return CaptureConfig(
        max_duration_ms=settings.capture_max_duration_ms,
        max_concurrent=settings.capture_max_concurrent,
        ice_servers=[{"urls": url} for url in settings.capture_ice_servers],
    )


def media_storage(settings: Settings) -> Storage:
    """Local files under the data dir, or the object store of `object_store_url`."""
    if not settings.object_store_url:
        return LocalStorage(settings.data_path.resolve())
    from server.store.objects import (
        REQUEST_TIMEOUT_S,
        STREAM_TIMEOUT_S,
        ObjectStorage,
        s3_store,
    )

    def bucket(url: str, timeout_s: float) -> Any:
        return s3_store(url, endpoint=settings.s3_endpoint, region=settings.s3_region,
                        access_key_id=settings.s3_access_key_id,
                        secret_access_key=settings.s3_secret_access_key,
                        timeout_s=timeout_s)  # fmt: skip

    url = settings.object_store_url
    return ObjectStorage(bucket(url, REQUEST_TIMEOUT_S), bucket(url, STREAM_TIMEOUT_S))


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
    broker: Broker | ShardedBroker
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
        await move_legacy_indexes(redis, keys)
        data = settings.data_path.resolve()
        media_secret = (settings.media_secret or "").encode() or await deployment_secret(
            redis, keys, "media", data
        )
        jwt_secret = None
        if settings.jwt_algorithm == "HS256" and not settings.jwt_secret:
            jwt_secret = await deployment_secret(redis, keys, "jwt", data)
        store = Store(
            redis=redis,
            keys=keys,
            scripts=Scripts(redis),
            users=UserStore(redis, keys),
            graph=Graph(redis, keys),
            signer=MediaSigner(media_secret),
            storage=media_storage(settings),
            clock=clock or SystemClock(),
            settings=settings,
        )
        writer, reader = StoryWriter(store), StoryReader(store)
        hub = Hub(RedisHubSource(store, reader), keys, settings, store.clock)
        media = MediaPool(settings.media_workers, settings.media_queue,
                          settings.media_memory_budget_bytes)  # fmt: skip
        sweep_data_dir(data)  # partial files of captures and uploads of dead processes
        publisher = CapturePublisher(store, media, writer)
        captures = CaptureManager(capture_config(settings), process_dir(data / "captures"),
                                  on_finished=publisher.finished, on_failed=publisher.failed)  # fmt: skip
        broker: Broker | ShardedBroker
        if is_cluster_url(settings.redis_url):  # sharded pub/sub: a link per primary
            seeds = cluster_nodes(settings.redis_url)
            broker = ShardedBroker(redis, hub, seeds, keys.canary_channel)
        else:
            broker = Broker(redis, hub, keys.canary_channel(secrets.token_hex(6)))
        svc = cls(
            settings=settings,
            store=store,
            auth=Authenticator(settings, jwt_secret),
            writer=writer,
            reader=reader,
            seen=SeenBook(store, reader),
            rollout=Rollout(redis, keys.rollout()),
            idempotency=Idempotency(redis, keys),
            media=media,
            sweeper=Sweeper(store, writer),
            hub=hub,
            broker=broker,
            captures=captures,
            drain=Drain(hub, settings),
        )
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
        remove_own_dirs(self.settings.data_path.resolve())
        await _bounded("redis", self.store.redis.aclose(), left(5))


async def _bounded(name: str, step: Awaitable[None], timeout_s: float) -> None:
    """One shutdown step, given at most `timeout_s`; a stuck step is logged, not waited on."""
    try:
        await asyncio.wait_for(step, timeout_s)
    except TimeoutError:
        log.error("shutdown: %s did not finish within %.1f s", name, timeout_s)
    except Exception:
        log.exception("shutdown: %s failed", name)
