"""Slots come back fast: while jobs wait for upstream slots, a slot whose webhook is late is
asked about once, early; with no queue, nothing is polled before the webhook is overdue."""

import contextlib
import dataclasses
import uuid

import httpx
from sqlmodel import select

from service import jobs
from service.clock import FakeClock
from service.loops.admission import EARLY_CHECK_SLACK_S, Admission
from service.loops.reconciler import QUEUE_LOOK_S, Reconciler
from service.models import Job
from service.runtime import build_loops
from service.settings import Settings
from tests.support.stack import Stack, running_emulator, running_stack

MODEL = "flux-2-klein-4b"
LATENCY_S = 1.0  # what the catalog expects of MODEL
EARLY_S = LATENCY_S + EARLY_CHECK_SLACK_S  # after submit: late enough for the early check
DUE_S = 2 * LATENCY_S + 30.0  # after submit: overdue (the default RECONCILE_SLACK_S is 30 s)
INTERVAL_S = 10.0  # the reconciler's default interval


@dataclasses.dataclass
class Driven:
    """fluxhook with its loops driven by hand on a FakeClock, everything submitted at t = 0."""

    stack: Stack
    clock: FakeClock
    elapsed_s: float = 0.0

    @property
    def admission(self) -> Admission:
        return next(loop for loop in self.stack.services.loops if isinstance(loop, Admission))

    @property
    def reconciler(self) -> Reconciler:
        return next(loop for loop in self.stack.services.loops if isinstance(loop, Reconciler))

    async def submit_and_admit(self) -> uuid.UUID:
        job = await self.stack.submit(MODEL)
        await self.admission.run_until_idle()
        return uuid.UUID(job["id"])

    async def row(self, job_id: uuid.UUID) -> Job:
        async with self.stack.services.db.read() as session:
            return (await session.exec(select(Job).where(Job.id == job_id))).one()

    async def finish_upstream(self, job_id: uuid.UUID) -> None:
        """BFL finishes the task; its webhook is lost (the emulator drops every one)."""
        await self.stack.emulator.finish((await self.row(job_id)).bfl_id)

    async def polls(self, job_id: uuid.UUID) -> int:
        """`get_result` calls BFL has had for the job's task."""
        by_task = (await self.stack.emulator.stats())["get_result_by_task"]
        return by_task.get((await self.row(job_id)).bfl_id, 0)

    async def reach(self, seconds: float) -> None:
        """Move the clock to `seconds` after submit, and let the reconciler sweep."""
        self.clock.advance(seconds - self.elapsed_s)
        self.elapsed_s = seconds
        await self.reconciler.run_until_idle()

    async def woken(self, loop: str) -> bool:
        """Whether something woke `loop` (and clear it)."""
        return await self.stack.services.signals.wait(loop, 0)


@contextlib.asynccontextmanager
async def one_slot(database_url: str, **overrides):
    """One upstream slot; BFL finishes tasks only when told and loses every webhook."""
    clock = FakeClock()
    runtime = {"run_workers": False, "clock": clock}
    async with (
        running_emulator(manual=True, drop_webhooks=1.0) as emulator,
        running_stack(database_url, emulator, runtime, bfl_max_active=1, **overrides) as stack,
        httpx.AsyncHTTPTransport() as transport,
    ):
        build_loops(stack.services, transport, transport)
        yield Driven(stack, clock)


async def test_a_lost_webhook_frees_its_slot_at_the_early_check_while_jobs_wait(database_url):
    async with one_slot(database_url) as driven:
        first = await driven.submit_and_admit()
        second = await driven.submit_and_admit()
        assert (await driven.row(second)).status == jobs.QUEUED, "waits for the one slot"
        assert await driven.woken("reconciler"), "admission saw the queue start"
        await driven.finish_upstream(first)
        await driven.reach(EARLY_S - 0.1)
        assert await driven.polls(first) == 0, "its webhook is not late enough yet"
        await driven.reach(EARLY_S)
        assert await driven.polls(first) == 1
        row = await driven.row(first)
        assert (row.status, row.holds_slot, row.completed_via) == (jobs.READY, False, "reconciler")
        assert await driven.woken("admission"), "the freed slot wakes admission"
        await driven.admission.run_until_idle()
        assert (await driven.row(second)).status == jobs.PENDING


