"""Statements on the driver (`service.direct`) read and write exactly what the ORM does."""

import uuid
from datetime import UTC, datetime, timedelta

import anyio
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from service import direct
from service.db import BEFORE_COMMIT_ORDER, Database, before_commit, create_engine, on_commit
from service.models import IdempotencyKey, Image, Job, Subscription
from service.records import JOBS, new_row
from service.settings import Settings
from tests.support.rows import new_tenant

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


async def test_rows_read_on_the_driver_equal_the_orms(db):
    job = _job(await new_tenant(db, NOW))
    async with db.write() as session:
        session.add(job)  # pending: flushed before the direct statement, as autoflush would
        (row,) = await direct.fetch(session, BY_ID, {"id": job.id})
    async with db.read() as session:
        expected = (await session.exec(BY_ID, params={"id": job.id})).mappings().one()
    assert row == dict(expected)
    assert row["inputs"] == job.inputs and row["created_at"] == NOW and row["holds_slot"] is True
    assert type(row["id"]) is uuid.UUID and row["result"] is None


@pytest.mark.parametrize("count", [1, 2])  # psycopg: one row goes as an execute (direct.py)
async def test_rows_written_on_the_driver_read_back_through_the_orm(db, count):
    tenant_id = await new_tenant(db, NOW)
    jobs = [_job(tenant_id), _job(tenant_id, status="Ready", result={"sample": "x"})][:count]
    rows = [{c.key: getattr(job, c.key) for c in JOBS.c} for job in jobs]
    async with db.write() as session:
        await direct.execute_many(session, INSERT_JOB, rows)
    async with db.read() as session:
        for job in jobs:
            stored = await session.get(Job, job.id)
            assert stored.model_dump() == job.model_dump()


async def test_a_constraint_violation_is_sqlalchemys_error_and_rolls_back(db):
    tenant_id = await new_tenant(db, NOW)
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
    job = _job(await new_tenant(db, NOW))
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
    tenant_id = await new_tenant(db, NOW)
    first, second = _job(tenant_id), _job(tenant_id)
    async with async_sessionmaker(db.engine, class_=AsyncSession)() as session:
        await direct.execute(session, INSERT_JOB, {c.key: getattr(first, c.key) for c in JOBS.c})
        await session.commit()  # the next transaction may have another pooled connection
        await direct.execute(session, INSERT_JOB, {c.key: getattr(second, c.key) for c in JOBS.c})
        await session.commit()
    async with db.read() as session:
        assert await session.get(Job, first.id) and await session.get(Job, second.id)


def _row(job: Job) -> dict:
    return {c.key: getattr(job, c.key) for c in JOBS.c}


async def _stored(db: Database, job: Job) -> bool:
    async with db.read() as session:
        return await session.get(Job, job.id) is not None


async def test_a_driver_transaction_commits_and_runs_its_hooks_in_order(db):
    """Before-commit hooks run in `BEFORE_COMMIT_ORDER` whatever order they were staged in
    (their locks are then taken in one order: tests/test_lock_order.py), then the commit,
    then the after-commit callbacks."""
    job, seen = _job(await new_tenant(db, NOW)), []

    def before(name: str):
        async def hook() -> None:
            visible = await direct.fetch(tx, BY_ID, {"id": job.id}) != []
            seen.append((name, "before commit, the row is visible inside", visible))

        return hook

    async with db.write_direct() as tx:
        await direct.execute(tx, INSERT_JOB, _row(job))
        for name in reversed(BEFORE_COMMIT_ORDER):
            before_commit(tx, name, before(name))
        on_commit(tx, lambda: seen.append(("after commit", "stored")))
        assert seen == []
    inside = [(name, "before commit, the row is visible inside", True)
              for name in BEFORE_COMMIT_ORDER]  # fmt: skip
    assert seen == [*inside, ("after commit", "stored")]
    assert await _stored(db, job)


async def test_an_after_commit_callback_that_fails_is_logged_and_the_others_run(db, caplog):
    job, seen = _job(await new_tenant(db, NOW)), []

    def broken() -> None:
        raise RuntimeError("a hook broke")

    async with db.write_direct() as tx:
        await direct.execute(tx, INSERT_JOB, _row(job))
        on_commit(tx, broken)
        on_commit(tx, lambda: seen.append("the next callback ran"))
    assert seen == ["the next callback ran"] and await _stored(db, job)
    assert "an after-commit callback failed" in caplog.text


async def test_a_driver_transaction_that_raises_writes_nothing_and_the_next_one_works(db):
    tenant_id = await new_tenant(db, NOW)
    first, second, after = _job(tenant_id), _job(tenant_id), []

    async def insert_twice() -> None:
        async with db.write_direct() as tx:
            on_commit(tx, lambda: after.append("committed"))
            await direct.execute(tx, INSERT_JOB, _row(first))
            await direct.execute(tx, INSERT_JOB, _row(first))  # the same primary key

    with pytest.raises(IntegrityError):
        await insert_twice()
    assert after == [] and not await _stored(db, first)
    async with db.write_direct() as tx:
        await direct.execute(tx, INSERT_JOB, _row(second))
    assert await _stored(db, second)


