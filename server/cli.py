"""The `stories` command: `serve`, `rollout show|set`, `token`.

`stories serve` resolves settings (defaults < --config TOML < STORIES_* env <
flags), starts the embedded Redis when no Redis URL is given, checks that
Redis answers (a clear message and exit code 2 when it does not), prints the
URL and the Redis in use, then runs uvicorn with N workers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import redis

from server.core.settings import Settings, load_settings
from server.store.embedded_redis import DataDirInUse, EmbeddedRedis, EmbeddedRedisError

EXIT_CONFIG = 2
EXIT_REDIS = 3


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stories", description="Stories server")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the HTTP/WebSocket server")
    _common(serve)
    serve.add_argument("--host")
    serve.add_argument("--port", type=_number)
    serve.add_argument("--workers", type=_number)
    serve.add_argument("--dev-login", action="store_true", default=None)
    serve.add_argument(
        "--demo", action="store_true", default=None, help="seed demo data; implies --dev-login"
    )
    serve.add_argument("--lifetime-seconds", type=_number, help="override every story lifetime")
    rollout = sub.add_parser("rollout", help="show or set the pilot rollout gate")
    _common(rollout)
    rollout.add_argument("action", choices=["show", "set"])
    rollout.add_argument("--open", action="store_true", help="everyone may post")
    rollout.add_argument("--allow", default="", help="comma-separated user ids or handles")
    rollout.add_argument(
        "--percent", type=_number, default=0, help="0-100, stable hash of the user id"
    )
    rollout.add_argument("--countries", default="", help="comma-separated ISO country codes")
    token = sub.add_parser("token", help="mint an HS256 token for a user id (development)")
    _common(token)
    token.add_argument("user_id")
    return p


def _number(text: str) -> int:
    """A command-line number by the same ASCII rule as the API (`parse.uint`): `٣` is no 3."""
    from server.core.parse import uint

    value = uint(text)
    if value is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of ASCII digits")
    return value


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="TOML settings file")
    p.add_argument(
        "--redis-url",
        help="redis://host:port, unix:///path, or redis+cluster://host:port[,host:port...]",
    )
    p.add_argument("--data-dir")


def _settings(args: argparse.Namespace) -> Settings:
    names = (
        "host",
        "port",
        "workers",
        "dev_login",
        "demo",
        "lifetime_seconds",
        "redis_url",
        "data_dir",
    )
    overrides = {n: getattr(args, n, None) for n in names}
    return load_settings(args.config, overrides=overrides)


@contextlib.contextmanager
def redis_for(settings: Settings, *, share: bool = False) -> Iterator[str]:
    """The Redis URL to use, starting (and finally stopping) the embedded one if needed.

    `share`: when a running server owns the data dir, use its embedded Redis
    (for admin commands such as `stories rollout`) instead of refusing.
    """
    if settings.redis_url:
        yield settings.redis_url
        return
    embedded = EmbeddedRedis(settings.data_dir)
    try:
        url = embedded.start()
    except DataDirInUse:
        if not share:
            raise
        yield embedded.shared_url()
        return
    embedded.supervise()
    try:
        yield url
    finally:
        embedded.stop()


def check_media_storage(settings: Settings) -> str:
    """Where media goes, after checking an object store answers (raises StorageUnavailable)."""
    if not settings.object_store_url:
        return str(settings.data_path.resolve() / "media")
    from server.services import media_storage

    asyncio.run(media_storage(settings).check())
    return f"{settings.object_store_url} at {settings.s3_endpoint or 'AWS S3'}"


def check_redis(url: str, timeout_s: float = 5.0) -> str:
    """The Redis version at `url`; raises redis.RedisError when it does not answer.

    For a `redis+cluster://` URL: the version of its first startup node.
    """
    from server.store.client import cluster_nodes, is_cluster_url

    if is_cluster_url(url):
        host, port = cluster_nodes(url)[0]
        client = redis.Redis(host=host, port=port, socket_connect_timeout=timeout_s,
                             socket_timeout=timeout_s)  # fmt: skip
    else:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s
        )
    try:
        return str(client.info("server")["redis_version"])
    finally:
        client.close()


class _Terminated(SystemExit):
    """SIGTERM arrived (uvicorn re-raises it once it has shut down)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + signum)
        self.signum = signum


def _exit_on_sigterm(signum: int, frame: object) -> None:
    """Unwind instead of dying at once, so `redis_for` stops the embedded Redis.

    Further SIGTERMs are ignored from here on, so that one cannot interrupt
    that cleanup (`serve` ends the process by the signal once it is done).
    """
    signal.signal(signum, signal.SIG_IGN)
    raise _Terminated(signum)


