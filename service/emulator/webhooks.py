"""What the emulator POSTs to a task's `webhook_url`, and how it retries.

Two payload dialects (API.md §5.3): `current` mirrors get_result (six keys) plus top-level `cost`;
progress events keep `{"task_id", "status": "processing", "progress"}`. `legacy` is the 2025 shape
`{"task_id", "status": "SUCCESS"|"FAILED"|…, "result", "progress", "error"}`.

Each event is tried at once, then after 1 s, 5 s and 30 s (scaled) on a non-2xx answer, a
connection error or a timeout, then given up. Events of one task go out in order, one at a time.
"""

import hashlib
import hmac
import json
from dataclasses import dataclass, field

import anyio
import httpx

LEGACY_STATUS = {"Ready": "SUCCESS", "Error": "FAILED", "Request Moderated": "Request Moderated"}


@dataclass
class Event:
    kind: str  # "terminal" or "progress"
    progress: int | None = None  # percent, for progress events
    delay_s: float = 0.0  # webhook_delay_s fault: wait before the first attempt
    attempted: anyio.Event = field(default_factory=anyio.Event)  # first attempt made


def retry_delay(attempt: int, schedule: tuple[float, ...], time_scale: float) -> float | None:
    """Seconds to wait after failed attempt number `attempt` (1-based); None: give up."""
    if attempt > len(schedule):
        return None
    return schedule[attempt - 1] * time_scale


def succeeded(status_code: int | None) -> bool:
    return status_code is not None and 200 <= status_code < 300


def progress_body(task_id: str, percent: int, dialect: str) -> dict:
    if dialect == "legacy":
        return {
            "task_id": task_id,
            "status": "processing",
            "result": None,
            "progress": percent,
            "error": None,
        }
    return {"task_id": task_id, "status": "processing", "progress": percent}


def terminal_body(result_body: dict, cost: float, dialect: str, legacy_status: str) -> dict:
    """The terminal event, from the task's get_result body."""
    if dialect == "current":
        return {**result_body, "cost": cost}
    result = result_body["result"]
    if result is not None:
        result = {key: result[key] for key in ("sample", "prompt", "seed") if key in result} | {
            "start_time": result.get("start_time"),
            "end_time": result.get("end_time"),
            "duration": result.get("duration"),
            "pre_filtered": False,
        }
    return {
        "task_id": result_body["id"],
        "status": legacy_status,
        "result": result,
        "progress": None,
        "error": _legacy_error(result_body),
    }


def _legacy_error(result_body: dict) -> str | None:
    details = result_body["details"] or {}
    if "error" in details:
        return details["error"]
    reasons = details.get("Moderation Reasons")
    return ", ".join(reasons) if reasons else None


def headers(body: bytes, secret: str | None, signature_header: bool) -> dict[str, str]:
    """`X-Webhook-Secret` iff a secret was given; the SKILLS-style HMAC header on request."""
    out = {"Content-Type": "application/json"}
    if secret is not None:
        out["X-Webhook-Secret"] = secret
        if signature_header:
            digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            out["X-BFL-Signature"] = f"sha256={digest}"
    return out


def encode(body: dict) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()


async def post_once(
    http: httpx.AsyncClient, url: str, body: bytes, head: dict, timeout_s: float
) -> tuple[int | None, str | None]:
    """One attempt: (status code, None) or (None, what went wrong)."""
    try:
        response = await http.post(url, content=body, headers=head, timeout=timeout_s)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return response.status_code, None
