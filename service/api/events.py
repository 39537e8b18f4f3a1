"""Server-Sent Events: `GET /v1/events` (all the tenant's jobs) and `GET /v1/jobs/{id}/events`.

Each message's `id:` is the event's `job_events` sequence number. A client that reconnects with
`Last-Event-ID` (header, or `?last_event_id=` for EventSource-less clients) first gets what it
missed, read from the table, then the live stream; every event exactly once, in order.
`/v1/events` without an id starts from now, and says where: right after the `: connected`
comment comes `id: <seq>` alone (the sequence number it starts after), so a client whose stream
drops before any event still has an id to resume from. A job's stream without an id replays
the job's whole history, and ends after the job's terminal event. A comment every 15 s
(SSE_HEARTBEAT_S) keeps PaaS routers from closing an idle stream.
"""

import re
import uuid
from collections.abc import AsyncIterator

from sqlmodel import select
from starlette.requests import Request
from starlette.responses import StreamingResponse

from service.api.auth import authenticate
from service.api.http import error, services
from service.api.jobs import tenant_job
from service.hub import CLOSED, RESYNC, StreamEvent
from service.jobs import TERMINAL_EVENTS
from service.models import JobEvent

REPLAY_BATCH = 500
HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}
DIGITS = re.compile(r"[0-9]+")


def format_event(event: StreamEvent) -> str:
    return f"id: {event.seq}\nevent: {event.type}\ndata: {event.body}\n\n"


def start_id(seq: int) -> str:
    """A message with an id and no data. WHATWG HTML, "Interpreting an event stream": on the
    blank line, "dispatch the event" first sets the EventSource's last event ID string from
    the id buffer, then, "if the data buffer is an empty string", returns without dispatching
    anything. So it moves the client's Last-Event-ID to `seq`, and no listener fires."""
    return f"id: {seq}\n\n"


def _last_event_id(request: Request) -> int | None:
    """The id to resume after; empty is none, as EventSource itself treats it."""
    raw = request.headers.get("last-event-id") or request.query_params.get("last_event_id")
    if not raw:
        return None
    # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
    if not DIGITS.fullmatch(raw):
        raise error(422, "Last-Event-ID must be an event id this API gave out")
    return int(raw)


async def _latest_seq(svc, tenant_id: uuid.UUID) -> int:
    query = select(JobEvent.seq).where(JobEvent.tenant_id == tenant_id)
    async with svc.db.read() as session:
        latest = (await session.exec(query.order_by(JobEvent.seq.desc()).limit(1))).first()
    return latest or 0


async def tenant_events(request: Request) -> StreamingResponse:
    tenant_id = await authenticate(request)
    svc = services(request)
    last = _last_event_id(request)
    if last is not None:
        return _stream(svc, tenant_id, None, last)
    last = await _latest_seq(svc, tenant_id)
    return _stream(svc, tenant_id, None, last, first=start_id(last))


async def job_events(request: Request) -> StreamingResponse:
    job = await tenant_job(request)
    svc = services(request)
    last = _last_event_id(request) or 0
    return _stream(svc, job.tenant_id, job.id, last)


def _stream(svc, tenant_id, job_id, last: int, first: str = "") -> StreamingResponse:
    body = _events(svc, tenant_id, job_id, last, first)
    return StreamingResponse(body, media_type="text/event-stream", headers=HEADERS)


async def _events(svc, tenant_id, job_id, last: int, first: str) -> AsyncIterator[str]:
    """`first` (a start id, or nothing) goes out in the same write as `: connected`."""
    with svc.hub.listen(tenant_id, job_id) as listener:
        svc.metrics.sse_clients.inc()
        try:
            yield ": connected\n\n" + first
            while True:
                replayed = None
                async for replayed in _replay(svc, tenant_id, job_id, last):
                    last = replayed.seq
                    yield format_event(replayed)
                if _ends(job_id, replayed):  # the whole history first: a Ready can end Error
                    return
                async for chunk, event in _live(listener, last, svc.settings.sse_heartbeat_s):
                    last = event.seq if event else last
                    yield chunk
                    if _ends(job_id, event):
                        return
                if svc.hub.closed:
                    return
        finally:
            svc.metrics.sse_clients.inc(-1)


def _ends(job_id, event: StreamEvent | None) -> bool:
    """A job's stream ends with the job's terminal event. (The one exception to "nothing
    follows": a `job.ready` whose image BFL never delivers is followed, up to 15 minutes
    later, by `job.failed`, which `/v1/events` and callbacks carry.)"""
    return job_id is not None and event is not None and event.type in TERMINAL_EVENTS


async def _live(listener, last: int, heartbeat_s: float) -> AsyncIterator[tuple[str, object]]:
    """Live events after `last` (with the event), heartbeats when idle (with None); stops to
    resync or at shutdown."""
    while True:
        item = await listener.next(heartbeat_s)
        if item is None:
            yield ": heartbeat\n\n", None
        elif item is RESYNC or item is CLOSED:
            return
        elif item.seq > last:
            last = item.seq
            yield format_event(item), item


async def _replay(svc, tenant_id, job_id, after: int) -> AsyncIterator[StreamEvent]:
    """Committed events after `after`, from the table, in batches."""
    while True:
        query = select(JobEvent).where(JobEvent.tenant_id == tenant_id, JobEvent.seq > after)
        if job_id is not None:
            query = query.where(JobEvent.job_id == job_id)
        async with svc.db.read() as session:
            rows = (await session.exec(query.order_by(JobEvent.seq).limit(REPLAY_BATCH))).all()
        for row in rows:
            after = row.seq
            yield StreamEvent.from_row(row)
        if len(rows) < REPLAY_BATCH:
            return
