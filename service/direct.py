"""The hottest statements, compiled by SQLAlchemy once and run on the driver directly.

A statement through the ORM session or Core costs 100–200 µs of CPU in SQLAlchemy's
machinery (session, execution context, result objects), several times what SQLite or asyncpg
spend on it, and a job crosses a couple of dozen. The statements here stay SQLAlchemy Core
objects, built from the ORM models' tables, and SQLAlchemy compiles each once per engine: so
the SQL, the parameter formats (UUIDs, UTC timestamps, JSON) and the result types are exactly
what the ORM writes and reads. Only the execution skips the layers between:

- parameters go through the compiled statement's own bind processors, in its positional order;
- rows come back as plain dicts (column key → value) through its result processors;
- on SQLite the driver is `sqlite_inline.InlineConnection` (its rules decide what runs on the
  event loop); on PostgreSQL, psycopg's async connection, whose transaction the session's
  is, through libpq directly (`service.libpq`: the transaction opens at the first
  statement; each statement is prepared once per connection). The statements are compiled
  with PostgreSQL's own `$1` placeholders and sent as they are, also through psycopg's raw
  cursor for a connection `libpq` does not take (with `%(name)s` placeholders psycopg parsed
  each query in Python: bench/README.md, "fifteenth pass").

A statement here has no expanding (`IN`) parameter: the callers build one per list length.
Pending ORM changes in the session are flushed first, as the session's own autoflush would.
Driver errors come back as SQLAlchemy's `DBAPIError` subclasses, as from `session.exec`.

The statements run in a session's transaction, or in a `Transaction` on the driver itself
(`Database.write_direct`), for the group commits whose every statement is here: opening and
committing a session's transaction costs several times its statements.
"""

import copy
import functools
import sqlite3
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlmodel.ext.asyncio.session import AsyncSession

DRIVER = "fluxhook.driver_connection"
# PostgreSQL: a transaction-scoped advisory lock (held until commit or rollback).
TAKE_LOCK = sa.select(sa.func.pg_advisory_xact_lock(sa.bindparam("key", type_=sa.BigInteger)))


class Compiled:
    """One statement compiled for one dialect, with its processors in positional order."""

    def __init__(self, statement: sa.Executable, dialect) -> None:
        if dialect.name == "postgresql":
            dialect = _numbered(dialect)
        compiled = statement.compile(dialect=dialect)
        self.sql = compiled.string
        self.sql_bytes = self.sql.encode()
        self.dialect = dialect
        # A tuple in `positiontup`'s order: SQLite's `?`s, or PostgreSQL's `$1`… (where a
        # parameter used twice keeps its one number).
        names = compiled.positiontup
        processors = compiled._bind_processors
        defaults = {name: bind.effective_value for name, bind in compiled.binds.items()}
        self.binds = [(name, processors.get(name), defaults.get(name)) for name in names]
        self.keys = [column[0] for column in compiled._result_columns]
        self.types = [column[3] for column in compiled._result_columns]
        self.returns_rows = bool(self.keys)
        # SQLite's result processors need no type code from the driver: known now.
        self.readers = self.readers_for(None) if dialect.name == "sqlite" else None

    def parameters(self, params: dict) -> tuple:
        """A parameter used twice takes two positions with `?` (one number with `$n`)."""
        values = []
        for name, process, default in self.binds:
            value = params.get(name, default)
            values.append(value if process is None else process(value))
        return tuple(values)

    def readers_for(self, type_codes: Sequence | None) -> list:
        """The result processors, given the driver's type code of each column (if needed)."""
        codes = type_codes or [None] * len(self.types)
        return [
            type_._cached_result_processor(self.dialect, code)
            for type_, code in zip(self.types, codes, strict=True)
        ]

    def rows(self, raw_rows) -> list[dict]:
        keys, readers = self.keys, self.readers
        return [
            {
                key: (read(value) if read else value)
                for key, read, value in zip(keys, readers, row, strict=True)
            }
            for row in raw_rows
        ]


