"""Test events: `POST /v1/subscriptions/{id}/test` sends that subscription a signed `ping`
through the normal delivery path, and `fluxhook subscriptions test ID` does the same."""

import os
import random
import sys
import uuid

import anyio
import httpx
import pytest
from sqlmodel import select
from standardwebhooks import Webhook

from service.clock import FakeClock
from service.loops.dispatcher import Dispatcher
from service.models import JobEvent, Subscription
from tests.support.stack import running_emulator, running_stack
from tests.support.subscriber import running_subscriber
from tests.support.waiting import wait_for


async def _subscribe(stack, url: str, **fields) -> dict:
    response = await stack.client.post("/v1/subscriptions", json={"url": url, **fields})
    assert response.status_code == 201, response.text
    return response.json()


async def _ping(stack, subscription_id: str) -> dict:
    response = await stack.client.post(f"/v1/subscriptions/{subscription_id}/test")
    assert response.status_code == 202, response.text
    return response.json()


async def _deliveries(stack, **params) -> list[dict]:
    return (await stack.client.get("/v1/deliveries", params=params)).json()["deliveries"]


async def test_a_ping_arrives_signed_to_that_subscription_alone(database_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(database_url, emulator) as stack,
        running_subscriber() as subscriber,
        running_subscriber() as bystander,
    ):
        # Its filter names no ping, and the other takes every event: only the tested one gets it.
        tested = await _subscribe(stack, subscriber.url, events=["job.ready"])
        await _subscribe(stack, bystander.url)
        sent = await _ping(stack, tested["id"])
        (callback,) = await subscriber.wait_for(1)
        body = Webhook(tested["secret"]).verify(callback.body, callback.headers)
        assert body["type"] == "ping"
        assert body["data"]["subscription_id"] == tested["id"] and body["data"]["test"] is True
        assert body["data"]["url"] == subscriber.url and body["data"]["message"]
        assert callback.webhook_id == sent["webhook_id"]

        async def delivered() -> list[dict]:
            return await _deliveries(stack, status="delivered")

        (row,) = await wait_for(delivered)
        assert (row["id"], row["event_type"], row["job_id"]) == (sent["delivery_id"], "ping", None)
        assert (row["subscription_id"], row["webhook_id"]) == (tested["id"], sent["webhook_id"])
        # Deliveries are written with their event: no row now means none will ever be sent.
        assert [d["id"] for d in await _deliveries(stack)] == [sent["delivery_id"]]
        assert bystander.received == []
        async with stack.services.db.read() as session:
            event = (await session.exec(select(JobEvent).where(JobEvent.type == "ping"))).one()
        assert event.job_id is None, "a ping is no job's event"


async def test_only_the_tenants_own_enabled_subscription_can_be_tested(sqlite_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(sqlite_url, emulator) as stack,
    ):
        mine = await _subscribe(stack, "https://example.com/hook")
        other_key = await stack.new_key("other")
        async with httpx.AsyncClient(base_url=stack.url, headers={"x-key": other_key}) as other:
            theirs = await other.post(f"/v1/subscriptions/{mine['id']}/test")
        unknown = await stack.client.post(f"/v1/subscriptions/{uuid.uuid4()}/test")
        malformed = await stack.client.post("/v1/subscriptions/not-a-uuid/test")
        for response in (theirs, unknown, malformed):
            assert response.status_code == 404
            assert response.json() == {"detail": "subscription not found"}
        asked = await stack.client.post(
            "/v1/subscriptions", json={"url": "https://example.com/hook", "events": ["ping"]}
        )
        assert asked.status_code == 422 and "ping" in asked.json()["detail"]
        assert await _deliveries(stack) == []


async def _disable(stack, subscription_id: str) -> None:
    async with stack.services.db.write() as session:
        subscription = await session.get(Subscription, uuid.UUID(subscription_id))
        subscription.enabled, subscription.disabled_reason = False, "the endpoint answered 410"


async def test_a_disabled_subscription_is_409_until_enabled(sqlite_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(sqlite_url, emulator, {"run_workers": False}) as stack,
    ):
        subscription = await _subscribe(stack, "https://example.com/hook")
        await _disable(stack, subscription["id"])
        refused = await stack.client.post(f"/v1/subscriptions/{subscription['id']}/test")
        assert refused.status_code == 409 and "enable" in refused.json()["detail"]
        assert await _deliveries(stack) == []
        await stack.client.post(f"/v1/subscriptions/{subscription['id']}/enable")
        sent = await _ping(stack, subscription["id"])
        assert [d["id"] for d in await _deliveries(stack)] == [sent["delivery_id"]]


@pytest.fixture
async def quiet_stack(database_url):
    """No loops: the test drives a dispatcher on a fake clock."""
    clock = FakeClock()
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(database_url, emulator, {"run_workers": False, "clock": clock}) as stack,
        httpx.AsyncHTTPTransport() as transport,
    ):
        svc = stack.services
        dispatcher = Dispatcher(
            svc.db, svc.signals, clock, transport, svc.metrics, timeout_s=5.0, rng=random.Random(0)
        )
        yield stack, clock, dispatcher


async def test_a_failing_subscriber_gets_the_ping_retried(quiet_stack):
    stack, clock, dispatcher = quiet_stack
    async with running_subscriber(answers=[500]) as subscriber:
        subscription = await _subscribe(stack, subscriber.url)
        sent = await _ping(stack, subscription["id"])
        await dispatcher.run_until_idle()
        (row,) = await _deliveries(stack)
        assert (row["status"], row["attempts"], row["last_status_code"]) == ("pending", 1, 500)
        clock.advance(6)  # the second attempt is due 5 s (+-20 %) after the first
        await dispatcher.run_until_idle()
        (row,) = await _deliveries(stack)
        assert (row["id"], row["status"], row["attempts"]) == (sent["delivery_id"], "delivered", 2)
        assert [c.webhook_id for c in subscriber.received] == [sent["webhook_id"]] * 2
        # (Signed at the fake clock's time: the first test verifies the signature.)
        assert {c.json["type"] for c in subscriber.received} == {"ping"}


async def _cli(*args: str, stack) -> tuple[int, str, str]:
    env = {**os.environ, "FLUXHOOK_URL": stack.url, "FLUXHOOK_KEY": stack.key}
    done = await anyio.run_process([sys.executable, "-m", "service", *args], env=env, check=False)
    return done.returncode, done.stdout.decode(), done.stderr.decode()


async def test_the_cli_verb_sends_a_ping_and_prints_its_delivery(sqlite_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(sqlite_url, emulator) as stack,
        running_subscriber() as subscriber,
    ):
        subscription = await _subscribe(stack, subscriber.url)
        code, out, err = await _cli("subscriptions", "test", subscription["id"], stack=stack)
        assert code == 0, err
        (callback,) = await subscriber.wait_for(1)
        body = Webhook(subscription["secret"]).verify(callback.body, callback.headers)
        assert body["type"] == "ping"
        assert [d["id"] for d in await _deliveries(stack)] == [out.strip()]
        code, out, err = await _cli("subscriptions", "test", str(uuid.uuid4()), stack=stack)
        assert (code, out) == (3, "") and "404" in err
