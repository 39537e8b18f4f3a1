"""Retention: finished jobs older than `RETENTION_DAYS` are deleted with everything that hangs
off them (events, deliveries, their own callback subscription, idempotency keys, the stored
image), in small batches, by one process at a time (a PostgreSQL advisory lock). Events that
belong to no job (`ping`, `subscription.disabled`) older than that go too, with their
deliveries, in batches under the same lock.

Never deleted: a job that is not finished, a `Ready` whose image is not stored yet, or one
that is still owed a delivery (a pending callback waits for it); a job-less event still owed
a delivery. A pruned event's sequence number is never handed out again.
The image's bytes (file or object) are removed after the rows' transaction commits, so a crash
can leave an orphan object but never a row that points at nothing. On SQLite the freed pages
go back to the file system (`auto_vacuum=INCREMENTAL`, then `PRAGMA incremental_vacuum`).
"""

import logging
import uuid
from dataclasses import dataclass, fields
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import func
from sqlmodel import select

from service import jobs
from service.db import Database, give_space_back
from service.images import ImageStore
from service.loops.base import Loop
from service.models import Delivery, IdempotencyKey, Image, Job, JobEvent, Subscription
from service.signals import Signals

log = logging.getLogger(__name__)
RETENTION_LOCK = 0x466C7578_04
# Jobs (or job-less events) per transaction: short transactions, so no writer waits long.
BATCH = 200
PENDING = "pending"


@dataclass
class Pruned:
    jobs: int = 0
    events: int = 0
    deliveries: int = 0
    subscriptions: int = 0
    idempotency_keys: int = 0
    images: int = 0

    def add(self, other: "Pruned") -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def summary(self) -> str:
        return ", ".join(
            f"{getattr(self, f.name)} {f.name.replace('_', ' ')}" for f in fields(self)
        )


def prunable(cutoff: datetime, limit: int):
    """Finished before `cutoff`, and owed nothing."""
    owed = sa.exists().where(Delivery.job_id == Job.id, Delivery.status == PENDING)
    fetching = (Job.status == jobs.READY) & ~Job.image_stored  # its image is still owed too
    return (
        select(Job.id)
        .where(Job.status.in_(jobs.TERMINAL), Job.finished_at < cutoff, ~owed, ~fetching)
        .order_by(Job.finished_at)
        .limit(limit)
    )


def prunable_events(cutoff: datetime, limit: int):
    """Events about no job from before `cutoff`, owed nothing. (Their sequence numbers are
    never handed out again: AUTOINCREMENT on SQLite, a sequence on PostgreSQL.)"""
    owed = sa.exists().where(Delivery.event_seq == JobEvent.seq, Delivery.status == PENDING)
    return (
        select(JobEvent.seq)
        .where(JobEvent.job_id.is_(None), JobEvent.created_at < cutoff, ~owed)
        .order_by(JobEvent.seq)
        .limit(limit)
    )


async def _leading(db: Database, session) -> bool:
    """Whether this transaction holds the retention lock (PostgreSQL; SQLite has one writer)."""
    if not db.is_postgres:
        return True
    leader = sa.select(func.pg_try_advisory_xact_lock(RETENTION_LOCK))
    return bool((await session.exec(leader)).scalar())


async def prune_batch(db: Database, store: ImageStore, cutoff: datetime, limit: int = BATCH):
    """Delete one batch; returns what went (`jobs == 0`: nothing was left)."""
    async with db.write() as session:
        if not await _leading(db, session):
            return Pruned()  # another process is pruning
        ids = list((await session.exec(prunable(cutoff, limit))).all())
        if not ids:
            return Pruned()
        images = list((await session.exec(select(Image).where(Image.job_id.in_(ids)))).all())
        pruned = await _delete_rows(session, ids)
    for image in images:
        await store.forget(image)
    pruned.images = len(images)
    return pruned


async def _delete_rows(session, ids: list[uuid.UUID]) -> Pruned:
    """Children first (foreign keys): deliveries, events, callbacks, keys, images, jobs."""

    async def delete(model, column) -> int:
        result = await session.exec(sa.delete(model).where(column.in_(ids)))
        return result.rowcount

    deliveries = await delete(Delivery, Delivery.job_id)
    events = await delete(JobEvent, JobEvent.job_id)
    subscriptions = await delete(Subscription, Subscription.job_id)
    keys = await delete(IdempotencyKey, IdempotencyKey.job_id)
    await delete(Image, Image.job_id)
    return Pruned(
        jobs=await delete(Job, Job.id),
        events=events,
        deliveries=deliveries,
        subscriptions=subscriptions,
        idempotency_keys=keys,
    )


async def prune_events_batch(db: Database, cutoff: datetime, limit: int = BATCH) -> Pruned:
    """Delete one batch of job-less events with their deliveries (`events == 0`: none left)."""
    async with db.write() as session:
        if not await _leading(db, session):
            return Pruned()  # another process is pruning
        seqs = list((await session.exec(prunable_events(cutoff, limit))).all())
        if not seqs:
            return Pruned()
        deliveries = await session.exec(sa.delete(Delivery).where(Delivery.event_seq.in_(seqs)))
        events = await session.exec(sa.delete(JobEvent).where(JobEvent.seq.in_(seqs)))
    return Pruned(events=events.rowcount, deliveries=deliveries.rowcount)


async def prune(db: Database, store: ImageStore, cutoff: datetime) -> Pruned:
    """Batches until none is left (jobs, then job-less events), then (SQLite) give the free
    pages back."""
    total = Pruned()
    while (batch := await prune_batch(db, store, cutoff)).jobs:
        total.add(batch)
    while (batch := await prune_events_batch(db, cutoff)).events:
        total.add(batch)
    if total.jobs or total.events:
        await give_space_back(db)
    return total


class Retention(Loop):
    """One pruning pass per interval (each batch under the advisory lock on PostgreSQL)."""

    name = "retention"
    interval_s = 600.0  # 10 minutes: retention is counted in days

    def __init__(
        self, db: Database, signals: Signals, clock, store: ImageStore, keep: timedelta
    ) -> None:
        super().__init__(signals)
        self.db, self.clock, self.store, self.keep = db, clock, store, keep

    async def run(self) -> None:
        while not self.stopping:
            await self.run_once()
            if not self.stopping:
                await self.signals.wait(self.name, self.interval_s)

    async def claim(self) -> list[datetime]:
        """A pass is one item: its cutoff."""
        return [self.clock.now() - self.keep]

    async def work(self, cutoff: datetime) -> None:
        pruned = await prune(self.db, self.store, cutoff)
        if pruned.jobs or pruned.events:
            log.info("retention: deleted %s", pruned.summary())

    async def failed(self, cutoff: datetime, exc: Exception) -> None:
        """Logged already; the next pass starts over from the table, so nothing is owed."""
