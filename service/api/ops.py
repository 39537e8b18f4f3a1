"""Operations: `/healthz`, `/readyz`, `/metrics`."""

import sqlalchemy as sa
from sqlalchemy import func
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse

from service import jobs
from service.api.http import services
from service.migrations import current_revision, head_revision
from service.models import Job


async def healthz(_request: Request) -> JSONResponse:
    """The process is alive (no dependency is checked)."""
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> JSONResponse:
    """The database answers and its schema is at the latest migration."""
    svc = services(request)
    try:
        revision = await current_revision(svc.db)
    except sa.exc.SQLAlchemyError as exc:
        return JSONResponse({"status": "unavailable", "reason": type(exc).__name__}, 503)
    head = head_revision()
    if revision != head:
        reason = f"database at migration {revision}, code expects {head}"
        return JSONResponse({"status": "unavailable", "reason": reason}, 503)
    return JSONResponse({"status": "ok", "migration": revision})


async def metrics(request: Request) -> PlainTextResponse:
    svc = services(request)
    await _refresh_gauges(svc)
    return PlainTextResponse(svc.metrics.render(), media_type="text/plain; version=0.0.4")


async def _refresh_gauges(svc) -> None:
    by_status = sa.select(Job.status, Job.image_stored, Job.model, func.count()).group_by(
        Job.status, Job.image_stored, Job.model
    )
    in_flight = sa.select(func.count()).where(Job.holds_slot)
    async with svc.db.read() as session:
        rows = (await session.exec(by_status)).all()
        slots = (await session.exec(in_flight)).scalar()
    svc.metrics.jobs.clear()
    queued = 0
    for status, stored, model, count in rows:
        shown = jobs.public_status(status, stored)
        svc.metrics.jobs.inc(count, status=shown, model=model)
        queued += count if status == jobs.QUEUED else 0
    svc.metrics.queue_depth.set(queued)
    svc.metrics.upstream_in_flight.set(slots)
