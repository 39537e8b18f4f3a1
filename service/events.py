"""The transactional outbox: an event row and its delivery rows, in the caller's transaction.

Nothing here commits. Whatever the caller commits together (a job's new state, its event, the
deliveries owed for it) is sent together; a rollback sends nothing.
"""

import functools
import json
import uuid
import zlib
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace

import sqlalchemy as sa
from sqlalchemy import or_
from sqlmodel.ext.asyncio.session import AsyncSession

from service import direct
from service.db import STAGED_EVENTS as STAGED
from service.db import before_commit, on_commit
from service.jobs import TERMINAL_EVENTS
from service.models import Delivery, JobEvent, Subscription
from service.signals import Signals
from service.usage import count_final
from service.views import job_view

EVENTS_CHANNEL = "fluxhook_events"
# The test event (POST /v1/subscriptions/{id}/test): owed to that one subscription, whatever
# its event types, and never about a job.
PING = "ping"
# PostgreSQL's NOTIFY payload limit is 8000 bytes; bigger events go by sequence number only.
NOTIFY_PAYLOAD_LIMIT = 7900
# One round trip for all of a transaction's notifications, sent (and delivered) in order.
# The payloads go as one JSON array, a single text parameter: as a text[] parameter, psycopg
# escaped every quote of every payload in Python (13 % of the serve process's samples at
# saturation on PostgreSQL, bench/README.md "tenth pass").
NOTIFY_ALL = sa.text(
    "SELECT pg_notify(:channel, payload)"
    " FROM json_array_elements_text(CAST(:payloads AS json)) AS payload"
)


def envelope(event: "JobEvent | StagedEvent") -> dict:
    """The Standard Webhooks body, also the data of each SSE message."""
    timestamp = event.created_at.isoformat().replace("+00:00", "Z")
    return {"type": event.type, "timestamp": timestamp, "data": event.data}


def envelope_json(event: "JobEvent | StagedEvent") -> str:
    """The envelope, serialised compactly: every SSE message's data, and the body of a
    standing subscription's callback. A staged event keeps it, so the streams and the
    callbacks its commit hands it to encode it once."""
    encoded = getattr(event, "encoded", None)
    if encoded is None:
        encoded = json.dumps(envelope(event), separators=(",", ":"))
        if isinstance(event, StagedEvent):
            event.encoded = encoded
    return encoded


def tenant_lock_key(tenant_id: uuid.UUID) -> int:
    """An advisory lock per tenant, so a tenant's events commit in sequence order."""
    return zlib.crc32(b"fluxhook.events." + tenant_id.bytes)


async def record_event(
    session: AsyncSession,
    signals: Signals,
    *,
    tenant_id: uuid.UUID,
    job_id: uuid.UUID | None,
    type: str,
    data: dict,
    now: datetime,
) -> "StagedEvent":
    """Stage an event in the caller's transaction. Its sequence number, the deliveries owed
    for it and its notification are all settled once, just before the transaction commits,
    together with every other event staged there (see `_settle`)."""
    event = StagedEvent(tenant_id=tenant_id, job_id=job_id, type=type, data=data, created_at=now)
    _stage(session, signals, event, now)
    return event


async def record_ping(
    session: AsyncSession, signals: Signals, subscription: Subscription, now: datetime
) -> uuid.UUID:
    """Stage a `ping` for `subscription` alone (enabled: only enabled ones are owed events);
    returns the id its delivery will have once the transaction commits."""
    data = {
        "subscription_id": str(subscription.id),
        "url": subscription.url,
        "test": True,
        "message": "A test event from fluxhook, sent by POST /v1/subscriptions/{id}/test.",
    }
    event = StagedEvent(
        tenant_id=subscription.tenant_id,
        job_id=None,
        type=PING,
        data=data,
        created_at=now,
        to=subscription.id,
        delivery_id=uuid.uuid4(),
    )
    _stage(session, signals, event, now)
    return event.delivery_id


def _stage(session: AsyncSession, signals: Signals, event: "StagedEvent", now) -> None:
    session.info.setdefault(STAGED, []).append(event)
    before_commit(session, STAGED, lambda: _settle(session, signals, now))


