"""PostgreSQL: `direct`'s statements on libpq directly (`service.libpq`) behave as psycopg's
cursor does: the transaction opens at the first statement and ends at COMMIT or ROLLBACK,
errors are psycopg's, and a statement interrupted while it waits closes its connection, which
then leaves the pool."""

import uuid
from datetime import UTC, datetime

import anyio
import psycopg
import pytest
import sqlalchemy as sa

from service import direct, libpq
from service.models import Job
from service.records import JOBS
from tests.support.rows import new_tenant
from tests.support.waiting import wait_for

NOW = datetime(2026, 12, 7, 19, 0, 0, 123456, tzinfo=UTC)
LOCK_KEY = 915_001
ANSWER = sa.select(sa.literal(41, sa.Integer) + sa.bindparam("n", type_=sa.Integer))


@pytest.fixture
def db(postgres_db):
    return postgres_db


async def test_a_statement_opens_the_transaction_and_commit_ends_it(db):
    async with db.write_direct() as tx:
        status = tx.driver.pgconn.transaction_status
        assert status == psycopg.pq.TransactionStatus.IDLE and libpq.plain(tx.driver)
        assert await direct.fetch(tx, ANSWER, {"n": 1}) == [{"anon_1": 42}]
        assert tx.driver.pgconn.transaction_status == psycopg.pq.TransactionStatus.INTRANS
    assert tx.driver.pgconn.transaction_status == psycopg.pq.TransactionStatus.IDLE


async def test_rows_match_what_psycopgs_cursor_reads(db):
    tenant_id = await new_tenant(db, NOW)
    job = Job(
        id=uuid.uuid4(), tenant_id=tenant_id, model="flux-dev", status="Queued",
        inputs={"prompt": 'ä "quoted" cat', "nested": [1, 2.5, None]}, slot_class="standard",
        created_at=NOW, updated_at=NOW,
    )  # fmt: skip
    by_id = sa.select(JOBS).where(JOBS.c.id == sa.bindparam("id", type_=JOBS.c.id.type))
    async with db.write() as session:
        session.add(job)
    async with db.write_direct() as tx:
        on_libpq = await direct.fetch(tx, by_id, {"id": job.id})
        plan = direct.compiled(by_id, tx.dialect)
        on_cursor = plan.rows(await direct._run_on_cursor(tx.driver, plan, (job.id,), False))
    assert on_libpq == on_cursor and on_libpq[0]["inputs"] == job.inputs


async def test_an_error_is_psycopgs_and_the_connection_goes_on(db):
    statement = sa.select(sa.cast(sa.bindparam("text", type_=sa.Text), sa.Integer))
    drivers = []

    async def cast_a_word() -> None:
        async with db.write_direct() as tx:
            drivers.append(tx.driver)
            await direct.fetch(tx, statement, {"text": "not a number"})

    with pytest.raises(sa.exc.DataError) as raised:
        await cast_a_word()
    [driver] = drivers
    assert isinstance(raised.value.orig, psycopg.errors.InvalidTextRepresentation)
    assert not driver.closed
    async with db.write_direct() as tx:
        assert await direct.fetch(tx, ANSWER, {"n": 1}) == [{"anon_1": 42}]


def _new_job(tenant_id: uuid.UUID) -> dict:
    job = Job(
        id=uuid.uuid4(), tenant_id=tenant_id, model="flux-dev", status="Queued", inputs={},
        slot_class="standard", created_at=NOW, updated_at=NOW,
    )  # fmt: skip
    return {c.key: getattr(job, c.key) for c in JOBS.c}


INSERT_JOB = sa.insert(JOBS).values({c.key: sa.bindparam(c.key, type_=c.type) for c in JOBS.c})


async def test_the_rows_of_an_executemany_commit_together_or_not_at_all(db):
    tenant_id = await new_tenant(db, NOW)
    first, second = _new_job(tenant_id), _new_job(tenant_id)
    async with db.write_direct() as tx:  # its first statements: BEGIN goes with them
        await direct.execute_many(tx, INSERT_JOB, [first, second])
    clash, third = _new_job(tenant_id) | {"id": first["id"]}, _new_job(tenant_id)

    async def insert_with_a_clash() -> None:
        async with db.write_direct() as tx:
            await direct.execute_many(tx, INSERT_JOB, [third, clash])

    with pytest.raises(sa.exc.IntegrityError):
        await insert_with_a_clash()
    async with db.read() as session:
        stored = {job.id for job in (await session.exec(sa.select(Job))).scalars()}
    assert stored == {first["id"], second["id"]}


