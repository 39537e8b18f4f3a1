"""The BFL webhook receiver: every refusal changes nothing; accepted events follow §6."""

import hashlib
import hmac
import json
import uuid

import httpx
import pytest
from itsdangerous import URLSafeSerializer
from sqlmodel import select

from service.models import Job
from service.signing import WEBHOOK_SALT
from tests.support.dbstate import snapshot
from tests.support.stack import running_emulator, running_stack


async def _queued_job(stack) -> str:
    """A job as the API accepts it (workers are off, so nothing sends it anywhere)."""
    return (await stack.submit("flux-dev", prompt="a quiet harbour"))["id"]


def ready_body(task_id="task-1", sample="https://delivery.example/sample.jpeg") -> dict:
    return {"id": task_id, "status": "Ready", "progress": None, "details": None, "preview": None,
            "result": {"sample": sample, "prompt": "p", "seed": 1}}  # fmt: skip


@pytest.fixture
async def stack(database_url):
    workers_off = {"run_workers": False}
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(database_url, emulator, workers_off) as stack,
    ):
        yield stack


async def _post(url, body, headers) -> httpx.Response:
    async with httpx.AsyncClient() as http:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return await http.post(url, content=content, headers=headers)


REFUSALS = [
    ("no secret", {}, ready_body(), 401),
    ("wrong secret", {"x-webhook-secret": "nope"}, ready_body(), 401),
    ("bad signature", {"x-bfl-signature": "sha256=00"}, ready_body(), 401),
    ("not json", {}, b"{not json", 400),
    ("not an object", {}, [1, 2], 400),
    ("no task id", {}, {"status": "Ready"}, 400),
    ("unknown status", {}, {"id": "t", "status": "Exploded"}, 400),
    ("ready without sample", {}, {"id": "t", "status": "Ready", "result": {}}, 400),
    ("progress not a number", {}, {"task_id": "t", "status": "processing", "progress": "x"}, 400),
    ("task not found", {}, {"id": "t", "status": "Task not found"}, 400),
    ("oversized", {}, b"{" + b" " * (1024 * 1024) + b"}", 413),
]


