"""Operations: `/healthz`, `/readyz`, `/metrics`."""

import hmac
from typing import NoReturn

import sqlalchemy as sa
from sqlalchemy import func
from starlette.exceptions import HTTPException
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
    """The database answers, its schema is at the latest migration, and the image store
    takes images (an S3 bucket that is missing or refuses the credentials is a 503)."""
    svc = services(request)
    try:
        revision = await current_revision(svc.db)
    except sa.exc.SQLAlchemyError as exc:
        return JSONResponse({"status": "unavailable", "reason": type(exc).__name__}, 503)
    head = head_revision()
    if revision != head:
        reason = f"database at migration {revision}, code expects {head}"
        return JSONResponse({"status": "unavailable", "reason": reason}, 503)
    if problem := await svc.images.problem():
        return JSONResponse({"status": "unavailable", "reason": problem}, 503)
    return JSONResponse({"status": "ok", "migration": revision})


async def metrics(request: Request) -> PlainTextResponse:
    """Prometheus text; with METRICS_KEY set, only for `Authorization: Bearer <METRICS_KEY>`."""
    svc = services(request)
    if svc.settings.metrics_key is not None:
        _require_metrics_key(request, svc.settings.metrics_key)
    await _refresh_gauges(svc)
    return PlainTextResponse(svc.metrics.render(), media_type="text/plain; version=0.0.4")


def _require_metrics_key(request: Request, metrics_key: str) -> None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        _refuse("/metrics needs `Authorization: Bearer <METRICS_KEY>`")
    # Bytes, not str: compare_digest takes only ASCII str, and a header may carry more.
    if not hmac.compare_digest(token.strip().encode(), metrics_key.encode()):
        _refuse("the bearer token is not this deployment's METRICS_KEY")


def _refuse(reason: str) -> NoReturn:
    raise HTTPException(401, detail=reason, headers={"WWW-Authenticate": 'Bearer realm="metrics"'})


async def _refresh_gauges(svc) -> None:
    by_status = sa.select(Job.status, Job.model, func.count()).group_by(Job.status, Job.model)
    in_flight = sa.select(func.count()).where(Job.holds_slot)
    async with svc.db.read() as session:
        rows = (await session.exec(by_status)).all()
        slots = (await session.exec(in_flight)).scalar()
    svc.metrics.jobs.clear()
    queued = 0
    for status, model, count in rows:
        svc.metrics.jobs.inc(count, status=status, model=model)
        queued += count if status == jobs.QUEUED else 0
    svc.metrics.queue_depth.set(queued)
    svc.metrics.upstream_in_flight.set(slots)