# A transaction-scoped advisory lock held by another connection: the statement waits in
# the server. Alone (one round trip), or in an executemany (a pipeline).
WAIT_ALONE = [{"key": LOCK_KEY}]
WAIT_IN_A_PIPELINE = [{"key": LOCK_KEY + 1}, {"key": LOCK_KEY}]


@pytest.mark.parametrize("keys", [WAIT_ALONE, WAIT_IN_A_PIPELINE], ids=["alone", "pipeline"])
async def test_a_statement_cancelled_while_it_waits_closes_its_connection(db, keys):
    row = _new_job(await new_tenant(db, NOW))
    drivers = []

    async def insert_then_wait_for_the_lock() -> None:
        async with db.write_direct() as tx:
            drivers.append(tx.driver)
            await direct.execute(tx, INSERT_JOB, row)
            await direct.execute_many(tx, direct.TAKE_LOCK, keys)

    async with db.engine.connect() as holder:
        await holder.execute(sa.select(sa.func.pg_advisory_lock(LOCK_KEY)))
        async with anyio.create_task_group() as tg:
            tg.start_soon(insert_then_wait_for_the_lock)
            await wait_for(lambda: _waits_for_a_lock(holder, drivers))
            tg.cancel_scope.cancel()
        await holder.execute(sa.select(sa.func.pg_advisory_unlock(LOCK_KEY)))
    [broken] = drivers
    assert broken.closed
    for _ in range(db.engine.pool.size() + 1):  # every pooled connection, and one more
        async with db.write_direct() as tx:
            assert tx.driver is not broken
            assert await direct.fetch(tx, ANSWER, {"n": 1}) == [{"anon_1": 42}]
    async with db.read() as session:
        assert await session.get(Job, row["id"]) is None


async def _waits_for_a_lock(holder, drivers) -> bool:
    if not drivers:
        return False
    waiting = sa.text("SELECT wait_event_type FROM pg_stat_activity WHERE pid = :pid")
    found = await holder.execute(waiting, {"pid": drivers[0].info.backend_pid})
    return found.scalar() == "Lock"


async def _prepared_here(tx) -> list[str]:
    query = "SELECT name FROM pg_prepared_statements WHERE name LIKE '\\_fh\\_%'"
    names = sa.text(query).columns(name=sa.Text)
    return [row["name"] for row in await direct.fetch(tx, names, {})]


async def test_a_statement_is_prepared_once_per_connection_and_then_reused(db):
    async with db.write_direct() as tx:
        await direct.fetch(tx, ANSWER, {"n": 1})
        first = await _prepared_here(tx)
        assert await direct.fetch(tx, ANSWER, {"n": 2}) == [{"anon_1": 43}]
        assert await _prepared_here(tx) == first and len(first) == 2  # and the lookup's own


async def test_statements_deallocated_under_it_fail_one_transaction_then_prepare_again(db):
    async def answer(deallocate_first: bool) -> list[dict]:
        async with db.write_direct() as tx:
            if deallocate_first:
                await tx.driver.execute("DEALLOCATE ALL")  # as a pooler or a reset might
            return await direct.fetch(tx, ANSWER, {"n": 1})

    for _ in range(db.engine.pool.size() + 1):  # prepared on every connection of the pool
        await answer(deallocate_first=False)
    with pytest.raises(sa.exc.ProgrammingError):
        await answer(deallocate_first=True)
    for _ in range(db.engine.pool.size() + 1):  # that connection among them
        assert await answer(deallocate_first=False) == [{"anon_1": 42}]


ECHO = sa.select(
    sa.bindparam("number", type_=sa.BigInteger),
    sa.bindparam("text", type_=sa.Text),
    sa.bindparam("when", type_=sa.DateTime(timezone=True)),
)
ECHOED = [
    {"number": 1, "text": "a", "when": NOW},
    {"number": 2**40, "text": None, "when": NOW.replace(year=1999)},
    {"number": None, "text": 'ä "quoted"', "when": None},
    {"number": -(2**62), "text": "", "when": NOW},
]


async def test_one_connection_adapts_every_statement_alike_with_the_values_it_met_before(db):
    """A connection keeps one Transformer: values of other sizes, and None, after those it
    has dumped and loaded before, come back as they went."""
    async with db.write_direct() as tx:
        adapting = tx.driver.adapting
        for values in ECHOED + ECHOED[::-1]:
            [row] = await direct.fetch(tx, ECHO, values)
            assert list(row.values()) == [values["number"], values["text"], values["when"]]
        assert tx.driver.adapting is adapting


