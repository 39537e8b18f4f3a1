"""Live fan-out to SSE streams.

Events reach the hub after their transaction commits. On SQLite (writes are serialised, so
sequence order is commit order) this process's events are handed over as they commit, and a
reader follows the `job_events` table for what other processes commit, ahead of this
process's later events. On PostgreSQL a LISTEN connection receives each event's NOTIFY, sent
in commit order across processes, while a stream is here (`PostgresFollower`).
A stream that falls behind (or a hub that lost its connection) is told to resync: it reads
what it missed from the table, so nothing is dropped and nothing is sent twice.
"""

import asyncio
import collections
import contextlib
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import select

from service import libpq
from service.db import Database
from service.events import EVENTS_CHANNEL, StagedEvent, envelope_json
from service.models import JobEvent
from service.signals import WAKE_CHANNEL, Signals

log = logging.getLogger(__name__)
LISTENER_BACKLOG = 1000  # events buffered per stream before it must resync from the table
LINGER_S = 60.0  # PostgreSQL: events are LISTENed to this long after the last stream left


@dataclass(frozen=True)
class StreamEvent:
    seq: int
    tenant_id: uuid.UUID
    job_id: uuid.UUID | None
    type: str
    body: str  # the serialised envelope, shared by every stream

    @classmethod
    def from_row(cls, row: "JobEvent | StagedEvent") -> "StreamEvent":
        return cls(row.seq, row.tenant_id, row.job_id, row.type, envelope_json(row))


RESYNC = object()  # sentinel: read missed events from the table
CLOSED = object()  # sentinel: the hub is shutting down


