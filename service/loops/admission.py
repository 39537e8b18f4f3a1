"""Admission: at most BFL_MAX_ACTIVE upstream tasks (6 for flux-kontext-max), counted in the
database so the limit holds across processes. Queued jobs go out as slots free, round-robin
across the tenants with waiting jobs and FIFO within a tenant (`admission_query`); with
ADMISSION_ORDER=fifo, oldest first across all tenants (the order before fair admission, kept
so a benchmark can compare the two in one run).

A claimed job holds its slot (`holds_slot`) from the claim until BFL is done with it. Outcomes
of a submit (DESIGN §4):

- accepted ⇒ `Pending`, and the reconciler's deadline is set (and its early check: while
  jobs wait for slots, a webhook late by the model's latency + EARLY_CHECK_SLACK_S is asked
  about once, so a lost webhook does not hold its slot for the whole window);
- 429 or 5xx or no connection ⇒ back to the queue with backoff, slot released;
- 402 ⇒ `Error`, `insufficient credits`; other refusals ⇒ `Error` with BFL's reason;
- timeout ⇒ ambiguous: BFL may have the task. The job keeps its slot and its lease runs for
  the model's webhook window; if no webhook names the job by then, it is submitted again.
  A crash mid-submit looks the same (the lease runs out) and is handled the same way.
"""

import functools
import logging
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlalchemy import func
from sqlmodel import select

from service import bfl as upstream
from service import catalog, direct, jobs, logs
from service.batching import GroupCommit
from service.db import ADMISSION_WAKE, Database, before_commit
from service.events import record_job_event
from service.loops.base import Loop, failure_reason
from service.metrics import Metrics
from service.models import Job
from service.records import JOBS, JobRecord, write_changes
from service.schedule import backoff_s
from service.signals import Signals
from service.signing import Signing
from service.views import Urls

log = logging.getLogger(__name__)
ADMISSION_LOCK = 0x466C7578_01  # pg advisory lock: one admission claim at a time, all processes
KONTEXT_MAX = "flux-kontext-max"
GIVE_UP_AFTER = timedelta(hours=1)  # upstream failing this long fails the job
MAX_BROKEN_SUBMITS = 3  # a submit that raised something unexpected this often fails the job
# Submits in flight from one process: fewer than the HTTP client's connections, so that no
# request waits for a connection.
SUBMIT_CONCURRENCY = 32
RETRYABLE = (upstream.BFLRateLimited, upstream.BFLServerError, upstream.BFLUnavailable)
UNKNOWN_LATENCY_S = 30.0  # a model the catalog does not know: assume a slow one
# 2 s: BFL posts its webhook within milliseconds of the task ending, so one still missing 2 s
# after the model's expected latency is more likely lost than late (or the task runs long, and
# the one early get_result was spent for nothing). Every second more is a second that a lost
# webhook's slot sits idle while jobs wait: at 30 % lost, 24 slots, 5 jobs/s and BFL taking
# 4 s, the slots keep up only while a lost webhook's slot comes back within ~6 s of submit.
EARLY_CHECK_SLACK_S = 2.0
RECONCILER = "reconciler"  # the loop woken when jobs start waiting for slots
ADMISSION = "admission"
FAIR, FIFO = "fair", "fifo"  # ADMISSION_ORDER: round-robin across tenants, or oldest first


@dataclass(frozen=True)
class Limits:
    total: int = 24
    kontext_max: int = 6
    per_tenant: int | None = None  # TENANT_MAX_ACTIVE: slots one tenant may hold


def expected_latency_s(model: str) -> float:
    spec = catalog.get_model(model)
    return spec.latency_s if spec else UNKNOWN_LATENCY_S


def webhook_window(model: str, slack_s: float) -> timedelta:
    """How long after submit a webhook is due: expected latency × 2 + slack (DESIGN §4)."""
    return timedelta(seconds=expected_latency_s(model) * 2 + slack_s)


def early_check_window(model: str) -> timedelta:
    """How long after submit a missing webhook is worth one early `get_result`, if other
    jobs wait for the slot it holds: expected latency + EARLY_CHECK_SLACK_S."""
    return timedelta(seconds=expected_latency_s(model) + EARLY_CHECK_SLACK_S)