def serve(settings: Settings) -> int:
    """Run the server until SIGTERM or SIGINT; on SIGTERM the process ends by that signal."""
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        _serve(settings)
    except _Terminated as stop:  # cleaned up: now end by the signal, as uvicorn means to
        signal.signal(stop.signum, signal.SIG_DFL)  # (a service manager counts that clean)
        signal.raise_signal(stop.signum)
    return 0


def _serve(settings: Settings) -> None:
    import uvicorn

    from server.push.drain import UVICORN_GRACE_S

    with redis_for(settings) as url:
        settings.redis_url = url
        version = check_redis(url)
        media = check_media_storage(settings)
        kind = "embedded" if url.startswith("unix://") else "external"
        print(f"Stories server on http://{settings.host}:{settings.port}/  (Redis {version}, {kind}: {url}; "
              f"media: {media})", flush=True)  # fmt: skip
        import os

        os.environ["STORIES_RESOLVED_SETTINGS"] = settings.to_json().decode()
        uvicorn.run(
            "server.app:app_from_env", factory=True, host=settings.host, port=settings.port,
            workers=settings.workers if settings.workers > 1 else None, log_level=settings.log_level,
            ws="websockets-sansio", timeout_graceful_shutdown=UVICORN_GRACE_S,
            ws_max_size=settings.ws_max_frame_bytes,
            ws_per_message_deflate=settings.ws_per_message_deflate, ws_ping_interval=settings.ws_ping_interval_s,
            ws_ping_timeout=settings.ws_idle_timeout_s - settings.ws_ping_interval_s,
            lifespan="on",
        )  # fmt: skip


async def _rollout(settings: Settings, args: argparse.Namespace, url: str) -> dict[str, Any]:
    from server.core.keys import Keys
    from server.store.client import redis_client
    from server.store.rollout import Gate, Rollout

    client = redis_client(url, max_connections=4)
    try:
        rollout = Rollout(client, Keys(settings.redis_prefix).rollout())
        if args.action == "set":
            split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
            gate = Gate.parse({"open": args.open, "allow": split(args.allow), "percent": args.percent,
                               "countries": split(args.countries)})  # fmt: skip
            await rollout.set(gate)
        return (await rollout.get()).to_json()
    finally:
        await client.aclose()


async def _deployment_secret(settings: Settings, url: str, name: str) -> bytes:
    from server.core.keys import Keys
    from server.store.client import redis_client
    from server.store.secrets import deployment_secret

    client = redis_client(url, max_connections=4)
    try:
        return await deployment_secret(client, Keys(settings.redis_prefix), name,
                                       settings.data_path.resolve())  # fmt: skip
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except (ValueError, OSError) as exc:
        print(f"stories: bad configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    try:
        if args.command == "serve":
            return serve(settings)
        if args.command == "token":
            from server.core.auth import Authenticator
            from server.core.parse import is_user_id

            if not is_user_id(args.user_id):
                print("stories: a user id is 1-64 of [A-Za-z0-9_-]", file=sys.stderr)
                return EXIT_CONFIG

            secret = None
            if settings.jwt_algorithm == "HS256" and not settings.jwt_secret:
                with redis_for(settings, share=True) as url:
                    secret = asyncio.run(_deployment_secret(settings, url, "jwt"))
            print(Authenticator(settings, secret).mint(args.user_id, int(time.time())))
            return 0
        with redis_for(settings, share=True) as url:
            import orjson

            gate = asyncio.run(_rollout(settings, args, url))
            print(orjson.dumps(gate, option=orjson.OPT_INDENT_2).decode())
        return 0
    except EmbeddedRedisError as exc:
        print(f"stories: {exc}", file=sys.stderr)
        return EXIT_REDIS
    except ValueError as exc:  # e.g. a Redis URL of an unknown scheme
        print(f"stories: {exc}", file=sys.stderr)
        return EXIT_REDIS
    except redis.RedisError as exc:
        print(
            f"stories: Redis at {settings.redis_url or 'embedded'} does not answer: {exc}",
            file=sys.stderr,
        )
        return EXIT_REDIS
    except Exception as exc:
        from server.core.errors import StoriesError

        if isinstance(exc, StoriesError):
            print(f"stories: {exc.detail}", file=sys.stderr)
            return EXIT_CONFIG
        raise