class Listener:
    """One stream's events, in order: a deque and the stream's one waiter.

    A wait for the next event has a deadline (the stream's heartbeat), but no timer of its own:
    one alarm per listener stays set at or before the deadline and, when it rings early (more
    events came meanwhile, and the deadline moved on), is set again for the deadline then. A
    timer armed and cancelled at every event of every stream cost the event loop ≈ 13 % of the
    fan-out to 1000 streams (bench/README.md, "eighteenth pass")."""

    def __init__(self, tenant_id: uuid.UUID, job_id: uuid.UUID | None, backlog: int) -> None:
        self.tenant_id = tenant_id
        self.job_id = job_id
        self._backlog = backlog
        self._items: collections.deque = collections.deque()
        self._resync_pending = False
        self._waiter: asyncio.Future | None = None
        self._deadline = 0.0  # loop time when the current wait ends empty-handed
        self._alarm: asyncio.TimerHandle | None = None

    def offer(self, event: StreamEvent) -> None:
        if self.job_id is not None and event.job_id != self.job_id:
            return
        if self._resync_pending:
            return  # the table read that follows will include this event
        if len(self._items) >= self._backlog:
            self.resync()
            return
        self._put(event)

    def resync(self) -> None:
        self._items.clear()
        self._resync_pending = True
        self._put(RESYNC)

    def close(self) -> None:
        self._items.clear()
        self._put(CLOSED)

    def leave(self) -> None:
        """The stream has gone: no alarm outlives it."""
        if self._alarm is not None:
            self._alarm.cancel()
            self._alarm = None

    async def next(self, timeout_s: float) -> object:
        """A StreamEvent, RESYNC, CLOSED, or None after `timeout_s` of silence."""
        if not self._items:
            await self._wait(timeout_s)
            if not self._items:
                return None
        item = self._items.popleft()
        if item is RESYNC:
            self._resync_pending = False
        return item

    async def _wait(self, timeout_s: float) -> None:
        """Until something is offered, or `timeout_s` has passed."""
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + timeout_s
        if self._alarm is None or self._alarm.when() > self._deadline:
            if self._alarm is not None:
                self._alarm.cancel()
            self._alarm = loop.call_at(self._deadline, self._ring)
        self._waiter = loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _ring(self) -> None:
        self._alarm = None
        if self._waiter is None:
            return  # no one waits: the next wait sets the alarm again
        loop = asyncio.get_running_loop()
        if loop.time() >= self._deadline:
            self._wake()
        else:  # the wait now running began after this alarm was set
            self._alarm = loop.call_at(self._deadline, self._ring)

    def _put(self, item: object) -> None:
        self._items.append(item)
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Hub:
    def __init__(self, db: Database, signals: Signals, backlog: int = LISTENER_BACKLOG) -> None:
        self._db = db
        self._backlog = backlog
        self._signals = signals
        self._listeners: dict[uuid.UUID, set[Listener]] = defaultdict(set)
        self._cursor: int | None = None  # SQLite: the last sequence number published
        # SQLite: this process committed an event after rows of another process that the hub
        # has not read yet; its events wait for the table's read (up to this seq).
        self._held_back_to = 0
        self._read_now = asyncio.Event()
        self.closed = False
        # PostgreSQL: called when a stream arrives at a hub with none (to LISTEN to events).
        self.on_first_stream: Callable[[], None] | None = None
        if not db.is_postgres:
            signals.event_committed = self._committed_here

    @property
    def streaming(self) -> bool:
        """Whether any stream listens here."""
        return bool(self._listeners)

    @property
    def listener_count(self) -> int:
        return sum(len(group) for group in self._listeners.values())

    @contextlib.contextmanager
    def listen(self, tenant_id: uuid.UUID, job_id: uuid.UUID | None = None) -> Iterator[Listener]:
        listener = Listener(tenant_id, job_id, self._backlog)
        if self.closed:
            listener.close()
        first = not self._listeners
        self._listeners[tenant_id].add(listener)
        if first and self.on_first_stream is not None:
            self.on_first_stream()
        try:
            yield listener
        finally:
            listener.leave()
            group = self._listeners[tenant_id]
            group.discard(listener)
            if not group:
                del self._listeners[tenant_id]

    def publish(self, event: StreamEvent) -> None:
        for listener in list(self._listeners.get(event.tenant_id, ())):
            listener.offer(event)

    def publish_row(self, row: "JobEvent | StagedEvent") -> None:
        """An event as its row: its message is made only if one of its tenant's streams is
        here (most processes, most of the time, have none for most tenants)."""
        if row.tenant_id in self._listeners:
            self.publish(StreamEvent.from_row(row))

    def resync_all(self) -> None:
        for group in self._listeners.values():
            for listener in group:
                listener.resync()

    def close(self) -> None:
        """Shutdown: every stream ends."""
        self.closed = True
        for group in self._listeners.values():
            for listener in group:
                listener.close()

    async def run(self) -> None:
        if self._db.is_postgres:
            await PostgresFollower(self, self._db, self._signals).run()
        else:
            await self._follow_table()

    def _committed_here(self, row: "StagedEvent") -> None:
        """SQLite: an event of this process, published as it commits. Writers are serialised,
        so sequence numbers follow commit order; one that is not the next after the cursor
        means another process (a `fluxhook worker` beside `serve`) committed rows in between,
        which the table's read publishes first, then this one."""
        if self._cursor is None:  # before the first read: its cursor starts after this row
            self.publish_row(row)
        elif self._held_back_to or row.seq != self._cursor + 1:
            self._held_back_to = max(self._held_back_to, row.seq)
            self._read_now.set()
        else:
            self._cursor = row.seq
            self.publish_row(row)

    async def _follow_table(self) -> None:
        """SQLite: this process's events arrive as they commit; the table is read once a
        second for what other processes committed, and at once when one of this process's
        events came after such rows."""
        while True:
            await self.publish_new_rows()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._read_now.wait()
            self._read_now.clear()

    async def publish_new_rows(self) -> None:
        """Publish the rows committed since the cursor, in sequence order, until it has
        reached this process's events that waited for them."""
        while True:
            async with self._db.read() as session:
                if self._cursor is None:
                    latest = (await session.exec(sa.select(sa.func.max(JobEvent.seq)))).scalar()
                    self._cursor = latest or 0
                    return
                query = select(JobEvent).where(JobEvent.seq > self._cursor).order_by(JobEvent.seq)
                rows = (await session.exec(query)).all()
            for row in rows:
                if row.seq > self._cursor:  # not published meanwhile
                    self._cursor = row.seq
                    self.publish_row(row)
            if not rows or self._held_back_to <= self._cursor:  # (none: pruned meanwhile)
                self._held_back_to = 0
                return


