"""Write transactions take their locks in one order, so two processes never deadlock.

A transaction's before-commit hooks take locks they hold to the commit: the usage rows it
adds to, then its tenants' event locks. They run in one fixed order, whatever order the
transaction staged them in (a group commit stages them as its jobs' events come).
"""

import functools
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import anyio
import psycopg
from sqlmodel import func, select

from service import jobs
from service.db import Database, create_engine
from service.events import record_event, tenant_lock_key
from service.models import JobEvent, UsageDay
from service.settings import Settings
from service.signals import Signals
from service.usage import count_final
from tests.support.rows import new_tenant
from tests.support.waiting import wait_for

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)
# Backends waiting for a lock (the test's own connection never waits).
WAITING = "SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted"


async def test_transactions_that_staged_events_and_usage_in_opposite_orders_both_commit(
    postgres_url,
):
    """One transaction records an event before a finished job's usage, the other the usage
    first. A third holds the tenant's event lock until both wait on it or on each other:
    staged in their own orders, the first would hold the event lock while the second held
    the usage row, and PostgreSQL would abort one as deadlocked."""
    db = Database(create_engine(Settings.from_env({"DATABASE_URL": postgres_url})))
    signals = Signals(postgres=True)
    try:
        tenant_id = await new_tenant(db, NOW)
        finished = SimpleNamespace(tenant_id=tenant_id, model="flux-dev", status=jobs.READY,
                                   cost=1.0, upstream_ready_at=None)  # fmt: skip

        async def event_then_usage() -> None:
            async with db.write_direct() as transaction:
                await _progress_event(transaction, signals, tenant_id)
                count_final(transaction, finished, jobs.EVENT_READY, NOW)

        async def usage_then_event() -> None:
            async with db.write_direct() as transaction:
                count_final(transaction, finished, jobs.EVENT_READY, NOW)
                await _progress_event(transaction, signals, tenant_id)

        await _both_wait_then_run(postgres_url, tenant_id, event_then_usage, usage_then_event)
        async with db.read() as session:
            events = await session.scalar(select(func.count()).select_from(JobEvent))
            counted = await session.scalar(select(UsageDay.jobs))
        assert (events, counted) == (2, 2)
    finally:
        await db.dispose()


async def _progress_event(transaction, signals: Signals, tenant_id: uuid.UUID) -> None:
    await record_event(transaction, signals, tenant_id=tenant_id, job_id=None,
                       type="job.progress", data={}, now=NOW)  # fmt: skip


async def _both_wait_then_run(postgres_url: str, tenant_id: uuid.UUID, first, second) -> None:
    """A third connection holds `tenant_id`'s event lock until `first`, then `second`, wait
    (on it or on each other); then lets them run."""
    holder = await psycopg.AsyncConnection.connect(_libpq(postgres_url))
    observer = await psycopg.AsyncConnection.connect(_libpq(postgres_url), autocommit=True)
    try:
        await holder.execute("SELECT pg_advisory_xact_lock(%s)", [tenant_lock_key(tenant_id)])
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(first)
            await wait_for(lambda: _waiting(observer, 1))
            tasks.start_soon(second)
            await wait_for(lambda: _waiting(observer, 2))
            await holder.commit()  # the event lock goes to the first in line
    finally:
        await holder.close()
        await observer.close()


async def _waiting(observer: psycopg.AsyncConnection, backends: int) -> bool:
    row = await (await observer.execute(WAITING)).fetchone()
    return row[0] == backends


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


async def test_transactions_with_events_of_two_tenants_staged_in_opposite_orders_both_commit(
    postgres_url,
):
    """Each transaction takes its tenants' event locks in one round trip, in the tenants'
    order whatever the order their events came in: a third holds the first tenant's lock
    until both wait. Taken in staging order, the second would hold the other tenant's lock
    while the first waited for it, and PostgreSQL would abort one as deadlocked."""
    db = Database(create_engine(Settings.from_env({"DATABASE_URL": postgres_url})))
    signals = Signals(postgres=True)
    try:
        first, second = sorted([await new_tenant(db, NOW), await new_tenant(db, NOW)])

        async def events_of(*tenants: uuid.UUID) -> None:
            async with db.write_direct() as transaction:
                for tenant_id in tenants:
                    await _progress_event(transaction, signals, tenant_id)

        await _both_wait_then_run(
            postgres_url,
            first,
            functools.partial(events_of, first, second),
            functools.partial(events_of, second, first),
        )
        async with db.read() as session:
            events = (await session.exec(select(JobEvent.tenant_id))).all()
        assert sorted(events) == [first, first, second, second]
    finally:
        await db.dispose()
