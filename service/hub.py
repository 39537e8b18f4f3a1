"""Live fan-out to SSE streams.

Events reach the hub after their transaction commits. On SQLite (writes are serialised, so
sequence order is commit order) this process's events are handed over as they commit, and a
reader follows the `job_events` table for what other processes commit, ahead of this
process's later events. On PostgreSQL a LISTEN connection receives each event's NOTIFY, sent
in commit order across processes.
A stream that falls behind (or a hub that lost its connection) is told to resync: it reads
what it missed from the table, so nothing is dropped and nothing is sent twice.
"""

import asyncio
import contextlib
import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import select

from service.db import Database
from service.events import EVENTS_CHANNEL, StagedEvent, envelope_json
from service.models import JobEvent
from service.signals import WAKE_CHANNEL, Signals

log = logging.getLogger(__name__)
LISTENER_BACKLOG = 1000  # events buffered per stream before it must resync from the table


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
    def __init__(self, tenant_id: uuid.UUID, job_id: uuid.UUID | None, backlog: int) -> None:
        self.tenant_id = tenant_id
        self.job_id = job_id
        self._queue: asyncio.Queue = asyncio.Queue(backlog)
        self._resync_pending = False

    def offer(self, event: StreamEvent) -> None:
        if self.job_id is not None and event.job_id != self.job_id:
            return
        if self._resync_pending:
            return  # the table read that follows will include this event
        try:
            self._queue.put_nowait(event)
        except asyncio.QueueFull:
            self.resync()

    def resync(self) -> None:
        self._drain()
        self._resync_pending = True
        self._queue.put_nowait(RESYNC)

    def close(self) -> None:
        self._drain()
        self._queue.put_nowait(CLOSED)

    async def next(self, timeout_s: float) -> object:
        """A StreamEvent, RESYNC, CLOSED, or None after `timeout_s` of silence."""
        try:
            async with asyncio.timeout(timeout_s):
                item = await self._queue.get()
        except TimeoutError:
            return None
        if item is RESYNC:
            self._resync_pending = False
        return item

    def _drain(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()


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
        self._listeners[tenant_id].add(listener)
        try:
            yield listener
        finally:
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
    """LISTEN on a direct connection; reconnects, and tells streams to resync after a gap."""

    def __init__(self, hub: Hub, db: Database, signals: Signals) -> None:
        self._hub = hub
        self._db = db
        self._signals = signals

    async def run(self) -> None:
        import psycopg

        conninfo = self._db.engine.url.set(drivername="postgresql").render_as_string(False)
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {EVENTS_CHANNEL}")
                    await conn.execute(f"LISTEN {WAKE_CHANNEL}")
                    self._hub.resync_all()
                    async for notification in conn.notifies():
                        await self._dispatch(notification.channel, notification.payload)
            except psycopg.OperationalError:
                log.exception("hub lost its PostgreSQL LISTEN connection; reconnecting")
                await asyncio.sleep(1.0)

    async def _dispatch(self, channel: str, payload: str) -> None:
        if channel == WAKE_CHANNEL:
            self._signals.woken_from_elsewhere(payload)
            return
        if not self._hub.streaming:
            return  # no stream here: every process hears every event, most have nobody
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
