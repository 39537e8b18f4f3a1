"""Retention: finished jobs go with everything that hangs off them; so do old events of no job
(pings); nothing unfinished or still owed a delivery goes; SQLite gives the space back;
`fluxhook prune` runs a pass now."""

import os
import sqlite3
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
from sqlmodel import select

from service.cli_maintenance import duration
from service.models import Delivery, IdempotencyKey, Image, Job, JobEvent, Subscription
from service.retention import prune
from tests.support.stack import running_emulator, running_stack
from tests.support.subscriber import running_subscriber
from tests.support.waiting import wait_for

FAST = {"time_scale": 0.01}
SMALL = {"width": 256, "height": 256}


async def _count(stack, model, job_id: str) -> int:
    column = model.id if model is Job else model.job_id
    async with stack.services.db.read() as session:
        rows = await session.exec(select(model).where(column == uuid.UUID(job_id)))
        return len(rows.all())


async def _owes(stack, job_id: str) -> bool:
    async with stack.services.db.read() as session:
        query = select(Delivery).where(Delivery.job_id == uuid.UUID(job_id))
        return any(d.status == "pending" for d in (await session.exec(query)).all())


async def _settled_delivery(stack) -> bool:
    async with stack.services.db.read() as session:
        return all(d.attempts for d in (await session.exec(select(Delivery))).all())


async def test_prune_takes_finished_jobs_whole_and_spares_the_rest(database_url):
    async with (
        running_emulator(**FAST) as emulator,
        running_stack(database_url, emulator) as stack,
        running_subscriber(default=500) as failing,
        running_subscriber() as subscriber,
    ):
        await stack.client.post("/v1/subscriptions", json={"url": subscriber.url})
        done = await stack.submit("flux-dev", webhook_url=subscriber.url, **SMALL)
        keyed = await stack.client.post(
            "/v1/flux-dev", json={"prompt": "p", **SMALL}, headers={"idempotency-key": "k1"}
        )
        owed = await stack.submit("flux-dev", webhook_url=failing.url, **SMALL)
        for job in (done, keyed.json(), owed):
            assert (await stack.stored(job["id"]))["status"] == "Ready"
        await wait_for(lambda: _settled_delivery(stack))
        assert await _owes(stack, owed["id"]), "its callback failed and is retried later"

        await stack.emulator.configure(manual=True)
        unfinished = await stack.submit("flux-dev", **SMALL)
        pruned = await prune(stack.services.db, stack.services.images, _soon(stack))

        assert (pruned.jobs, pruned.images, pruned.idempotency_keys) == (2, 2, 1)
        for job in (done, keyed.json()):
            for model in (Job, JobEvent, Delivery, Image, Subscription, IdempotencyKey):
                assert await _count(stack, model, job["id"]) == 0, model
        for job in (owed, unfinished):
            assert await _count(stack, Job, job["id"]) == 1
        gone = await stack.client.get("/v1/get_result", params={"id": done["id"]})
        assert (gone.status_code, gone.json()["status"]) == (404, "Task not found")
        assert (await stack.client.get(f"/v1/jobs/{done['id']}")).status_code == 404
        listed = (await stack.client.get("/v1/subscriptions")).json()["subscriptions"]
        assert [s["url"] for s in listed] == [subscriber.url], "standing subscriptions stay"


async def _ping(stack, subscription: dict) -> int:
    """A test event for `subscription`; its sequence number."""
    sent = await stack.client.post(f"/v1/subscriptions/{subscription['id']}/test")
    assert sent.status_code == 202, sent.text
    listed = (await stack.client.get("/v1/deliveries")).json()["deliveries"]
    (delivery,) = [d for d in listed if d["id"] == sent.json()["delivery_id"]]
    return delivery["event_id"]


async def _events_and_deliveries(stack) -> tuple[set[int], set[int]]:
    """Every event's sequence number, and the events deliveries are for."""
    async with stack.services.db.read() as session:
        events = {e.seq for e in (await session.exec(select(JobEvent))).all()}
        deliveries = {d.event_seq for d in (await session.exec(select(Delivery))).all()}
    return events, deliveries