class PostgresFollower:
    """LISTEN on a connection of its own: to wake-ups always, to events only while a stream
    is here (and `LINGER_S` after the last one left). Every NOTIFY reaches every connection
    that LISTENs to its channel, and most processes (a `fluxhook worker`, a serve process
    nobody streams from) have no stream: hearing each event cost such a process ≈ 0.35 ms
    of CPU a job at 60 jobs/s (bench/README.md, sixteenth pass). Events are LISTENed to
    before the streams are told to resync from the table, so an event commits either before
    LISTEN (the table read has it) or after (its NOTIFY comes): none is missed. On a lost
    connection it reconnects, and the streams resync the same way."""

    def __init__(self, hub: Hub, db: Database, signals: Signals, linger_s: float = LINGER_S):
        self._hub = hub
        self._db = db
        self._signals = signals
        self._linger_s = linger_s
        self.listening_to_events = False
        self._last_stream_seen = 0.0  # loop time: when a stream was last here
        self._woken: asyncio.Future | None = None  # settled to stop waiting for notifications

    async def run(self) -> None:
        import psycopg

        conninfo = self._db.engine.url.set(drivername="postgresql").render_as_string(False)
        self._hub.on_first_stream = self._wake
        try:
            while True:
                try:
                    conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True)
                    try:
                        await self._follow(conn)
                    finally:
                        await conn.close()  # it awaits nothing: it closes when cancelled too
                except psycopg.OperationalError:
                    log.exception("hub lost its PostgreSQL LISTEN connection; reconnecting")
                    await asyncio.sleep(1.0)
        finally:
            self._hub.on_first_stream = None
            self.listening_to_events = False

    async def _follow(self, conn) -> None:
        self.listening_to_events = False
        await libpq.command(conn, f"LISTEN {WAKE_CHANNEL}".encode())
        while True:
            await self._match_streams(conn)
            self._woken = asyncio.get_running_loop().create_future()
            try:
                received = await libpq.notifications(conn, self._woken)
            finally:
                self._woken = None
            for notification in received:
                channel = notification.relname.decode()
                await self._dispatch(channel, notification.extra.decode())

    async def _match_streams(self, conn) -> None:
        """LISTEN to events when a stream is here (then the streams resync); UNLISTEN once
        none has been for `linger_s` (a client reconnecting finds the hub still listening)."""
        now = asyncio.get_running_loop().time()
        if self._hub.streaming:
            self._last_stream_seen = now
            if not self.listening_to_events:
                await libpq.command(conn, f"LISTEN {EVENTS_CHANNEL}".encode())
                self.listening_to_events = True
                self._hub.resync_all()
        elif self.listening_to_events and now - self._last_stream_seen >= self._linger_s:
            await libpq.command(conn, f"UNLISTEN {EVENTS_CHANNEL}".encode())
            self.listening_to_events = False

    def _wake(self) -> None:
        """A first stream is here: stop waiting, to LISTEN to events."""
        if self._woken is not None and not self._woken.done():
            self._woken.set_result(None)

    async def _dispatch(self, channel: str, payload: str) -> None:
        if channel == WAKE_CHANNEL:
            self._signals.woken_from_elsewhere(payload)
            return
        if not self._hub.streaming:
            return  # no stream here any more (events are still LISTENed to for the linger)
        row = json.loads(payload)
        if "tenant_id" not in row:
            event = await self._load(row["seq"])
        else:
            event = StagedEvent(  # a plain row: a model's constructor costs more than the rest
                seq=row["seq"],
                tenant_id=uuid.UUID(row["tenant_id"]),
                job_id=uuid.UUID(row["job_id"]) if row["job_id"] else None,
                type=row["type"],
                data=row["data"],
                created_at=datetime.fromisoformat(row["created_at"]),
            )
        if event is not None:
            self._hub.publish_row(event)

    async def _load(self, seq: int) -> JobEvent | None:
        async with self._db.read() as session:
            return await session.get(JobEvent, seq)
