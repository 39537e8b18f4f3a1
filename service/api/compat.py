"""The BFL drop-in: `POST /v1/{model}`, `GET /v1/get_result`, `GET /v1/credits`.

An app points the official BFL client at fluxhook by changing its base URL. Submits validate as
BFL does and answer at once: the job row commits (status `Queued`) and admission sends it
upstream. A `webhook_url`/`webhook_secret` in the body is not forwarded to BFL: it becomes
this job's callback, which fluxhook sends itself. BFL's 2024 route `POST /v1/image` is a
`flux-pro` job, answered like the others (2024 clients read only `id`, then poll get_result).
"""

import hashlib
import json
import logging
import math
import uuid
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from service import catalog, direct, jobs, logs
from service.api.auth import authenticate
from service.api.http import NUMBER, error, read_body, services
from service.api.jobs import load_job, wait_for_terminal
from service.bfl import BFLError
from service.models import IDEMPOTENCY_WINDOW, IdempotencyKey, Job, Subscription
from service.records import JobRecord, new_job, new_row
from service.targets import TargetInvalid, target_url
from service.views import bfl_result, submit_response

log = logging.getLogger(__name__)
SUBMIT_BODY_LIMIT = 32 * 1024 * 1024  # base64 input images: BFL takes up to 20 MB each
MAX_WAIT_S = 25  # under the PaaS router's 30 s request timeout
JOB_CALLBACK_EVENTS = sorted(jobs.TERMINAL_EVENTS)
JOBS, KEYS = Job.__table__, IdempotencyKey.__table__
SUBSCRIPTIONS = Subscription.__table__
# The submit's statements, on the driver (`direct`): its group commit is the hot path.
INSERT_JOB = direct.insert_of(JOBS)
INSERT_CALLBACK = direct.insert_of(SUBSCRIPTIONS)
INSERT_KEY = direct.insert_of(KEYS)
_THIS_KEY = sa.and_(
    KEYS.c.tenant_id == sa.bindparam("tenant_id", type_=KEYS.c.tenant_id.type),
    KEYS.c.key == sa.bindparam("key", type_=KEYS.c.key.type),
)
KEY_USED = sa.select(KEYS).where(_THIS_KEY)
FORGET_KEY = sa.delete(KEYS).where(_THIS_KEY)
JOBS_WAITING = (
    sa.select(func.count().label("waiting"))
    .select_from(JOBS)
    .where(
        JOBS.c.tenant_id == sa.bindparam("tenant_id", type_=JOBS.c.tenant_id.type),
        JOBS.c.status == jobs.QUEUED,
        ~JOBS.c.holds_slot,
    )
)


def validation_error(field: str, message: str, value) -> JSONResponse:
    item = {"type": "value_error", "loc": ["body", field], "msg": message, "input": value}
    return JSONResponse({"detail": [item]}, status_code=422)


async def submit(request: Request) -> JSONResponse:
    tenant_id = await authenticate(request)
    spec = catalog.get_model(request.path_params["model"])
    if spec is None:
        raise error(404, "Not Found")
    svc = services(request)
    try:
        body = catalog.parse_json_body(await read_body(request, SUBMIT_BODY_LIMIT))
        callback_url = _callback_url(body, svc.settings.allow_private_targets)
        validated = catalog.validate(spec, body)
    except catalog.ValidationFailed as exc:
        return JSONResponse({"detail": exc.detail}, status_code=422)
    except TargetInvalid as exc:
        return validation_error("webhook_url", str(exc), body.get("webhook_url"))
    spec = catalog.canonical(spec)  # `/v1/image` (BFL's 2024 route) is a flux-pro job
    # BFL gets what the client sent (validated), never our copy of BFL's defaults: BFL applies
    # its own, and some (FLUX.2's width 0, "auto") are refused when sent explicitly.
    inputs = validated.model_dump(mode="json", exclude_unset=True)
    inputs.pop("webhook_url", None)
    callback = (callback_url, inputs.pop("webhook_secret", None))
    price = catalog.price(spec, validated.model_dump(mode="json")) if spec.cost_on_submit else None
    key = _idempotency_key(request)
    submission = Submission(
        tenant_id, spec, inputs, price, callback, key, _hash(spec.name, inputs, callback)
    )
    try:
        response = await svc.submit_commits.submit(submission)
    except IntegrityError:
        # Two requests with one Idempotency-Key raced; the other committed first.
        response = await svc.submit_commits.submit(submission)
    if isinstance(response, HTTPException):
        raise response
    svc.metrics.jobs_submitted.inc(model=spec.name)
    with logs.job_context(response["id"]):
        log.info("job accepted (%s)", spec.name)
    return JSONResponse(response)


