"""Failure is contained per item (issue 11): whatever one delivery, download or poll raises is
that item's recorded failure, never a crashed loop, a cancelled sibling or a lost lease."""

import logging
import random
import uuid

import anyio
import httpx
import pytest
from sqlmodel import select

from service.clock import FakeClock
from service.loops.dispatcher import Dispatcher
from service.models import Delivery, Job, Subscription
from tests.support.stack import running_emulator, running_stack
from tests.support.subscriber import running_subscriber
from tests.support.waiting import wait_for
from tests.test_targets import AMBIGUOUS_OR_UNSENDABLE

SMALL = {"width": 256, "height": 256}


async def _subscribe(client: httpx.AsyncClient, url: str, events=None) -> str:
    body = {"url": url} | ({"events": events} if events else {})
    response = await client.post("/v1/subscriptions", json=body)
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def _hostile(stack, client: httpx.AsyncClient, urls: list[str], events=None) -> list[str]:
    """Subscriptions holding URLs the API refuses today, as rows written before it did."""
    ids = [await _subscribe(client, "http://placeholder.example/hook", events) for _ in urls]
    async with stack.services.db.write() as session:
        for subscription_id, url in zip(ids, urls, strict=True):
            row = await session.get(Subscription, uuid.UUID(subscription_id))
            row.url = url
    return ids


async def _deliveries(stack, subscription_id: str | None = None) -> list[Delivery]:
    query = select(Delivery)
    if subscription_id:
        query = query.where(Delivery.subscription_id == uuid.UUID(subscription_id))
    async with stack.services.db.read() as session:
        return list((await session.exec(query)).all())


def _loop_errors(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith("service.")
    ]


@pytest.fixture
async def quiet_stack(database_url):
    """A stack whose loops do not run: the test drives a dispatcher on a fake clock."""
    clock = FakeClock()
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(database_url, emulator, {"run_workers": False, "clock": clock}) as stack,
        httpx.AsyncHTTPTransport() as transport,
    ):
        dispatcher = Dispatcher(
            stack.services.db,
            stack.services.signals,
            clock,
            transport,
            stack.services.metrics,
            timeout_s=5.0,
            rng=random.Random(0),
        )
        yield stack, clock, dispatcher


async def _failed_job(stack) -> None:
    job = await stack.submit("flux-dev")
    response = await stack.post_webhook(job["id"], {"id": "t", "status": "Error"})
    assert response.json() == {"status": "applied"}


async def test_a_url_httpx_cannot_send_is_a_failed_attempt(quiet_stack, caplog):
    stack, clock, dispatcher = quiet_stack
    async with running_subscriber() as subscriber:
        hostile = await _hostile(stack, stack.client, AMBIGUOUS_OR_UNSENDABLE, ["job.failed"])
        good = await _subscribe(stack.client, subscriber.url, ["job.failed"])
        await _failed_job(stack)
        await dispatcher.run_until_idle()
        for subscription_id in hostile:
            (delivery,) = await _deliveries(stack, subscription_id)
            assert (delivery.status, delivery.attempts) == ("pending", 1)
            assert delivery.last_error and delivery.lease_expires_at is None
            assert 4 <= (delivery.next_attempt_at - clock.now()).total_seconds() <= 6
        (delivered,) = await _deliveries(stack, good)
        assert delivered.status == "delivered" and len(subscriber.received) == 1
    assert _loop_errors(caplog) == []


async def test_a_unicode_digit_retry_after_is_ignored_not_a_crash(quiet_stack):
    stack, clock, dispatcher = quiet_stack
    async with running_subscriber(answers=[(429, {"retry-after": "²"})]) as subscriber:
        await _subscribe(stack.client, subscriber.url, events=["job.failed"])
        await _failed_job(stack)
        await dispatcher.run_until_idle()
        (delivery,) = await _deliveries(stack)
        assert (delivery.attempts, delivery.last_status_code) == (1, 429)
        assert 4 <= (delivery.next_attempt_at - clock.now()).total_seconds() <= 6


async def test_deleting_a_subscription_mid_flight_spares_its_siblings(quiet_stack, caplog):
    stack, _clock, dispatcher = quiet_stack
    async with (
        running_subscriber(default="stall") as stalled,
        running_subscriber() as sibling,
    ):
        doomed = await _subscribe(stack.client, stalled.url, events=["job.failed"])
        spared = await _subscribe(stack.client, sibling.url, events=["job.failed"])
        for _ in range(3):
            await _failed_job(stack)
        dispatcher.timeout_s = 2.0
        async with anyio.create_task_group() as tg:
            tg.start_soon(dispatcher.run_once)
            await stalled.wait_for(3)
            deleted = await stack.client.delete(f"/v1/subscriptions/{doomed}")
            assert deleted.status_code == 204
        delivered = await _deliveries(stack, spared)
        assert [(d.status, d.attempts) for d in delivered] == [("delivered", 1)] * 3
        assert len(sibling.received) == 3
        assert await _deliveries(stack, doomed) == []
    assert _loop_errors(caplog) == []


async def test_an_image_url_httpx_cannot_send_fails_the_job_at_once(database_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(database_url, emulator) as stack,
    ):
        job = await stack.submit("flux-dev", **SMALL)
        bound = await wait_for(lambda: _bfl_id(stack, job["id"]))
        ready = {"id": bound, "status": "Ready", "result": {"sample": "http://☃.net/s.jpeg"}}
        assert (await stack.post_webhook(job["id"], ready)).status_code == 200
        failed = await stack.reaches(job["id"], "Error")
        assert "cannot be fetched" in failed["details"]["error"]


async def _bfl_id(stack, job_id: str) -> str | None:
    async with stack.services.db.read() as session:
        return (await session.get(Job, uuid.UUID(job_id))).bfl_id


async def test_one_tenants_hostile_subscriptions_never_stall_anothers(database_url, caplog):
    """Tenant A holds every hostile URL, a subscriber answering `Retry-After: ²` and one that
    stalls (deleted mid-flight); tenant B's 100 callbacks all arrive, each once."""
    async with (
        running_emulator(time_scale=0.01) as emulator,
        running_stack(database_url, emulator, delivery_timeout_s=1.0) as stack,
        running_subscriber(default=(429, {"retry-after": "²"})) as odd,
        running_subscriber(default="stall") as stalled,
        running_subscriber() as b_subscriber,
        httpx.AsyncClient(base_url=stack.url, timeout=30) as b_client,
    ):
        b_client.headers["x-key"] = await stack.new_key("tenant-b")
        await _hostile(stack, stack.client, AMBIGUOUS_OR_UNSENDABLE)
        await _subscribe(stack.client, odd.url)
        doomed = await _subscribe(stack.client, stalled.url)
        await _subscribe(b_client, b_subscriber.url, events=["job.ready"])
        for _ in range(3):
            await stack.submit("flux-dev", **SMALL)
        await stalled.wait_for(1)
        b_jobs = [await _submit(b_client) for _ in range(100)]
        assert (await stack.client.delete(f"/v1/subscriptions/{doomed}")).status_code == 204
        received = await b_subscriber.wait_for(100, within_s=60)
        assert {c.json["data"]["id"] for c in received} == set(b_jobs)
        assert len({c.webhook_id for c in received}) == 100
        assert len(received) == 100, "each delivery once"
    assert _loop_errors(caplog) == []


async def _submit(client: httpx.AsyncClient) -> str:
    response = await client.post("/v1/flux-dev", json={"prompt": "b's job", **SMALL})
    assert response.status_code == 200, response.text
    return response.json()["id"]
