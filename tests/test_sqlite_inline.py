"""SQLite: what can never wait runs on the event loop's thread; what may wait does not.

Where a statement ran is read from SQLite itself: a SQL function that answers the id of the
thread calling it.
"""

import asyncio
import os
import sqlite3
import threading

import anyio
import pytest
import sqlalchemy as sa

from service import sqlite_inline
from service.db import Database, create_engine
from service.settings import Settings
from tests.support.waiting import wait_for

BIG = b"\xff" * (256 * 1024)  # an image-sized parameter


@pytest.fixture
async def db(sqlite_url):
    database = Database(create_engine(Settings.from_env({"DATABASE_URL": sqlite_url})))
    yield database
    await database.dispose()


async def _with_thread_function(session) -> None:
    connection = await (await session.connection()).get_raw_connection()
    await connection.driver_connection.create_function("thread_id", 0, threading.get_ident)


async def _thread_of(session, sql: str = "SELECT thread_id()", **params) -> int:
    return (await session.exec(sa.text(sql), params=params)).scalar_one()


async def test_statements_inside_a_write_transaction_run_on_the_loop(db):
    async with db.write() as session:
        await _with_thread_function(session)
        assert await _thread_of(session) == threading.get_ident()
        big = await _thread_of(session, "SELECT thread_id() + 0 * length(:blob)", blob=BIG)
        assert big != threading.get_ident()  # an image's copy goes to the thread


async def test_reads_run_on_the_loop(db):
    async with db.read() as session:
        await _with_thread_function(session)
        assert await _thread_of(session) == threading.get_ident()


async def test_a_write_inside_a_read_transaction_goes_to_the_thread(db):
    async with db.read() as session:
        await _with_thread_function(session)
        insert = "INSERT INTO app_secrets (name, value) VALUES ('t', 't') RETURNING thread_id()"
        assert await _thread_of(session, insert) != threading.get_ident()


async def test_a_writer_waits_for_another_process_without_blocking_the_loop(db, sqlite_url):
    """Another connection holds the write lock. The writer's BEGIN IMMEDIATE waits in the
    thread: the loop goes on running, so this test itself can let the lock go (were the wait
    on the loop, the test would be stuck until the busy timeout and the write would fail)."""
    other = sqlite3.connect(sqlite_url.split("///", 1)[1], isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        released = False

        async def write() -> None:
            async with db.write() as session:
                insert = "INSERT INTO app_secrets (name, value) VALUES ('w', 'w')"
                await session.exec(sa.text(insert))
            assert released

        async with anyio.create_task_group() as tg:
            tg.start_soon(write)
            await anyio.wait_all_tasks_blocked()
            released = True
            other.execute("COMMIT")
        async with db.read() as session:
            names = (await session.exec(sa.text("SELECT name FROM app_secrets"))).scalars().all()
        assert "w" in names
    finally:
        other.close()


async def test_commits_leave_checkpoints_to_a_thread(db, sqlite_url):
    """Connections never checkpoint in their COMMIT (that would be disk I/O on the loop); the
    database's own checkpointer copies the WAL into the file after a write."""
    path = sa.make_url(sqlite_url).database
    db._checkpoints.EVERY_S = 0.0
    async with db.write() as session:
        connection = await session.connection()
        autocheckpoint = await connection.exec_driver_sql("PRAGMA wal_autocheckpoint")
        assert autocheckpoint.scalar() == 0
        size_before = _file_size(path)
        insert = sa.text("INSERT INTO app_secrets (name, value) VALUES ('big', :value)")
        await session.exec(insert, params={"value": "x" * len(BIG)})
    await db._checkpoints.wait()
    assert _file_size(path) > size_before + len(BIG) // 2  # its pages reached the file


def _file_size(path: str) -> int:
    return os.stat(path).st_size


INSERT_SECRET = sa.text("INSERT INTO app_secrets (name, value) VALUES (:name, 'v')")


async def test_the_write_that_starts_the_wal_over_commits_in_the_thread(db):
    """The first write after a checkpoint copied the whole WAL back starts the WAL over, and
    SQLite syncs the new WAL header in that COMMIT (an fsync, even with synchronous=NORMAL):
    that commit runs in the thread; the next one is back on the loop."""
    db._checkpoints.EVERY_S = 0.0
    async with db.write() as session:
        await session.exec(INSERT_SECRET, params={"name": "before"})
    await db._checkpoints.wait()  # it copied the whole WAL back: nothing else is reading
    db._checkpoints.EVERY_S = 3600.0  # no other checkpoint in this test
    commits: list[int] = []

    def traced(sql: str) -> None:
        if sql.startswith("COMMIT"):
            commits.append(threading.get_ident())

    for name in ("first", "second"):
        async with db.write() as session:
            connection = await (await session.connection()).get_raw_connection()
            raw = connection.driver_connection._connection
            raw.set_trace_callback(traced)
            await session.exec(INSERT_SECRET, params={"name": name})
        raw.set_trace_callback(None)
    assert len(commits) == 2
    assert commits[0] != threading.get_ident()
    assert commits[1] == threading.get_ident()


async def test_a_checkpoint_never_creates_a_removed_database(db, sqlite_url, caplog):
    """The database file removed: the checkpoint fails (and says so) rather than create an
    empty database in its place (which would also delete the WAL beside it)."""
    path = sa.make_url(sqlite_url).database
    async with db.write() as session:
        await session.exec(INSERT_SECRET, params={"name": "w"})
    await db._checkpoints.wait()
    os.remove(path)
    db._checkpoints.EVERY_S = 0.0
    db._checkpoints.after_write()
    await db._checkpoints.wait()
    assert not _exists(path)
    assert _exists(path + "-wal")
    assert "SQLite WAL checkpoint failed" in caplog.text


def _exists(path: str) -> bool:
    return os.path.exists(path)


@pytest.mark.parametrize("close_queued_first", [True, False])
async def test_a_close_and_a_forced_stop_both_end(tmp_path, close_queued_first):
    """SQLAlchemy's terminate, cancelled mid-close, force-stops the connection and lets the
    graceful close finish on its own: that close ends instead of waiting for a gone thread."""
    connection = await sqlite_inline.connect(tmp_path / "closing.db")
    gate = threading.Event()  # holds the connection's thread until both calls are queued
    held = asyncio.ensure_future(connection._execute(gate.wait)) if close_queued_first else None
    graceful = asyncio.ensure_future(connection.close())

    async def close_queued() -> bool:
        return connection._in_thread == 2  # the held call, then the close's

    if close_queued_first:
        await wait_for(close_queued)
    connection.stop()  # the force close
    gate.set()
    with anyio.fail_after(10):
        await graceful
        if held is not None:
            await held

    async def thread_ended() -> bool:
        return not connection._thread.is_alive()

    await wait_for(thread_ended)