async def record_job_event(
    session: AsyncSession, signals: Signals, urls, job, event_type: str, now: datetime
) -> "StagedEvent":
    """An event about a job; its data is the job as `GET /v1/jobs/{id}` shows it now. A
    terminal event also counts the job in its tenant's usage, in the same transaction."""
    if event_type in TERMINAL_EVENTS:
        count_final(session, job, event_type, now)
    return await record_event(
        session,
        signals,
        tenant_id=job.tenant_id,
        job_id=job.id,
        type=event_type,
        data=job_view(job, urls),
        now=now,
    )


async def _settle(session: AsyncSession, signals: Signals, now: datetime) -> None:
    events = session.info.pop(STAGED)
    postgres = direct.dialect_of(session).name == "postgresql"
    if postgres:
        # Held to commit, and taken before sequence numbers are drawn: a tenant's events then
        # commit in sequence order, which lets an SSE client resume from one Last-Event-ID.
        # In one order everywhere (no deadlocks), in the INSERT's round trip.
        tenants = sorted({event.tenant_id for event in events})
        keys = [{"key": tenant_lock_key(tenant)} for tenant in tenants]
        await direct.execute_later(session, direct.TAKE_LOCK, keys)
    await _insert_events(session, events)
    if not postgres:  # to this process's streams, on commit: first, their chunk is the cheaper
        for event in events:
            signals.publish_after_commit(session, event)
    if await _add_deliveries(session, events, now, signals.deliveries):
        await signals.after_commit(session, "dispatcher")  # some wait for a dispatcher's claim
    if postgres:
        payloads = json.dumps([notify_payload(event) for event in events])
        notify = {"channel": EVENTS_CHANNEL, "payloads": payloads}
        await direct.execute_later(session, NOTIFY_ALL, [notify])  # with the COMMIT


@dataclass
class StagedEvent:
    """A `job_events` row on its way in (SQL Core, not the ORM: this path is hot)."""

    tenant_id: uuid.UUID
    job_id: uuid.UUID | None
    type: str
    data: dict
    created_at: datetime
    seq: int | None = None
    to: uuid.UUID | None = None  # a ping's one subscription (whatever its event types)
    delivery_id: uuid.UUID | None = None  # the id of that subscription's delivery
    encoded: str | None = None  # `envelope_json`, once something asked for it


EVENTS = JobEvent.__table__
DELIVERIES = Delivery.__table__
SUBSCRIPTIONS = Subscription.__table__
EVENT_COLUMNS = ("tenant_id", "job_id", "type", "data", "created_at")
DELIVERY_COLUMNS = (
    "id", "tenant_id", "subscription_id", "job_id", "event_seq", "event_type", "status",
    "attempts", "next_attempt_at", "created_at", "lease_expires_at",
)  # fmt: skip
# The outbox's statements, run on the driver (`direct`): built once per shape, with at most
# CHUNK rows or ids each (SQLite takes up to 32766 parameters, psycopg 65535).
CHUNK = 200
INSERT_DELIVERIES = sa.insert(DELIVERIES).values(
    {name: sa.bindparam(name, type_=DELIVERIES.c[name].type) for name in DELIVERY_COLUMNS}
)


@functools.lru_cache(maxsize=CHUNK)
def _insert_events_of(count: int) -> sa.Insert:
    """One INSERT of `count` events (parameters `<column>_<row>`), returning their seqs."""
    rows = [
        {name: sa.bindparam(f"{name}_{i}", type_=EVENTS.c[name].type) for name in EVENT_COLUMNS}
        for i in range(count)
    ]
    return sa.insert(EVENTS).values(rows).returning(EVENTS.c.seq)


@functools.lru_cache(maxsize=256)
def _subscribers_of(tenants: int, jobs: int | None) -> sa.Select:
    """Enabled subscriptions of `tenant_<i>`: those for every job, and those for `job_<i>`
    (`jobs` None: for any job; `_wants` picks)."""
    ids = SUBSCRIPTIONS.c.tenant_id.type
    query = sa.select(SUBSCRIPTIONS).where(
        SUBSCRIPTIONS.c.tenant_id.in_(
            [sa.bindparam(f"tenant_{i}", type_=ids) for i in range(tenants)]
        ),
        SUBSCRIPTIONS.c.enabled,
    )
    if jobs is None:
        return query
    for_every_job = SUBSCRIPTIONS.c.job_id.is_(None)
    if not jobs:
        return query.where(for_every_job)
    for_these = SUBSCRIPTIONS.c.job_id.in_(
        [sa.bindparam(f"job_{i}", type_=ids) for i in range(jobs)]
    )
    return query.where(or_(for_every_job, for_these))


