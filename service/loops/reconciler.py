"""The fallback reconciler: one `get_result` for each job whose webhook is overdue.

A job is overdue once its model's expected latency × 2 + slack has passed since submit
(`webhook_due_at`); a job whose webhook is not yet due is not polled, with one exception:
while jobs wait for upstream slots, a job whose webhook is late by its model's expected
latency + a small slack (its first `next_poll_at`, set at submit) is asked once, early, so a
lost webhook gives its slot back in seconds rather than after the whole window. Whatever BFL
answers then, the job's next poll is the normal one. While jobs wait, the sweeps follow these
early checks (the next one due, read from the database, so any process can sweep them).
Each overdue job is asked again with per-job backoff. What BFL answers goes through the same
state machine and outbox as a webhook, marked `completed_via = reconciler`. One process sweeps
at a time (PostgreSQL advisory lock). A task BFL does not know on any host, past the image
window, ends `Error`, saying so.
"""

import logging
import random
from datetime import datetime, timedelta

import anyio
import sqlalchemy as sa
from sqlalchemy import func
from sqlmodel import select

from service import bfl as upstream
from service import catalog, jobs, logs
from service.db import Database
from service.events import record_job_event
from service.loops.admission import EARLY_CHECK_SLACK_S, jobs_wait_for_slots
from service.loops.base import Loop, failure_reason
from service.metrics import Metrics
from service.models import IDEMPOTENCY_WINDOW, IdempotencyKey, Job
from service.schedule import backoff_s
from service.signals import Signals
from service.updates import apply_update
from service.views import Urls

log = logging.getLogger(__name__)
POLLED = (jobs.PENDING, jobs.PROCESSING)  # upstream has the task, and it is not done yet
RECONCILER_LOCK = 0x466C7578_02
SWEEP_BATCH = 100
LOST_AFTER = timedelta(minutes=10)  # BFL's image window: a task unknown this long is gone
POLL_CONCURRENCY = 8
# While jobs wait for slots, look at least this often (s): a job admitted after one look is
# not due for its early check before the shortest expected latency + slack, so none is missed.
QUEUE_LOOK_S = min(spec.latency_s for spec in catalog.MODELS.values()) + EARLY_CHECK_SLACK_S
# 50 ms: an early check that is due but was not swept here is another process's to sweep (it
# holds the lock); look again soon, without spinning.
MIN_PAUSE_S = 0.05


