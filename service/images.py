"""Stored images: in the database (`IMAGE_STORE=db`, survives an ephemeral PaaS disk), a
directory (`IMAGE_STORE=fs:PATH`, one machine only) or an S3-compatible bucket
(`IMAGE_STORE=s3://BUCKET[/PREFIX]`); the backends are in `service.stores`."""

import hashlib
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import anyio

from service.models import Image
from service.records import new_row
from service.settings import S3Access
from service.stores import S3_SCHEME, Buckets, StoreError, delete_file, read_file, write_file

log = logging.getLogger(__name__)

SIGNATURES = {
    b"\xff\xd8\xff": "image/jpeg",
    b"\x89PNG\r\n\x1a\n": "image/png",
    b"RIFF": "image/webp",
}


def sniff_content_type(data: bytes) -> str | None:
    """The image type from the bytes themselves (BFL's Content-Type is not trusted alone)."""
    for magic, content_type in SIGNATURES.items():
        if data.startswith(magic) and (content_type != "image/webp" or data[8:12] == b"WEBP"):
            return content_type
    return None


@dataclass(frozen=True)
class FetchTask:
    """What the fetcher needs to download one job's image (no database read)."""

    job_id: uuid.UUID
    sample_url: str
    bfl_id: str | None
    polling_url: str | None

    @classmethod
    def of(cls, job) -> "FetchTask":
        return cls(job.id, job.sample_url, job.bfl_id, job.polling_url)


class ImageStore:
    """New images go to the configured store; any row is read or removed where it says."""

    def __init__(self, spec: str, s3: S3Access | None = None) -> None:
        self.spec = spec
        self.directory = Path(spec.removeprefix("fs:")) if spec.startswith("fs:") else None
        self.buckets = Buckets(s3 or S3Access())

    async def keep(self, job_id: uuid.UUID, data: bytes, content_type: str, now):
        """Write the bytes; return the row that points at them (an `Image` as a plain
        object: `records.new_row`), for the caller to commit."""
        image = new_row(
            Image,
            job_id=job_id,
            content_type=content_type,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            created_at=now,
        )
        if self.spec == "db":
            image.data = data
        elif self.directory is not None:
            path = await anyio.to_thread.run_sync(write_file, self.directory, job_id, data)
            image.path = str(path)
        else:
            image.path = f"{self.spec}/{job_id.hex}"
            await self.buckets.put(image.path, data, content_type)
        return image

    def holds(self, image: Image) -> bool:
        """Whether `image` is where the configured store would put it now."""
        if self.spec == "db":
            return image.data is not None
        if self.directory is not None:
            return image.path is not None and Path(image.path).parent == self.directory
        return image.path is not None and image.path.startswith(self.spec + "/")

    async def load(self, image: Image) -> bytes:
        if image.data is not None:
            return image.data
        if image.path.startswith(S3_SCHEME):
            return await self.buckets.get(image.path)
        return await read_file(image.path)

    async def body(self, image: Image) -> bytes | AsyncIterator[bytes]:
        """What to serve: the bytes, or (S3) a stream of them, not buffered in memory."""
        if image.path is not None and image.path.startswith(S3_SCHEME):
            return await self.buckets.open(image.path)
        return await self.load(image)

    async def discard(self, image: Image) -> None:
        """Remove the bytes a row points at (the row itself is the caller's to delete)."""
        if image.path is None:
            return
        if image.path.startswith(S3_SCHEME):
            await self.buckets.delete(image.path)
        else:
            await delete_file(image.path)

    async def forget(self, image: Image) -> None:
        """`discard`, for bytes no row points at any more: a failure leaves an orphan (space,
        not breakage), so it is logged rather than raised."""
        try:
            await self.discard(image)
        except (StoreError, OSError) as exc:
            log.warning("the old bytes of job %s's image were not removed: %s", image.job_id, exc)

    async def problem(self) -> str | None:
        """Why new images cannot be stored now (for /readyz), or None."""
        if self.spec.startswith(S3_SCHEME):
            return await self.buckets.problem(self.spec)
        return None