# The admission statements are built once (parameters: `now`, `free`, `room`): each caches
# its own cache key, so a claim does not walk its window functions again.
NOW, FREE, ROOM = sa.bindparam("now"), sa.bindparam("free"), sa.bindparam("room")
WAITING_FOR_SLOTS = (
    select(Job.id)
    .where(Job.status == jobs.QUEUED, ~Job.holds_slot, Job.next_attempt_at <= NOW)
    .limit(1)
)
STALE_SUBMITS = (
    sa.select(JOBS)
    .where(Job.status == jobs.QUEUED, Job.holds_slot, Job.lease_expires_at <= NOW)
    .order_by(Job.created_at, Job.id)
    .limit(ROOM)
    .with_for_update(skip_locked=True)
)
SLOTS_HELD = (
    sa.select(Job.slot_class, func.count().label("held"))
    .where(Job.holds_slot)
    .group_by(Job.slot_class)
)


async def jobs_wait_for_slots(session, now: datetime) -> bool:
    """Whether Queued jobs are due for admission and hold no slot (the admission queue)."""
    return bool(await direct.fetch(session, WAITING_FOR_SLOTS, {"now": now}))


def wake_if_jobs_wait(session, signals: Signals, now: datetime) -> None:
    """A slot was freed in this transaction. Just before it commits, once however many were
    freed (a group commit's webhooks), look whether jobs wait for a slot; if so, admission is
    woken on commit. (New jobs wake it themselves.)"""

    async def look() -> None:
        if await jobs_wait_for_slots(session, now):
            await signals.after_commit(session, ADMISSION)

    before_commit(session, ADMISSION_WAKE, look)


@functools.lru_cache(maxsize=16)
def admission_query(*, order: str, kontext_allowed: bool, per_tenant: int | None):
    """The next `free` waiting jobs (as of `now`): round-robin across tenants (`FAIR`, DESIGN
    §4) or oldest first across all of them (`FIFO`).

    Fair: each tenant's waiting jobs are ranked FIFO; every tenant's first goes before any
    tenant's second, and so on. Among tenants, the one served least recently goes first: the
    latest admission among its jobs holding slots (none held: it goes before all that hold
    some), then the oldest waiting job. So one free slot at a time still rotates across
    tenants, and a tenant alone gets every slot. It is all read from the database, so the
    rotation holds across claims and processes; the caller holds the admission lock. Under
    either order, with `per_tenant` (TENANT_MAX_ACTIVE), a job that would take the tenant past
    it stays queued."""
    assert order in (FAIR, FIFO), order
    waiting = sa.select(
        Job.id.label("job_id"),
        func.row_number()
        .over(partition_by=Job.tenant_id, order_by=(Job.created_at, Job.id))
        .label("rank"),
        func.min(Job.created_at).over(partition_by=Job.tenant_id).label("head_created_at"),
    ).where(Job.status == jobs.QUEUED, ~Job.holds_slot, Job.next_attempt_at <= NOW)
    if not kontext_allowed:
        waiting = waiting.where(Job.slot_class != KONTEXT_MAX)
    waiting = waiting.subquery("waiting")
    held = (
        sa.select(
            Job.tenant_id.label("tenant_id"),
            func.count().label("slots"),
            func.max(Job.admitted_at).label("last_admitted_at"),
        )
        .where(Job.holds_slot)
        .group_by(Job.tenant_id)
        .subquery("held")
    )
    round_robin = (
        waiting.c.rank,
        held.c.last_admitted_at.asc().nulls_first(),
        waiting.c.head_created_at,
        Job.tenant_id,
    )
    query = (
        sa.select(JOBS)
        .join(waiting, waiting.c.job_id == Job.id)
        .outerjoin(held, held.c.tenant_id == Job.tenant_id)
        .order_by(*(round_robin if order == FAIR else (Job.created_at, Job.id)))
        .limit(FREE)
        # Window functions rule out FOR UPDATE on the subquery: lock only the jobs rows.
        .with_for_update(of=JOBS, skip_locked=True)
    )
    if per_tenant is None:
        return query
    return query.where(waiting.c.rank + func.coalesce(held.c.slots, 0) <= per_tenant)


