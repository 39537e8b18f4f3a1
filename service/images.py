"""Where stored images live: in the database (`IMAGE_STORE=db`, survives an ephemeral PaaS
disk) or in a directory (`IMAGE_STORE=fs:PATH`, one machine only)."""

import hashlib
import os
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import anyio
from sqlmodel.ext.asyncio.session import AsyncSession

from service.models import Image

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
    def __init__(self, spec: str) -> None:
        self.directory = Path(spec.removeprefix("fs:")) if spec.startswith("fs:") else None

    async def save(
        self,
        session: AsyncSession,
        job_id: uuid.UUID,
        data: bytes,
        content_type: str,
        now: datetime,
    ) -> Image:
        image = Image(
            job_id=job_id,
            content_type=content_type,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            created_at=now,
        )
        if self.directory is None:
            image.data = data
        else:
            image.path = str(await anyio.to_thread.run_sync(self._write_file, job_id, data))
        session.add(image)
        return image

    async def load(self, image: Image) -> bytes:
        if image.data is not None:
            return image.data
        return await anyio.to_thread.run_sync(Path(image.path).read_bytes)

    def _write_file(self, job_id: uuid.UUID, data: bytes) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        final = self.directory / job_id.hex
        partial = final.with_suffix(".partial")
        with partial.open("wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())  # on disk before the row that points at it commits
        partial.replace(final)
        return final