async def test_a_connection_not_made_by_the_engine_goes_through_psycopgs_cursor(db, postgres_url):
    connection = await psycopg.AsyncConnection.connect(postgres_url)
    async with connection:
        assert not libpq.plain(connection)
        plan = direct.compiled(ANSWER, db.engine.dialect)
        rows = await direct._run_psycopg(connection, plan, plan.parameters({"n": 1}), False)
        assert plan.rows(rows) == [{"anon_1": 42}]


async def _every_pooled_connection_answers(db) -> None:
    """A transaction on every pooled connection, and one more: each with nothing deferred
    from before, and answering."""
    for _ in range(db.engine.pool.size() + 1):
        async with db.write_direct() as tx:
            assert not tx.driver.deferred
            assert await direct.fetch(tx, ANSWER, {"n": 1}) == [{"anon_1": 42}]


async def _stored_ids(db) -> set[uuid.UUID]:
    async with db.read() as session:
        return {job.id for job in (await session.exec(sa.select(Job))).scalars()}


async def test_a_deferred_statement_runs_first_in_the_next_statements_round_trip(db):
    tenant_id = await new_tenant(db, NOW)
    row = _new_job(tenant_id)
    count = sa.select(sa.func.count()).select_from(JOBS)
    async with db.write_direct() as tx:
        await direct.execute_later(tx, INSERT_JOB, [row])
        assert tx.driver.deferred and await _stored_ids(db) == set(), "not sent yet"
        assert await direct.fetch(tx, count, {}) == [{"count_1": 1}], "run before the count"
        assert not tx.driver.deferred
    assert await _stored_ids(db) == {row["id"]}


async def test_deferred_statements_alone_go_with_the_commit(db):
    tenant_id = await new_tenant(db, NOW)
    rows = [_new_job(tenant_id), _new_job(tenant_id)]
    async with db.write_direct() as tx:
        await direct.execute_later(tx, INSERT_JOB, rows)
    assert await _stored_ids(db) == {row["id"] for row in rows}


@pytest.mark.parametrize("then", ["statement", "commit"])
async def test_a_deferred_statements_error_fails_its_transaction(db, then):
    """Its error comes with the statement it went with, or with the COMMIT: nothing of the
    transaction is kept, and the connection serves the next one without it."""
    tenant_id = await new_tenant(db, NOW)
    first = _new_job(tenant_id)
    async with db.write_direct() as tx:
        await direct.execute(tx, INSERT_JOB, first)
    kept, clash = _new_job(tenant_id), first | {"status": "Pending"}

    async def insert_then_clash() -> None:
        async with db.write_direct() as tx:
            await direct.execute(tx, INSERT_JOB, kept)
            await direct.execute_later(tx, INSERT_JOB, [clash])
            if then == "statement":
                await direct.fetch(tx, ANSWER, {"n": 1})

    with pytest.raises(sa.exc.IntegrityError):
        await insert_then_clash()
    assert await _stored_ids(db) == {first["id"]}
    await _every_pooled_connection_answers(db)
    assert await _stored_ids(db) == {first["id"]}


async def test_a_rolled_back_transactions_deferred_statements_are_forgotten(db):
    tenant_id = await new_tenant(db, NOW)
    forgotten = _new_job(tenant_id)

    async def defer_then_fail() -> None:
        async with db.write_direct() as tx:
            await direct.execute_later(tx, INSERT_JOB, [forgotten])
            raise RuntimeError("the caller gives up")

    with pytest.raises(RuntimeError):
        await defer_then_fail()
    await _every_pooled_connection_answers(db)
    assert await _stored_ids(db) == set()


UNSENDABLE = sa.text("SELECT CAST(:value AS text)")  # an object psycopg cannot adapt, sent


async def test_a_deferred_statement_that_cannot_be_sent_fails_its_transaction_not_the_rest(db):
    """Its parameters are dumped when it goes, with the next statement: that statement
    raises, and a caller that goes on meets the error again at the COMMIT; nothing that was
    deferred with it is dropped and committed without it."""
    row = _new_job(await new_tenant(db, NOW))

    async def defer_then_go_on() -> None:
        async with db.write_direct() as tx:
            await direct.execute_later(tx, INSERT_JOB, [row])
            await direct.execute_later(tx, UNSENDABLE, [{"value": object()}])
            with pytest.raises(sa.exc.ProgrammingError):
                await direct.fetch(tx, ANSWER, {"n": 1})

    with pytest.raises(sa.exc.ProgrammingError):
        await defer_then_go_on()
    assert await _stored_ids(db) == set()
    await _every_pooled_connection_answers(db)
