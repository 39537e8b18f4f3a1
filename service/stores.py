"""Where image bytes live (`IMAGE_STORE`): the database, a directory, or an S3-compatible bucket.

Each `images` row says where its bytes are: in `data` (db), or at `path`, a file path (fs) or
`s3://BUCKET/KEY`. So a deployment can change `IMAGE_STORE` at any time, and `fluxhook images
copy` can move old images across, while every stored image keeps serving from where it is.

S3 goes through obstore (the Rust `object_store` crate: signing, retries, connection reuse),
configured by the standard AWS variables (`service.settings.S3Access`). Bytes are written
*before* the row that points at them commits, so a crash leaves at most an orphan object,
overwritten when the fetch is retried (its key is the job id), never a row without bytes.
"""

import os
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import anyio
import obstore
from obstore.store import S3Store

from service.settings import S3Access

S3_SCHEME = "s3://"
# obstore retries S3's 5xx and connection errors itself; bounded, so a fetch or a readiness
# probe learns of an outage in seconds, not after the library's default of 3 minutes.
S3_RETRIES = {"max_retries": 2, "retry_timeout": timedelta(seconds=10)}
READ_CHUNK = 256 * 1024


class StoreError(Exception):
    """The store refused or failed an operation; the message says why (no secrets in it)."""


def split_s3(location: str) -> tuple[str, str]:
    """`s3://BUCKET/KEY…` → (BUCKET, KEY…)."""
    bucket, _, key = location.removeprefix(S3_SCHEME).partition("/")
    return bucket, key


class Buckets:
    """One obstore client per bucket, made on first use with the configured credentials."""

    def __init__(self, access: S3Access) -> None:
        self._access = access
        self._clients: dict[str, S3Store] = {}

    def client(self, bucket: str) -> S3Store:
        if bucket not in self._clients:
            self._clients[bucket] = self._make(bucket)
        return self._clients[bucket]

    def _make(self, bucket: str) -> S3Store:
        access = self._access
        config = {
            "access_key_id": access.access_key_id,
            "secret_access_key": access.secret_access_key,
            "session_token": access.session_token,
            "region": access.region or "us-east-1",
            "endpoint": access.endpoint_url,
        }
        options = {"allow_http": True} if (access.endpoint_url or "").startswith("http:") else {}
        return S3Store(
            bucket,
            config={k: v for k, v in config.items() if v is not None},
            client_options=options,
            retry_config=S3_RETRIES,
        )

    async def put(self, location: str, data: bytes, content_type: str) -> None:
        bucket, key = split_s3(location)
        attributes = {"Content-Type": content_type}
        await _s3(obstore.put_async(self.client(bucket), key, data, attributes=attributes))

    async def get(self, location: str) -> bytes:
        bucket, key = split_s3(location)
        result = await _s3(obstore.get_async(self.client(bucket), key))
        return bytes(await _s3(result.bytes_async()))

    async def open(self, location: str) -> AsyncIterator[bytes]:
        """The object's bytes as they arrive. The request is made here, so a missing object
        or a refusal raises now, before a response has begun."""
        bucket, key = split_s3(location)
        result = await _s3(obstore.get_async(self.client(bucket), key))
        return _chunks(result)

    async def delete(self, location: str) -> None:
        bucket, key = split_s3(location)
        await _s3(obstore.delete_async(self.client(bucket), key))

    async def problem(self, location: str) -> str | None:
        """Why the bucket cannot be used (missing, refused credentials), or None."""
        bucket, key = split_s3(location)
        try:
            await obstore.list(self.client(bucket), prefix=key or None, chunk_size=1).__anext__()
        except StopAsyncIteration:
            return None  # an empty bucket or prefix is a usable one
        except Exception as exc:
            return f"S3 bucket {bucket!r} is not usable: {_first_line(exc)}"
        return None


async def _chunks(result) -> AsyncIterator[bytes]:
    async for chunk in result.stream(min_chunk_size=READ_CHUNK):
        yield bytes(chunk)


async def _s3(awaitable):
    """obstore's errors, as one StoreError with a short reason."""
    try:
        return await awaitable
    except Exception as exc:
        raise StoreError(f"S3: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    """obstore's messages carry a debug dump after the first line; the reason is the first."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def write_file(directory: Path, job_id: uuid.UUID, data: bytes) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    final = directory / job_id.hex
    partial = final.with_suffix(".partial")
    with partial.open("wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())  # on disk before the row that points at it commits
    partial.replace(final)
    return final


async def read_file(path: str) -> bytes:
    return await anyio.to_thread.run_sync(Path(path).read_bytes)


async def delete_file(path: str) -> None:
    await anyio.to_thread.run_sync(lambda: Path(path).unlink(missing_ok=True))