def _callback_url(body: object, allow_private: bool) -> str | None:
    """A submit's `webhook_url`, as the client sent it, under the subscriptions' URL policy
    (before BFL's own validation, which would rewrite some URLs): the same refusals, in the
    same words, on both paths."""
    raw = body.get("webhook_url") if isinstance(body, dict) else None
    return None if raw is None else target_url(raw, allow_private)


@dataclass(frozen=True)
class Submission:
    tenant_id: uuid.UUID
    spec: catalog.ModelSpec
    inputs: dict
    price: catalog.Price | None
    callback: tuple[str | None, str | None]  # webhook_url, webhook_secret
    key: str | None  # Idempotency-Key
    request_hash: str


def _idempotency_key(request: Request) -> str | None:
    key = request.headers.get("idempotency-key")
    if key is not None and not 1 <= len(key) <= 255:
        raise error(400, "Idempotency-Key must be 1 to 255 characters")
    return key


def _hash(model: str, inputs: dict, callback: tuple) -> str:
    canonical = json.dumps([model, inputs, callback], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def create_jobs(svc, session, submissions: list[Submission]) -> list[dict | HTTPException]:
    """Group-committed: concurrent submissions' jobs in one transaction, each answered with
    BFL's response (or its first response, for a repeated Idempotency-Key), or the 429 of a
    tenant over TENANT_MAX_QUEUED."""
    now = svc.clock.now()
    responses = [await _create(svc, session, submission, now) for submission in submissions]
    await svc.signals.after_commit(session, "admission")
    return responses


async def _create(svc, session, sub: Submission, now) -> dict:
    if sub.key is not None:
        this_key = {"tenant_id": sub.tenant_id, "key": sub.key}
        previous = next(iter(await direct.fetch(session, KEY_USED, this_key)), None)
        if previous is not None and now - previous["created_at"] < IDEMPOTENCY_WINDOW:
            if previous["request_hash"] != sub.request_hash:
                raise error(422, "Idempotency-Key was already used with a different request")
            return previous["response"]
        if previous is not None:
            await direct.execute(session, FORGET_KEY, this_key)
    refusal = await _queue_cap_refusal(svc, session, sub)
    if refusal is not None:
        return refusal
    job = _new_job(sub.tenant_id, sub.spec, sub.inputs, sub.price, now)
    await direct.execute_later(session, INSERT_JOB, [direct.row_of(job, JOBS)])
    if sub.callback[0]:
        callback = _job_callback(job, *sub.callback, now)
        row = direct.row_of(callback, SUBSCRIPTIONS)
        await direct.execute_later(session, INSERT_CALLBACK, [row])
    response = submit_response(job, svc.urls)
    if sub.key is not None:
        key = new_row(
            IdempotencyKey,
            tenant_id=sub.tenant_id,
            key=sub.key,
            request_hash=sub.request_hash,
            job_id=job.id,
            response=response,
            created_at=now,
        )
        await direct.execute_later(session, INSERT_KEY, [direct.row_of(key, KEYS)])
    return response


async def _queue_cap_refusal(svc, session, sub: Submission) -> HTTPException | None:
    """TENANT_MAX_QUEUED: a tenant with that many jobs waiting for a slot gets BFL's 429.
    Counted in the submit's transaction, so jobs of the same group commit count too (across
    processes two submits can race past the cap by one each: a soft cap). Returned, not
    raised: raising would roll back the whole group commit and redo it one by one."""
    cap = svc.settings.tenant_max_queued
    if cap is None:
        return None
    (row,) = await direct.fetch(session, JOBS_WAITING, {"tenant_id": sub.tenant_id})
    waiting = row["waiting"]
    if waiting >= cap:
        # One task's latency: about when the tenant's oldest waiting job may have a slot.
        retry_after = str(max(1, math.ceil(sub.spec.latency_s)))
        detail = f"Too many queued jobs for this key: {waiting} are waiting (limit {cap})"
        return error(429, detail, headers={"Retry-After": retry_after})
    return None


def _new_job(
    tenant_id: uuid.UUID, spec, inputs: dict, price: catalog.Price | None, now
) -> JobRecord:
    return new_job(
        tenant_id=tenant_id,
        model=spec.name,
        status=jobs.QUEUED,
        inputs=inputs,
        slot_class=spec.slot_class,
        next_attempt_at=now,
        cost=price.cost if price else None,
        input_mp=price.input_mp if price else None,
        output_mp=price.output_mp if price else None,
        created_at=now,
        updated_at=now,
    )


def _job_callback(job: JobRecord, url: str, secret: str | None, now):
    return new_row(
        Subscription,
        tenant_id=job.tenant_id,
        job_id=job.id,
        url=url,
        events=JOB_CALLBACK_EVENTS,
        description="webhook_url of a drop-in submit",
        secret=secret or None,
        created_at=now,
        updated_at=now,
    )


def task_not_found(task_id: str) -> JSONResponse:
    body = {
        "id": task_id,
        "status": jobs.TASK_NOT_FOUND,
        "result": None,
        "progress": None,
        "details": None,
        "preview": None,
    }
    return JSONResponse(body, status_code=404)


async def get_result(request: Request) -> JSONResponse:
    tenant_id = await authenticate(request)
    ids = request.query_params.getlist("id")
    if not ids:
        raise invalid_query("id", "missing", "Field required", None)
    wait_s = _wait_seconds(request)
    svc = services(request)
    try:
        job_id = uuid.UUID(ids[0])
    except ValueError:
        return task_not_found(ids[0])
    job = await load_job(svc.db, tenant_id, job_id)
    if job is None:
        return task_not_found(ids[0])
    if wait_s:
        job = await wait_for_terminal(svc, job, wait_s)
    return JSONResponse(bfl_result(job, svc.urls))


def invalid_query(name: str, kind: str, message: str, value, **ctx) -> HTTPException:
    """A query parameter refused as BFL's FastAPI refuses one: 422 with a `detail` list."""
    item = {"type": kind, "loc": ["query", name], "msg": message, "input": value}
    return error(422, [item | ({"ctx": ctx} if ctx else {})])


def _wait_seconds(request: Request) -> float:
    """`wait` (our extension) is checked like BFL's own parameters, so one 422 shape serves."""
    raw = request.query_params.get("wait")
    if raw is None:
        return 0.0
    if not NUMBER.fullmatch(raw):
        message = "Input should be a valid number, unable to parse string as a number"
        raise invalid_query("wait", "float_parsing", message, raw)
    wait_s = float(raw)
    if wait_s < 0:
        message = "Input should be greater than or equal to 0"
        raise invalid_query("wait", "greater_than_equal", message, raw, ge=0)
    if wait_s > MAX_WAIT_S:
        message = f"Input should be less than or equal to {MAX_WAIT_S}"
        raise invalid_query("wait", "less_than_equal", message, raw, le=MAX_WAIT_S)
    return wait_s


async def credits(request: Request) -> JSONResponse:
    await authenticate(request)
    try:
        balance = await services(request).bfl.credits()
    except BFLError as exc:
        raise error(502, f"could not read credits from BFL: {exc}") from exc
    return JSONResponse({"credits": balance})
