"""Media file storage behind a small interface; one local implementation.

Keys are relative POSIX paths such as `media/u_ab/7-k3j2.mp4`. `put` moves a
finished file into place atomically (rename on the same filesystem, else copy
then rename), so a reader never sees half a file.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Protocol


class Storage(Protocol):
    """Where media files live. Keys are relative paths without `..`."""

    def put(self, src: Path, key: str) -> None: ...

    def path(self, key: str) -> Path: ...

    def delete(self, key: str) -> None: ...

    def exists(self, key: str) -> bool: ...


class LocalStorage:
    """Files under `root` (the data dir); `tmp_dir()` is on the same filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def tmp_dir(self) -> Path:
        path = self.root / "tmp"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def path(self, key: str) -> Path:
        """Absolute path of `key`. Raises ValueError for a key escaping the root."""
        full = (self.root / key).resolve()
        if self.root not in full.parents:
            raise ValueError(f"bad storage key {key!r}")
        return full

    def put(self, src: Path, key: str) -> None:
        dest = self.path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        try:
            os.replace(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
            src.unlink()
        os.replace(tmp, dest)

    def delete(self, key: str) -> None:
        try:
            self.path(key).unlink()
        except FileNotFoundError:
            pass

    def exists(self, key: str) -> bool:
        return self.path(key).is_file()
