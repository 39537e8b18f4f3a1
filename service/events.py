"""The transactional outbox: an event row and its delivery rows, in the caller's transaction.

Nothing here commits. Whatever the caller commits together (a job's new state, its event, the
deliveries owed for it) is sent together; a rollback sends nothing.
"""

import json
import uuid
import zlib
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import func, or_
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from service.models import Delivery, JobEvent, Subscription
from service.signals import Signals
from service.views import job_view

EVENTS_CHANNEL = "fluxhook_events"
# PostgreSQL's NOTIFY payload limit is 8000 bytes; bigger events go by sequence number only.
NOTIFY_PAYLOAD_LIMIT = 7900


def envelope(event: JobEvent) -> dict:
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
) -> JobEvent:
    postgres = session.bind.dialect.name == "postgresql"
    if postgres:
        # Held to commit: a tenant's event sequence numbers then commit in order, which is
        # what lets an SSE client resume from one Last-Event-ID without gaps.
        await session.exec(sa.select(func.pg_advisory_xact_lock(tenant_lock_key(tenant_id))))
    event = JobEvent(tenant_id=tenant_id, job_id=job_id, type=type, data=data, created_at=now)
    session.add(event)
    await session.flush()
    owed = await _add_deliveries(session, event, now)
    if postgres:
        await session.exec(sa.select(func.pg_notify(EVENTS_CHANNEL, notify_payload(event))))
    await signals.after_commit(session, "hub", *(["dispatcher"] if owed else []))
    return event


async def record_job_event(
    session: AsyncSession, signals: Signals, urls, job, event_type: str, now: datetime
) -> JobEvent:
    """An event about a job; its data is the job as `GET /v1/jobs/{id}` shows it now."""
    return await record_event(
        session,
        signals,
        tenant_id=job.tenant_id,
        job_id=job.id,
        type=event_type,
        data=job_view(job, urls),
        now=now,
    )


async def _add_deliveries(session: AsyncSession, event: JobEvent, now: datetime) -> int:
    query = select(Subscription).where(
        Subscription.tenant_id == event.tenant_id,
        Subscription.enabled,
        or_(Subscription.job_id.is_(None), Subscription.job_id == event.job_id),
    )
    owed = 0
    for subscription in (await session.exec(query)).all():
        if event.type not in subscription.events:
            continue
        session.add(
            Delivery(
                tenant_id=event.tenant_id,
                subscription_id=subscription.id,
                job_id=event.job_id,
                event_seq=event.seq,
                event_type=event.type,
                next_attempt_at=now,
                created_at=now,
            )
        )
        owed += 1
    return owed


def notify_payload(event: JobEvent) -> str:
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
