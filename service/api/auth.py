"""API keys: `x-key` (BFL's header, so BFL clients work unchanged) or `Authorization: Bearer`.

Keys are stored as SHA-256 hashes; each belongs to one tenant. Failures answer as BFL does
(403, `Not authenticated…`) so a drop-in client sees the errors it already handles.
"""

import time
import uuid
from datetime import datetime

from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from service.api.http import error, services
from service.models import ApiKey, Tenant
from service.signing import hash_api_key, new_api_key

CACHE_TTL_S = 60.0  # a revoked key stops working within a minute
CACHE_MAX = 10_000


class KeyCache:
    """Recently verified key hashes → tenant, so a hot key costs no query per request."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[uuid.UUID, float]] = {}

    def get(self, key_hash: str) -> uuid.UUID | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key_hash: str, tenant_id: uuid.UUID) -> None:
        if len(self._entries) >= CACHE_MAX:
            self._entries.clear()
        self._entries[key_hash] = (tenant_id, time.monotonic() + CACHE_TTL_S)


def presented_key(request) -> str | None:
    key = request.headers.get("x-key")
    if key:
        return key.strip()
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


async def authenticate(request) -> uuid.UUID:
    """The caller's tenant id, or 403."""
    key = presented_key(request)
    if not key:
        raise error(403, "Not authenticated")
    svc = services(request)
    key_hash = hash_api_key(key)
    tenant_id = svc.keys.get(key_hash)
    if tenant_id is None:
        async with svc.db.read() as session:
            query = select(ApiKey.tenant_id).where(
                ApiKey.key_hash == key_hash, ApiKey.revoked_at.is_(None)
            )
            tenant_id = (await session.exec(query)).first()
        if tenant_id is None:
            raise error(403, "Not authenticated - Invalid Authentication")
        svc.keys.put(key_hash, tenant_id)
    return tenant_id


async def create_key(session: AsyncSession, name: str, now: datetime, tenant_id=None) -> str:
    """A new key (returned once, stored hashed), for a new tenant unless one is given."""
    if tenant_id is None:
        tenant = Tenant(name=name, created_at=now)
        session.add(tenant)
        await session.flush()
        tenant_id = tenant.id
    key = new_api_key()
    session.add(
        ApiKey(
            tenant_id=tenant_id,
            name=name,
            prefix=key[:8],
            key_hash=hash_api_key(key),
            created_at=now,
        )
    )
    return key