@pytest.mark.parametrize(
    ("case", "headers", "body", "status"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
async def test_refused_webhooks_change_nothing(stack, case, headers, body, status):
    job_id = await _queued_job(stack)
    url, secret = stack.webhook(job_id)
    if case not in ("no secret", "wrong secret"):
        headers = {"x-webhook-secret": secret, **headers}
    before = await snapshot(stack.services.db)
    response = await _post(url, body, headers)
    assert response.status_code == status, response.text
    assert isinstance(response.json()["detail"], str)
    assert await snapshot(stack.services.db) == before


async def test_forged_and_foreign_tokens_are_unknown(stack):
    job_id = await _queued_job(stack)
    _, secret = stack.webhook(job_id)
    before = await snapshot(stack.services.db)
    forged = f"{stack.url}/webhooks/bfl/{uuid.UUID(job_id).hex}.forged-signature"
    foreign_signing = type(stack.services.signing)(["another-deployment's key"])
    foreign = f"{stack.url}/webhooks/bfl/{foreign_signing.webhook_token(uuid.UUID(job_id))}"
    # Signed with this deployment's key, as itsdangerous signs, but naming no job id.
    keys = [key.encode() for key in reversed(stack.services.settings.secret_keys)]
    not_an_id = URLSafeSerializer(keys, salt=WEBHOOK_SALT).dumps(12)
    no_job = f"{stack.url}/webhooks/bfl/{not_an_id}"
    for url in (forged, foreign, no_job, f"{stack.url}/webhooks/bfl/x"):
        response = await _post(url, ready_body(), {"x-webhook-secret": secret})
        assert response.status_code == 404
    assert await snapshot(stack.services.db) == before


async def test_a_signed_body_is_accepted_and_a_valid_signature_checked(stack):
    job_id = await _queued_job(stack)
    url, secret = stack.webhook(job_id)
    raw = json.dumps(ready_body()).encode()
    signature = "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()
    response = await _post(url, raw, {"x-webhook-secret": secret, "x-bfl-signature": signature})
    assert response.json() == {"status": "applied"}


async def test_secret_from_an_older_rotation_key_still_verifies(database_url):
    """SECRET_KEY rotation: a job submitted under the old key is still verified after the
    new key is put first."""
    workers_off = {"run_workers": False}
    async with running_emulator(manual=True) as emulator:
        async with running_stack(database_url, emulator, workers_off, secret_keys=("old",)) as old:
            job_id = await _queued_job(old)
            url, secret = old.webhook(job_id)
            path = url.removeprefix(old.url)
        rotated = ("new", "old")
        async with running_stack(database_url, emulator, workers_off, secret_keys=rotated) as new:
            response = await _post(new.url + path, ready_body(), {"x-webhook-secret": secret})
            assert response.json() == {"status": "applied"}


async def test_duplicates_and_late_events_are_acknowledged_and_ignored(stack):
    job_id = await _queued_job(stack)
    url, secret = stack.webhook(job_id)
    headers = {"x-webhook-secret": secret}
    progress = {"task_id": "task-1", "status": "processing", "progress": 40}
    assert (await _post(url, progress, headers)).json() == {"status": "applied"}
    assert (await _post(url, progress, headers)).json() == {"status": "ignored"}
    failed = {"task_id": "task-1", "status": "FAILED", "error": "boom"}
    assert (await _post(url, failed, headers)).json() == {"status": "applied"}
    before = await snapshot(stack.services.db)
    for late in (progress, ready_body(), failed, {"id": "task-1", "status": "Pending"}):
        response = await _post(url, late, headers)
        assert response.status_code == 200
        assert response.json() == {"status": "ignored"}
    assert await snapshot(stack.services.db) == before
    job = (await stack.client.get(f"/v1/jobs/{job_id}")).json()
    assert job["status"] == "Error"
    assert job["details"] == {"error": "boom"}
    assert [e["type"] for e in job["events"]] == ["job.submitted", "job.progress", "job.failed"]


async def test_legacy_dialect_words_map_to_ours(stack):
    cases = {"SUCCESS": "Ready", "GENERATED CONTENT MODERATED": "Content Moderated"}
    for word, shown in cases.items():
        job_id = await _queued_job(stack)
        url, secret = stack.webhook(job_id)
        body = {"task_id": "t", "status": word, "result": {"sample": "https://d.example/s.png"}}
        assert (await _post(url, body, {"x-webhook-secret": secret})).status_code == 200
        job = (await stack.client.get(f"/v1/jobs/{job_id}")).json()
        assert job["status"] == shown
        async with stack.services.db.read() as session:
            row = (await session.exec(select(Job).where(Job.id == uuid.UUID(job_id)))).one()
        assert row.completed_via == "webhook"


async def test_a_webhook_for_another_task_changes_nothing(stack):
    """Once a job is bound to its BFL task, another task's events are refused (409)."""
    job_id = await _queued_job(stack)
    progress = {"task_id": "task-1", "status": "processing", "progress": 0.5}
    assert (await stack.post_webhook(job_id, progress)).json() == {"status": "applied"}
    before = await snapshot(stack.services.db)
    for body in (ready_body("task-2"), {"id": "task-2", "status": "Error"}):
        response = await stack.post_webhook(job_id, body)
        assert response.status_code == 409, response.text
        assert "task-2" in response.json()["detail"]
    assert await snapshot(stack.services.db) == before
    assert (await stack.post_webhook(job_id, ready_body("task-1"))).status_code == 200


async def test_the_webhook_route_answers_as_the_route_table_does_around_its_fast_path(stack):
    """`POST /webhooks/bfl/{token}` skips Starlette's router (`app.ReceiverFirst`); what a
    client sees is the same: the request id, the error's shape, and the router's answers
    for another method or another shape of the path."""
    job_id = await _queued_job(stack)
    url, secret = stack.webhook(job_id)
    progress = {"task_id": "task-1", "status": "processing", "progress": 10}
    echoed = {"x-webhook-secret": secret, "x-request-id": "bfl-delivery-42"}
    accepted = await _post(url, progress, echoed)
    assert accepted.json() == {"status": "applied"}
    assert accepted.headers["x-request-id"] == "bfl-delivery-42"
    refused = await _post(url, progress, {"x-webhook-secret": "nope"})
    assert (refused.status_code, refused.json()) == (
        401,
        {"detail": "X-Webhook-Secret does not match"},
    )
    assert refused.headers["content-type"] == "application/json"
    assert len(refused.headers["x-request-id"]) == 32
    async with httpx.AsyncClient() as http:
        other_method = await http.get(url, headers={"x-webhook-secret": secret})
        assert (other_method.status_code, other_method.headers["allow"]) == (405, "POST")
        for path in ("/webhooks/bfl/", url.removeprefix(stack.url) + "/more"):
            response = await http.post(stack.url + path, json=progress)
            assert (response.status_code, response.json()) == (404, {"detail": "Not Found"})