@functools.cache
def _numbered(dialect):
    """The engine's PostgreSQL dialect, compiling `$1` placeholders (its own settings, read
    from the server at connect, kept): for psycopg's raw cursor."""
    twin = copy.copy(dialect)
    twin.__dict__.pop("_type_memos", None)  # processors memoised per dialect: its own
    twin.paramstyle, twin.positional = "numeric_dollar", True
    twin.identifier_preparer = twin.preparer(twin)
    return twin


@functools.cache
def raw_cursor():
    """psycopg's `AsyncRawCursor` (psycopg is imported only where PostgreSQL is used)."""
    from psycopg import AsyncRawCursor

    return AsyncRawCursor


@functools.cache
def _libpq():
    from service import libpq

    return libpq


def insert_of(table: sa.Table) -> sa.Insert:
    """An INSERT of one row of `table`, every column a parameter named by its key."""
    return sa.insert(table).values({c.key: sa.bindparam(c.key, type_=c.type) for c in table.c})


def row_of(model, table: sa.Table) -> dict:
    """`insert_of(table)`'s parameters for an instance of the table's model."""
    return {c.key: getattr(model, c.key) for c in table.c}


class Transaction:
    """A write transaction on the driver connection, without a session: `info` carries the
    commit hooks (`db.before_commit`, `db.on_commit`) as a session's does."""

    def __init__(self, driver, dialect) -> None:
        self.driver = driver
        self.dialect = dialect
        self.info: dict = {}


# Where the statements here run: a session's transaction, or one on the driver.
InTransaction = AsyncSession | Transaction


def dialect_of(transaction: InTransaction):
    if isinstance(transaction, Transaction):
        return transaction.dialect
    return transaction.bind.dialect


async def flush(transaction: InTransaction) -> None:
    """A session's pending ORM changes, written now (a driver transaction has none)."""
    if not isinstance(transaction, Transaction):
        await transaction.flush()


_compiled: dict[tuple[sa.Executable, str], Compiled] = {}
MAX_COMPILED = 2048  # statements come from bounded caches; this only guards against a leak


def compiled(statement: sa.Executable, dialect) -> Compiled:
    key = (statement, dialect.name)
    found = _compiled.get(key)
    if found is None:
        if len(_compiled) >= MAX_COMPILED:
            _compiled.clear()
        found = _compiled[key] = Compiled(statement, dialect)
    return found


async def fetch(session: InTransaction, statement: sa.Executable, params: dict) -> list[dict]:
    """The rows of a statement that returns some (SELECT, or … RETURNING)."""
    driver, plan = await _prepare(session, statement)
    return await _run(driver, plan, plan.parameters(params), many=False)


async def execute(session: InTransaction, statement: sa.Executable, params: dict) -> None:
    driver, plan = await _prepare(session, statement)
    await _run(driver, plan, plan.parameters(params), many=False)


async def pg_xact_lock(session: InTransaction, key: int) -> None:
    """PostgreSQL's `pg_advisory_xact_lock(key)`, on the driver."""
    await execute(session, TAKE_LOCK, {"key": key})


async def execute_later(
    session: InTransaction, statement: sa.Executable, rows: Sequence[dict]
) -> None:
    """`execute_many`, for a statement whose outcome nothing reads before the transaction's
    next statement (an UPDATE, a lock, a NOTIFY): on a PostgreSQL transaction on the driver
    (`Database.write_direct`) it goes with that statement, in its round trip, or with the
    COMMIT. The server runs it first, so what follows sees it; its error fails the statement
    it went with (or the COMMIT), and so the transaction, as it would have (the error's
    message names that statement's SQL). Elsewhere (SQLite, a session's transaction,
    psycopg's cursor) it runs now."""
    defers = (
        isinstance(session, Transaction)
        and session.dialect.name == "postgresql"
        and _libpq().plain(session.driver)
    )
    if not defers:
        await execute_many(session, statement, rows)
        return
    plan = compiled(statement, session.dialect)
    for row in rows:
        _libpq().defer(session.driver, plan.sql_bytes, plan.parameters(row))


async def execute_many(
    session: InTransaction, statement: sa.Executable, rows: Sequence[dict]
) -> None:
    """The statement once per parameter row (no result rows)."""
    if not rows:
        return
    driver, plan = await _prepare(session, statement)
    await _run(driver, plan, [plan.parameters(row) for row in rows], many=True)


