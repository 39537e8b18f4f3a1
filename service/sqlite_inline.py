"""SQLite calls that cannot wait run on the event loop; the rest go to aiosqlite's thread.

aiosqlite runs every call (cursor, execute, fetch, close) in its connection's thread and wakes
the event loop with the answer: four thread round trips per statement, a dozen statements per
webhook. Each costs more CPU than the statement itself, and under load each also waits for the
GIL, so a webhook's transaction took milliseconds to do microseconds of work.

Most calls can never wait, though. In WAL mode readers take no locks that writers hold, and a
transaction that began with BEGIN IMMEDIATE already holds the write lock: nothing inside it
waits for another connection. So those statements run inline, on the loop's thread. What may
wait goes to the thread as before:

- taking the write lock (`BEGIN IMMEDIATE`: another process may hold it, up to the busy
  timeout), and any statement outside a transaction (connect-time pragmas, migrations);
- committing a transaction that stored an image (its pages' copy into the WAL); other commits
  only append a few pages to the WAL and run inline: connections never checkpoint on commit
  (`wal_autocheckpoint=0`), `db.Checkpoints` does it in a thread instead;
- a write inside a read transaction (it would have to take the lock), `executescript`,
  closing, and a statement carrying a large blob (an image being stored).

The rules look only at what SQLAlchemy asks aiosqlite to do, so the ORM and Core above are
unchanged; `sqlite3` calls are never concurrent on one connection (SQLAlchemy awaits each).
"""

import os
import sqlite3
import threading
from collections.abc import Callable

import aiosqlite
from sqlalchemy.exc import DBAPIError

BIG_PARAMETER_BYTES = 64 * 1024  # a blob this size is an image: its copy runs in the thread
FETCHES = frozenset({"fetchone", "fetchmany", "fetchall", "close"})


class WalState:
    """What the connections to one database file in this process share about its WAL.

    The first write after a checkpoint has copied the whole WAL back starts the WAL over, and
    SQLite syncs the new WAL header then (even with synchronous=NORMAL): an fsync, in whatever
    thread that write runs. So after each checkpoint (`db.Checkpoints` counts them, before
    each begins) write transactions commit in the thread until one that began after it has
    written and committed there."""

    __slots__ = ("checkpoints", "settled")

    def __init__(self) -> None:
        self.checkpoints = 0  # checkpoints begun
        self.settled = 0  # the checkpoints a write that began after them committed in the thread

    @property
    def restart_pending(self) -> bool:
        return self.settled != self.checkpoints

    def checkpoint_begins(self) -> None:
        """In the checkpointing thread, before the checkpoint."""
        with _wal_states_lock:
            self.checkpoints += 1


_wal_states: dict[str, WalState] = {}
_wal_states_lock = threading.Lock()


def wal_state(database) -> WalState:
    """The shared `WalState` of the database file at `database`."""
    key = os.path.realpath(str(database))
    with _wal_states_lock:
        return _wal_states.setdefault(key, WalState())


