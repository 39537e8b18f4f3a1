"""Pure views of a job: the native shape (API, events, callbacks) and BFL's get_result shape."""

import uuid
from dataclasses import dataclass
from datetime import datetime

from service import jobs
from service.models import Job
from service.signing import Signing

# Inputs can carry base64 images of megabytes; views show a placeholder instead.
LONG_INPUT_CHARS = 2048


@dataclass(frozen=True)
class Urls:
    """fluxhook's own URLs, built from PUBLIC_URL."""

    public_url: str
    signing: Signing
    image_url_ttl_s: int

    def image(self, job_id: uuid.UUID) -> str:
        return f"{self.public_url}/images/{self.signing.image_token(job_id)}"

    def polling(self, job_id: uuid.UUID) -> str:
        return f"{self.public_url}/v1/get_result?id={job_id}"

    def webhook(self, job_id: uuid.UUID) -> str:
        return f"{self.public_url}/webhooks/bfl/{self.signing.webhook_token(job_id)}"


def _time(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value else None


def _short_inputs(inputs: dict) -> dict:
    return {
        key: f"<{len(value)} characters>"
        if isinstance(value, str) and len(value) > LONG_INPUT_CHARS
        else value
        for key, value in inputs.items()
    }


def result_view(job: Job, urls: Urls) -> dict | None:
    """BFL's result object with `sample` pointing at fluxhook's stored copy."""
    if job.status != jobs.READY or not job.image_stored:
        return None
    upstream = {k: v for k, v in (job.result or {}).items() if k != "sample"}
    return {"sample": urls.image(job.id), **upstream}


def job_view(job: Job, urls: Urls) -> dict:
    """The job as `GET /v1/jobs/{id}` shows it (also the `data` of every event)."""
    return {
        "id": str(job.id),
        "model": job.model,
        "status": jobs.public_status(job.status, job.image_stored),
        "progress": None if jobs.is_settled(job.status, job.image_stored) else job.progress,
        "inputs": _short_inputs(job.inputs),
        "result": result_view(job, urls),
        "details": job.details,
        "bfl_id": job.bfl_id,
        "cost": job.cost,
        "input_mp": job.input_mp,
        "output_mp": job.output_mp,
        "completed_via": job.completed_via,
        "created_at": _time(job.created_at),
        "admitted_at": _time(job.admitted_at),
        "submitted_at": _time(job.submitted_at),
        "finished_at": _time(job.finished_at),
        "polling_url": urls.polling(job.id),
        "image_url": f"{urls.public_url}/v1/jobs/{job.id}/image" if job.image_stored else None,
    }


def bfl_result(job: Job, urls: Urls) -> dict:
    """`GET /v1/get_result`: BFL's six keys, BFL's status words."""
    status = jobs.bfl_status(job.status, job.image_stored)
    return {
        "id": str(job.id),
        "status": status,
        "result": result_view(job, urls),
        "progress": job.progress if status == jobs.PENDING else None,
        "details": job.details,
        "preview": None,
    }


def submit_response(job: Job, urls: Urls) -> dict:
    """BFL's AsyncResponse, key order as recorded."""
    return {
        "id": str(job.id),
        "polling_url": urls.polling(job.id),
        "cost": job.cost,
        "input_mp": job.input_mp,
        "output_mp": job.output_mp,
    }
