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
    """BFL's result object with `sample` pointing at fluxhook's own link (which streams the
    download while the image is on its way to the store, then serves the stored copy)."""
    if job.status != jobs.READY:
        return None
    upstream = {k: v for k, v in (job.result or {}).items() if k != "sample"}
    return {"sample": urls.image(job.id), **upstream}


def _image_url(job: Job, urls: Urls) -> str | None:
    return f"{urls.public_url}/v1/jobs/{job.id}/image" if job.status == jobs.READY else None


def job_view(job: Job, urls: Urls) -> dict:
    """The job as `GET /v1/jobs/{id}` shows it (also the `data` of every event)."""
    return {
        "id": str(job.id),
        "model": job.model,
        "status": job.status,
        "progress": None if job.status in jobs.TERMINAL else job.progress,
        "image_stored": job.image_stored,
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
        "image_url": _image_url(job, urls),
    }


def bfl_result(job: Job, urls: Urls) -> dict:
    """`GET /v1/get_result`: BFL's six keys, BFL's status words."""
    status = jobs.bfl_status(job.status)
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
