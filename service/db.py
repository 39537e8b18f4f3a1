"""The engine, transactions, SQLite pragmas and the after-commit hook.

Writers use `Database.write()`: on SQLite it starts with BEGIN IMMEDIATE (a read-then-write
transaction that starts deferred fails with "database is locked" whatever the busy timeout);
readers use `Database.read()`. The caller owns the transaction: persistence functions take a
session and never commit.
"""

import asyncio
import contextlib
import functools
import logging
import pathlib
import sqlite3
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlalchemy.util import await_, greenlet_spawn
from sqlmodel.ext.asyncio.session import AsyncSession

from service import direct, pgpool, sqlite_inline
from service.settings import Settings

log = logging.getLogger(__name__)
# 30 s: how long a SQLite writer waits for the lock before "database is locked".
SQLITE_BUSY_TIMEOUT_S = 30
AFTER_COMMIT = "fluxhook.after_commit"
BEFORE_COMMIT = "fluxhook.before_commit"
# The before-commit hooks (`before_commit`), in the order they run, whatever order a
# transaction staged them in. The first two take locks they hold to the commit: the usage rows
# the transaction adds to, then its tenants' event locks. Run in the order staged, a group commit
# that recorded a job's progress before another job's finish took them the other way round
# from one that recorded a finish first, and two processes' group commits deadlocked on
# PostgreSQL (one aborted after `deadlock_timeout`: a webhook answered 500, BFL retried).
STAGED_USAGE = "fluxhook.staged_usage"
STAGED_EVENTS = "fluxhook.staged_events"
ADMISSION_WAKE = "fluxhook.wake_admission_if_jobs_wait"
BEFORE_COMMIT_ORDER = (STAGED_USAGE, STAGED_EVENTS, ADMISSION_WAKE)


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.is_postgres:
        from service import libpq  # psycopg: imported only where PostgreSQL is used

        engine = create_async_engine(
            settings.database_url,
            # The hot statements are prepared by `libpq`, once per connection; psycopg's own
            # preparation would clear every prepared statement of the connection at a
            # ROLLBACK (a savepoint's included) with its DEALLOCATE ALL. Its connections are
            # `libpq`'s, which keep what `libpq` needs between statements.
            connect_args={"prepare_threshold": None, "async_creator_fn": libpq.Connection.connect},
            pool_size=settings.db_pool_size,
            max_overflow=0,
            pool_timeout=30,
        )
        pgpool.check_connections_at_checkout(engine)  # in place of pool_pre_ping
        return engine
    engine = create_async_engine(
        settings.database_url,
        connect_args={
            "timeout": SQLITE_BUSY_TIMEOUT_S,
            "async_creator_fn": sqlite_inline.connect,
        },
        pool_size=settings.db_pool_size,
        max_overflow=10,
    )
    _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection, _record) -> None:
        _configure_connection(dbapi_connection)

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(connection) -> None:
        writes = connection.get_execution_options().get("fluxhook_write", False)
        await_(connection.connection.driver_connection.begin(writes=writes))


async def _before_commit(transaction) -> None:
    """A session's pending ORM rows are written first (events point at them, and their row
    locks come before the hooks' locks), then the hooks, in `BEFORE_COMMIT_ORDER`."""
    hooks = transaction.info.pop(BEFORE_COMMIT, {})
    if not hooks:
        return
    await direct.flush(transaction)
    for name in BEFORE_COMMIT_ORDER:
        if (hook := hooks.get(name)) is not None:
            await hook()


def _after_commit(transaction) -> list:
    """Runs the after-commit callbacks; returns them (some work was handed on, if any). One
    that raises is logged and the others run: the transaction has committed, and its
    caller must not take it for failed (a group commit would make its changes again)."""
    handed_on = transaction.info.pop(AFTER_COMMIT, [])
    for callback in handed_on:
        try:
            callback()
        except Exception:
            log.exception("an after-commit callback failed (the transaction had committed)")
    return handed_on


def _configure_connection(dbapi_connection) -> None:
    # Take BEGIN away from the driver so that we can say IMMEDIATE ourselves.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def before_commit(session: AsyncSession, name: str, hook: Callable[[], Awaitable[None]]) -> None:
    """Run `await hook()` once, last thing inside the transaction (a second `name` is ignored);
    `name` is one of `BEFORE_COMMIT_ORDER`, which says when it runs."""
    assert name in BEFORE_COMMIT_ORDER, name
    session.info.setdefault(BEFORE_COMMIT, {}).setdefault(name, hook)


def on_commit(session: AsyncSession, callback: Callable[[], None]) -> None:
    """Run `callback` once the session's transaction has committed (never on rollback)."""
    session.info.setdefault(AFTER_COMMIT, []).append(callback)


