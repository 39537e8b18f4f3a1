"""PostgreSQL: `direct`'s statements on libpq directly (psycopg's `pgconn`).

psycopg's cursor spends ≈ 70 µs of CPU a statement above the libpq calls it makes (cursor
and adapter objects, prepared-statement bookkeeping, its wait generators and timer), and a
job crosses about fifteen statements on PostgreSQL (bench/README.md, "fifteenth pass"). Here
a statement is those libpq calls alone, with psycopg's own adapters (`Transformer`) for the
parameters and the rows, and psycopg's own errors. What psycopg does around a statement is
kept: its connection lock; the transaction opens at the first statement (BEGIN), and COMMIT
ends it.

Each statement is prepared on its connection at its first use, under a name of its own
(`_fh_<n>`, per SQL and parameter types, at most `MAX_PREPARED` a connection), so the server
parses and plans it once. psycopg's own preparation is off on fluxhook's engine: at a
ROLLBACK it deallocates every statement of the connection, these too. Statements sent
together (the rows of an executemany; a transaction's BEGIN and its first statement; a
statement's preparation and its first run; what was deferred, with the next statement or
the COMMIT) go in libpq's pipeline mode: one round trip.

A connection keeps one psycopg `Transformer` for all its statements, with the dumpers and
loaders it has looked up: a new one for each statement, as psycopg's cursor makes for each new
query, costs ≈ 7 µs of CPU before its parameters and ≈ 10 µs before its rows. What a Transformer
takes from its connection once (the client encoding, the time zone and DateStyle its loaders
read) fluxhook never changes on a pooled connection.

A connection that is not `Connection` (the engine's, `db.create_engine`), or is in another
state than the plain one `direct` uses (autocommit, a pipeline of psycopg's, a BEGIN with
options), is refused (`plain`): the caller uses psycopg's cursor. A
wait interrupted (a cancellation) leaves the statements' outcome unknown: the connection is
closed, and whoever returns it to the pool finds it closed and discards it.
"""

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field

from psycopg import AsyncConnection, OperationalError, errors, pq
from psycopg.adapt import PyFormat, Transformer

IDLE = pq.TransactionStatus.IDLE
FAILED = pq.ExecStatus.FATAL_ERROR
ROWS = pq.ExecStatus.TUPLES_OK
SYNC = pq.ExecStatus.PIPELINE_SYNC
PREPARED = pq.ExecStatus.COMMAND_OK
MAX_PREPARED = 256  # statements prepared on one connection; more run unprepared


@dataclass
class Prepared:
    """The statements prepared on one connection: (SQL, parameter types) → name."""

    names: dict[tuple, bytes] = field(default_factory=dict)
    made: int = 0  # names handed out (a preparation that failed keeps its number)

    def new_name(self) -> bytes | None:
        if len(self.names) >= MAX_PREPARED:
            return None
        self.made += 1
        return b"_fh_%d" % self.made


class Connection(AsyncConnection):
    """psycopg's connection, with what `libpq` keeps for it: the statements prepared on it,
    and the Transformer its statements are adapted with."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.prepared = Prepared()
        self._adapting: Transformer | None = None
        self.deferred: list[tuple[bytes, tuple]] = []  # `defer`'s, not sent yet

    async def rollback(self) -> None:
        """psycopg's ROLLBACK; what was deferred goes with the transaction (whoever rolls
        back: a failed `write_direct`, or the pool's reset at check-in)."""
        self.deferred.clear()
        await super().rollback()

    @property
    def adapting(self) -> Transformer:
        if self._adapting is None:  # at first use: after the adapters set up at connect
            self._adapting = Transformer(self)
        return self._adapting


@dataclass
class Statement:
    """A statement ready to send: its SQL, parameters dumped by psycopg's adapters, and
    the name it is prepared under (None: not yet; `prepare` is then the name to give it)."""

    sql: bytes
    values: list | None
    types: tuple | None
    formats: list | None
    name: bytes | None = None
    prepare: bytes | None = None

    @property
    def key(self) -> tuple:
        return self.sql, self.types


def plain(connection: AsyncConnection) -> bool:
    """One of ours whose transactions psycopg opens with a bare BEGIN, outside a pipeline."""
    return (
        isinstance(connection, Connection)
        and not connection.autocommit
        and connection.isolation_level is None
        and connection.read_only is None
        and connection.deferrable is None
        and connection.pgconn.pipeline_status == pq.PipelineStatus.OFF
    )