async def test_a_cancelled_driver_transaction_rolls_back_and_lets_other_writers_in(db):
    tenant_id = await new_tenant(db, NOW)
    cancelled, later = _job(tenant_id), _job(tenant_id)
    inside = anyio.Event()

    async def write_then_wait() -> None:
        async with db.write_direct() as tx:
            await direct.execute(tx, INSERT_JOB, _row(cancelled))
            inside.set()
            await anyio.Event().wait()  # until cancelled

    async with anyio.create_task_group() as tg:
        tg.start_soon(write_then_wait)
        await inside.wait()
        tg.cancel_scope.cancel()
    async with db.write() as session:  # a session's writer gets the lock
        session.add(later)
    assert not await _stored(db, cancelled) and await _stored(db, later)


async def test_driver_transactions_and_sessions_take_turns_without_lock_errors(db):
    tenant_id = await new_tenant(db, NOW)
    jobs = [_job(tenant_id) for _ in range(40)]

    async def on_driver(job: Job) -> None:
        async with db.write_direct() as tx:
            await direct.execute(tx, INSERT_JOB, _row(job))

    async def in_session(job: Job) -> None:
        async with db.write() as session:
            session.add(job)

    async with anyio.create_task_group() as tg:
        for index, job in enumerate(jobs):
            tg.start_soon(on_driver if index % 2 else in_session, job)
    async with db.read() as session:
        count = (await session.exec(sa.select(sa.func.count()).select_from(JOBS))).one()[0]
    assert count == len(jobs)


async def test_a_sqlite_writer_connection_that_broke_is_opened_again(sqlite_url):
    db = Database(create_engine(Settings.from_env({"DATABASE_URL": sqlite_url})))
    try:
        tenant_id = await new_tenant(db, NOW)
        async with db.write_direct() as tx:
            broken = tx.driver
        await broken.close()  # as if the connection had died under it
        job = _job(tenant_id)
        async with db.write_direct() as tx:
            assert tx.driver is not broken
            await direct.execute(tx, INSERT_JOB, _row(job))
        assert await _stored(db, job)
    finally:
        await db.dispose()


async def test_a_postgres_connection_lost_mid_transaction_leaves_the_pool(postgres_url):
    db = Database(create_engine(Settings.from_env({"DATABASE_URL": postgres_url})))
    try:
        tenant_id = await new_tenant(db, NOW)
        lost, job = _job(tenant_id), _job(tenant_id)
        drivers = []

        async def lose_the_connection() -> None:
            async with db.write_direct() as tx:
                drivers.append(tx.driver)
                await _terminate(db, tx.driver.info.backend_pid)
                await direct.execute(tx, INSERT_JOB, _row(lost))

        with pytest.raises(DBAPIError):
            await lose_the_connection()
        [broken] = drivers
        assert broken.closed
        for _ in range(db.engine.pool.size() + 1):  # every pooled connection, and one more
            async with db.write_direct() as tx:
                assert tx.driver is not broken
        async with db.write_direct() as tx:
            await direct.execute(tx, INSERT_JOB, _row(job))
        assert await _stored(db, job) and not await _stored(db, lost)
    finally:
        await db.dispose()


async def test_postgres_driver_transactions_give_their_connections_back(postgres_url):
    db = Database(create_engine(Settings.from_env({"DATABASE_URL": postgres_url})))
    try:
        tenant_id = await new_tenant(db, NOW)
        duplicate = _job(tenant_id)

        async def insert_twice() -> None:
            async with db.write_direct() as tx:
                await direct.execute(tx, INSERT_JOB, _row(duplicate))
                await direct.execute(tx, INSERT_JOB, _row(duplicate))

        for _ in range(db.engine.pool.size() + 2):  # more than the pool holds
            with pytest.raises(IntegrityError):
                await insert_twice()
        assert db.engine.pool.checkedout() == 0
    finally:
        await db.dispose()


async def _terminate(db: Database, backend_pid: int) -> None:
    async with db.engine.connect() as connection:
        await connection.execute(sa.select(sa.func.pg_terminate_backend(backend_pid)))


@pytest.mark.parametrize("model", [Job, Image, Subscription, IdempotencyKey])
def test_a_new_plain_row_has_what_the_models_constructor_gives(model):
    given = {name: f"value of {name}" for name, f in model.model_fields.items() if f.is_required()}
    instance = model(**given)
    plain = vars(new_row(model, **given))
    built = {name: getattr(instance, name) for name in model.model_fields}
    if "id" in built:  # a fresh uuid4 each
        assert type(plain.pop("id")) is type(built.pop("id"))
    assert plain == built
