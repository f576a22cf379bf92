"""Per-process scratch folders in the data dir, and the startup sweep of dead ones.

Live captures write `<data>/captures/<tag>/<id>.mp4.part` (and the poster), uploads
work in `<data>/tmp/<tag>/<uuid>/`, where `<tag>` is `procs.process_tag()` of the
process doing it: its PID and start time. A process killed mid-capture or
mid-upload leaves its folder behind; the next process to start on the data dir
removes it. Workers (`--workers N`) share the data dir, so a folder is removed
only when the process its tag names no longer runs (a PID reused since by another
process has another start time). Anything else directly in those roots (a loose
`*.part`, a `tmp/<uuid>/` of the layout before tags) belongs to no process and is
removed too.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from server.store import procs

log = logging.getLogger("stories")
SCRATCH_ROOTS = ("captures", "tmp")  # under the data dir


def process_dir(root: Path) -> Path:
    """This process's folder under `root` (created if missing)."""
    path = root / procs.process_tag()
    path.mkdir(parents=True, exist_ok=True)
    return path


@asynccontextmanager
async def workdir(tmp_root: Path) -> AsyncIterator[Path]:
    """A private temporary folder, removed with everything in it on exit.

    It lives in this process's folder of `tmp_root` (`process_dir`), so what a
    killed process leaves is removed when the next one starts (`sweep_data_dir`).
    """
    path = process_dir(tmp_root) / uuid.uuid4().hex
    path.mkdir(parents=True)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _owned_by_live_process(entry: Path) -> bool:
    if not entry.is_dir():
        return False
    try:
        return procs.tag_is_alive(entry.name)
    except ValueError:  # not a process folder
        return False


def sweep(root: Path) -> list[Path]:
    """Remove everything directly under `root` that no live process owns; returns what went."""
    if not root.is_dir():
        return []
    removed = []
    for entry in sorted(root.iterdir()):
        if _owned_by_live_process(entry):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


def sweep_data_dir(data: Path) -> list[Path]:
    """`sweep()` every scratch root of the data dir at startup; logs what it removed."""
    removed = [path for name in SCRATCH_ROOTS for path in sweep(data / name)]
    if removed:
        log.info("removed %d partial file(s)/folder(s) left by stopped processes", len(removed))
    return removed


def remove_own_dirs(data: Path) -> None:
    """At a clean shutdown: remove this process's folders of every scratch root.

    Called once captures and uploads have ended; what is left in them is garbage.
    """
    for name in SCRATCH_ROOTS:
        shutil.rmtree(data / name / procs.process_tag(), ignore_errors=True)
