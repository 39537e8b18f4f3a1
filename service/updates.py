"""Apply what BFL says about a task to its job: one path for the receiver and the reconciler.

Runs inside the caller's write transaction: the job's new state, its event and the deliveries
owed for it commit together.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlmodel.ext.asyncio.session import AsyncSession

from service import jobs
from service.events import record_job_event
from service.images import FetchTask
from service.loops.admission import wake_if_jobs_wait
from service.models import Job
from service.signals import Signals
from service.views import Urls


@dataclass(frozen=True)
class Applied:
    change: jobs.Change | None
    fetch: FetchTask | None = None  # a Ready: the image to download now


async def apply_update(
    session: AsyncSession,
    signals: Signals,
    urls: Urls,
    job: Job,
    update: jobs.BflUpdate,
    *,
    via: str,
    now: datetime,
    fetch_lease: timedelta | None = None,
) -> Applied:
    """`via` is `webhook` or `reconciler`. With `fetch_lease`, a Ready's image fetch is leased
    to this process (which then fetches at once, without a claim round-trip)."""
    if job.bfl_id is None:
        job.bfl_id = update.task_id  # a webhook can arrive before the submit response
    change = jobs.transition(job.status, job.progress, update)
    if change is None:
        return Applied(None)
    job.status, job.progress, job.updated_at = change.status, change.progress, now
    if change.status in jobs.TERMINAL:
        await _finish_upstream(session, signals, job, update, via, now, fetch_lease)
    for event_type in change.events:
        await record_job_event(session, signals, urls, job, event_type, now)
    fetch = FetchTask.of(job) if change.status == jobs.READY else None
    return Applied(change, fetch)


async def _finish_upstream(
    session, signals, job: Job, update: jobs.BflUpdate, via: str, now, fetch_lease
) -> None:
    """BFL is done with the task: free its slot; a Ready still owes us the image."""
    job.holds_slot = False
    job.completed_via = via
    job.details = update.details
    if update.cost is not None:
        job.cost = update.cost
    job.finished_at = now
    wake_if_jobs_wait(session, signals, now)  # the freed slot may have takers
    wakes = []
    if job.status == jobs.READY:
        job.sample_url = update.result["sample"]
        job.result = {k: v for k, v in update.result.items() if k != "sample"}
        job.upstream_ready_at = now
        job.next_attempt_at = now
        job.lease_expires_at = now + fetch_lease if fetch_lease else None
        if not fetch_lease:  # a fetch leased here is handed to this process's fetcher
            wakes.append("images")
    else:
        job.lease_expires_at = None
    await signals.after_commit(session, *wakes)