class WriterTurns:
    """SQLite's single writer, taken in turn by this process's writers, FIFO, except that an
    urgent writer (a BFL webhook's transaction: someone is waiting for its event) goes before
    every ordinary one still waiting (admission, image stores, delivery outcomes…)."""

    def __init__(self) -> None:
        self._busy = False
        self._waiting: dict[bool, deque[asyncio.Future]] = {True: deque(), False: deque()}

    @contextlib.asynccontextmanager
    async def turn(self, urgent: bool = False) -> AsyncIterator[None]:
        if self._busy:
            await self._wait(urgent)
        self._busy = True
        try:
            yield
        finally:
            self._pass_on()

    async def _wait(self, urgent: bool) -> None:
        turn = asyncio.get_running_loop().create_future()
        self._waiting[urgent].append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._pass_on()  # handed the turn as it was cancelled: hand it on
            else:
                self._waiting[urgent].remove(turn)
            raise

    def _pass_on(self) -> None:
        """The writer is done: the next waiter (urgent ones first) gets the turn."""
        for queue in (self._waiting[True], self._waiting[False]):
            while queue:
                turn = queue.popleft()
                if not turn.done():
                    turn.set_result(None)  # `_busy` stays set: the turn passes directly
                    return
        self._busy = False


class Checkpoints:
    """SQLite: the WAL's pages copied back into the database file, in a thread.

    A connection that commits past 1000 WAL pages would checkpoint inside its COMMIT (disk
    I/O with an fsync), so connections are opened with `wal_autocheckpoint=0` and commit on the
    event loop (`sqlite_inline`). This takes the checkpoints over: after a write, at most once
    a second, a PASSIVE checkpoint (it waits for no reader or writer) on a connection of its
    own in a worker thread. The last connection to close checkpoints whatever is left.

    It opens the file read-write without creating it: were the file removed, SQLite would
    otherwise create an empty database in its place (and delete the WAL next to it)."""

    EVERY_S = 1.0

    def __init__(self, path: str) -> None:
        self._uri = pathlib.Path(path).absolute().as_uri() + "?mode=rw"
        self._wal = sqlite_inline.wal_state(path)
        self._last = time.monotonic()
        self._running: asyncio.Future | None = None

    def after_write(self) -> None:
        if self._running is not None or time.monotonic() - self._last < self.EVERY_S:
            return
        self._last = time.monotonic()
        self._running = asyncio.ensure_future(asyncio.to_thread(self._checkpoint))
        self._running.add_done_callback(self._done)

    def _checkpoint(self) -> None:
        connect = sqlite3.connect(self._uri, timeout=SQLITE_BUSY_TIMEOUT_S, uri=True)
        with contextlib.closing(connect) as conn:
            self._wal.checkpoint_begins()  # the next write may start the WAL over: see WalState
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _done(self, done: asyncio.Future) -> None:
        self._running = None
        if not done.cancelled() and done.exception() is not None:
            log.warning("SQLite WAL checkpoint failed: %s", done.exception())

    async def wait(self) -> None:
        """Until the checkpoint in progress, if any, has ended."""
        if self._running is not None:
            await asyncio.wait([self._running])


@contextlib.asynccontextmanager
async def _committed(
    driver, dialect, roll_back: Callable[[], Awaitable[None]]
) -> AsyncIterator[direct.Transaction]:
    """A transaction on `driver`: committed when the block ends, else `roll_back()`, shielded
    from cancellation (whatever ended the block, BEGIN's failure included)."""
    transaction = direct.Transaction(driver, dialect)
    try:
        yield transaction
        await direct.commit(transaction)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await roll_back()
        raise


class SqliteWriter:
    """SQLite: this process's connection for `Database.write_direct`'s transactions, opened
    at the first and configured as the engine's connections are. Writers take turns
    (`WriterTurns`), so one connection serves them all; one that failed is opened anew."""

    def __init__(self, path: str, dialect) -> None:
        self._path = path
        self._dialect = dialect
        self._connection: sqlite_inline.InlineConnection | None = None

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[direct.Transaction]:
        connection = self._connection
        if connection is None or not connection.is_open:
            connection = await self._open()
        roll_back = functools.partial(self._roll_back, connection)
        async with _committed(connection, self._dialect, roll_back) as transaction:
            await connection.begin(writes=True)
            yield transaction

    async def _open(self) -> sqlite_inline.InlineConnection:
        connection = await sqlite_inline.connect(self._path, timeout=SQLITE_BUSY_TIMEOUT_S)
        try:
            await connection._execute(_configure_connection, connection._connection)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._close(connection)
            raise
        self._connection = connection
        return connection

    async def _roll_back(self, connection: sqlite_inline.InlineConnection) -> None:
        try:
            await connection.rollback()
        except Exception:
            log.warning("SQLite writer connection failed; it will be opened again", exc_info=True)
            self._connection = None
            await self._close(connection)

    async def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            await self._close(connection)

    @staticmethod
    async def _close(connection: sqlite_inline.InlineConnection) -> None:
        with contextlib.suppress(Exception):
            await connection.close()