async def test_prune_takes_old_events_of_no_job_unless_a_delivery_is_owed(database_url):
    async with (
        running_emulator(**FAST) as emulator,
        running_stack(database_url, emulator) as stack,
        running_subscriber(default=500) as failing,
        running_subscriber() as subscriber,
    ):
        subscribe = "/v1/subscriptions"
        good = (await stack.client.post(subscribe, json={"url": subscriber.url})).json()
        # No job event is owed to the failing one (a ping goes whatever the filter says).
        bad = {"url": failing.url, "events": ["job.failed"]}
        bad = (await stack.client.post(subscribe, json=bad)).json()
        job = await stack.submit("flux-dev", **SMALL)
        await stack.stored(job["id"])
        delivered, owed = await _ping(stack, good), await _ping(stack, bad)
        await wait_for(lambda: _settled_delivery(stack))
        cutoff = stack.services.clock.now()
        recent = await _ping(stack, good)
        await wait_for(lambda: _settled_delivery(stack))
        events, _ = await _events_and_deliveries(stack)
        job_events = events - {delivered, owed, recent}

        pruned = await prune(stack.services.db, stack.services.images, cutoff)

        assert (pruned.jobs, pruned.events) == (1, len(job_events) + 1)
        assert pruned.deliveries == len(job_events) + 1, "the job's callbacks and the ping's"
        events, deliveries = await _events_and_deliveries(stack)
        assert events == deliveries == {owed, recent}, "owed a retry, or newer than the cutoff"
        # With every event older than the cutoff, only the owed one stays.
        again = await prune(stack.services.db, stack.services.images, _soon(stack))
        assert (again.jobs, again.events, again.deliveries) == (0, 1, 1)
        assert (await _events_and_deliveries(stack))[0] == {owed}
        # The newest number went with it, and is never handed out again: a client may hold it
        # as the id to resume after (SQLite's AUTOINCREMENT; PostgreSQL's sequence).
        assert await _ping(stack, good) > recent


def _soon(stack):
    """A cutoff just after now: everything finished so far is older than it."""
    return stack.services.clock.now() + timedelta(seconds=1)


def _sqlite_file(url: str) -> str:
    return url.removeprefix("sqlite+aiosqlite:///")


def _pages(path: str) -> tuple[int, int]:
    with sqlite3.connect(path) as conn:
        return (
            conn.execute("PRAGMA page_count").fetchone()[0],
            conn.execute("PRAGMA freelist_count").fetchone()[0],
        )


async def test_sqlite_gives_the_space_back(sqlite_url):
    async with (
        running_emulator(**FAST) as emulator,
        running_stack(sqlite_url, emulator) as stack,
    ):
        jobs = [await stack.submit("flux-dev", prompt=f"big {i}") for i in range(12)]
        for job in jobs:
            await stack.stored(job["id"])
        full, _ = _pages(_sqlite_file(sqlite_url))
        pruned = await prune(stack.services.db, stack.services.images, _soon(stack))
        assert pruned.jobs == 12
    emptied, free = _pages(_sqlite_file(sqlite_url))
    assert free == 0, "incremental_vacuum returned the free pages"
    assert emptied < full / 2, (emptied, full)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0s", timedelta(0)), ("90m", timedelta(minutes=90)), ("12h", timedelta(hours=12)),
     ("1.5d", timedelta(days=1.5))],
)  # fmt: skip
def test_durations(text, expected):
    assert duration(text) == expected


def _fluxhook(env: dict, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "service", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)


def test_prune_now_from_the_command_line(sqlite_url):
    env = {**os.environ, "DATABASE_URL": sqlite_url, "LOG_FORMAT": "text"}
    ran = _fluxhook(env, "prune", "--older-than", "0s")
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("deleted 0 jobs, 0 events")
    bad = _fluxhook(env, "prune", "--older-than", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr
