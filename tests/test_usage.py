"""Usage (issue 16): the rollup equals the sum over the jobs, survives retention, counts a Ready
that later fails once, and never shows another tenant's."""

import os
import sys
import uuid
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import anyio
import httpx
from sqlmodel import select

from service import jobs
from service.clock import FakeClock
from service.db import Database, create_engine
from service.models import Job, Tenant
from service.retention import prune
from service.settings import Settings
from service.usage import count_final, usage
from tests.support.rows import new_tenant
from tests.support.stack import running_emulator, running_stack

FAST = {"time_scale": 0.01}
SMALL = {"width": 256, "height": 256}


async def _jobs(stack) -> list[Job]:
    async with stack.services.db.read() as session:
        return list((await session.exec(select(Job))).all())


def _by_status(body: dict) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in body["days"]:
        counts[row["status"]] = counts.get(row["status"], 0) + row["jobs"]
    return counts


async def test_usage_is_the_sum_over_the_jobs_and_survives_a_prune(database_url):
    async with (
        running_emulator(**FAST) as emulator,
        running_stack(database_url, emulator) as stack,
        httpx.AsyncClient(base_url=stack.url, timeout=30) as other,
    ):
        other.headers["x-key"] = await stack.new_key("other-tenant")
        prompts = ["a", "b [error]", "c [content-moderated]", "d"]
        jobs = [await stack.submit("flux-dev", prompt=p, **SMALL) for p in prompts]
        for job in jobs:
            await stack.settled(job["id"])
        for job in (jobs[0], jobs[3]):
            await stack.stored(job["id"])
        mine = (await stack.client.get("/v1/usage")).json()
        rows = await _jobs(stack)
        assert mine["jobs"] == len(rows) == 4
        assert mine["cost"] == round(sum(job.cost or 0 for job in rows), 6)
        assert _by_status(mine) == {"Ready": 2, "Error": 1, "Content Moderated": 1}
        assert {row["model"] for row in mine["days"]} == {"flux-dev"}
        assert (await other.get("/v1/usage")).json()["days"] == [], "another tenant sees none"

        pruned = await prune(stack.services.db, stack.services.images, _soon(stack))
        assert pruned.jobs == 4 and await _jobs(stack) == []
        assert (await stack.client.get("/v1/usage")).json() == mine


def _soon(stack):
    return stack.services.clock.now() + timedelta(seconds=1)


async def test_a_ready_whose_image_never_comes_counts_once_as_error(sqlite_url):
    clock = FakeClock()
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(sqlite_url, emulator, {"clock": clock}) as stack,
    ):
        job = await stack.submit("flux-dev", **SMALL)
        task_id = (await stack.reaches(job["id"], "Pending"))["bfl_id"]  # submitted upstream
        ready = {"id": task_id, "status": "Ready", "result": {"sample": "http://☃.net/s.jpeg"}}
        assert (await stack.post_webhook(job["id"], ready)).status_code == 200
        await stack.reaches(job["id"], "Error")
        usage = (await stack.client.get("/v1/usage")).json()
        assert (usage["jobs"], _by_status(usage)) == (1, {"Error": 1})


async def test_bad_ranges_are_422(sqlite_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(sqlite_url, emulator, {"run_workers": False}) as stack,
    ):
        for query in ("from=yesterday", "to=2026-13-01", "from=2026-12-05&to=2026-12-01",
                      "from=2020-01-01&to=2026-01-01", "to=20261201"):  # fmt: skip
            response = await stack.client.get(f"/v1/usage?{query}")
            assert response.status_code == 422, query
        fine = await stack.client.get("/v1/usage?from=2026-11-01&to=2026-11-30")
        assert fine.json() == {"from": "2026-11-01", "to": "2026-11-30", "jobs": 0,
                               "cost": 0, "days": []}  # fmt: skip


async def test_operators_read_every_tenants_usage(sqlite_url):
    async with (
        running_emulator(**FAST) as emulator,
        running_stack(sqlite_url, emulator) as stack,
    ):
        job = await stack.submit("flux-dev", **SMALL)
        await stack.settled(job["id"])
        tenant = await _tenant_name(stack, job["id"])
    env = {**os.environ, "DATABASE_URL": sqlite_url}
    command = [sys.executable, "-m", "service", "usage", "--tenant", tenant]
    ran = await anyio.run_process(command, env=env, check=False)
    assert ran.returncode == 0, ran.stderr
    header, row = ran.stdout.decode().splitlines()
    assert header.split()[:4] == ["day", "tenant", "model", "status"]
    assert row.split()[2:5] == ["flux-dev", "Ready", "1"]


async def _tenant_name(stack, job_id: str) -> str:
    async with stack.services.db.read() as session:
        job = await session.get(Job, uuid.UUID(job_id))
        return (await session.get(Tenant, job.tenant_id)).name


async def test_jobs_finished_in_one_transaction_are_each_counted_once(database_url):
    """A group commit's finished jobs share one row per (tenant, day, model, status), written
    once before the commit, on both engines and both kinds of write transaction."""
    db = Database(create_engine(Settings.from_env({"DATABASE_URL": database_url})))
    try:
        now = datetime(2026, 12, 7, 12, tzinfo=UTC)
        tenant_id = await new_tenant(db, now)

        def finished(status: str, cost: float, ready_at=None) -> SimpleNamespace:
            return SimpleNamespace(tenant_id=tenant_id, model="flux-dev", status=status,
                                   cost=cost, upstream_ready_at=ready_at)  # fmt: skip

        async with db.write() as session:
            for cost in (1.0, 2.0, 3.0):
                count_final(session, finished(jobs.READY, cost), jobs.EVENT_READY, now)
        async with db.write_direct() as transaction:
            count_final(transaction, finished(jobs.READY, 4.0), jobs.EVENT_READY, now)
            late = finished(jobs.ERROR, 4.0, ready_at=now)  # its image never came
            count_final(transaction, late, jobs.EVENT_FAILED, now)
            yesterday = finished(jobs.ERROR, 0.5, ready_at=now - timedelta(days=1))
            count_final(transaction, yesterday, jobs.EVENT_FAILED, now)
        async with db.read() as session:
            rows = await usage(session, now.date() - timedelta(days=1), now.date(), tenant_id)
        counted = {(row.day, row.status): (row.jobs, row.cost) for row in rows}
        assert counted == {
            (now.date() - timedelta(days=1), jobs.READY): (-1, -0.5),
            (now.date(), jobs.READY): (3, 6.0),
            (now.date(), jobs.ERROR): (2, 4.5),
        }
    finally:
        await db.dispose()
