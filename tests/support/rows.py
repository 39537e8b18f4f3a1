"""Rows a test needs in place before what it tests."""

import uuid
from datetime import datetime

from service.models import Tenant


async def new_tenant(db, created_at: datetime) -> uuid.UUID:
    """A tenant, committed; its id."""
    tenant_id = uuid.uuid4()
    async with db.write() as session:
        session.add(Tenant(id=tenant_id, name="t", created_at=created_at))
    return tenant_id