def defer(connection: Connection, sql: bytes, params: tuple) -> None:
    """`sql` with `params`, sent ahead of the transaction's next statement, in its round trip,
    or with its COMMIT; the server runs it in that order. Its error fails the statement it
    went with (or the COMMIT), and so the transaction; a rollback forgets it."""
    connection.deferred.append((sql, params))


async def run(connection: Connection, sql: bytes, params: tuple) -> tuple[list, list] | None:
    """Run `sql` (`$1`… placeholders) with `params`: its rows (tuples) and their columns' type
    oids if it returns rows, else None. Opens the transaction first if none is open."""
    async with connection.lock:
        transformer = connection.adapting
        statements = _to_send(connection, transformer, [(sql, params)])
        if len(statements) > 1 or statements[-1].prepare:
            result = (await _pipelined(connection, statements))[-1]
        else:
            result = await _round_trip(connection, statements[-1])
    if result.status != ROWS:
        return None
    transformer.set_pgresult(result)
    rows = transformer.load_rows(0, result.ntuples, tuple)
    return rows, [result.ftype(column) for column in range(result.nfields)]


async def run_many(connection: Connection, sql: bytes, rows: Sequence[tuple]) -> None:
    """`sql` once per parameter row, in one round trip (after BEGIN, if none is open)."""
    async with connection.lock:
        pending = [(sql, params) for params in rows]
        await _pipelined(connection, _to_send(connection, connection.adapting, pending))


async def commit(connection: Connection) -> None:
    """COMMIT the open transaction, with what was deferred (none open and nothing deferred:
    nothing to do, as psycopg's `commit`)."""
    async with connection.lock:
        if connection.deferred:
            statements = _to_send(connection, connection.adapting, [])
            await _pipelined(connection, [*statements, _command(b"COMMIT")])
        elif connection.pgconn.transaction_status != IDLE:
            await _round_trip(connection, _command(b"COMMIT"))


def _to_send(connection: Connection, transformer, pending: list[tuple]) -> list[Statement]:
    """BEGIN if no transaction is open, what was deferred, then `pending`, built in the order
    they go (a statement's first use prepares it). What was deferred is taken only once every
    statement is built: one whose parameters cannot be dumped raises here, and leaves the
    transaction as it was (a caller that goes on meets the same error at its COMMIT)."""
    statements = [_command(b"BEGIN")] if _opening(connection) else []
    try:
        for sql, params in [*connection.deferred, *pending]:
            statements.append(_statement(connection, transformer, sql, params))
    except BaseException:
        for statement in statements:  # named, never sent
            if statement.prepare is not None:
                connection.prepared.names.pop(statement.key, None)
        raise
    connection.deferred.clear()
    return statements


async def command(connection: AsyncConnection, sql: bytes) -> None:
    """A command on an autocommit connection (LISTEN, UNLISTEN): no transaction around it.
    Notifications that arrive meanwhile stay in libpq's queue (`pgconn.notifies()`)."""
    async with connection.lock:
        await _round_trip(connection, _command(sql))


async def notifications(connection: AsyncConnection, woken: asyncio.Future) -> list:
    """The notifications received on a LISTENing connection (psycopg's `PGnotify`), after
    waiting for the socket if none has come yet; none if `woken` is settled first (how the
    caller stops the wait). Only the wait is interrupted or cancelled: nothing libpq has read
    is dropped, and what comes meanwhile is in the next call's."""
    async with connection.lock:
        pgconn = connection.pgconn
        received = _notifications_read(pgconn)
        if not received:
            await _ready(pgconn.socket, ready=woken)
            received = _notifications_read(pgconn)
        return received


def _notifications_read(pgconn) -> list:
    pgconn.consume_input()
    received = []
    while (notification := pgconn.notifies()) is not None:
        received.append(notification)
    return received


def _opening(connection: AsyncConnection) -> bool:
    """No transaction open yet (the connection must be usable, as psycopg checks)."""
    pgconn = connection.pgconn
    if pgconn.status != pq.ConnStatus.OK:
        raise OperationalError("the connection is closed")
    return pgconn.transaction_status == IDLE


def _command(sql: bytes) -> Statement:
    """BEGIN, COMMIT, LISTEN…: no parameters, never prepared."""
    return Statement(sql, None, None, None)


