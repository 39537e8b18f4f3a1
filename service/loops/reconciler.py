"""The fallback reconciler: one `get_result` for each job whose webhook is overdue.

A job is overdue once its model's expected latency × 2 + slack has passed since submit
(`webhook_due_at`); a job whose webhook is not yet due is never polled. Each overdue job is
asked again with per-job backoff. What BFL answers goes through the same state machine and
outbox as a webhook, marked `completed_via = reconciler`. One process sweeps at a time
(PostgreSQL advisory lock). A task BFL does not know on any host, past the image window,
ends `Error`, saying so.
"""

import logging
import random
from datetime import timedelta

import anyio
import sqlalchemy as sa
from sqlalchemy import func
from sqlmodel import select

from service import bfl as upstream
from service import jobs, logs
from service.db import Database
from service.events import record_job_event
from service.loops.base import Loop, failure_reason
from service.metrics import Metrics
from service.models import IDEMPOTENCY_WINDOW, IdempotencyKey, Job
from service.schedule import backoff_s
from service.signals import Signals
from service.updates import apply_update
from service.views import Urls

log = logging.getLogger(__name__)
RECONCILER_LOCK = 0x466C7578_02
SWEEP_BATCH = 100
LOST_AFTER = timedelta(minutes=10)  # BFL's image window: a task unknown this long is gone
POLL_CONCURRENCY = 8


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
    ) -> None:
        super().__init__(signals)
        self.db, self.clock, self.bfl, self.urls, self.metrics = db, clock, bfl, urls, metrics
        self.interval_s = interval_s
        self._rng = rng or random.Random()
        self._limit = anyio.CapacityLimiter(POLL_CONCURRENCY)

    async def run(self) -> None:
        while not self.stopping:
            if not await self.run_once() and not self.stopping:
                await self.signals.wait(self.name, self.interval_s)

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
        await self._forget_idempotency_keys()
        return await super().run_once()

    async def _forget_idempotency_keys(self) -> None:
        """Idempotency-Keys answer for 24 h; older ones are deleted (the leader's chore)."""
        cutoff = self.clock.now() - IDEMPOTENCY_WINDOW
        async with self.db.write() as session:
            await session.exec(sa.delete(IdempotencyKey).where(IdempotencyKey.created_at < cutoff))

    async def claim(self) -> list[Job]:
        """Jobs whose webhook is overdue and whose next poll is due (no lease: one leader)."""
        now = self.clock.now()
        query = (
            select(Job)
            .where(Job.status.in_((jobs.PENDING, jobs.PROCESSING)), Job.bfl_id.is_not(None))
            .where(Job.webhook_due_at <= now, Job.next_poll_at <= now)
            .order_by(Job.next_poll_at)
            .limit(SWEEP_BATCH)
        )
        async with self.db.read() as session:
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