class Admission(Loop):
    name = ADMISSION
    interval_s = 1.0

    def __init__(
        self,
        db: Database,
        signals: Signals,
        clock,
        bfl: upstream.BFLClient,
        signing: Signing,
        urls: Urls,
        metrics: Metrics,
        limits: Limits,
        commits: GroupCommit,
        slack_s: float = 30.0,
        rng: random.Random | None = None,
        order: str = FAIR,
    ) -> None:
        super().__init__(signals)
        self.db, self.clock, self.bfl, self.signing = db, clock, bfl, signing
        self.urls, self.metrics, self.limits = urls, metrics, limits
        self.slack_s = slack_s
        self.commits = commits
        self.order = order
        # A submit is over within BFL_TIMEOUT_S; a lease twice that (plus slack) outlives
        # it and the outcome's commit, so only a process that died leaves it to run out.
        self.submit_lease = timedelta(seconds=2 * bfl.timeout_s + slack_s)
        self._rng = rng or random.Random()
        self._submitting = 0
        self._queue_seen = False  # the last claim found jobs waiting with every slot taken
        # The last claim took as many as it had room for: more may wait for a finished submit.
        self._room_ran_out = False
        self._passed_over = False  # the last claim skipped kontext-max jobs over their limit

    async def claim(self) -> list[JobRecord]:
        room = SUBMIT_CONCURRENCY - self._submitting
        if room <= 0:
            self._room_ran_out = True
            return []
        self._passed_over = False
        async with self.db.write_direct() as session:
            if self.db.is_postgres:
                await direct.pg_xact_lock(session, ADMISSION_LOCK)
            now = self.clock.now()
            stale = await self._stale(session, now, room)
            claimed = stale + await self._fresh(session, now, room - len(stale))
            for job in claimed:
                job.holds_slot = True
                job.admitted_at = job.admitted_at or now
                job.submit_attempts += 1
                job.lease_expires_at = now + self.submit_lease
            await write_changes(session, claimed)
        self._submitting += len(claimed)
        self._room_ran_out = len(claimed) >= room
        return claimed

    async def run(self) -> None:
        # While it runs with room, what a commit here gives admission is claimed here, and no
        # other process is woken for it (`Signals.taken_here`).
        self.signals.taken_here[self.name] = self.has_room
        try:
            await super().run()
        finally:
            self.signals.taken_here.pop(self.name, None)

    def has_room(self) -> bool:
        return not self.stopping and self._submitting < SUBMIT_CONCURRENCY

    def may_find_more(self, claimed: list) -> bool:
        """Only when the claim passed over flux-kontext-max jobs (over their sub-limit) that
        took the place of others. Otherwise it took every job it had a slot and room for: the
        next can only come from a new submit, a freed slot or a finished submit, and each of
        those wakes it (an immediate second claim would find nothing, once per job)."""
        return self._passed_over

    async def _stale(self, session, now: datetime, room: int) -> list[JobRecord]:
        """Submits that timed out or whose process died: their slot is already held."""
        rows = await direct.fetch(session, STALE_SUBMITS, {"now": now, "room": room})
        return [JobRecord(row) for row in rows]

    async def _fresh(self, session, now: datetime, room: int) -> list[JobRecord]:
        used = {
            row["slot_class"]: row["held"] for row in await direct.fetch(session, SLOTS_HELD, {})
        }
        slots = self.limits.total - sum(used.values())
        await self._watch_for_a_queue(session, now, slots)
        free = min(slots, room)
        free_kontext = self.limits.kontext_max - used.get(KONTEXT_MAX, 0)
        if free <= 0:
            return []
        query = admission_query(
            order=self.order, kontext_allowed=free_kontext > 0, per_tenant=self.limits.per_tenant
        )
        admitted = []
        rows = await direct.fetch(session, query, {"now": now, "free": free})
        for job in map(JobRecord, rows):
            if job.slot_class == KONTEXT_MAX:
                if free_kontext <= 0:
                    self._passed_over = True
                    continue
                free_kontext -= 1
            admitted.append(job)
        return admitted

    async def _watch_for_a_queue(self, session, now: datetime, free_slots: int) -> None:
        """Jobs wait and every slot is taken: wake the reconciler, once per queue, to ask BFL
        early about slots whose webhook is late. While the queue lasts it keeps looking by
        itself, from the database, so this wake only saves it the rest of its interval. (It is
        this process's reconciler: every process runs all the loops.)"""
        waiting = free_slots <= 0 and await jobs_wait_for_slots(session, now)
        if waiting and not self._queue_seen:
            self.signals.wake(RECONCILER)
        self._queue_seen = waiting

    async def work(self, job: Job) -> None:
        """Submit one job upstream. Cut short by shutdown, it is ambiguous: its lease runs out."""
        try:
            with logs.job_context(job.id):
                await self._submit(job)
        finally:
            self._submitting -= 1
            if self._room_ran_out:
                self.signals.wake(self.name)  # room for what the last claim could not take

    async def _submit(self, job: Job) -> None:
        webhook_url = self.urls.webhook(job.id)
        secret = self.signing.webhook_secret(job.id)
        try:
            submitted = await self.bfl.submit(job.model, job.inputs, webhook_url, secret)
        except upstream.BFLError as exc:
            self.metrics.upstream_responses.inc(op="submit", outcome=_outcome(exc))
            await self._apply(job.id, functools.partial(self._failed, exc=exc))
            return
        self.metrics.upstream_responses.inc(op="submit", outcome="ok")
        log.info("submitted to BFL as task %s", submitted.id)
        await self._apply(job.id, functools.partial(self._accepted, submitted=submitted))

    async def _apply(self, job_id: uuid.UUID, outcome) -> None:
        """Record a submit's outcome (group-committed with other jobs' changes)."""
        await self.commits.submit((job_id, outcome))

    async def _accepted(self, session, job: Job, now, *, submitted: upstream.Submitted) -> None:
        job.bfl_id = job.bfl_id or submitted.id
        job.polling_url = job.polling_url or submitted.polling_url
        for field in ("cost", "input_mp", "output_mp"):
            if getattr(submitted, field) is not None:
                setattr(job, field, getattr(submitted, field))
        if job.status not in jobs.IN_FLIGHT:
            return  # a webhook beat this response and already finished the job
        job.lease_expires_at = None
        job.submitted_at = job.submitted_at or now
        job.webhook_due_at = job.submitted_at + webhook_window(job.model, self.slack_s)
        # The first poll may come early, but only while jobs wait for slots (the reconciler
        # checks); never later than the webhook is due.
        early = job.submitted_at + early_check_window(job.model)
        job.next_poll_at = min(early, job.webhook_due_at)
        job.updated_at = now
        if job.status == jobs.QUEUED:
            job.status = jobs.PENDING
            await self._event(session, job, jobs.EVENT_SUBMITTED, now)

    async def _failed(self, session, job: Job, now, *, exc: upstream.BFLError) -> None:
        if job.status != jobs.QUEUED:
            return  # BFL's webhook already moved it on: the task exists after all
        if isinstance(exc, upstream.BFLTimeout):
            log.warning("submit of job %s timed out; BFL may have it: %s", job.id, exc)
            job.lease_expires_at = now + webhook_window(job.model, self.slack_s)
            return
        retry = isinstance(
            exc, upstream.BFLRateLimited | upstream.BFLServerError | upstream.BFLUnavailable
        )
        if retry and now - job.created_at < GIVE_UP_AFTER:
            self._requeue(job, exc, now)
            wake_if_jobs_wait(session, self.signals, now)  # its slot has takers
            return
        await self._fail(session, job, _reason(exc), now)

    async def failed(self, job: Job, exc: Exception) -> None:
        await self._apply(job.id, functools.partial(self._broken, reason=failure_reason(exc)))

    async def _broken(self, session, job: Job, now, *, reason: str) -> None:
        """The submit raised something unexpected. BFL may or may not have the task, so it is
        treated as a timeout (the slot is held for the webhook window); a job that keeps
        breaking fails with the reason rather than holding a slot for ever."""
        if job is None or job.status != jobs.QUEUED:
            return
        if job.submit_attempts >= MAX_BROKEN_SUBMITS:
            await self._fail(session, job, f"fluxhook could not submit the job: {reason}", now)
            return
        log.warning("submit of job %s broke; BFL may have it: %s", job.id, reason)
        job.lease_expires_at = now + webhook_window(job.model, self.slack_s)

    def _requeue(self, job: Job, exc: upstream.BFLError, now) -> None:
        delay = backoff_s(job.submit_attempts, base_s=1.0, cap_s=60.0, rng=self._rng)
        if isinstance(exc, upstream.BFLRateLimited) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        log.info("job %s goes back to the queue for %.1fs: %s", job.id, delay, exc)
        job.holds_slot = False
        job.lease_expires_at = None
        job.next_attempt_at = now + timedelta(seconds=delay)
        job.updated_at = now

    async def _fail(self, session, job: Job, reason: str, now) -> None:
        log.warning("job failed at submit: %s", reason)
        job.status, job.details = jobs.ERROR, {"error": reason}
        job.holds_slot, job.lease_expires_at = False, None
        job.finished_at = job.updated_at = now
        await self._event(session, job, jobs.EVENT_FAILED, now)
        await self.signals.after_commit(session, self.name)

    async def _event(self, session, job: Job, event_type: str, now) -> None:
        await record_job_event(session, self.signals, self.urls, job, event_type, now)


def _reason(exc: upstream.BFLError) -> str:
    if isinstance(exc, upstream.BFLInsufficientCredits):
        return "insufficient credits"
    if isinstance(exc, upstream.BFLAuthError):
        return "BFL refused fluxhook's API key"
    if isinstance(exc, upstream.BFLRejected | upstream.BFLNotFound):
        return f"BFL rejected the request: {exc.detail}"
    return f"BFL kept failing: {exc}"


def _outcome(exc: upstream.BFLError) -> str:
    return str(exc.status_code) if exc.status_code else type(exc).__name__
