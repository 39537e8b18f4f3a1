"""Rows a test needs in place before what it tests."""

import uuid
from datetime import datetime

from service.events import record_event
from service.models import Tenant


async def new_tenant(db, created_at: datetime) -> uuid.UUID:
    """A tenant, committed; its id."""
    tenant_id = uuid.uuid4()
    async with db.write() as session:
        session.add(Tenant(id=tenant_id, name="t", created_at=created_at))
    return tenant_id


async def new_note(db, signals, tenant_id: uuid.UUID, note: str, created_at: datetime) -> int:
    """A tenant's event (`job.progress`, no job) whose data is `{"note": note}`, committed
    through `signals` as fluxhook commits events; its sequence number."""
    async with db.write_direct() as transaction:
        staged = await record_event(
            transaction, signals, tenant_id=tenant_id, job_id=None, type="job.progress",
            data={"note": note}, now=created_at,
        )  # fmt: skip
    return staged.seq
