"""What each tenant spent (DESIGN §3 `GET /v1/usage`): a daily rollup per tenant, model and
final status, of jobs and BFL's reported cost (credits).

Counted where a job's final state is recorded (its terminal event, in the same transaction),
so the totals equal the sum over the jobs, and kept when retention prunes the jobs. A `Ready`
whose image never arrives ends `Error` later: its count (and cost) moves from `Ready` on the
day it was Ready to `Error` on the day it failed, so every job counts once.
"""

import functools
import uuid
from dataclasses import dataclass
from datetime import date, datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel.ext.asyncio.session import AsyncSession

from service import direct, jobs
from service.db import STAGED_USAGE as STAGED
from service.db import before_commit
from service.models import Job, Tenant, UsageDay

USAGE = UsageDay.__table__
COLUMNS = ("tenant_id", "day", "model", "status", "jobs", "cost")  # the upsert's parameters
# session.info[STAGED]: (tenant, day, model, status) → (jobs, cost), written by one hook.


def count_final(session: AsyncSession, job: Job, event_type: str, now: datetime) -> None:
    """Inside the transaction that records `event_type` (a terminal event) for `job`. The
    counts are added up per row and written just before the transaction commits: jobs that
    finish together (a group commit's webhooks) cost one statement per row, not one each."""
    cost = job.cost or 0.0
    if event_type == jobs.EVENT_FAILED and job.upstream_ready_at is not None:
        ready_day = job.upstream_ready_at.date()
        _add(session, (job.tenant_id, ready_day, job.model, jobs.READY), -1, -cost)
    _add(session, (job.tenant_id, now.date(), job.model, job.status), 1, cost)


def _add(session, key: tuple[uuid.UUID, date, str, str], count: int, cost: float) -> None:
    """Stage `count` jobs and `cost` for the (tenant, day, model, status) row `key`."""
    staged = session.info.setdefault(STAGED, {})
    before_commit(session, STAGED, lambda: _write(session))  # once: a second is ignored
    jobs_so_far, cost_so_far = staged.get(key, (0, 0.0))
    staged[key] = (jobs_so_far + count, cost_so_far + cost)


async def _write(session) -> None:
    rows = [  # in key order: concurrent transactions lock the rows they share in one order
        dict(zip(COLUMNS, (*key, count, cost), strict=True))
        for key, (count, cost) in sorted(session.info.pop(STAGED).items())
        if count or cost  # a Ready that failed in the same transaction nets to nothing
    ]
    if rows:
        await direct.execute_later(session, _upsert(direct.dialect_of(session).name), rows)


@functools.cache
def _upsert(dialect_name: str) -> sa.Insert:
    """Add to the (tenant, day, model, status) row, creating it if needed (built once)."""
    dialect = postgresql if dialect_name == "postgresql" else sqlite
    upsert = dialect.insert(USAGE).values(
        {name: sa.bindparam(name, type_=USAGE.c[name].type) for name in COLUMNS}
    )
    return upsert.on_conflict_do_update(
        index_elements=[USAGE.c.tenant_id, USAGE.c.day, USAGE.c.model, USAGE.c.status],
        set_={
            "jobs": USAGE.c.jobs + upsert.excluded.jobs,
            "cost": USAGE.c.cost + upsert.excluded.cost,
        },
    )


@dataclass(frozen=True)
class UsageRow:
    tenant: str
    day: date
    model: str
    status: str
    jobs: int
    cost: float

    def view(self) -> dict:
        return {"day": self.day.isoformat(), "model": self.model, "status": self.status,
                "jobs": self.jobs, "cost": round(self.cost, 6)}  # fmt: skip


async def usage(
    session: AsyncSession, start: date, end: date, tenant_id: uuid.UUID | None = None
) -> list[UsageRow]:
    """Rows from `start` to `end` (inclusive), one tenant's or (None) every tenant's."""
    query = (
        sa.select(Tenant.name, USAGE.c.day, USAGE.c.model, USAGE.c.status, USAGE.c.jobs,
                  USAGE.c.cost)
        .join(Tenant, Tenant.id == USAGE.c.tenant_id)
        .where(USAGE.c.day >= start, USAGE.c.day <= end, USAGE.c.jobs != 0)
        .order_by(USAGE.c.day, Tenant.name, USAGE.c.model, USAGE.c.status)
    )  # fmt: skip
    if tenant_id is not None:
        query = query.where(USAGE.c.tenant_id == tenant_id)
    return [UsageRow(*row) for row in (await session.exec(query)).all()]
