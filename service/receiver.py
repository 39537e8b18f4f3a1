"""`POST /webhooks/bfl/{token}`: BFL pushes task events here (DESIGN §4).

Checks, in order, each failing with nothing changed: body ≤ 1 MiB (413); the token is a job
id we signed (404); `X-Webhook-Secret` matches the job's derived secret under some rotation
key (401); an `X-BFL-Signature`, if sent, matches the raw body (401); the body is one of BFL's
payloads (400, with the reason); it names the job's own BFL task (409). Then one transaction
applies it through the state machine; duplicates and late events are acknowledged (200) and
change nothing. The image download
happens after the response.
"""

import json
import logging

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from service import jobs, logs
from service.api.http import MIB, error, read_body, services
from service.signing import bfl_signature_matches
from service.updates import apply_update

log = logging.getLogger(__name__)


class OtherTask:
    """A webhook's task is not the one this job is bound to (see `webhook_action`)."""

    def __init__(self, bound_to: str) -> None:
        self.bound_to = bound_to


def _reject(svc, status_code: int, reason: str, detail: str):
    svc.metrics.webhooks_rejected.inc(reason=reason)
    return error(status_code, detail)


async def receive(request: Request) -> JSONResponse:
    svc = services(request)
    body = await _bounded_body(request, svc)
    job_id = svc.signing.job_id_from_webhook_token(request.path_params["token"])
    if job_id is None:
        raise _reject(svc, 404, "bad_token", "unknown webhook")
    with logs.job_context(job_id):
        return await _receive(request, svc, job_id, body)


async def _receive(request: Request, svc, job_id, body: bytes) -> JSONResponse:
    _verify(request, svc, job_id, body)
    update = _parse(svc, body)
    applied = await svc.job_commits.submit((job_id, webhook_action(svc, update)))
    if applied is None:
        raise _reject(svc, 404, "unknown_job", "unknown webhook")
    if isinstance(applied, OtherTask):
        detail = f"this webhook is for BFL task {update.task_id}, not this job's task"
        log.warning("%s (%s)", detail, applied.bound_to)
        raise _reject(svc, 409, "other_task", detail)
    if (deliveries := svc.signals.deliveries) is not None:
        # The callbacks this commit handed over go first; the answer to BFL and the image
        # download it starts come a moment later (service.loops.dispatcher).
        await deliveries.handoffs_on_the_wire()
    return _acknowledge(svc, job_id, applied)


def webhook_action(svc, update: jobs.BflUpdate):
    """What one webhook does to its job, inside a group commit (None: no such job)."""

    async def act(session, job, now):
        if job is None:
            return None
        # A job is bound to the first BFL task that names it (the submit response or an
        # earlier webhook); another task's events change nothing.
        if job.bfl_id is not None and update.task_id != job.bfl_id:
            return OtherTask(job.bfl_id)
        fetch_lease = svc.fetcher.lease if svc.fetcher else None
        return await apply_update(
            session, svc.signals, svc.urls, job, update,
            via="webhook", now=now, fetch_lease=fetch_lease,
        )  # fmt: skip

    return act


async def _bounded_body(request: Request, svc) -> bytes:
    try:
        return await read_body(request, MIB)
    except HTTPException:
        svc.metrics.webhooks_rejected.inc(reason="too_large")
        raise


def _verify(request: Request, svc, job_id, body: bytes) -> None:
    given = request.headers.get("x-webhook-secret")
    if not given:
        raise _reject(svc, 401, "missing_secret", "X-Webhook-Secret is missing")
    if not svc.signing.webhook_secret_matches(job_id, given):
        raise _reject(svc, 401, "wrong_secret", "X-Webhook-Secret does not match")
    signature = request.headers.get("x-bfl-signature")
    if signature is not None and not bfl_signature_matches(given, body, signature):
        raise _reject(svc, 401, "bad_signature", "X-BFL-Signature does not match the body")


def _parse(svc, body: bytes) -> jobs.BflUpdate:
    try:
        update = jobs.parse_update(json.loads(body))
    except ValueError as exc:  # InvalidPayload is a ValueError, and so is bad JSON
        reason = str(exc) if isinstance(exc, jobs.InvalidPayload) else "body is not JSON"
        raise _reject(svc, 400, "bad_payload", reason) from None
    if update.status == jobs.TASK_NOT_FOUND:
        raise _reject(svc, 400, "bad_payload", "'Task not found' is not a task event")
    return update


def _acknowledge(svc, job_id, applied) -> JSONResponse:
    if applied.change is None:
        svc.metrics.webhooks_received.inc(outcome="ignored")
        return JSONResponse({"status": "ignored"})
    svc.metrics.webhooks_received.inc(outcome="applied")
    if applied.change.status in jobs.TERMINAL:
        svc.metrics.jobs_completed.inc(via="webhook")
        log.info("BFL finished the job: %s (webhook)", applied.change.status)
    if applied.fetch and svc.fetcher:
        svc.fetcher.handoff(applied.fetch)
    return JSONResponse({"status": "applied"})
