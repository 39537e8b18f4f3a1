"""Statements on the driver (`service.direct`) read and write exactly what the ORM does."""

import uuid
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from service import direct
from service.db import Database, create_engine
from service.models import Job, Tenant
from service.records import JOBS
from service.settings import Settings

NOW = datetime(2026, 12, 2, 15, 4, 5, 678901, tzinfo=UTC)
BY_ID = sa.select(JOBS).where(JOBS.c.id == sa.bindparam("id", type_=JOBS.c.id.type))
INSERT_JOB = sa.insert(JOBS).values({c.key: sa.bindparam(c.key, type_=c.type) for c in JOBS.c})


@pytest.fixture
async def db(database_url):
    database = Database(create_engine(Settings.from_env({"DATABASE_URL": database_url})))
    yield database
    await database.dispose()


def _job(tenant_id: uuid.UUID, **changes) -> Job:
    fields = {
        "id": uuid.uuid4(), "tenant_id": tenant_id, "model": "flux-dev", "status": "Queued",
        "inputs": {"prompt": "ä cat", "seed": 7, "nested": {"list": [1, 2.5, None]}},
        "slot_class": "standard", "holds_slot": True, "submit_attempts": 2, "cost": 2.5,
        "progress": 0.25, "next_attempt_at": NOW + timedelta(seconds=1), "created_at": NOW,
        "updated_at": NOW,
    }  # fmt: skip
    return Job(**(fields | changes))


async def _tenant(db: Database) -> uuid.UUID:
    tenant_id = uuid.uuid4()
    async with db.write() as session:
        session.add(Tenant(id=tenant_id, name="t", created_at=NOW))
    return tenant_id


async def test_rows_read_on_the_driver_equal_the_orms(db):
    job = _job(await _tenant(db))
    async with db.write() as session:
        session.add(job)  # pending: flushed before the direct statement, as autoflush would
        (row,) = await direct.fetch(session, BY_ID, {"id": job.id})
    async with db.read() as session:
        expected = (await session.exec(BY_ID, params={"id": job.id})).mappings().one()
    assert row == dict(expected)
    assert row["inputs"] == job.inputs and row["created_at"] == NOW and row["holds_slot"] is True
    assert type(row["id"]) is uuid.UUID and row["result"] is None


async def test_rows_written_on_the_driver_read_back_through_the_orm(db):
    tenant_id = await _tenant(db)
    jobs = [_job(tenant_id), _job(tenant_id, status="Ready", result={"sample": "x"})]
    rows = [{c.key: getattr(job, c.key) for c in JOBS.c} for job in jobs]
    async with db.write() as session:
        await direct.execute_many(session, INSERT_JOB, rows)
    async with db.read() as session:
        for job in jobs:
            stored = await session.get(Job, job.id)
            assert stored.model_dump() == job.model_dump()


async def test_a_constraint_violation_is_sqlalchemys_error_and_rolls_back(db):
    tenant_id = await _tenant(db)
    job = _job(tenant_id)
    row = {c.key: getattr(job, c.key) for c in JOBS.c}

    async def insert_twice() -> None:
        async with db.write() as session:
            await direct.execute(session, INSERT_JOB, row)
            await direct.execute(session, INSERT_JOB, row)  # the same primary key

    with pytest.raises(IntegrityError):
        await insert_twice()
    async with db.read() as session:
        assert await session.get(Job, job.id) is None


async def test_a_parameter_used_twice_is_sent_to_both_places(db):
    job = _job(await _tenant(db))
    at = sa.bindparam("at", type_=JOBS.c.updated_at.type)
    touch = (
        sa.update(JOBS).where(JOBS.c.id == sa.bindparam("id")).values(updated_at=at, finished_at=at)
    )
    later = NOW + timedelta(hours=1)
    async with db.write() as session:
        session.add(job)
        await direct.execute(session, touch, {"id": job.id, "at": later})
    async with db.read() as session:
        stored = await session.get(Job, job.id)
    assert stored.updated_at == stored.finished_at == later


async def test_after_a_commit_statements_run_in_the_sessions_next_transaction(db):
    tenant_id = await _tenant(db)
    first, second = _job(tenant_id), _job(tenant_id)
    async with async_sessionmaker(db.engine, class_=AsyncSession)() as session:
        await direct.execute(session, INSERT_JOB, {c.key: getattr(first, c.key) for c in JOBS.c})
        await session.commit()  # the next transaction may have another pooled connection
        await direct.execute(session, INSERT_JOB, {c.key: getattr(second, c.key) for c in JOBS.c})
        await session.commit()
    async with db.read() as session:
        assert await session.get(Job, first.id) and await session.get(Job, second.id)
