"""PostgreSQL's pool checks a connection at checkout (`service.pgpool`): one the server has
ended is replaced before anyone uses it; a healthy one costs no round trip."""

import time

import psycopg
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from service import direct
from service.db import Database, create_engine
from service.pgpool import check_connections_at_checkout
from service.settings import Settings
from tests.support import postgres

DEADLINE_S = 10.0


@pytest.fixture
def postgres_db(postgres_cluster):
    name = postgres.create_database(postgres_cluster)
    yield postgres_cluster.url(name)
    postgres.drop_database(postgres_cluster, name)


def _database(url: str) -> Database:
    return Database(create_engine(Settings.from_env({"DATABASE_URL": url})))


def _checking(url: str, ping_after_idle_s: float) -> Database:
    """An engine with the checkout check alone, at the given idle limit (so that a slow
    machine's pause between two checkouts cannot decide the test)."""
    engine = create_async_engine(Settings.from_env({"DATABASE_URL": url}).database_url)
    check_connections_at_checkout(engine, ping_after_idle_s)
    return Database(engine)


async def _backend_pid(db: Database) -> int:
    """The backend of the pool's connection, after a statement that names itself."""
    async with db.write_direct() as tx:
        await tx.driver.execute("SELECT 'before the checkout'")
        return tx.driver.info.backend_pid


async def _last_query(side: psycopg.AsyncConnection, pid: int) -> str | None:
    cursor = await side.execute("SELECT query FROM pg_stat_activity WHERE pid = %s", (pid,))
    row = await cursor.fetchone()
    return row[0] if row else None


async def _until_gone(side: psycopg.AsyncConnection, pid: int) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while (await _last_query(side, pid)) is not None:
        assert time.monotonic() < deadline, f"backend {pid} still runs"


async def test_a_connection_the_server_ended_is_replaced_before_anyone_uses_it(postgres_db):
    db = _checking(postgres_db, ping_after_idle_s=3600.0)  # found by its socket alone
    try:
        ended = await _backend_pid(db)
        async with await psycopg.AsyncConnection.connect(postgres_db, autocommit=True) as side:
            await side.execute("SELECT pg_terminate_backend(%s)", (ended,))
            await _until_gone(side, ended)
        for _ in range(db.engine.pool.size() + 1):  # every pooled connection, and one more
            async with db.write_direct() as tx:
                assert tx.driver.info.backend_pid != ended
                await direct.execute(tx, sa.text("SELECT 1"), {})
        async with db.write() as session:  # a session's checkout as well
            assert (await session.exec(sa.select(sa.literal(1)))).scalar() == 1
    finally:
        await db.dispose()


async def test_the_service_engine_checks_at_checkout_and_does_not_pre_ping(postgres_db):
    db = _database(postgres_db)
    try:
        assert not db.engine.pool._pre_ping
        ended = await _backend_pid(db)
        async with await psycopg.AsyncConnection.connect(postgres_db, autocommit=True) as side:
            await side.execute("SELECT pg_terminate_backend(%s)", (ended,))
            await _until_gone(side, ended)
        async with db.write_direct() as tx:
            await direct.execute(tx, sa.text("SELECT 1"), {})
    finally:
        await db.dispose()


@pytest.mark.parametrize(
    ("ping_after_idle_s", "pinged"),
    [(3600.0, False), (0.0, True)],
    ids=["healthy-and-recent: nothing sent", "idle-for-long: pinged"],
)
async def test_a_checkout_pings_only_a_connection_idle_for_long(
    postgres_db, ping_after_idle_s, pinged
):
    db = _checking(postgres_db, ping_after_idle_s)
    try:
        pid = await _backend_pid(db)
        async with await psycopg.AsyncConnection.connect(postgres_db, autocommit=True) as side:
            before = await _last_query(side, pid)
            async with db.write_direct() as tx:
                assert tx.driver.info.backend_pid == pid  # the pool's one connection again
                assert (await _last_query(side, pid) != before) is pinged  # the ping, or nothing
    finally:
        await db.dispose()
