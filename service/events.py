"""The transactional outbox: an event row and its delivery rows, in the caller's transaction.

Nothing here commits. Whatever the caller commits together (a job's new state, its event, the
deliveries owed for it) is sent together; a rollback sends nothing.
"""

import json
import uuid
import zlib
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import func, or_
from sqlmodel.ext.asyncio.session import AsyncSession

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
STAGED = "fluxhook.staged_events"
# One round trip for all of a transaction's notifications, sent (and delivered) in order.
NOTIFY_ALL = sa.text(
    "SELECT pg_notify(:channel, payload) FROM unnest(CAST(:payloads AS text[])) AS payload"
)


def envelope(event: "JobEvent | StagedEvent") -> dict:
    """The Standard Webhooks body, also the data of each SSE message."""
    timestamp = event.created_at.isoformat().replace("+00:00", "Z")
    return {"type": event.type, "timestamp": timestamp, "data": event.data}


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
        await count_final(session, job, event_type, now)
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
    postgres = session.bind.dialect.name == "postgresql"
    if postgres:
        # Held to commit, and taken before sequence numbers are drawn: a tenant's events then
        # commit in sequence order, which lets an SSE client resume from one Last-Event-ID.
        for tenant_id in sorted({event.tenant_id for event in events}):
            lock = func.pg_advisory_xact_lock(tenant_lock_key(tenant_id))
            await session.exec(sa.select(lock))
    await session.flush()  # the ORM's pending rows first: events point at them
    await _insert_events(session, events)
    if not postgres:  # to this process's streams, on commit: first, their chunk is the cheaper
        for event in events:
            signals.publish_after_commit(session, event)
    if await _add_deliveries(session, events, now, signals.deliveries):
        await signals.after_commit(session, "dispatcher")  # some wait for a dispatcher's claim
    if postgres:
        payloads = [notify_payload(event) for event in events]
        await session.exec(NOTIFY_ALL, params={"channel": EVENTS_CHANNEL, "payloads": payloads})


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


EVENTS = JobEvent.__table__
DELIVERIES = Delivery.__table__
SUBSCRIPTIONS = Subscription.__table__
# The outbox's statements, built once (each caches its own cache key: no walk per event).
INSERT_EVENTS = sa.insert(EVENTS).returning(EVENTS.c.seq)
INSERT_DELIVERIES = sa.insert(DELIVERIES)
SUBSCRIBERS = sa.select(SUBSCRIPTIONS).where(
    SUBSCRIPTIONS.c.tenant_id.in_(sa.bindparam("tenants", expanding=True)),
    SUBSCRIPTIONS.c.enabled,
    or_(
        SUBSCRIPTIONS.c.job_id.is_(None),
        SUBSCRIPTIONS.c.job_id.in_(sa.bindparam("jobs", expanding=True)),
    ),
)


async def _insert_events(session: AsyncSession, events: list[StagedEvent]) -> None:
    rows = [
        {"tenant_id": e.tenant_id, "job_id": e.job_id, "type": e.type, "data": e.data,
         "created_at": e.created_at}
        for e in events
    ]  # fmt: skip
    # Rows of one multi-row INSERT draw ascending sequence numbers in the order given, so the
    # sorted numbers match the rows (asking SQLAlchemy to keep parameter order instead makes
    # it insert row by row on SQLite).
    inserted = await session.exec(INSERT_EVENTS, params=rows)
    seqs = sorted(inserted.scalars().all())
    for event, seq in zip(events, seqs, strict=True):
        event.seq = seq


async def _add_deliveries(
    session: AsyncSession, events: list[StagedEvent], now, handoff=None
) -> int:
    """The outbox rows: one per (event, enabled subscription that asked for its type). With
    a dispatcher in this process (`handoff`) that has room, they are leased to it here and
    handed over once the transaction commits: the callback leaves without a claim. Returns
    how many are left for a claim (then a dispatcher is worth waking)."""
    tenants = sorted({event.tenant_id for event in events})
    jobs = sorted({event.job_id for event in events if event.job_id})
    params = {"tenants": tenants, "jobs": jobs}
    subscriptions = (await session.exec(SUBSCRIBERS, params=params)).all()
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
    await session.exec(INSERT_DELIVERIES, params=rows)
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
