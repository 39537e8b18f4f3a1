"""`GET /v1/deliveries` and `POST /v1/deliveries/{id}/redeliver`."""

import uuid

from sqlmodel import select
from starlette.requests import Request
from starlette.responses import JSONResponse

from service.api.auth import authenticate
from service.api.http import error, query_int, services
from service.callbacks import message_id
from service.models import Delivery, Subscription

STATUSES = ("pending", "delivered", "failed")


def delivery_view(delivery: Delivery) -> dict:
    def time(value):
        return value.isoformat().replace("+00:00", "Z") if value else None

    return {
        "id": str(delivery.id),
        "webhook_id": message_id(delivery.id),
        "subscription_id": str(delivery.subscription_id),
        "job_id": str(delivery.job_id) if delivery.job_id else None,
        "event_id": delivery.event_seq,
        "event_type": delivery.event_type,
        "status": delivery.status,
        "attempts": delivery.attempts,
        "next_attempt_at": time(delivery.next_attempt_at) if delivery.status == "pending" else None,
        "last_status_code": delivery.last_status_code,
        "last_error": delivery.last_error,
        "last_attempt_at": time(delivery.last_attempt_at),
        "delivered_at": time(delivery.delivered_at),
        "created_at": time(delivery.created_at),
    }


def _uuid_param(request: Request, name: str) -> uuid.UUID | None:
    """The filter's UUID, None when absent; an empty one is refused like any other non-UUID."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise error(422, f"{name} must be a UUID") from None


async def list_deliveries(request: Request) -> JSONResponse:
    tenant_id = await authenticate(request)
    query = select(Delivery).where(Delivery.tenant_id == tenant_id)
    if job_id := _uuid_param(request, "job_id"):
        query = query.where(Delivery.job_id == job_id)
    if subscription_id := _uuid_param(request, "subscription_id"):
        query = query.where(Delivery.subscription_id == subscription_id)
    if (status := request.query_params.get("status")) is not None:
        if status not in STATUSES:
            raise error(422, f"status must be one of {', '.join(STATUSES)}")
        query = query.where(Delivery.status == status)
    limit = query_int(request, "limit", 100, 1, 500)
    query = query.order_by(Delivery.created_at.desc(), Delivery.id).limit(limit)
    async with services(request).db.read() as session:
        rows = (await session.exec(query)).all()
    return JSONResponse({"deliveries": [delivery_view(d) for d in rows]})


async def redeliver(request: Request) -> JSONResponse:
    """A dead letter (or any finished delivery) goes out again: same webhook-id, fresh attempts."""
    tenant_id = await authenticate(request)
    try:
        delivery_id = uuid.UUID(request.path_params["delivery_id"])
    except ValueError:
        raise error(404, "delivery not found") from None
    svc = services(request)
    async with svc.db.write() as session:
        delivery = await session.get(Delivery, delivery_id, with_for_update=True)
        if delivery is None or delivery.tenant_id != tenant_id:
            raise error(404, "delivery not found")
        if delivery.status == "pending":
            raise error(409, "delivery is still pending; it will be attempted as scheduled")
        subscription = await session.get(Subscription, delivery.subscription_id)
        if not subscription.enabled:
            raise error(409, "the subscription is disabled; enable it first")
        delivery.status, delivery.attempts = "pending", 0
        delivery.next_attempt_at, delivery.lease_expires_at = svc.clock.now(), None
        await svc.signals.after_commit(session, "dispatcher")
    return JSONResponse(delivery_view(delivery))
