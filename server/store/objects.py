"""Media in an S3-compatible object store (AWS S3, SeaweedFS, MinIO, R2 ...), via obstore.

obstore is the Python binding of the Rust `object_store` crate (Apache Arrow):
natively async, streaming, multipart uploads and presigned URLs built in, and no
botocore underneath. `ObjectStorage` implements `storage.Storage`:

- `put` uploads the finished file once (obstore switches to a multipart upload
  above its 5 MiB chunk), with its Content-Type, then removes the local file;
- `read` is a ranged GET streamed in chunks; `stat` a HEAD;
- `presign` signs a GET URL with the store's credentials (SigV4 on S3), for
  `media_redirect`.

Requests time out (`REQUEST_TIMEOUT_S`, connecting in 2 s) and retry twice within
`RETRY_TIMEOUT`, so a store that is down or hangs turns into `StorageUnavailable`
(503 with Retry-After) within about ten seconds; only a media stream already
answering a client may take longer (`STREAM_TIMEOUT_S`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import obstore
from obstore.exceptions import (
    BaseError,
    NotFoundError,
    PermissionDeniedError,
    UnauthenticatedError,
)
from obstore.store import S3Store

from server.core.errors import StorageUnavailable
from server.store.storage import StoredFile

RETRY_TIMEOUT = dt.timedelta(seconds=4)
REQUEST_TIMEOUT_S = 10.0  # HEAD, LIST, DELETE and each PUT (a part of a multipart upload: 5 MiB)
STREAM_TIMEOUT_S = 600.0  # a ranged GET streamed to a client: as slow as the client reads
RETRY_AFTER_S = 5  # told to clients while the store does not answer
S3_CODE = re.compile(r"<Code>(\w+)</Code>")  # the error code of an S3 XML error body
REFUSED = re.compile(r"\b40[13] (Forbidden|Unauthorized)\b")
CHUNK = 256 * 1024


def s3_store(
    url: str,
    *,
    endpoint: str | None,
    region: str,
    access_key_id: str | None,
    secret_access_key: str | None,
    timeout_s: float = REQUEST_TIMEOUT_S,
) -> S3Store:
    """An `S3Store` for `url` (`s3://bucket[/prefix]`). Raises ValueError for another scheme.

    `endpoint` (e.g. `http://127.0.0.1:8333`) selects an S3-compatible server and
    path-style requests; None is AWS. Unset keys fall back to obstore's own
    lookup (`AWS_*` environment variables, instance credentials).
    """
    if not url.startswith("s3://") or len(url) <= len("s3://"):
        raise ValueError(f"object_store_url must be s3://bucket[/prefix], not {url!r}")
    bucket, _, prefix = url[len("s3://") :].partition("/")
    config: dict[str, Any] = {"region": region}
    if endpoint:
        config |= {"endpoint": endpoint, "virtual_hosted_style_request": False}
    if access_key_id and secret_access_key:
        config |= {"access_key_id": access_key_id, "secret_access_key": secret_access_key}
    return S3Store(
        bucket,
        prefix=prefix.strip("/") or None,
        config=config,  # type: ignore[arg-type]
        client_options={
            "allow_http": bool(endpoint and endpoint.startswith("http://")),
            "connect_timeout": dt.timedelta(seconds=2),
            "timeout": dt.timedelta(seconds=timeout_s),
        },
        retry_config={"max_retries": 2, "retry_timeout": RETRY_TIMEOUT},
    )


def _unavailable(exc: BaseError) -> StorageUnavailable:
    """A 503 for a failed request; a refusal of the credentials says so (it is no outage)."""
    text = str(exc)
    found = S3_CODE.search(text)
    code = found.group(1) if found else type(exc).__name__
    if code == "NoSuchBucket":
        detail = "object storage: the bucket does not exist"
    elif isinstance(exc, PermissionDeniedError | UnauthenticatedError) or REFUSED.search(text):
        detail = f"object storage refused the request ({code}): check the s3 settings"
    else:
        detail = f"object storage did not answer: {code}"
    return StorageUnavailable(detail, retry_after_s=RETRY_AFTER_S)


class ObjectStorage:
    """`Storage` over one S3 bucket (and key prefix), given as obstore `S3Store`s.

    `store` serves every request but the media streamed to clients, which goes
    through `streams` (the same bucket with a long request timeout: a download runs
    at the pace its client reads; by default `store` itself).
    """

    def __init__(self, store: S3Store, streams: S3Store | None = None) -> None:
        self.store = store
        self.streams = streams or store

    def local_path(self, key: str) -> Path | None:
        return None

    async def check(self) -> None:
        """List one key: the bucket exists and the credentials are good, or StorageUnavailable
        (`stories serve` runs this before it starts, so a wrong setting is one line)."""
        try:
            async for _ in obstore.list(self.store, None, chunk_size=1):
                break
        except NotFoundError:
            raise StorageUnavailable("object storage: the bucket does not exist") from None
        except BaseError as exc:
            raise _unavailable(exc) from None

    async def put(self, src: Path, key: str, content_type: str) -> None:
        try:
            await obstore.put_async(self.store, key, src, attributes={"Content-Type": content_type})
        except BaseError as exc:
            raise _unavailable(exc) from None
        src.unlink(missing_ok=True)  # noqa: ASYNC240 (one unlink, local disk)

    async def delete(self, keys: list[str]) -> None:
        if not keys:
            return
        try:
            await obstore.delete_async(self.store, keys)
        except NotFoundError:
            return
        except BaseError as exc:
            raise _unavailable(exc) from None

    async def delete_prefix(self, prefix: str) -> None:
        # object_store lists by whole path segments: list the folder, match the stem here
        folder = prefix.rpartition("/")[0]
        try:
            keys = [meta["path"] async for batch in obstore.list(self.store, folder or None)
                    for meta in batch if meta["path"].startswith(prefix)]  # fmt: skip
            await self.delete(keys)
        except BaseError as exc:
            raise _unavailable(exc) from None

    async def stat(self, key: str) -> StoredFile | None:
        try:
            meta = await obstore.head_async(self.store, key)
        except NotFoundError:
            return None
        except BaseError as exc:
            raise _unavailable(exc) from None
        return StoredFile(meta["size"], meta["e_tag"], meta["last_modified"].timestamp())

    async def read(self, key: str, first: int, last: int) -> AsyncIterator[bytes]:
        try:
            result = await obstore.get_async(
                self.streams, key, options={"range": (first, last + 1)}
            )
            async for chunk in result.stream(min_chunk_size=CHUNK):
                yield bytes(chunk)
        except BaseError as exc:
            raise _unavailable(exc) from None

    def presign(self, key: str, expires_s: int) -> str | None:
        return obstore.sign(self.store, "GET", key, dt.timedelta(seconds=max(1, expires_s)))
