"""Admission's fast path: a submit that finds a free slot and no job waiting is admitted in
its own transaction and goes upstream without a claim; otherwise it queues for the claim,
whose order (DESIGN §4) is unchanged."""

import uuid

import anyio
import sqlalchemy as sa

from service.models import Job
from tests.support.stack import running_emulator, running_stack

SMALL = {"width": 256, "height": 256}


async def _job_row(stack, job_id: str) -> dict:
    async with stack.services.db.read() as session:
        query = sa.select(Job.__table__).where(Job.id == uuid.UUID(job_id))
        return dict((await session.exec(query)).one()._mapping)


async def _upstream_tasks(stack) -> int:
    return len(await stack.emulator.tasks())


async def test_a_submit_with_a_free_slot_is_admitted_in_its_own_transaction(database_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(database_url, emulator) as stack,
    ):
        job_id = (await stack.submit(**SMALL))["id"]
        # As the submit was answered: the slot is held, taken at the job's own creation
        # (a claim would have come later, in a transaction of its own).
        job = await _job_row(stack, job_id)
        assert job["holds_slot"] and job["submit_attempts"] == 1
        assert job["admitted_at"] == job["created_at"]
        assert job["lease_expires_at"] > job["created_at"]
        pending = await stack.reaches(job_id, "Pending")
        assert pending["status"] == "Pending"
        assert await _upstream_tasks(stack) == 1


async def test_without_a_free_slot_a_submit_queues_and_the_claim_admits_it(database_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(database_url, emulator, bfl_max_active=1) as stack,
    ):
        first = (await stack.submit(**SMALL))["id"]
        await stack.reaches(first, "Pending")
        second = (await stack.submit(**SMALL))["id"]
        queued = await _job_row(stack, second)
        assert not queued["holds_slot"] and queued["admitted_at"] is None
        (task,) = await emulator.tasks()
        await emulator.finish(task["id"])
        await stack.reaches(second, "Pending")
        admitted = await _job_row(stack, second)
        assert admitted["admitted_at"] > admitted["created_at"]
        assert await _upstream_tasks(stack) == 2


async def test_a_job_that_waits_keeps_its_turn_over_a_later_submit(sqlite_url):
    """The kontext-max sub-limit keeps one job waiting while a slot is free: a later submit
    of another model does not take the fast path past it; the claim admits it (passing over
    the kontext-max job, as it would have)."""
    limits = {"bfl_max_active": 2, "bfl_max_active_kontext_max": 1}
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(sqlite_url, emulator, **limits) as stack,
    ):
        first = (await stack.submit("flux-kontext-max", prompt="one"))["id"]
        await stack.reaches(first, "Pending")
        second = (await stack.submit("flux-kontext-max", prompt="two"))["id"]
        assert not (await _job_row(stack, second))["holds_slot"]
        later = (await stack.submit(**SMALL))["id"]
        await stack.reaches(later, "Pending")
        job = await _job_row(stack, later)
        assert job["admitted_at"] > job["created_at"]  # queued, and the claim admitted it
        assert (await _job_row(stack, second))["status"] == "Queued"


async def test_a_tenant_at_its_limit_queues_at_submit(sqlite_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(sqlite_url, emulator, tenant_max_active=1) as stack,
    ):
        first = (await stack.submit(**SMALL))["id"]
        assert (await _job_row(stack, first))["holds_slot"]
        second = (await stack.submit(**SMALL))["id"]
        assert not (await _job_row(stack, second))["holds_slot"]
        await stack.reaches(first, "Pending")
        (task,) = await emulator.tasks()
        await emulator.finish(task["id"])
        await stack.reaches(second, "Pending")


async def test_the_slot_limit_holds_for_submits_into_two_processes(database_url):
    """Two services on one database (as two processes): their submits' admissions, at once
    or by claims, never hold more slots than BFL_MAX_ACTIVE between them."""
    fixed = {"latency_s": 0.05, "time_scale": 1.0, "seed": 5}
    async with (
        running_emulator(**fixed) as emulator,
        running_stack(database_url, emulator, bfl_max_active=3) as one,
        running_stack(database_url, emulator, bfl_max_active=3) as two,
    ):
        ids = []

        async def submit(stack, i: int) -> None:
            ids.append((stack, (await stack.submit(prompt=f"job {i}", **SMALL))["id"]))

        async with anyio.create_task_group() as tg:
            for i in range(24):
                tg.start_soon(submit, (one, two)[i % 2], i)
        for stack, job_id in ids:
            assert (await stack.settled(job_id))["status"] == "Ready"
        stats = await emulator.stats()
        assert stats["max_active"] <= 3
        # BFL refused none: the limit held in fluxhook, not by BFL's 429s.
        assert stats["submits"] == stats["tasks_created"] == 24
