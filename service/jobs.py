"""Pure job logic: statuses, BFL payload parsing, and the monotonic state machine (DESIGN §6).

BFL has spoken two webhook dialects (`bfl/API.md` §5): get_result-shaped bodies with `id` and
`Ready/Error/…`, and `task_id` with `SUCCESS/FAILED/processing`. Both parse to one `BflUpdate`.
"""

from dataclasses import dataclass
from typing import Any

QUEUED = "Queued"
PENDING = "Pending"
PROCESSING = "Processing"
READY = "Ready"
ERROR = "Error"
REQUEST_MODERATED = "Request Moderated"
CONTENT_MODERATED = "Content Moderated"
TASK_NOT_FOUND = "Task not found"

STATUSES = (QUEUED, PENDING, PROCESSING, READY, ERROR, REQUEST_MODERATED, CONTENT_MODERATED)
TERMINAL = frozenset({READY, ERROR, REQUEST_MODERATED, CONTENT_MODERATED})
IN_FLIGHT = frozenset({QUEUED, PENDING, PROCESSING})
_RANK = {QUEUED: 0, PENDING: 1, PROCESSING: 2}

EVENT_SUBMITTED = "job.submitted"
EVENT_PROGRESS = "job.progress"
EVENT_READY = "job.ready"
EVENT_FAILED = "job.failed"
EVENT_MODERATED = "job.moderated"
EVENT_TYPES = (EVENT_SUBMITTED, EVENT_PROGRESS, EVENT_READY, EVENT_FAILED, EVENT_MODERATED)
TERMINAL_EVENTS = frozenset({EVENT_READY, EVENT_FAILED, EVENT_MODERATED})

# BFL's words, lower-cased, to ours.
_BFL_WORDS = {
    "ready": READY,
    "success": READY,
    "error": ERROR,
    "failed": ERROR,
    "request moderated": REQUEST_MODERATED,
    "content moderated": CONTENT_MODERATED,
    "generated content moderated": CONTENT_MODERATED,
    "pending": PENDING,
    "processing": PROCESSING,
    "generating": PROCESSING,
    "reasoning": PROCESSING,
    "task not found": TASK_NOT_FOUND,
}


class InvalidPayload(ValueError):
    """A BFL body we cannot use; the message is the reason given back (400)."""


@dataclass(frozen=True)
class BflUpdate:
    task_id: str
    status: str  # one of ours, or TASK_NOT_FOUND
    progress: float | None = None
    result: dict | None = None
    details: dict | None = None
    cost: float | None = None


@dataclass(frozen=True)
class Change:
    status: str
    progress: float | None
    events: tuple[str, ...]  # the event types to record now, in order


def event_for(status: str) -> str:
    """The event a terminal status announces (`job.ready` only once the image is stored)."""
    return {
        READY: EVENT_READY,
        ERROR: EVENT_FAILED,
        REQUEST_MODERATED: EVENT_MODERATED,
        CONTENT_MODERATED: EVENT_MODERATED,
    }[status]


def parse_update(payload: Any) -> BflUpdate:
    """A webhook or get_result body → BflUpdate, or InvalidPayload with the reason."""
    if not isinstance(payload, dict):
        raise InvalidPayload("body must be a JSON object")
    task_id = _task_id(payload)
    status = _status(payload.get("status"))
    result = _optional_object(payload, "result")
    if status == READY:
        _require_sample(result)
    return BflUpdate(
        task_id=task_id,
        status=status,
        progress=_progress(payload.get("progress")),
        result=result,
        details=_details(payload),
        cost=_number(payload, "cost"),
    )


def _task_id(payload: dict) -> str:
    task_id = payload.get("id") or payload.get("task_id")
    if not isinstance(task_id, str) or not task_id.strip():
        raise InvalidPayload("body needs a task id in 'id' or 'task_id'")
    return task_id


def _status(word: Any) -> str:
    if not isinstance(word, str):
        raise InvalidPayload("body needs a 'status' string")
    status = _BFL_WORDS.get(word.strip().lower())
    if status is None:
        raise InvalidPayload(f"unknown status {word[:64]!r}")
    return status


def _optional_object(payload: dict, key: str) -> dict | None:
    value = payload.get(key)
    if value is not None and not isinstance(value, dict):
        raise InvalidPayload(f"'{key}' must be an object or null")
    return value


def _require_sample(result: dict | None) -> None:
    sample = (result or {}).get("sample")
    if not isinstance(sample, str) or not sample.startswith(("https://", "http://")):
        raise InvalidPayload("a Ready body needs result.sample, an http(s) URL")


def _progress(value: Any) -> float | None:
    """Fractions (get_result: 0.1 … 1.0) and percentages (webhooks: integer 0 … 100)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidPayload("'progress' must be a number or null")
    fraction = value / 100 if isinstance(value, int) or value > 1 else value
    return min(max(float(fraction), 0.0), 1.0)


def _details(payload: dict) -> dict | None:
    details = _optional_object(payload, "details")
    error = payload.get("error")
    if details is None and isinstance(error, str) and error:
        return {"error": error}  # the legacy dialect's failure reason
    return details


def _number(payload: dict, key: str) -> float | None:
    value = payload.get(key)
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if is_number else None


def transition(status: str, progress: float | None, update: BflUpdate) -> Change | None:
    """What an update does to a job: None when it changes nothing.

    Terminal states never change: duplicates and late or contradictory events are ignored.
    Progress only moves forward. A job leaving `Queued` announces `job.submitted` first, even
    when BFL's webhook beat the submit response. `job.ready` goes out at once: fluxhook's
    image link works from that moment (it streams the download until the image is stored).
    """
    if status in TERMINAL or update.status == TASK_NOT_FOUND:
        return None
    submitted = (EVENT_SUBMITTED,) if status == QUEUED else ()
    if update.status in TERMINAL:
        own = (event_for(update.status),)
        return Change(status=update.status, progress=progress, events=submitted + own)
    target = max(status, update.status, key=_RANK.__getitem__)
    moved = progress if update.progress is None else max(progress or 0.0, update.progress)
    if target == status and moved == progress:
        return None
    own = (EVENT_PROGRESS,) if target == PROCESSING else ()
    return Change(status=target, progress=moved, events=submitted + own)


def bfl_status(status: str) -> str:
    """The status get_result shows: BFL's words only (DESIGN §6). `Ready` as soon as BFL
    says so: the link works at once, streaming the image until it is stored."""
    return PENDING if status in (QUEUED, PROCESSING) else status
