"""Standing callback endpoints: `/v1/subscriptions` (DESIGN §3, §5).

`POST /v1/subscriptions/{id}/test` sends that subscription a `ping` through the normal
delivery path (an outbox row, signed, retried, listed in `/v1/deliveries`) and answers 202
with the delivery's id. A ping goes to that subscription alone, whatever its event types,
so it is not one of the types a subscription can ask for.
"""

import uuid
from datetime import timedelta

from sqlmodel import select
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from service import jobs
from service.api.auth import authenticate
from service.api.http import error, read_json_object, services
from service.callbacks import message_id
from service.events import PING, record_ping
from service.models import Delivery, Subscription
from service.signing import new_subscription_secret
from service.targets import TargetInvalid, target_url

SUBSCRIPTION_EVENTS = (*jobs.EVENT_TYPES, "subscription.disabled")
ROTATION_OVERLAP = timedelta(hours=24)  # the old secret keeps signing this long
MAX_DESCRIPTION = 500


def subscription_view(subscription: Subscription) -> dict:
    def time(value):
        return value.isoformat().replace("+00:00", "Z") if value else None

    return {
        "id": str(subscription.id),
        "url": subscription.url,
        "events": subscription.events,
        "description": subscription.description,
        "enabled": subscription.enabled,
        "disabled_reason": subscription.disabled_reason,
        "created_at": time(subscription.created_at),
        "previous_secret_expires_at": time(subscription.previous_secret_expires_at),
    }


def _events(body: dict) -> list[str]:
    """The event types asked for; every job event when the field is absent (null is refused)."""
    if "events" not in body:
        return list(jobs.EVENT_TYPES)
    value = body["events"]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise error(422, "events must be a non-empty list of event types")
    if PING in value:
        raise error(422, "ping is not subscribed to: POST /v1/subscriptions/{id}/test sends it")
    unknown = sorted(set(value) - set(SUBSCRIPTION_EVENTS))
    if unknown:
        raise error(422, f"unknown event types {unknown}; known: {list(SUBSCRIPTION_EVENTS)}")
    return sorted(set(value), key=SUBSCRIPTION_EVENTS.index)


def _description(body: dict) -> str:
    value = body.get("description", "")
    if not isinstance(value, str) or len(value) > MAX_DESCRIPTION:
        raise error(422, f"description must be a string of at most {MAX_DESCRIPTION} characters")
    return value


async def create(request: Request) -> JSONResponse:
    tenant_id = await authenticate(request)
    body = await read_json_object(request)
    svc = services(request)
    try:
        url = target_url(body.get("url"), svc.settings.allow_private_targets)
    except TargetInvalid as exc:
        raise error(422, str(exc)) from None
    events, description = _events(body), _description(body)
    now = svc.clock.now()
    subscription = Subscription(
        tenant_id=tenant_id,
        url=url,
        events=events,
        description=description,
        secret=new_subscription_secret(),
        created_at=now,
        updated_at=now,
    )
    async with svc.db.write() as session:
        session.add(subscription)
    view = subscription_view(subscription) | {"secret": subscription.secret}
    return JSONResponse(view, status_code=201)


async def _owned(request: Request, session, tenant_id: uuid.UUID) -> Subscription:
    try:
        subscription_id = uuid.UUID(request.path_params["subscription_id"])
    except ValueError:
        raise error(404, "subscription not found") from None
    subscription = await session.get(Subscription, subscription_id, with_for_update=True)
    if subscription is None or subscription.tenant_id != tenant_id or subscription.job_id:
        raise error(404, "subscription not found")
    return subscription


async def list_all(request: Request) -> JSONResponse:
    tenant_id = await authenticate(request)
    query = (
        select(Subscription)
        .where(Subscription.tenant_id == tenant_id, Subscription.job_id.is_(None))
        .order_by(Subscription.created_at)
    )
    async with services(request).db.read() as session:
        rows = (await session.exec(query)).all()
    return JSONResponse({"subscriptions": [subscription_view(s) for s in rows]})


async def get_one(request: Request) -> JSONResponse:
    tenant_id = await authenticate(request)
    async with services(request).db.read() as session:
        subscription = await _owned(request, session, tenant_id)
    return JSONResponse(subscription_view(subscription))


async def delete(request: Request) -> Response:
    """Deletes the subscription and what it was still owed."""
    tenant_id = await authenticate(request)
    async with services(request).db.write() as session:
        subscription = await _owned(request, session, tenant_id)
        owed = select(Delivery).where(Delivery.subscription_id == subscription.id)
        for delivery in (await session.exec(owed)).all():
            await session.delete(delivery)
        await session.flush()
        await session.delete(subscription)
    return Response(status_code=204)


async def rotate_secret(request: Request) -> JSONResponse:
    tenant_id = await authenticate(request)
    svc = services(request)
    async with svc.db.write() as session:
        subscription = await _owned(request, session, tenant_id)
        now = svc.clock.now()
        subscription.previous_secret = subscription.secret
        subscription.previous_secret_expires_at = now + ROTATION_OVERLAP
        subscription.secret = new_subscription_secret()
        subscription.updated_at = now
    return JSONResponse(subscription_view(subscription) | {"secret": subscription.secret})


async def enable(request: Request) -> JSONResponse:
    tenant_id = await authenticate(request)
    svc = services(request)
    async with svc.db.write() as session:
        subscription = await _owned(request, session, tenant_id)
        subscription.enabled, subscription.disabled_reason = True, None
        subscription.failing_since, subscription.updated_at = None, svc.clock.now()
        await svc.signals.after_commit(session, "dispatcher")
    return JSONResponse(subscription_view(subscription))


async def send_test(request: Request) -> JSONResponse:
    """A signed `ping`, delivered like any event; 202 with the delivery to follow."""
    tenant_id = await authenticate(request)
    svc = services(request)
    async with svc.db.write() as session:
        subscription = await _owned(request, session, tenant_id)
        if not subscription.enabled:
            raise error(409, "the subscription is disabled; enable it first")
        delivery_id = await record_ping(session, svc.signals, subscription, svc.clock.now())
    sent = {"delivery_id": str(delivery_id), "webhook_id": message_id(delivery_id)}
    return JSONResponse(sent, status_code=202)
