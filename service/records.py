"""Jobs as plain records, for the hottest write path (BFL's webhooks, applied in batches).

The ORM's per-object bookkeeping costs more than the state machine itself there. A record
has the same attributes as `Job`, so `jobs.transition`, `updates.apply_update` and
`views.job_view` take either; `write_changes` then updates exactly what changed, one
statement per shape of change.
"""

import functools
import uuid
from collections import defaultdict
from types import SimpleNamespace

import sqlalchemy as sa
from sqlmodel import SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

from service import direct
from service.models import Job

JOBS = Job.__table__
SHAREABLE = (type(None), bool, int, float, str, bytes)  # defaults a new row may share


@functools.lru_cache(maxsize=512)
def _lock_jobs_of(count: int) -> sa.Select:
    """The jobs with ids `id_0`… `id_<count-1>`, locked (one statement per count: `direct`
    runs no expanding IN)."""
    ids = [sa.bindparam(f"id_{i}", type_=JOBS.c.id.type) for i in range(count)]
    return sa.select(JOBS).where(JOBS.c.id.in_(ids)).order_by(JOBS.c.id).with_for_update()


class JobRecord:
    def __init__(self, mapping) -> None:
        self.__dict__.update(mapping)
        self._loaded = dict(mapping)

    def changes(self) -> dict:
        return {
            name: value
            for name, value in vars(self).items()
            if not name.startswith("_") and self._loaded[name] != value
        }


def new_row(model: type[SQLModel], /, **values) -> SimpleNamespace:
    """A new row of `model`, as a plain object with its attributes: the model's defaults, then
    `values`, which the caller gives in the columns' own types. (A table model's constructor
    validates and instruments the instance: ~150 µs each, on the hot path.)"""
    return SimpleNamespace(**(_defaults_of(model) | values))


def new_job(**values) -> JobRecord:
    return JobRecord(vars(new_row(Job, **values)))


def _takes_validated_data(field) -> bool:
    """Whether a default factory wants the fields validated so far (pydantic ≥ 2.10 can)."""
    return getattr(field, "default_factory_takes_validated_data", False)


def _defaults_of(model: type[SQLModel]) -> dict:
    fixed, made = _default_parts(model)
    return fixed | {name: make() for name, make in made.items()}


@functools.cache
def _default_parts(model: type[SQLModel]) -> tuple[dict, dict]:
    """The model's defaults, sorted once: values that can be shared (immutable), and what
    makes the others. (pydantic's `get_default` inspects a factory's signature each call.)"""
    fixed, made = {}, {}
    for name, field in model.model_fields.items():
        if field.is_required():
            continue
        factory = field.default_factory
        if factory is None and isinstance(field.default, SHAREABLE):
            fixed[name] = field.default
        elif factory is not None and not _takes_validated_data(field):
            made[name] = factory
        else:
            made[name] = functools.partial(field.get_default, call_default_factory=True)
    return fixed, made


async def lock_jobs(session: AsyncSession, ids) -> dict[uuid.UUID, JobRecord]:
    """The jobs with these ids, locked for this transaction (in id order: no deadlocks)."""
    if not ids:
        return {}
    params = {f"id_{i}": job_id for i, job_id in enumerate(sorted(ids))}
    rows = await direct.fetch(session, _lock_jobs_of(len(params)), params)
    return {row["id"]: JobRecord(row) for row in rows}


async def write_changes(session: AsyncSession, records) -> None:
    by_shape: dict[tuple, list[dict]] = defaultdict(list)
    for record in records:
        changes = record.changes()
        if changes:
            shape = tuple(sorted(changes))
            by_shape[shape].append({"job": record.id} | {f"v_{k}": v for k, v in changes.items()})
    for shape, params in by_shape.items():
        await direct.execute_later(session, _update_of(shape), params)


@functools.lru_cache(maxsize=256)
def _update_of(shape: tuple[str, ...]) -> sa.Update:
    """The UPDATE for one set of changed columns (few shapes recur: built once each)."""
    values = {name: sa.bindparam(f"v_{name}", type_=JOBS.c[name].type) for name in shape}
    return sa.update(JOBS).where(JOBS.c.id == sa.bindparam("job")).values(values)


async def act_on_jobs(session: AsyncSession, items: list, now) -> list:
    """Group-commit body for per-job actions: `items` are (job_id, action) pairs, each run as
    `await action(session, record, now)` on the locked record (None if no such job), in
    order; then every change is written. Returns each action's result."""
    records = await lock_jobs(session, {job_id for job_id, _ in items})
    results = [await action(session, records.get(job_id), now) for job_id, action in items]
    await write_changes(session, records.values())
    return results