def _statement(connection, transformer, sql: bytes, params: tuple) -> Statement:
    """`sql` with its parameters dumped, and its prepared name (or the one to give it: a
    statement of several rows prepares once, the first time)."""
    if params:
        values = transformer.dump_sequence(params, [PyFormat.AUTO] * len(params))
        types, formats = tuple(transformer.types), list(transformer.formats)
    else:
        values = types = formats = None
    statement = Statement(sql, values, types, formats)
    prepared = connection.prepared
    statement.name = prepared.names.get(statement.key)
    if statement.name is None:
        statement.prepare = prepared.new_name()
        if statement.prepare is not None:  # the rows after it run under its name
            prepared.names[statement.key] = statement.name = statement.prepare
    return statement


async def _round_trip(connection, statement: Statement) -> pq.abc.PGresult:
    pgconn = connection.pgconn
    _send(pgconn, statement)
    try:
        result = await _result(pgconn)
    except BaseException:
        pgconn.finish()  # the statement's outcome is unknown: the connection is done
        raise
    _raise_if_failed(connection, result)
    return result


async def _pipelined(connection, statements: list[Statement]) -> list[pq.abc.PGresult]:
    """Each statement's last result; a failed statement fails those after it (as in a
    transaction), and its error is raised. A preparation that did not happen (a statement
    before it failed) is forgotten: the next use prepares again."""
    pgconn = connection.pgconn
    pgconn.enter_pipeline_mode()
    try:
        sent = []
        for statement in statements:
            if statement.prepare:
                pgconn.send_prepare(statement.prepare, statement.sql, param_types=statement.types)
                sent.append(statement)
            _send(pgconn, statement)
            sent.append(None)
        pgconn.pipeline_sync()
        results = await _pipeline_results(pgconn)
    except BaseException:
        pgconn.finish()  # as in `_round_trip`
        raise
    pgconn.exit_pipeline_mode()
    _forget_failed_preparations(connection, sent, results)
    answers = [result for result, preparing in zip(results, sent, strict=True) if not preparing]
    for result in answers:
        _raise_if_failed(connection, result)
    return answers


def _forget_failed_preparations(connection, sent: list, results: list) -> None:
    prepared = connection.prepared
    for preparing, result in zip(sent, results, strict=True):
        if preparing is not None and result.status != PREPARED:
            prepared.names.pop(preparing.key, None)


def _send(pgconn, statement: Statement) -> None:
    if statement.name is not None:
        pgconn.send_query_prepared(
            statement.name, statement.values, param_formats=statement.formats
        )
    else:
        pgconn.send_query_params(
            statement.sql,
            statement.values,
            param_types=statement.types,
            param_formats=statement.formats,
        )


def _raise_if_failed(connection, result) -> None:
    if result.status != FAILED:
        return
    error = errors.error_from_result(result, encoding=connection.info.encoding)
    if isinstance(error, errors.InvalidSqlStatementName):
        # Something deallocated them (DEALLOCATE ALL, DISCARD ALL, a pooler between): this
        # transaction fails, the next prepares again.
        connection.prepared = Prepared()
    raise error


async def _result(pgconn) -> pq.abc.PGresult:
    """The statement's last result, once the server has sent all of them."""
    await _flushed(pgconn)
    last = None
    while True:
        pgconn.consume_input()
        if pgconn.is_busy():
            await _ready(pgconn.socket)
            continue
        result = pgconn.get_result()
        if result is None:
            return last
        last = result


async def _pipeline_results(pgconn) -> list[pq.abc.PGresult]:
    """Each statement's last result, up to the pipeline's sync point (libpq ends each
    statement's results with a None)."""
    await _flushed(pgconn)
    results, last = [], None
    while True:
        pgconn.consume_input()
        while not pgconn.is_busy():
            result = pgconn.get_result()
            if result is None:
                results.append(last)
                last = None
            elif result.status == SYNC:
                return results
            else:
                last = result
        await _ready(pgconn.socket)


async def _flushed(pgconn) -> None:
    while pgconn.flush():
        await _ready(pgconn.socket, writing=True)


async def _ready(fd: int, writing: bool = False, ready: asyncio.Future | None = None) -> None:
    """Until `fd` is readable (writable), or `ready`, if given, is settled by someone else."""
    loop = asyncio.get_running_loop()
    ready = loop.create_future() if ready is None else ready
    watch, unwatch = (
        (loop.add_writer, loop.remove_writer) if writing else (loop.add_reader, loop.remove_reader)
    )
    watch(fd, _settle, ready)
    try:
        await ready
    finally:
        unwatch(fd)


def _settle(ready: asyncio.Future) -> None:
    if not ready.done():
        ready.set_result(None)
