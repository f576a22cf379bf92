"""Who is a process: identity that survives PID reuse, and a parent-death signal.

A PID alone is not an identity: after a process dies its number is handed out
again. A PID together with the process's start time (field 22 of
`/proc/<pid>/stat`, clock ticks since boot; proc(5)) is. Linux only for the
start time and the parent-death signal; elsewhere `start_ticks()` is None and
`is_alive()` falls back to "a process with this PID exists".
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
TAG_RE = re.compile(r"^(\d+)-(\d+)$")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (field 3 first), or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()  # the name may hold spaces and ")"


def start_ticks(pid: int) -> int | None:
    """When `pid` started (clock ticks since boot), or None (no such process, not Linux)."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def is_alive(pid: int, started: int | None = None) -> bool:
    """True when `pid` runs (not a zombie) and, if given, started at `started` ticks."""
    fields = _stat_fields(pid)
    if fields is None:
        if Path("/proc/self/stat").exists():
            return False  # Linux: no such process
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if fields[0] in ("Z", "X"):  # exited, not yet reaped
        return False
    return started is None or int(fields[19]) == started


def process_tag(pid: int | None = None) -> str:
    """`<pid>-<start ticks>`: names things that belong to one process's life."""
    pid = os.getpid() if pid is None else pid
    return f"{pid}-{start_ticks(pid) or 0}"


def tag_is_alive(tag: str) -> bool:
    """True when `tag` (from `process_tag`) names a process that still runs.

    Raises ValueError when `tag` is not of that form.
    """
    match = TAG_RE.match(tag)
    if match is None:
        raise ValueError(f"not a process tag: {tag!r}")
    pid, started = int(match[1]), int(match[2])
    return is_alive(pid, started or None)


def cwd_of(pid: int) -> Path | None:
    """The working directory of `pid` (ours to read), or None."""
    with contextlib.suppress(OSError):
        return Path(os.readlink(f"/proc/{pid}/cwd"))
    return None


def exe_name(pid: int) -> str | None:
    """The file name of the program `pid` runs (e.g. "redis-server"), or None."""
    with contextlib.suppress(OSError):
        return Path(os.readlink(f"/proc/{pid}/exe")).name
    return None


def parent_death_signal(sig: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A `subprocess.Popen(preexec_fn=...)` that has the child get `sig` when we die.

    Uses `prctl(PR_SET_PDEATHSIG)` (prctl(2)): the kernel signals the child when the
    thread that forked it ends, so fork from a thread that lives as long as the
    process. If we already died between fork and prctl, the child exits at once.
    None where prctl is unavailable (not Linux).
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def in_child() -> None:  # runs between fork and exec: no imports, no locks
        prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return in_child
