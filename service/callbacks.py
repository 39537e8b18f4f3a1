"""What a delivery sends: body and headers, from the event row and the subscription (pure)."""

import json
from datetime import datetime

from service.events import envelope_json
from service.models import JobEvent, Subscription
from service.signing import standard_headers

USER_AGENT = "fluxhook-webhooks/1"


def body_for(subscription: Subscription, event: JobEvent) -> bytes:
    """Standing subscriptions get the Standard Webhooks envelope; a drop-in job callback gets
    what BFL itself would have sent: the get_result-shaped body."""
    if subscription.job_id is None:
        return envelope_json(event).encode()
    data = event.data
    payload = {
        "id": data["id"],
        "status": data["status"],
        "result": data["result"],
        "progress": None,
        "details": data["details"],
        "preview": None,
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def secrets_in_use(subscription: Subscription, now: datetime) -> list[str]:
    """The current secret, plus the previous one during its 24 h rotation overlap."""
    in_use = [subscription.secret] if subscription.secret else []
    expires = subscription.previous_secret_expires_at
    if subscription.previous_secret and expires and expires > now:
        in_use.append(subscription.previous_secret)
    return in_use


def headers_for(
    subscription: Subscription, msg_id: str, body: bytes, now: datetime
) -> dict[str, str]:
    headers = standard_headers(
        secrets_in_use(subscription, now), msg_id, int(now.timestamp()), body
    )
    headers["content-type"] = "application/json"
    headers["user-agent"] = USER_AGENT
    if subscription.job_id is not None and subscription.secret:
        headers["x-webhook-secret"] = subscription.secret  # as BFL sends it
    return headers


def message_id(delivery_id) -> str:
    """`webhook-id`: one per delivery, the same on every retry and redelivery."""
    return f"msg_{delivery_id.hex}"
