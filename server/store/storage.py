"""Media file storage behind one small interface: local disk, or an S3 object store.

Keys are relative POSIX paths such as `media/u_ab/7-k3j2.mp4`. `put` takes over a
finished file and makes it appear whole under its key: on local disk a rename
(a copy then a rename across filesystems), in an object store one upload (a
multipart one above 5 MiB), so a reader never sees half a file. The object
store implementation is `server/store/objects.py`.

Every method of `Storage` raises `StorageUnavailable` (503) when the store does
not answer; a missing key is not an error (`stat` answers None, `delete` does
nothing).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import Protocol

READ_CHUNK = 256 * 1024


@dataclass(frozen=True)
class StoredFile:
    """What a store knows of one file: `size` in bytes, an `etag` if it has one,
    `modified_s` (epoch seconds)."""

    size: int
    etag: str | None
    modified_s: float


class Storage(Protocol):
    """Where media files live. Keys are relative paths without `..`."""

    async def check(self) -> None:
        """Raise StorageUnavailable unless the store answers with these settings."""
        ...

    async def put(self, src: Path, key: str, content_type: str) -> None:
        """Store the file at `src` under `key`; `src` is gone afterwards."""
        ...

    async def delete(self, keys: list[str]) -> None:
        """Remove `keys` (missing ones are fine)."""
        ...

    async def delete_prefix(self, prefix: str) -> None:
        """Remove every key starting with `prefix` (e.g. `media/u_ab/7-`)."""
        ...

    async def stat(self, key: str) -> StoredFile | None:
        """The file under `key`, or None."""
        ...

    def local_path(self, key: str) -> Path | None:
        """The file's path on this machine when the store is local disk, else None."""
        ...

    def read(self, key: str, first: int, last: int) -> AsyncIterator[bytes]:
        """Bytes `first..last` (inclusive) of `key`, in chunks."""
        ...

    def presign(self, key: str, expires_s: int) -> str | None:
        """A URL the object store itself serves `key` at for `expires_s`; None if it cannot."""
        ...


class LocalStorage:
    """Files under `root` (the data dir); uploads are worked on in the same filesystem."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        """Absolute path of `key`. Raises ValueError for a key escaping the root."""
        full = (self.root / key).resolve()
        if self.root not in full.parents:
            raise ValueError(f"bad storage key {key!r}")
        return full

    def local_path(self, key: str) -> Path | None:
        return self.path(key)

    async def check(self) -> None:
        return None  # the root was made (or refused) in __init__

    async def put(self, src: Path, key: str, content_type: str) -> None:
        _move_into_place(src, self.path(key))

    async def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.path(key).unlink(missing_ok=True)

    async def delete_prefix(self, prefix: str) -> None:
        folder, _, stem = prefix.rpartition("/")
        directory = self.path(folder)
        for path in directory.glob(f"{stem}*") if directory.is_dir() else []:
            path.unlink(missing_ok=True)

    async def stat(self, key: str) -> StoredFile | None:
        try:
            st = os.stat(self.path(key))
        except FileNotFoundError:
            return None
        return StoredFile(st.st_size, None, st.st_mtime) if S_ISREG(st.st_mode) else None

    async def read(self, key: str, first: int, last: int) -> AsyncIterator[bytes]:
        with self.path(key).open("rb") as fh:
            fh.seek(first)
            left = last - first + 1
            while left > 0 and (chunk := fh.read(min(READ_CHUNK, left))):
                left -= len(chunk)
                yield chunk

    def presign(self, key: str, expires_s: int) -> str | None:
        return None


def _move_into_place(src: Path, dest: Path) -> None:
    """Rename `src` to `dest` via `dest.part` (a copy across filesystems): whole or absent."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        os.replace(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
        src.unlink()
    os.replace(tmp, dest)
