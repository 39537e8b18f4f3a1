"""API keys: `x-key` (BFL's header, so BFL clients work unchanged) or `Authorization: Bearer`.

Keys are stored as SHA-256 hashes; each belongs to one tenant. Failures answer as BFL does
(403, `Not authenticated…`) so a drop-in client sees the errors it already handles.

Revocation reaches every process within CACHE_TTL_S: a process trusts a key it has checked
for that long, timed from *before* the check's read, so once a revocation has committed for
CACHE_TTL_S no process holds the key; `fluxhook keys revoke` waits that out before it
returns. (A read on every request instead was measured at +3.4 ms of server CPU per
request, about three times what a cached check and a small response cost: README,
Operations.) `last_used_at` is written at most once a minute per key, never per request.
"""

import re
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import select
from sqlmodel.ext.asyncio.session import AsyncSession

from service import direct
from service.api.http import error, services
from service.db import Database
from service.models import ApiKey, Tenant
from service.signing import hash_api_key, new_api_key

CACHE_TTL_S = 1.0  # how long a revoked key may still pass in a process that checked it
CACHE_MAX = 10_000
LAST_USED_EVERY = timedelta(minutes=1)
NAME_MAX = 200  # the column's length
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
API_KEYS = ApiKey.__table__
# A live key by its hash: read once a second per key in a busy process, and on every request
# of a key used less often than that (most keys), so it runs on the driver (`service.direct`).
KEY_BY_HASH = sa.select(API_KEYS.c.id, API_KEYS.c.tenant_id, API_KEYS.c.last_used_at).where(
    API_KEYS.c.key_hash == sa.bindparam("key_hash", type_=API_KEYS.c.key_hash.type),
    API_KEYS.c.revoked_at.is_(None),
)


class KeyRequestError(ValueError):
    """An operator's key command that cannot be done; the message says why."""


@dataclass(frozen=True)
class CheckedKey:
    key_id: uuid.UUID
    tenant_id: uuid.UUID
    last_used_at: datetime | None  # as the check read it


class KeyCache:
    """Keys this process checked in the last CACHE_TTL_S, so a hot key costs no query per
    request; and when this process last recorded each key's use."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[CheckedKey, float]] = {}
        self._recorded: dict[uuid.UUID, datetime] = {}

    def get(self, key_hash: str) -> CheckedKey | None:
        entry = self._entries.get(key_hash)
        if entry is None or entry[1] < time.monotonic():
            return None
        return entry[0]

    def put(self, key_hash: str, key: CheckedKey, checked_at: float) -> None:
        """`checked_at`: time.monotonic() taken before the read that found the key."""
        if len(self._entries) >= CACHE_MAX:
            self._entries.clear()
        self._entries[key_hash] = (key, checked_at + CACHE_TTL_S)

    def use_is_due(self, key: CheckedKey, now: datetime) -> bool:
        """True (and the minute claimed) when neither the database, as last read, nor this
        process has recorded a use of the key in the last minute."""
        known = [t for t in (key.last_used_at, self._recorded.get(key.key_id)) if t is not None]
        if known and now - max(known) < LAST_USED_EVERY:
            return False
        if len(self._recorded) >= CACHE_MAX:
            self._recorded.clear()
        self._recorded[key.key_id] = now
        return True


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
    checked = await _checked_key(svc, hash_api_key(key))
    if checked is None:
        raise error(403, "Not authenticated - Invalid Authentication")
    now = svc.clock.now()
    if svc.keys.use_is_due(checked, now):
        await _record_use(svc.db, checked.key_id, now)
    return checked.tenant_id


async def _checked_key(svc, key_hash: str) -> CheckedKey | None:
    cached = svc.keys.get(key_hash)
    if cached is not None:
        return cached
    started = time.monotonic()
    async with svc.db.read() as session:
        rows = await direct.fetch(session, KEY_BY_HASH, {"key_hash": key_hash})
    if not rows:
        return None
    checked = CheckedKey(rows[0]["id"], rows[0]["tenant_id"], rows[0]["last_used_at"])
    svc.keys.put(key_hash, checked, started)
    return checked


async def _record_use(db: Database, key_id: uuid.UUID, now: datetime) -> None:
    """Conditional, so that processes that claim the same minute write it once."""
    stale = sa.or_(ApiKey.last_used_at.is_(None), ApiKey.last_used_at <= now - LAST_USED_EVERY)
    update = sa.update(ApiKey).where(ApiKey.id == key_id, stale)
    async with db.write() as session:
        await session.exec(update.values(last_used_at=now))


def valid_key_name(name: str) -> str:
    """The name without surrounding spaces, or KeyRequestError saying what is wrong."""
    name = name.strip()
    if not name:
        raise KeyRequestError("a key needs a name (it is how `keys list` tells keys apart)")
    if len(name) > NAME_MAX:
        raise KeyRequestError(f"a key name has at most {NAME_MAX} characters")
    if CONTROL.search(name):
        raise KeyRequestError("a key name cannot contain control characters")
    return name


async def create_key(session: AsyncSession, name: str, now: datetime, tenant_id=None) -> str:
    """A new key (returned once, stored hashed), for a new tenant unless one is given."""
    name = valid_key_name(name)
    if (await session.exec(select(ApiKey.id).where(ApiKey.name == name))).first() is not None:
        raise KeyRequestError(f"a key named {name!r} already exists (names are unique)")
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


async def list_keys(session: AsyncSession) -> list[ApiKey]:
    """Every key, oldest first (callers show them without `key_hash`)."""
    query = select(ApiKey).order_by(ApiKey.created_at, ApiKey.name)
    return list((await session.exec(query)).all())


async def revoke_key(session: AsyncSession, key_id: str, now: datetime) -> tuple[ApiKey, bool]:
    """The key, and whether this call revoked it (False: it already was)."""
    try:
        parsed = uuid.UUID(key_id)
    except ValueError:
        raise KeyRequestError(f"not a key id: {key_id!r} (`keys list` shows them)") from None
    key = await session.get(ApiKey, parsed)
    if key is None:
        raise KeyRequestError(f"no key has the id {parsed} (`keys list` shows them)")
    if key.revoked_at is not None:
        return key, False
    key.revoked_at = now
    session.add(key)
    return key, True