async def _subscribers(session: AsyncSession, events: list[StagedEvent]) -> list:
    """The enabled subscriptions that may want some of `events` (attribute access)."""
    tenants = sorted({event.tenant_id for event in events})
    jobs = sorted({event.job_id for event in events if event.job_id})
    found = []
    for start in range(0, len(tenants), CHUNK):
        chunk = tenants[start : start + CHUNK]
        params = {f"tenant_{i}": tenant for i, tenant in enumerate(chunk)}
        if len(jobs) <= CHUNK:
            params |= {f"job_{i}": job for i, job in enumerate(jobs)}
        query = _subscribers_of(len(chunk), len(jobs) if len(jobs) <= CHUNK else None)
        found += await direct.fetch(session, query, params)
    return [SimpleNamespace(**row) for row in found]


async def _insert_events(session: AsyncSession, events: list[StagedEvent]) -> None:
    for start in range(0, len(events), CHUNK):
        chunk = events[start : start + CHUNK]
        params = {}
        for i, e in enumerate(chunk):
            params |= {f"tenant_id_{i}": e.tenant_id, f"job_id_{i}": e.job_id, f"type_{i}": e.type,
                       f"data_{i}": e.data, f"created_at_{i}": e.created_at}  # fmt: skip
        # Rows of one multi-row INSERT draw ascending sequence numbers in the order given, so
        # the sorted numbers match the rows (RETURNING's order is not promised).
        inserted = await direct.fetch(session, _insert_events_of(len(chunk)), params)
        seqs = sorted(row["seq"] for row in inserted)
        for event, seq in zip(chunk, seqs, strict=True):
            event.seq = seq


async def _add_deliveries(
    session: AsyncSession, events: list[StagedEvent], now, handoff=None
) -> int:
    """The outbox rows: one per (event, enabled subscription that asked for its type). With
    a dispatcher in this process (`handoff`) that has room, they are leased to it here and
    handed over once the transaction commits: the callback leaves without a claim. Returns
    how many are left for a claim (then a dispatcher is worth waking)."""
    subscriptions = await _subscribers(session, events)
    owed = [(e, s) for e in events for s in subscriptions if _wants(s, e)]
    if not owed:
        return 0
    leases = handoff.leases([s.id for _, s in owed], now) if handoff else [None] * len(owed)
    rows = [
        {"id": event.delivery_id or uuid.uuid4(), "tenant_id": event.tenant_id,
         "subscription_id": subscription.id, "job_id": event.job_id, "event_seq": event.seq,
         "event_type": event.type, "status": "pending", "attempts": 0, "next_attempt_at": now,
         "created_at": now, "lease_expires_at": lease}
        for (event, subscription), lease in zip(owed, leases, strict=True)
    ]  # fmt: skip
    await direct.execute_later(session, INSERT_DELIVERIES, rows)
    leased = zip(rows, owed, strict=True)
    handed = [(row, s, e) for row, (e, s) in leased if row["lease_expires_at"] is not None]
    if handed:
        on_commit(session, lambda: handoff.take(handed))
    return len(rows) - len(handed)


def _wants(subscription, event: StagedEvent) -> bool:
    if subscription.tenant_id != event.tenant_id:
        return False
    if event.to is not None:
        return subscription.id == event.to
    mine = subscription.job_id is None or subscription.job_id == event.job_id
    return mine and event.type in subscription.events


def notify_payload(event: StagedEvent) -> str:
    row = {
        "seq": event.seq,
        "tenant_id": str(event.tenant_id),
        "job_id": str(event.job_id) if event.job_id else None,
        "type": event.type,
        "data": event.data,
        "created_at": event.created_at.isoformat(),
    }
    payload = json.dumps(row, separators=(",", ":"))
    if len(payload.encode()) > NOTIFY_PAYLOAD_LIMIT:
        return json.dumps({"seq": event.seq})
    return payload