async def _prepare(session: InTransaction, statement: sa.Executable):
    if isinstance(session, Transaction):
        return session.driver, compiled(statement, session.dialect)
    if session.new or session.dirty or session.deleted:
        await session.flush()
    # The driver connection of the session's current transaction (after a commit, the next
    # transaction may run on another connection of the pool).
    transaction = session.sync_session.get_transaction()
    known = session.info.get(DRIVER)
    if transaction is None or known is None or known[0] is not transaction:
        connection = await session.connection()  # begins the session's transaction
        pooled = await connection.get_raw_connection()
        known = (session.sync_session.get_transaction(), pooled.driver_connection)
        session.info[DRIVER] = known  # the driver: SQLite's InlineConnection, or psycopg's
    return known[1], compiled(statement, session.bind.dialect)


async def _run(driver, plan: Compiled, parameters, *, many: bool) -> list[dict] | None:
    try:
        if plan.dialect.name == "sqlite":
            raw_rows = await _run_sqlite(driver, plan, parameters, many)
        else:
            raw_rows = await _run_psycopg(driver, plan, parameters, many)
    except Exception as exc:
        if (error := _as_dbapi_error(exc, plan.dialect, plan.sql, parameters)) is None:
            raise
        raise error from None
    return plan.rows(raw_rows) if raw_rows is not None else None


async def commit(transaction: Transaction) -> None:
    """COMMIT a driver transaction; a driver error comes back as SQLAlchemy's, as above."""
    driver = transaction.driver
    try:
        if transaction.dialect.name == "postgresql" and _libpq().plain(driver):
            await _libpq().commit(driver)
        else:
            await driver.commit()
    except Exception as exc:
        if (error := _as_dbapi_error(exc, transaction.dialect, "COMMIT", None)) is None:
            raise
        raise error from None


def _as_dbapi_error(exc: Exception, dialect, sql: str, parameters) -> DBAPIError | None:
    """The driver's error as SQLAlchemy's `DBAPIError` subclass (None: not the driver's)."""
    dbapi_error = sqlite3.Error if dialect.name == "sqlite" else dialect.loaded_dbapi.Error
    if not isinstance(exc, dbapi_error):
        return None
    return DBAPIError.instance(sql, parameters, exc, dbapi_error)


async def _run_sqlite(driver, plan: Compiled, parameters, many: bool):
    """Through `InlineConnection._execute`: on the loop where it cannot wait, else its thread."""
    cursor = await driver._execute(driver._connection.cursor)
    try:
        if many:
            await driver._execute(cursor.executemany, plan.sql, parameters)
            return None
        await driver._execute(cursor.execute, plan.sql, parameters)
        return await driver._execute(cursor.fetchall) if plan.returns_rows else None
    finally:
        await driver._execute(cursor.close)


async def _run_psycopg(connection, plan: Compiled, parameters, many: bool):
    """On psycopg's own connection, as SQLAlchemy's adapter does, through libpq directly
    (`libpq`: the transaction opens at the first statement, as psycopg opens a session's;
    the rows of an executemany go in one round trip). A connection `libpq` does not take
    goes through psycopg's raw cursor."""
    pq = _libpq()
    if not pq.plain(connection):
        return await _run_on_cursor(connection, plan, parameters, many)
    if many and len(parameters) > 1:
        await pq.run_many(connection, plan.sql_bytes, parameters)
        return None
    found = await pq.run(connection, plan.sql_bytes, parameters[0] if many else parameters)
    if found is None or not plan.returns_rows:
        return None
    rows, type_codes = found
    if plan.readers is None:
        plan.readers = plan.readers_for(type_codes)
    return rows


async def _run_on_cursor(connection, plan: Compiled, parameters, many: bool):
    """Through psycopg's raw cursor (`$1` placeholders, parameters in order)."""
    async with raw_cursor()(connection) as cursor:
        if many:
            await cursor.executemany(plan.sql, parameters)
            return None
        await cursor.execute(plan.sql, parameters)
        if not plan.returns_rows:
            return None
        if plan.readers is None:
            plan.readers = plan.readers_for([column.type_code for column in cursor.description])
        return await cursor.fetchall()
