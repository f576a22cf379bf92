"""Settings: one dataclass, filled from defaults < TOML file < `STORIES_*` env < CLI.

Every field documents its unit and default; `config/default.toml` lists the same
keys with the same defaults (a test keeps the two in step). Keys are flat:
`port = 8000` in TOML, `STORIES_PORT=8000` in the environment, `--port 8000` on
the command line where the CLI offers it.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import orjson


@dataclass
class Settings:
    """Every setting of the server. `None` means "not set" where stated."""

    # --- process ---
    host: str = "127.0.0.1"  # interface to bind
    port: int = 8000  # TCP port
    workers: int = 1  # uvicorn worker processes
    data_dir: str = "./var"  # media files, embedded Redis data
    log_level: str = "info"  # debug | info | warning | error
    # --- redis ---
    # redis://, rediss://, unix:// (one Redis) or redis+cluster://host:port[,host:port...]
    # (a Redis Cluster by its startup nodes); None: start an embedded redis-server
    redis_url: str | None = None
    redis_prefix: str = "st1:"  # prefix of every Redis key and channel
    redis_retry_after_s: int = 2  # Retry-After sent with 503 while Redis is down
    # client pool per process (per node on a cluster); past it a command waits up to 5 s
    # (on a cluster it fails at once)
    redis_max_connections: int = 100
    # --- auth ---
    dev_login: bool = False  # enable POST /api/v1/auth/dev-login (never in production)
    demo: bool = False  # seed demo users and stories; implies dev_login
    jwt_algorithm: str = "HS256"  # HS256 | RS256 | ES256; pinned, nothing else is accepted
    jwt_secret: str | None = None  # HS256 secret; None: generated once, kept in Redis
    jwt_public_key_file: str | None = None  # PEM public key for RS256/ES256
    jwt_audience: str | None = None  # required `aud` claim; None: not checked
    jwt_issuer: str | None = None  # required `iss` claim; None: not checked
    jwt_leeway_s: int = 30  # clock skew tolerated on exp/iat/nbf, seconds
    jwt_country_claim: str = "country"  # claim holding an ISO 3166 country code (rollout gate)
    dev_token_ttl_s: int = 7 * 24 * 3600  # lifetime of dev-login tokens, seconds
    admin_token: str | None = None  # bearer token of /api/v1/admin/*; None: admin API off
    # --- stories ---
    lifetime_seconds: int | None = None  # overrides every item lifetime (demos, tests); None: off
    default_lifetime_h: int = 24  # lifetime when a post names none; one of 6, 12, 24, 48
    max_caption_chars: int = 2200  # longest caption, characters
    max_reply_chars: int = 1000  # longest reply, characters
    archive_retention_s: int = 30 * 24 * 3600  # expired/deleted items and media kept for the owner
    viewers_retention_s: int = 48 * 3600  # seen-by lists kept after an item ends, seconds
    sweep_interval_s: float = 1.0  # expiry sweeper period, seconds
    posts_per_minute: int = (
        30  # posts, shares, capture starts per user (audience changes too); beyond: 429
    )
    messages_per_minute: int = 60  # replies and reactions per user; beyond: 429
    seen_per_minute: int = (
        120  # POST /stories/{id}/seen per user (the /ws op has its own gate); beyond: 429
    )
    graph_changes_per_minute: int = (
        60  # follow, close-friend and hide changes per user; beyond: 429
    )
    edits_per_minute: int = (
        30  # PATCH /me, story deletions, capture stops and discards per user; beyond: 429
    )
    dev_logins_per_minute: int = 60  # dev logins per client address; beyond: 429
    admin_writes_per_minute: int = 30  # admin API writes per client address; beyond: 429
    # --- media ---
    max_upload_bytes: int = 100 * 1024 * 1024  # largest upload, bytes
    max_video_ms: int = 60_000  # longest video, milliseconds
    max_pixels: int = 50_000_000  # largest image or video frame, width x height
    max_long_side_px: int = 1920  # images (and transcoded video) are scaled down to this
    media_workers: int = 2  # threads for image/video processing
    media_queue: int = 8  # media jobs waiting beyond the workers; beyond: 503
    media_memory_budget_bytes: int = 1024**3  # bytes media jobs hold at once; one needing more: 422
    media_secret: str | None = None  # HMAC key of media URLs; None: generated once, kept in Redis
    # --- media storage ---
    object_store_url: str | None = None  # s3://bucket[/prefix]; None: files under data_dir/media
    s3_endpoint: str | None = None  # S3-compatible server, e.g. http://127.0.0.1:8333; None: AWS
    s3_region: str = "us-east-1"  # region the requests are signed for
    s3_access_key_id: str | None = None  # None: AWS_* environment or instance credentials
    s3_secret_access_key: str | None = None  # None: AWS_* environment or instance credentials
    media_redirect: bool = False  # object store only: media URLs answer 302 to a presigned URL
    # --- live capture ---
    capture_max_duration_ms: int = 15_000  # cap per captured segment, at most 60000
    # live captures per process; beyond: 429. Each takes about 0.45 of a core (720x1280
    # H.264 at 30 fps, bench/capture.py): 2 keep every frame on 2 cores, 3 do not
    capture_max_concurrent: int = 2
    capture_ice_servers: list[str] = field(default_factory=list)  # STUN/TURN URLs; none by default
    # --- websocket ---
    ws_send_queue_bytes: int = 1024 * 1024  # per-connection send queue; overflow closes 1013
    ws_max_frame_bytes: int = 64 * 1024  # largest client frame; larger closes 1009
    ws_per_message_deflate: bool = False  # compression costs a zlib pass per socket per frame
    ws_ping_interval_s: float = 20.0  # server pings; keeps 60 s proxy read timeouts happy
    ws_idle_timeout_s: float = 50.0  # no frame nor pong for this long closes the socket
    ws_auth_timeout_s: float = 5.0  # time to send {"op": "auth"} when no ?token=
    ws_ops_per_second: float = 20.0  # client ops rate; sustained floods close 1008
    ws_drain_timeout_s: float = 10.0  # SIGTERM: until every socket is closed (1012); exit by +2 s
    ws_reconnect_base_ms: int = 1000  # told to clients on 1012; they wait base + jitter
    ws_reconnect_spread_ms: int = 5000  # width of the jitter window, milliseconds
    ws_sign_in_concurrency: int = 32  # sockets signing in at once; < redis_max_connections
    ws_sign_in_queue: int = 2000  # sockets waiting to sign in; beyond: 1013 + retry_after_ms

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def to_json(self) -> bytes:
        """Serialize for handing resolved settings to worker processes."""
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, raw: bytes | str) -> Settings:
        return cls(**orjson.loads(raw))


ENV_PREFIX = "STORIES_"


_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
POSITIVE = (
    "posts_per_minute", "messages_per_minute", "seen_per_minute", "graph_changes_per_minute",
    "edits_per_minute", "dev_logins_per_minute", "admin_writes_per_minute", "max_caption_chars", "max_reply_chars",
    "sweep_interval_s", "max_upload_bytes", "max_video_ms", "max_pixels", "max_long_side_px",
    "media_workers", "media_memory_budget_bytes", "capture_max_concurrent", "ws_send_queue_bytes", "ws_max_frame_bytes",
    "ws_ping_interval_s", "ws_idle_timeout_s", "ws_auth_timeout_s", "ws_ops_per_second",
    "ws_drain_timeout_s", "dev_token_ttl_s", "workers", "ws_sign_in_concurrency",
    "redis_max_connections",
)  # fmt: skip


def _coerce(name: str, raw: Any) -> Any:
    """Convert a TOML or env value to the type of field `name`; raises ValueError."""
    kinds = {f.name: f.type for f in fields(Settings)}
    if name not in kinds:
        raise ValueError(f"unknown setting {name!r}")
    kind = str(kinds[name])
    if raw is None:
        return None
    if "list" in kind:
        if isinstance(raw, str):
            return [part.strip() for part in raw.split(",") if part.strip()]
        return list(raw)
    if "bool" in kind:
        if isinstance(raw, bool):
            return raw
        word = str(raw).strip().lower()
        if word not in _TRUE + _FALSE:
            raise ValueError(f"{name} must be true or false, not {raw!r}")
        return word in _TRUE
    if kind.startswith("int"):
        return int(raw)
    if kind.startswith("float"):
        return float(raw)
    if raw == "" and "None" in kind:
        return None
    return str(raw)


def load_settings(
    config_file: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    overrides: dict[str, Any] | None = None,
) -> Settings:
    """Defaults < TOML `config_file` < `STORIES_*` variables in `env` < `overrides`.

    Raises ValueError for an unknown key or a value of the wrong type.
    """
    values: dict[str, Any] = {}
    if config_file is not None:
        with open(config_file, "rb") as fh:
            for key, raw in tomllib.load(fh).items():
                values[key] = _coerce(key, raw)
    source = os.environ if env is None else env
    for key, raw in source.items():
        if key.startswith(ENV_PREFIX) and key != ENV_PREFIX + "RESOLVED_SETTINGS":
            values[key[len(ENV_PREFIX) :].lower()] = _coerce(key[len(ENV_PREFIX) :].lower(), raw)
    for key, raw in (overrides or {}).items():
        if raw is not None:
            values[key] = _coerce(key, raw)
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """Reject impossible combinations with a ValueError naming the setting."""
    if settings.demo:
        settings.dev_login = True
    if settings.jwt_algorithm not in ("HS256", "RS256", "ES256"):
        raise ValueError("jwt_algorithm must be HS256, RS256 or ES256")
    if settings.dev_login and settings.jwt_algorithm != "HS256":
        raise ValueError("dev_login (and demo) need jwt_algorithm HS256: dev tokens are HS256")
    if settings.jwt_algorithm != "HS256" and not settings.jwt_public_key_file:
        raise ValueError(f"jwt_algorithm {settings.jwt_algorithm} needs jwt_public_key_file")
    if settings.default_lifetime_h not in (6, 12, 24, 48):
        raise ValueError("default_lifetime_h must be one of 6, 12, 24, 48")
    if not 1000 <= settings.capture_max_duration_ms <= 60_000:
        raise ValueError("capture_max_duration_ms must be within 1000..60000")
    for name in POSITIVE:
        if getattr(settings, name) <= 0:
            raise ValueError(f"{name} must be positive")
    if settings.ws_sign_in_concurrency >= settings.redis_max_connections:
        raise ValueError("ws_sign_in_concurrency must be below redis_max_connections")
    if settings.ws_sign_in_queue < 0:
        raise ValueError("ws_sign_in_queue must be 0 or more")
    if settings.ws_idle_timeout_s <= settings.ws_ping_interval_s:
        raise ValueError("ws_idle_timeout_s must be longer than ws_ping_interval_s")
    url = settings.object_store_url
    if url and (not url.startswith("s3://") or not url[len("s3://") :].split("/")[0]):
        raise ValueError("object_store_url must be s3://bucket[/prefix]")
    if settings.media_redirect and not settings.object_store_url:
        raise ValueError("media_redirect needs object_store_url: local files have no other URL")
    if settings.lifetime_seconds is not None and settings.lifetime_seconds <= 0:
        raise ValueError("lifetime_seconds must be positive")