async def test_a_webhook_that_frees_a_slot_wakes_admission_only_while_jobs_wait(database_url):
    async with one_slot(database_url) as driven:
        first = await driven.submit_and_admit()
        second = await driven.submit_and_admit()
        await driven.woken("admission")  # the submits' own wake-ups, cleared
        failed = {"id": (await driven.row(first)).bfl_id, "status": "Error", "details": {}}
        assert (await driven.stack.post_webhook(str(first), failed)).status_code == 200
        assert await driven.woken("admission"), "the freed slot has a taker"
        await driven.admission.run_until_idle()
        assert (await driven.row(second)).status == jobs.PENDING
        await driven.woken("admission")
        failed["id"] = (await driven.row(second)).bfl_id
        assert (await driven.stack.post_webhook(str(second), failed)).status_code == 200
        assert not await driven.woken("admission"), "nobody waits: admission sleeps on"


async def test_with_no_queue_a_lost_webhook_is_asked_only_once_overdue(database_url):
    async with one_slot(database_url) as driven:
        job = await driven.submit_and_admit()
        await driven.finish_upstream(job)
        await driven.reach(EARLY_S)
        await driven.reach(DUE_S - 0.1)
        assert await driven.polls(job) == 0, "no queue: no early check"
        await driven.reach(DUE_S)
        assert await driven.polls(job) == 1
        assert not (await driven.row(job)).holds_slot


async def test_a_job_still_running_at_the_early_check_is_not_asked_again_until_overdue(
    database_url,
):
    async with one_slot(database_url) as driven:
        first = await driven.submit_and_admit()
        second = await driven.submit_and_admit()
        await driven.reach(EARLY_S)
        assert await driven.polls(first) == 1
        row = await driven.row(first)
        assert (row.status, row.holds_slot) == (jobs.PENDING, True), "BFL still runs it"
        for at_s in range(int(EARLY_S) + 1, int(DUE_S)):  # a sweep every second meanwhile
            await driven.reach(at_s)
        assert await driven.polls(first) == 1, "asked once early, then the normal schedule"
        await driven.finish_upstream(first)
        await driven.reach(DUE_S)
        assert await driven.polls(first) == 2
        await driven.admission.run_until_idle()
        assert (await driven.row(second)).status == jobs.PENDING


async def test_while_jobs_wait_the_reconciler_wakes_for_the_next_early_check(database_url):
    async with one_slot(database_url, reconcile_interval_s=INTERVAL_S) as driven:
        await driven.submit_and_admit()
        await driven.reach(1.0)
        assert await driven.reconciler.pause_s() == INTERVAL_S, "no queue: the interval"
        await driven.submit_and_admit()
        assert await driven.reconciler.pause_s() == EARLY_S - 1.0
        await driven.reach(EARLY_S)
        assert await driven.reconciler.pause_s() == QUEUE_LOOK_S, "checked: look again soon"


async def test_with_early_checks_off_a_lost_webhook_holds_its_slot_until_overdue(database_url):
    async with one_slot(database_url, reconcile_early_checks=False) as driven:
        first = await driven.submit_and_admit()
        await driven.submit_and_admit()
        await driven.finish_upstream(first)
        await driven.reach(DUE_S - 0.1)
        assert await driven.polls(first) == 0
        assert (await driven.row(first)).holds_slot
        await driven.reach(DUE_S)
        assert await driven.polls(first) == 1


def test_early_checks_can_be_switched_off_from_the_environment():
    assert Settings.from_env({}).reconcile_early_checks is True
    assert Settings.from_env({"RECONCILE_EARLY_CHECKS": "false"}).reconcile_early_checks is False