class InlineConnection(aiosqlite.Connection):
    """An aiosqlite connection whose non-waiting calls run on the caller's thread."""

    _holds_write_lock = False  # the open transaction began with BEGIN IMMEDIATE
    _carried_a_big_blob = False  # the open transaction stored an image: commit in the thread
    _wal = WalState()  # `connect` sets the database file's own
    _checkpoints_seen = 0  # `_wal.checkpoints` when the current call began
    _began_after = 0  # `_wal.checkpoints` when the open transaction began (or earlier)
    _changes_at_begin = 0  # `total_changes` then: whether the transaction wrote
    busy_timeout_ms = 5000  # sqlite3's default; `connect` sets the caller's
    # Calls still running in the thread. A cancelled caller stops waiting, not the call: until
    # it ends, nothing runs inline (the connection is never used from both threads at once).
    _in_thread = 0
    _in_thread_lock = threading.Lock()
    _stopped: tuple = ()  # (the first `stop`'s future,) once the thread has been told to end

    def stop(self):
        """Tell the thread to close the connection and end; every later call answers the
        first call's future. aiosqlite's thread ends at the first stop, so a second one would
        queue work nobody runs and its waiter would wait forever: SQLAlchemy's terminate does
        that when cancelled (force close, then its shielded graceful close finishes)."""
        if not self._stopped:
            self._stopped = (super().stop(),)
        return self._stopped[0]

    @property
    def is_open(self) -> bool:
        return self._connection is not None and self._running and not self._stopped

    async def close(self) -> None:
        if not self._stopped:
            await super().close()
        elif (stopping := self._stopped[0]) is not None:
            await stopping  # told to end already: closing is the thread's last job

    async def _execute(self, fn, *args, **kwargs):
        conn = self._connection
        self._checkpoints_seen = self._wal.checkpoints  # before any BEGIN below takes a snapshot
        if conn is not None and self._running and not self._in_thread:
            if self._inline(conn, fn, args):
                return fn(*args, **kwargs)
            if _begin_words(fn, args) == ["IMMEDIATE"] and self._took_it_at_once(conn, fn, args):
                return fn.__self__
        if not self._running or conn is None:
            return await super()._execute(fn, *args, **kwargs)  # closed: aiosqlite says so
        with self._in_thread_lock:
            self._in_thread += 1  # from now (queued) until the thread has run it
        result = await super()._execute(self._counted, fn, args, kwargs)
        self._note_begin(conn, fn, args)
        if getattr(fn, "__self__", None) is conn and getattr(fn, "__name__", "") == "commit":
            self._note_commit(conn)
        return result

    async def begin(self, *, writes: bool) -> None:
        """BEGIN, or BEGIN IMMEDIATE to write: straight to the driver (SQLAlchemy's `begin`
        event calls this; its statement machinery cost more than the BEGIN itself)."""
        sql = "BEGIN IMMEDIATE" if writes else "BEGIN"
        try:
            await self._execute(self._connection.execute, sql)
        except sqlite3.Error as exc:
            raise DBAPIError.instance(sql, None, exc, sqlite3.Error) from None

    def _counted(self, fn: Callable, args: tuple, kwargs: dict):
        """In the thread: `fn`, then it no longer counts as running there."""
        try:
            return fn(*args, **kwargs)
        finally:
            with self._in_thread_lock:
                self._in_thread -= 1

    def _inline(self, conn: sqlite3.Connection, fn: Callable, args: tuple) -> bool:
        name, owner = getattr(fn, "__name__", ""), getattr(fn, "__self__", None)
        if owner is conn:
            if name == "cursor" or name == "rollback":
                return True
            if name == "execute" and args:
                return self._statement_inline(conn, args[0], args[1:])
            return name == "commit" and not self._carried_a_big_blob and not self._restarts(conn)
        if not isinstance(owner, sqlite3.Cursor):
            return False
        if name in FETCHES:
            return True
        if name not in ("execute", "executemany") or not args:
            return False  # executescript, or something new: the thread
        return self._statement_inline(conn, args[0], args[1:])

    def _statement_inline(self, conn: sqlite3.Connection, sql: str, params: tuple) -> bool:
        head = sql.lstrip()[:24].upper()
        if head.startswith("BEGIN"):
            inline = head.split()[:2] == ["BEGIN"]  # deferred: takes no lock
            if inline:
                self._began(conn, writes=False)
            return inline
        if not conn.in_transaction or head.startswith(("COMMIT", "END")):
            return False
        if _carries_a_big_blob(params):
            self._carried_a_big_blob = True
            return False
        return (self._holds_write_lock and not self._restarts(conn)) or head.startswith("SELECT")

    def _restarts(self, conn: sqlite3.Connection) -> bool:
        """Whether this transaction's writes may start the WAL over (see `WalState`)."""
        return self._wal.restart_pending and conn.in_transaction

    def _note_commit(self, conn: sqlite3.Connection) -> None:
        """After a COMMIT in the thread: if the transaction wrote and began after the last
        checkpoint, any restart of the WAL has happened (there, not on the loop)."""
        wal = self._wal
        if conn.total_changes != self._changes_at_begin and self._began_after > wal.settled:
            wal.settled = self._began_after

    def _took_it_at_once(self, conn: sqlite3.Connection, fn: Callable, args: tuple) -> bool:
        """BEGIN IMMEDIATE, inline without waiting: it succeeds unless another connection
        holds the write lock (then the thread takes it, waiting up to the busy timeout)."""
        conn.execute("PRAGMA busy_timeout = 0")
        try:
            fn(*args)
        except sqlite3.OperationalError:
            return False  # locked (or anything else: the thread's attempt says what)
        finally:
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms}")
        self._began(conn, writes=True)
        return True

    def _note_begin(self, conn: sqlite3.Connection, fn: Callable, args: tuple) -> None:
        """After a call in the thread: a BEGIN IMMEDIATE that succeeded holds the lock."""
        words = _begin_words(fn, args)
        if words is not None and conn.in_transaction:
            self._began(conn, writes=words in (["IMMEDIATE"], ["EXCLUSIVE"]))

    def _began(self, conn: sqlite3.Connection, *, writes: bool) -> None:
        self._holds_write_lock = writes
        self._carried_a_big_blob = False
        self._began_after = self._checkpoints_seen
        self._changes_at_begin = conn.total_changes


def _begin_words(fn: Callable, args: tuple) -> list[str] | None:
    """For a call that executes BEGIN, the word after it ([] when deferred); else None."""
    if getattr(fn, "__name__", "") != "execute" or not args or not isinstance(args[0], str):
        return None
    words = args[0].lstrip()[:24].upper().split()[:2]
    return words[1:] if words[:1] == ["BEGIN"] else None


def _carries_a_big_blob(params: tuple) -> bool:
    """`params`: what followed the SQL (one row of parameters, or executemany's rows)."""
    for group in params:
        rows = group if isinstance(group, list) else [group]
        for row in rows:
            if isinstance(row, dict):
                values = row.values()
            else:
                values = row if isinstance(row, (tuple, list)) else (row,)
            if any(_is_big(value) for value in values):
                return True
    return False


def _is_big(value) -> bool:
    return isinstance(value, (bytes, memoryview)) and len(value) > BIG_PARAMETER_BYTES


def connect(database, *, iter_chunk_size: int = 64, **kwargs) -> InlineConnection:
    """`aiosqlite.connect`, returning an `InlineConnection` (for SQLAlchemy's
    `async_creator_fn`). The connection is used from two threads, never at once."""
    kwargs["check_same_thread"] = False

    def connector() -> sqlite3.Connection:
        connection = sqlite3.connect(str(database), **kwargs)
        connection.execute("PRAGMA wal_autocheckpoint = 0")  # see db.Checkpoints
        return connection

    connection = InlineConnection(connector, iter_chunk_size)
    connection._wal = wal_state(database)
    connection.busy_timeout_ms = int(1000 * kwargs.get("timeout", 5.0))
    connection._thread.daemon = True  # as SQLAlchemy does for aiosqlite's own connections
    return connection
