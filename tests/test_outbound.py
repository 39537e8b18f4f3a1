"""The outbound policy (issue 11): one URL policy on both creation paths, BFL_API_KEY only to
BFL, and a canary on loopback that nothing fluxhook is asked to do can reach."""

import contextlib
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlmodel import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.bfl import BFLClient, BFLRejected
from service.models import Delivery, Job, Subscription
from tests.support.servers import running_server
from tests.support.stack import running_emulator, running_stack
from tests.support.waiting import wait_for
from tests.test_targets import AMBIGUOUS_OR_UNSENDABLE

SMALL = {"width": 256, "height": 256}


@contextlib.asynccontextmanager
async def running_canary() -> AsyncIterator[tuple[str, list[str]]]:
    """A server on loopback that is not the configured upstream: records every request."""
    seen: list[str] = []

    async def record(request: Request) -> Response:
        seen.append(f"{request.method} {request.url.path}")
        return Response(b"\xff\xd8\xff canary", media_type="image/jpeg")

    app = Starlette(routes=[Route("/{path:path}", record, methods=["GET", "POST"])])
    async with running_server(app) as url:
        seen.clear()  # the harness's own readiness probe
        yield url, seen


async def test_both_creation_paths_refuse_the_same_urls_in_the_same_words(sqlite_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(sqlite_url, emulator, {"run_workers": False}) as stack,
    ):
        for url in AMBIGUOUS_OR_UNSENDABLE:
            subscription = await stack.client.post("/v1/subscriptions", json={"url": url})
            assert subscription.status_code == 422, url
            submit = await stack.client.post(
                "/v1/flux-dev", json={"prompt": "p", "webhook_url": url}
            )
            assert submit.status_code == 422, url
            (problem,) = submit.json()["detail"]
            assert problem["loc"] == ["body", "webhook_url"]
            assert problem["msg"] == subscription.json()["detail"], url
        assert (await stack.client.get("/v1/subscriptions")).json()["subscriptions"] == []
        assert (await stack.client.get("/v1/jobs")).json()["jobs"] == []


async def test_a_webhook_url_is_stored_as_the_policy_normalises_it(sqlite_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(sqlite_url, emulator, {"run_workers": False}) as stack,
    ):
        await stack.submit("flux-dev", webhook_url="HTTP://Hooks.Example.COM/x")
        async with stack.services.db.read() as session:
            (callback,) = (await session.exec(select(Subscription))).all()
        assert callback.url == "http://hooks.example.com/x"


def _recording_client(base: str, poll_hosts=()) -> tuple[BFLClient, list[httpx.Request]]:
    requests: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return httpx.Response(200, json={"id": "t", "status": "Pending", "result": None})

    return BFLClient(httpx.MockTransport(answer), "the-bfl-key", base, poll_hosts), requests


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://api.bfl.ai/v1/get_result?id=t", True),
        ("https://api.eu1.bfl.ai/v1/get_result?id=t", True),
        ("https://bfl.ml/v1/get_result?id=t", True),
        ("https://poll.internal:8443/v1/get_result?id=t", True),  # a BFL_POLL_HOSTS origin
        ("http://api.bfl.ai/v1/get_result?id=t", False),  # not https
        ("https://api.bfl.ai.evil.example/x", False),
        ("https://evilbfl.ai/x", False),
        ("https://poll.internal/v1/get_result?id=t", False),  # another port
        ("http://127.0.0.1:9/x", False),
        ("http://☃.net/", False),
    ],
)
def test_the_bfl_key_goes_only_to_bfl(url, allowed):
    client, _ = _recording_client("https://api.bfl.ai", ("https://poll.internal:8443",))
    assert client.may_carry_key(url) is allowed


async def test_a_polling_url_elsewhere_is_not_followed(caplog):
    client, requests = _recording_client("https://api.bfl.ai")
    await client.get_result("t", polling_url="http://127.0.0.1:9/v1/get_result?id=t")
    assert [str(r.url) for r in requests] == ["https://api.bfl.ai/v1/get_result?id=t"]
    assert "not following polling_url" in caplog.text
    with pytest.raises(BFLRejected):
        await client._call("GET", "https://elsewhere.example/x")
    assert len(requests) == 1


async def _delivery_errors(stack) -> list[str | None]:
    async with stack.services.db.read() as session:
        return [d.last_error for d in (await session.exec(select(Delivery))).all()]


async def _job(stack, job_id: str) -> Job:
    async with stack.services.db.read() as session:
        return await session.get(Job, uuid.UUID(job_id))


async def _set_polling_url(stack, job_id: str, url: str) -> None:
    """As if BFL's submit response had named `url` as the job's polling_url."""
    async with stack.services.db.write() as session:
        job = await session.get(Job, uuid.UUID(job_id), with_for_update=True)
        job.polling_url = url


async def test_nothing_a_tenant_or_a_webhook_asks_reaches_a_canary(sqlite_url):
    production = {"allow_private_targets": False, "reconcile_slack_s": 0.2}
    async with (
        running_canary() as (canary, seen),
        running_emulator(manual=True) as emulator,
        running_stack(sqlite_url, emulator, **production) as stack,
    ):
        by_name = canary.replace("127.0.0.1", "localhost")
        literal = await stack.client.post("/v1/subscriptions", json={"url": f"{canary}/hook"})
        assert literal.status_code == 422 and "loopback" in literal.json()["detail"]
        named = await stack.client.post("/v1/subscriptions", json={"url": f"{by_name}/hook"})
        assert named.status_code == 201, "a hostname is vetted when it is called"
        called_back = await stack.submit("flux-dev", webhook_url=f"{by_name}/job", **SMALL)
        image_elsewhere = await stack.submit("flux-dev", **SMALL)
        polled_elsewhere = await stack.submit("flux-2-klein-4b", **SMALL)
        jobs = [called_back, image_elsewhere, polled_elsewhere]
        bound = await wait_for(lambda: _all_bound(stack, jobs))

        await _set_polling_url(stack, polled_elsewhere["id"], f"{canary}/v1/get_result")
        sample = f"{by_name}/delivery/sample.jpeg"
        ready = {"id": bound[1], "status": "Ready", "result": {"sample": sample}}
        assert (await stack.post_webhook(image_elsewhere["id"], ready)).status_code == 200
        await emulator.finish(bound[0])

        failed = await stack.reaches(image_elsewhere["id"], "Error")
        assert "refused" in failed["details"]["error"]
        assert (await stack.settled(called_back["id"]))["status"] == "Ready"
        stats = await wait_for(lambda: _polled(emulator, bound[2]), within_s=20)
        assert stats["get_result_by_task"][bound[2]] >= 1, "asked BFL_API_URL instead"
        errors = await wait_for(lambda: _all_attempted(stack, at_least=6))
        assert all("refused" in error for error in errors), errors
        assert seen == []


async def _all_bound(stack, jobs: list[dict]) -> list[str] | None:
    rows = [await _job(stack, job["id"]) for job in jobs]
    return [row.bfl_id for row in rows] if all(row.bfl_id for row in rows) else None


async def _polled(emulator, task_id: str) -> dict | None:
    stats = await emulator.stats()
    return stats if stats["get_result_by_task"].get(task_id) else None


async def _all_attempted(stack, at_least: int) -> list[str] | None:
    """Every delivery attempted once. The standing subscription is owed three job.submitted,
    a job.failed and a job.ready; the job's own webhook_url its job.ready."""
    errors = await _delivery_errors(stack)
    done = len(errors) >= at_least and all(error is not None for error in errors)
    return errors if done else None