class Reconciler(Loop):
    name = "reconciler"

    def __init__(
        self,
        db: Database,
        signals: Signals,
        clock,
        bfl: upstream.BFLClient,
        urls: Urls,
        metrics: Metrics,
        interval_s: float = 10.0,
        rng: random.Random | None = None,
        early_checks: bool = True,
    ) -> None:
        super().__init__(signals)
        self.db, self.clock, self.bfl, self.urls, self.metrics = db, clock, bfl, urls, metrics
        self.interval_s = interval_s
        self.early_checks = early_checks
        self._rng = rng or random.Random()
        self._limit = anyio.CapacityLimiter(POLL_CONCURRENCY)
        self._chores_due_at: datetime | None = None

    async def run(self) -> None:
        while not self.stopping:
            if not await self.run_once() and not self.stopping:
                await self.signals.wait(self.name, await self.pause_s())

    async def pause_s(self) -> float:
        """Seconds until the next sweep: the interval, or while jobs wait for slots, no longer
        than until the next early check is due (and QUEUE_LOOK_S)."""
        if not self.early_checks:
            return self.interval_s
        now = self.clock.now()
        async with self.db.read() as session:
            if not await jobs_wait_for_slots(session, now):
                return self.interval_s
            next_check = (await session.exec(_next_early_check())).first()
        pause = min(self.interval_s, QUEUE_LOOK_S)
        if next_check is not None:
            pause = min(pause, (next_check - now).total_seconds())
        return max(pause, MIN_PAUSE_S)

    async def run_once(self) -> bool:
        """One sweep, if this process is the leader. True if it polled anything."""
        if not self.db.is_postgres:
            return await self._sweep()
        async with self.db.engine.connect() as conn:
            lock = sa.select(func.pg_try_advisory_lock(RECONCILER_LOCK))
            if not (await conn.execute(lock)).scalar():
                return False
            try:
                return await self._sweep()
            finally:
                await conn.execute(sa.select(func.pg_advisory_unlock(RECONCILER_LOCK)))
                await conn.commit()

    async def _sweep(self) -> bool:
        await self._chores()
        return await super().run_once()

    async def _chores(self) -> None:
        """The leader's chores, once per interval however often early checks sweep."""
        now = self.clock.now()
        if self._chores_due_at is not None and now < self._chores_due_at:
            return
        self._chores_due_at = now + timedelta(seconds=self.interval_s)
        await self._forget_idempotency_keys()

    async def _forget_idempotency_keys(self) -> None:
        """Idempotency-Keys answer for 24 h; older ones are deleted (the leader's chore)."""
        cutoff = self.clock.now() - IDEMPOTENCY_WINDOW
        async with self.db.write() as session:
            await session.exec(sa.delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff))

    async def claim(self) -> list[Job]:
        """Jobs whose next poll is due and whose webhook is overdue, or, while jobs wait for
        slots, late enough for the early check (no lease: one leader)."""
        now = self.clock.now()
        async with self.db.read() as session:
            late = Job.webhook_due_at <= now
            if self.early_checks and await jobs_wait_for_slots(session, now):
                # A slot holder's next poll is due before its webhook only for the early
                # check: after it, the next poll is the webhook's due time.
                late = sa.or_(late, Job.holds_slot)
            query = (
                select(Job)
                .where(Job.status.in_(POLLED), Job.bfl_id.is_not(None))
                .where(late, Job.next_poll_at <= now)
                .order_by(Job.next_poll_at)
                .limit(SWEEP_BATCH)
            )
            return list((await session.exec(query)).all())

    async def work(self, job: Job) -> None:
        with logs.job_context(job.id):
            await self._reconcile(job)

    async def _reconcile(self, job: Job) -> None:
        async with self._limit:
            try:
                body = await self.bfl.get_result(job.bfl_id, job.polling_url)
                update = jobs.parse_update(body)
            except upstream.BFLNotFound:
                self.metrics.reconciler_polls.inc(outcome="not_found")
                await self._not_found(job)
                return
            except (upstream.BFLError, jobs.InvalidPayload) as exc:
                self.metrics.reconciler_polls.inc(outcome="error")
                log.warning("reconciler could not read job %s from BFL: %s", job.id, exc)
                await self._later(job)
                return
            self.metrics.reconciler_polls.inc(outcome="ok")
            await self._apply(job, update)

    async def failed(self, job: Job, exc: Exception) -> None:
        """Asking about this job broke: ask again later, with its backoff."""
        self.metrics.reconciler_polls.inc(outcome="error")
        log.warning("reconciler could not reconcile job %s: %s", job.id, failure_reason(exc))
        await self._later(job)

    async def _apply(self, job: Job, update: jobs.BflUpdate) -> None:
        async with self.db.write() as session:
            current = await session.get(Job, job.id, with_for_update=True)
            applied = await apply_update(
                session,
                self.signals,
                self.urls,
                current,
                update,
                via="reconciler",
                now=self.clock.now(),
            )
            if current.status in jobs.IN_FLIGHT:
                self._schedule_next(current)
        if applied.change and applied.change.status in jobs.TERMINAL:
            self.metrics.jobs_completed.inc(via="reconciler")
            log.warning(
                "BFL finished the job: %s (found by polling: its webhook never came)",
                applied.change.status,
            )

    async def _later(self, job: Job) -> None:
        async with self.db.write() as session:
            current = await session.get(Job, job.id, with_for_update=True)
            if current.status in jobs.IN_FLIGHT:
                self._schedule_next(current)

    def _schedule_next(self, job: Job) -> None:
        if self.clock.now() < job.webhook_due_at:
            # That was the early check: from here on, the normal schedule.
            job.next_poll_at = job.webhook_due_at
            return
        job.poll_attempts += 1
        delay = backoff_s(job.poll_attempts, base_s=5.0, cap_s=120.0, rng=self._rng)
        job.next_poll_at = self.clock.now() + timedelta(seconds=delay)

    async def _not_found(self, job: Job) -> None:
        async with self.db.write() as session:
            current = await session.get(Job, job.id, with_for_update=True)
            if current.status not in jobs.IN_FLIGHT:
                return
            now = self.clock.now()
            if now - current.submitted_at < LOST_AFTER:
                self._schedule_next(current)
                return
            current.status, current.finished_at, current.updated_at = jobs.ERROR, now, now
            current.holds_slot = False
            current.completed_via = "reconciler"
            current.details = {
                "error": "BFL does not know this task on any host, and no webhook arrived "
                "within the 10-minute image window"
            }
            await record_job_event(
                session, self.signals, self.urls, current, jobs.EVENT_FAILED, now
            )
            await self.signals.after_commit(session, "admission")


def _next_early_check():
    """When the next early check is due: the earliest first poll set before the webhook's due
    time among the jobs holding a slot."""
    return (
        select(Job.next_poll_at)
        .where(Job.status.in_(POLLED), Job.bfl_id.is_not(None), Job.holds_slot)
        .where(Job.next_poll_at < Job.webhook_due_at)
        .order_by(Job.next_poll_at)
        .limit(1)
    )
