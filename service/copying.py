"""`fluxhook images copy --to STORE`: move every stored image into another store.

For each image not already in the target: read it where its row says, check it against the
row's SHA-256, write it to the target, point the row at the copy (one short transaction per
image), then remove the old bytes. Interrupted at any point, it loses nothing (the row moves
only after the copy is written) and a second run carries on where the first stopped.
"""

import hashlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func
from sqlmodel import select

from service.db import Database, give_space_back
from service.images import ImageStore
from service.models import Image
from service.stores import StoreError

log = logging.getLogger(__name__)
PAGE = 50  # rows read at a time (a db-stored page is up to ~100 MB of PNGs)


@dataclass
class Copied:
    copied: int = 0
    already_there: int = 0
    failed: int = 0
    bytes: int = 0

    def line(self, total: int) -> str:
        done = self.copied + self.already_there + self.failed
        return (
            f"{done}/{total} images: {self.copied} copied ({self.bytes / 1e6:.1f} MB), "
            f"{self.already_there} already there, {self.failed} failed"
        )


async def copy_images(
    db: Database, target: ImageStore, report: Callable[[str], None] = print
) -> Copied:
    copied, total = Copied(), await _count(db)
    after: uuid.UUID | None = None
    while page := await _page(db, after):
        for image in page:
            await _copy_one(db, target, image, copied)
        after = page[-1].job_id
        report(copied.line(total))
    if copied.copied:
        await give_space_back(db)  # the pages of the blobs that moved out
    return copied


async def _count(db: Database) -> int:
    async with db.read() as session:
        return (await session.exec(select(func.count()).select_from(Image))).one()


async def _page(db: Database, after: uuid.UUID | None) -> list[Image]:
    query = select(Image).order_by(Image.job_id).limit(PAGE)
    if after is not None:
        query = query.where(Image.job_id > after)
    async with db.read() as session:
        return list((await session.exec(query)).all())


async def _copy_one(db: Database, target: ImageStore, image: Image, copied: Copied) -> None:
    if target.holds(image):
        copied.already_there += 1
        return
    try:
        data = await target.load(image)  # any store reads any row
        if hashlib.sha256(data).hexdigest() != image.sha256:
            raise StoreError("the stored bytes do not match the image's SHA-256")
        moved = await target.keep(image.job_id, data, image.content_type, image.created_at)
    except (StoreError, OSError) as exc:
        copied.failed += 1
        log.warning("image of job %s not copied: %s", image.job_id, exc)
        return
    async with db.write() as session:
        row = await session.get(Image, image.job_id, with_for_update=True)
        if row is not None:
            row.data, row.path = moved.data, moved.path
    if row is None:
        await target.forget(moved)  # pruned meanwhile
        return
    if image.path is not None and image.path != moved.path:
        await target.forget(image)
    copied.copied += 1
    copied.bytes += image.size