class PostgresWriter:
    """PostgreSQL: `Database.write_direct`'s transactions on a connection of the engine's pool
    (checked out, checked and returned as a session's is), through psycopg directly: psycopg
    opens the transaction at the first statement; COMMIT or ROLLBACK end it."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[direct.Transaction]:
        pooled = await self._engine.raw_connection()
        driver, roll_back = pooled.driver_connection, functools.partial(self._roll_back, pooled)
        try:
            async with _committed(driver, self._engine.dialect, roll_back) as transaction:
                yield transaction
        finally:
            with anyio.CancelScope(shield=True):
                await greenlet_spawn(pooled.close)  # back to the pool

    async def close(self) -> None:
        """Nothing of its own: its connections are the pool's, disposed with the engine."""

    @staticmethod
    async def _roll_back(pooled) -> None:
        try:
            await pooled.driver_connection.rollback()
        except Exception as exc:
            log.warning("PostgreSQL connection failed; it leaves the pool", exc_info=True)
            await greenlet_spawn(pooled.invalidate, exc)


def _direct_writer(engine: AsyncEngine, in_memory: bool):
    if engine.dialect.name == "postgresql":
        return PostgresWriter(engine)
    if in_memory or engine.url.query:
        return None  # a session's transactions (`write_direct` falls back to `write`)
    return SqliteWriter(engine.url.database, engine.dialect)


class Database:
    """The one shared state: sessions for reading and for writing."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.is_postgres = engine.dialect.name == "postgresql"
        writer = engine.execution_options(fluxhook_write=True)
        self._read = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
        self._write = async_sessionmaker(writer, class_=AsyncSession, expire_on_commit=False)
        # SQLite has one writer at a time. Queueing this process's writers here, instead of
        # letting them contend for the file lock, avoids sqlite3's busy handler, which waits
        # in sleeps of up to 100 ms: throughput collapses under contention without this.
        self._writers = None if self.is_postgres else WriterTurns()
        path = engine.url.database
        in_memory = not path or path == ":memory:"
        self._checkpoints = None if self.is_postgres or in_memory else Checkpoints(path)
        self._writer = _direct_writer(engine, in_memory)

    @contextlib.asynccontextmanager
    async def write(self, urgent: bool = False) -> AsyncIterator[AsyncSession]:
        """A write transaction: committed on exit, rolled back on error, then after-commit hooks.
        `urgent`: on SQLite, ahead of this process's other waiting writers (see WriterTurns).

        When after-commit hooks handed work on (an event to the streams, a callback to the
        dispatcher), the writer then gives the event loop one turn before its caller goes on:
        the tasks they woke (writing the SSE chunk, sending the POST) run first, instead of
        after the caller's own follow-up (answering the requests of a group commit)."""
        async with self._turn(urgent), self._write() as session:
            async with session.begin():
                yield session
                await _before_commit(session)
            handed_on = _after_commit(session)
        await self._after_write(handed_on)

    @contextlib.asynccontextmanager
    async def write_direct(self, urgent: bool = False) -> AsyncIterator[direct.InTransaction]:
        """`write()` for work whose every statement runs through `direct`: a transaction on
        the driver, without a session (its BEGIN and COMMIT cost a tenth of a session's): on
        SQLite on this process's writer connection, on PostgreSQL on one of the pool's. (An
        in-memory SQLite database, or a URL with options, gets a session's, as `write()`.)"""
        if self._writer is None:
            async with self.write(urgent) as session:
                yield session
            return
        async with self._turn(urgent):  # commits publish in commit order: hooks run first
            async with self._writer.transaction() as transaction:
                yield transaction
                await _before_commit(transaction)
            handed_on = _after_commit(transaction)
        await self._after_write(handed_on)

    async def finds_any(self, statement, params: dict) -> bool:
        """Whether `statement`, a SELECT on `direct`'s terms, finds a row: one statement on
        the driver (a loop's cheap look before a claim that costs more)."""
        async with self.write_direct() as transaction:
            return bool(await direct.fetch(transaction, statement, params))

    def _turn(self, urgent: bool):
        """SQLite: this writer's turn (`WriterTurns`); PostgreSQL writers need none."""
        return self._writers.turn(urgent) if self._writers else contextlib.nullcontext()

    async def _after_write(self, handed_on: list) -> None:
        if self._checkpoints is not None:
            self._checkpoints.after_write()
        if handed_on:
            await asyncio.sleep(0)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._read() as session, session.begin():
            yield session

    async def dispose(self) -> None:
        if self._writer is not None:
            await self._writer.close()
        if self._checkpoints is not None:
            await self._checkpoints.wait()
        await self.engine.dispose()


async def give_space_back(db: "Database") -> None:
    """SQLite (auto_vacuum=INCREMENTAL): return free pages to the file system after a bulk
    delete. Each step of the pragma frees one page and Python's `execute` takes one step, so
    it goes through `executescript` (sqlite3_exec), which runs it to the end."""
    if db.is_postgres:
        return  # PostgreSQL's autovacuum makes freed space reusable on its own
    async with db.engine.connect() as conn:
        raw = await conn.get_raw_connection()
        await raw.driver_connection.executescript("PRAGMA incremental_vacuum")
