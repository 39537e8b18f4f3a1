"""Native job routes: list, one job with its events, the stored image, signed image URLs."""

import base64
import logging
import uuid
from datetime import datetime

import anyio
from sqlalchemy import and_, or_
from sqlmodel import select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service import jobs
from service.api.auth import authenticate
from service.api.http import error, query_int, services
from service.api.images import serve_image
from service.db import Database
from service.hub import CLOSED
from service.models import Job, JobEvent
from service.views import job_view

log = logging.getLogger(__name__)

IMMUTABLE = "max-age=31536000, immutable"


async def load_job(db: Database, tenant_id: uuid.UUID, job_id: uuid.UUID) -> Job | None:
    """The tenant's job, or None: another tenant's job does not exist for this caller."""
    async with db.read() as session:
        job = await session.get(Job, job_id)
    return job if job is not None and job.tenant_id == tenant_id else None


async def wait_for_terminal(svc, job: Job, wait_s: float) -> Job:
    """Long-poll: the job once settled, or as it stands after `wait_s` seconds."""
    deadline = anyio.current_time() + wait_s
    with svc.hub.listen(job.tenant_id, job.id) as listener:
        job = await load_job(svc.db, job.tenant_id, job.id)  # re-read now that we listen
        while job.status not in jobs.TERMINAL:
            remaining = deadline - anyio.current_time()
            item = await listener.next(remaining) if remaining > 0 else None
            if item is None or item is CLOSED:
                break
            job = await load_job(svc.db, job.tenant_id, job.id)
    return await load_job(svc.db, job.tenant_id, job.id)


def _path_job_id(request: Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.path_params["job_id"])
    except ValueError:
        raise error(404, "job not found") from None


async def tenant_job(request: Request) -> Job:
    tenant_id = await authenticate(request)
    job = await load_job(services(request).db, tenant_id, _path_job_id(request))
    if job is None:
        raise error(404, "job not found")
    return job


def _status_filter(status: str):
    if status not in jobs.STATUSES:
        raise error(422, f"status must be one of {', '.join(jobs.STATUSES)}")
    return Job.status == status


def encode_cursor(job: Job) -> str:
    raw = f"{job.created_at.isoformat()}|{job.id}"
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created, _, job_id = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        return datetime.fromisoformat(created), uuid.UUID(job_id)
    except (ValueError, UnicodeDecodeError):
        raise error(422, "cursor is not one this API gave out") from None


async def list_jobs(request: Request) -> JSONResponse:
    tenant_id = await authenticate(request)
    limit = query_int(request, "limit", 50, 1, 200)
    query = select(Job).where(Job.tenant_id == tenant_id)
    if (status := request.query_params.get("status")) is not None:
        query = query.where(_status_filter(status))
    if model := request.query_params.get("model"):
        query = query.where(Job.model == model)
    if cursor := request.query_params.get("cursor"):
        created, job_id = _decode_cursor(cursor)
        query = query.where(
            or_(Job.created_at < created, and_(Job.created_at == created, Job.id < job_id))
        )
    query = query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)
    svc = services(request)
    async with svc.db.read() as session:
        rows = (await session.exec(query)).all()
    page = rows[:limit]
    next_cursor = encode_cursor(page[-1]) if len(rows) > limit else None
    return JSONResponse({"jobs": [job_view(j, svc.urls) for j in page], "next_cursor": next_cursor})


async def get_job(request: Request) -> JSONResponse:
    job = await tenant_job(request)
    svc = services(request)
    query = select(JobEvent).where(JobEvent.job_id == job.id).order_by(JobEvent.seq)
    async with svc.db.read() as session:
        events = (await session.exec(query)).all()
    view = job_view(job, svc.urls)
    view["events"] = [_event_summary(event) for event in events]
    return JSONResponse(view)


def _event_summary(event: JobEvent) -> dict:
    return {
        "seq": event.seq,
        "type": event.type,
        "timestamp": event.created_at.isoformat().replace("+00:00", "Z"),
        "status": event.data.get("status"),
        "progress": event.data.get("progress"),
    }


async def job_image(request: Request) -> Response:
    job = await tenant_job(request)
    return await serve_image(request, job.id, {"cache-control": "private, " + IMMUTABLE})


async def signed_image(request: Request) -> Response:
    """`result.sample`: no key needed, expires, and unlike BFL's URLs sends CORS headers."""
    svc = services(request)
    token = request.path_params["token"]
    job_id = svc.signing.job_id_from_image_token(token, svc.settings.image_url_ttl_s)
    if job_id is None:
        raise error(404, "image link is invalid or has expired")
    cors = {"access-control-allow-origin": "*", "cache-control": "public, " + IMMUTABLE}
    return await serve_image(request, job_id, cors)
