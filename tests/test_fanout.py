"""Fan-out to subscribers: Standard Webhooks signatures, retries on an injected clock, 410,
dead letters and redelivery, drop-in job callbacks, SSRF refusals."""

import json
import random
import uuid
from datetime import timedelta

import httpx
import pytest
from sqlmodel import select
from standardwebhooks import Webhook

from service.clock import FakeClock
from service.loops.dispatcher import Dispatcher
from service.models import Delivery, JobEvent, Subscription
from tests.support.sse import open_stream
from tests.support.stack import running_emulator, running_stack
from tests.support.subscriber import running_subscriber
from tests.support.waiting import wait_for

FAST = {"time_scale": 0.01}


async def _subscribe(stack, url: str, events=None) -> dict:
    body = {"url": url, "description": "test"} | ({"events": events} if events else {})
    response = await stack.client.post("/v1/subscriptions", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def test_subscriber_gets_each_event_once_signed_as_standard_webhooks(database_url):
    async with (
        running_emulator(**FAST) as emulator,
        running_stack(database_url, emulator) as stack,
        running_subscriber() as subscriber,
    ):
        subscription = await _subscribe(stack, subscriber.url)
        assert subscription["secret"].startswith("whsec_")
        job = await stack.submit("flux-dev", prompt="a tram", width=256, height=256)
        await stack.settled(job["id"])
        received = await subscriber.wait_for(2)
        verifier = Webhook(subscription["secret"])
        bodies = [verifier.verify(c.body, c.headers) for c in received]
        assert [b["type"] for b in bodies] == ["job.submitted", "job.ready"]
        assert all(b["data"]["id"] == job["id"] for b in bodies)
        assert bodies[-1]["data"]["result"]["sample"].startswith(stack.url + "/images/")
        assert len({c.webhook_id for c in received}) == 2
        listed = (await stack.client.get("/v1/subscriptions")).json()["subscriptions"]
        assert [s["id"] for s in listed] == [subscription["id"]]
        assert "secret" not in listed[0]


async def test_a_callback_carries_the_envelope_its_stream_message_carries(sqlite_url):
    async with (
        running_emulator(**FAST) as emulator,
        running_stack(sqlite_url, emulator) as stack,
        running_subscriber() as subscriber,
        open_stream(stack.client, "/v1/events") as stream,
    ):
        await _subscribe(stack, subscriber.url)
        await stream.start()
        await stack.submit("flux-dev", prompt="a tram", width=256, height=256)
        streamed = await stream.take(2)
        received = await subscriber.wait_for(2)
        by_type = {body["type"]: body for body in (json.loads(c.body) for c in received)}
        assert by_type == {m.event: m.data for m in streamed}


async def test_during_rotation_both_secrets_verify(sqlite_url):
    async with (
        running_emulator(**FAST) as emulator,
        running_stack(sqlite_url, emulator) as stack,
        running_subscriber() as subscriber,
    ):
        old = await _subscribe(stack, subscriber.url, events=["job.ready"])
        rotated = (await stack.client.post(f"/v1/subscriptions/{old['id']}/rotate-secret")).json()
        assert rotated["secret"] != old["secret"] and rotated["previous_secret_expires_at"]
        job = await stack.submit("flux-dev", width=256, height=256)
        await stack.settled(job["id"])
        (callback,) = await subscriber.wait_for(1)
        assert len(callback.headers["webhook-signature"].split(" ")) == 2
        for secret in (old["secret"], rotated["secret"]):
            assert Webhook(secret).verify(callback.body, callback.headers)["type"] == "job.ready"


@pytest.fixture
async def quiet_stack(database_url):
    """A stack whose loops do not run: the test drives a dispatcher on a fake clock."""
    clock = FakeClock()
    runtime = {"run_workers": False, "clock": clock}
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(database_url, emulator, runtime) as stack,
        httpx.AsyncHTTPTransport() as transport,
    ):
        stack.dispatcher_transport = transport
        yield stack, clock


async def _failed_job_event(stack) -> str:
    """A job.failed event, produced the real way: BFL's webhook through the receiver."""
    job = await stack.submit("flux-dev")
    task_id = "t"  # with no admission running, the webhook binds the job to its task
    if stack.services.loops:  # else the job is bound to the task admission submits: name it

        async def submitted() -> str | None:
            return (await stack.client.get(f"/v1/jobs/{job['id']}")).json()["bfl_id"]

        task_id = await wait_for(submitted)
    response = await stack.post_webhook(job["id"], {"id": task_id, "status": "Error"})
    assert response.json() == {"status": "applied"}
    return job["id"]


def _dispatcher(stack, clock, timeout_s: float = 5.0) -> Dispatcher:
    svc = stack.services
    return Dispatcher(
        svc.db,
        svc.signals,
        clock,
        stack.dispatcher_transport,
        svc.metrics,
        timeout_s=timeout_s,
        rng=random.Random(0),
    )


async def _deliveries(stack) -> list[Delivery]:
    async with stack.services.db.read() as session:
        return list((await session.exec(select(Delivery).order_by(Delivery.created_at))).all())


async def test_failures_are_retried_on_schedule(quiet_stack):
    stack, clock = quiet_stack
    async with running_subscriber(answers=[500, 502]) as subscriber:
        await _subscribe(stack, subscriber.url, events=["job.failed"])
        await _failed_job_event(stack)
        dispatcher = _dispatcher(stack, clock)
        await dispatcher.run_until_idle()
        (delivery,) = await _deliveries(stack)
        assert (delivery.attempts, delivery.status, delivery.last_status_code) == (
            1,
            "pending",
            500,
        )
        assert 4 <= (delivery.next_attempt_at - clock.now()).total_seconds() <= 6
        await dispatcher.run_until_idle()
        assert len(subscriber.received) == 1, "not due yet: nothing is sent"
        clock.advance(6)
        await dispatcher.run_until_idle()
        (delivery,) = await _deliveries(stack)
        assert 240 <= (delivery.next_attempt_at - clock.now()).total_seconds() <= 360
        clock.advance(360)
        await dispatcher.run_until_idle()
        (delivery,) = await _deliveries(stack)
        assert (delivery.status, delivery.attempts) == ("delivered", 3)
        assert len(set(subscriber.delivered_ids())) == 1, "one webhook-id across retries"


async def test_a_delivery_another_process_holds_is_sent_once_its_lease_runs_out(quiet_stack):
    """A process that died while sending: the others leave its delivery until the lease runs
    out (it may still be sending), then send it, once."""
    stack, clock = quiet_stack
    async with running_subscriber(default=200) as subscriber:
        await _subscribe(stack, subscriber.url, events=["job.failed"])
        await _failed_job_event(stack)
        async with stack.services.db.write() as session:
            (delivery,) = (await session.exec(select(Delivery))).all()
            delivery.lease_expires_at = clock.now() + timedelta(seconds=30)
        dispatcher = _dispatcher(stack, clock)
        await dispatcher.run_until_idle()
        assert subscriber.received == [], "leased elsewhere: not sent"
        clock.advance(31)
        await dispatcher.run_until_idle()
        assert len(subscriber.received) == 1
        (delivery,) = await _deliveries(stack)
        assert delivery.status == "delivered"


async def test_timeouts_count_as_failures(quiet_stack):
    stack, clock = quiet_stack
    async with running_subscriber(answers=["stall"]) as subscriber:
        await _subscribe(stack, subscriber.url, events=["job.failed"])
        await _failed_job_event(stack)
        await _dispatcher(stack, clock, timeout_s=0.2).run_until_idle()
        (delivery,) = await _deliveries(stack)
        assert delivery.status == "pending" and delivery.last_status_code is None
        assert "Timeout" in delivery.last_error


async def test_retry_after_on_429_is_honoured(quiet_stack):
    stack, clock = quiet_stack
    async with running_subscriber(answers=[(429, {"retry-after": "120"})]) as subscriber:
        await _subscribe(stack, subscriber.url, events=["job.failed"])
        await _failed_job_event(stack)
        await _dispatcher(stack, clock).run_until_idle()
        (delivery,) = await _deliveries(stack)
        assert (delivery.next_attempt_at - clock.now()).total_seconds() == 120


async def test_410_disables_the_subscription_and_says_so(quiet_stack):
    stack, clock = quiet_stack
    async with running_subscriber(answers=[410]) as subscriber:
        sub = await _subscribe(stack, subscriber.url, events=["job.failed"])
        await _failed_job_event(stack)
        await _dispatcher(stack, clock).run_until_idle()
        shown = (await stack.client.get(f"/v1/subscriptions/{sub['id']}")).json()
        assert not shown["enabled"] and "410" in shown["disabled_reason"]
        (delivery,) = await _deliveries(stack)
        assert delivery.status == "failed"
        async with stack.services.db.read() as session:
            types = (await session.exec(select(JobEvent.type).order_by(JobEvent.seq))).all()
        assert types[-1] == "subscription.disabled"
        enabled = await stack.client.post(f"/v1/subscriptions/{sub['id']}/enable")
        assert enabled.json()["enabled"]


async def test_dead_letters_can_be_redelivered(quiet_stack):
    stack, clock = quiet_stack
    async with running_subscriber(default=500) as subscriber:
        await _subscribe(stack, subscriber.url, events=["job.failed"])
        await _failed_job_event(stack)
        dispatcher = _dispatcher(stack, clock)
        for _ in range(8):
            await dispatcher.run_until_idle()
            clock.advance(13 * 3600)
        (delivery,) = await _deliveries(stack)
        assert (delivery.status, delivery.attempts) == ("failed", 8)
        dead = (await stack.client.get("/v1/deliveries", params={"status": "failed"})).json()
        assert [d["id"] for d in dead["deliveries"]] == [str(delivery.id)]
        subscriber.default = 200
        redelivered = await stack.client.post(f"/v1/deliveries/{delivery.id}/redeliver")
        assert redelivered.json()["status"] == "pending"
        again = await stack.client.post(f"/v1/deliveries/{delivery.id}/redeliver")
        assert again.status_code == 409
        await dispatcher.run_until_idle()
        (delivery,) = await _deliveries(stack)
        assert delivery.status == "delivered"
        assert len(set(subscriber.delivered_ids())) == 1


async def test_failing_for_five_days_disables(quiet_stack):
    stack, clock = quiet_stack
    async with running_subscriber(default=500) as subscriber:
        sub = await _subscribe(stack, subscriber.url, events=["job.failed"])
        dispatcher = _dispatcher(stack, clock)
        for _ in range(6):  # a new failing event every day
            await _failed_job_event(stack)
            await dispatcher.run_until_idle()
            clock.advance(24 * 3600)
        shown = (await stack.client.get(f"/v1/subscriptions/{sub['id']}")).json()
        assert not shown["enabled"] and "5 days" in shown["disabled_reason"]


async def test_drop_in_webhook_url_gets_bfl_shaped_callbacks(sqlite_url):
    async with (
        running_emulator(**FAST) as emulator,
        running_stack(sqlite_url, emulator) as stack,
        running_subscriber() as subscriber,
    ):
        job = await stack.submit("flux-dev", webhook_url=subscriber.url, webhook_secret="s3cret")
        await stack.settled(job["id"])
        (callback,) = await subscriber.wait_for(1)
        assert callback.headers["x-webhook-secret"] == "s3cret"
        body = callback.json
        assert list(body) == ["id", "status", "result", "progress", "details", "preview"]
        assert (body["id"], body["status"]) == (job["id"], "Ready")
        assert Webhook(b"s3cret").verify(callback.body, callback.headers)["id"] == job["id"]
        tasks = await emulator.tasks()
        assert tasks[0]["webhook_url"].startswith(stack.url + "/webhooks/bfl/"), "never forwarded"


async def test_subscriptions_validate_their_input(quiet_stack):
    stack, _ = quiet_stack
    bad = [{"url": "ftp://x"}, {"url": "https://ok.example", "events": ["job.exploded"]},
           {"url": "https://ok.example", "events": []}, {"url": "https://ok.example",
           "description": 5}, {}]  # fmt: skip
    for body in bad:
        assert (await stack.client.post("/v1/subscriptions", json=body)).status_code == 422
    assert (await stack.client.post("/v1/subscriptions", content=b"[")).status_code == 400
    missing = f"/v1/subscriptions/{uuid.uuid4()}"
    assert (await stack.client.get(missing)).status_code == 404
    assert (await stack.client.delete(missing)).status_code == 404
    made = await _subscribe(stack, "https://hooks.example/x")
    assert (await stack.client.delete(f"/v1/subscriptions/{made['id']}")).status_code == 204
    async with stack.services.db.read() as session:
        assert (await session.exec(select(Subscription))).all() == []
    assert json.loads((await stack.client.get("/v1/subscriptions")).text) == {"subscriptions": []}


async def test_redirects_are_not_followed(quiet_stack):
    stack, clock = quiet_stack
    async with running_subscriber() as elsewhere:
        async with running_subscriber(answers=[(307, {"location": elsewhere.url})]) as subscriber:
            await _subscribe(stack, subscriber.url, events=["job.failed"])
            await _failed_job_event(stack)
            await _dispatcher(stack, clock).run_until_idle()
        (delivery,) = await _deliveries(stack)
        assert (delivery.status, delivery.last_status_code) == ("pending", 307)
        assert elsewhere.received == []


async def test_private_targets_are_refused_at_connect_time(database_url):
    """Registration cannot see where `localhost` points; the dispatcher's connect can."""
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(database_url, emulator, allow_private_targets=False) as stack,
        running_subscriber() as subscriber,
    ):
        literal = await stack.client.post("/v1/subscriptions", json={"url": subscriber.url})
        assert literal.status_code == 422 and "loopback" in literal.json()["detail"]
        await _subscribe(stack, subscriber.url.replace("127.0.0.1", "localhost"), ["job.failed"])
        await _failed_job_event(stack)
        await _wait_attempted(stack)
        (delivery,) = await _deliveries(stack)
        assert "refused" in delivery.last_error and "loopback" in delivery.last_error
        assert subscriber.received == []


async def _wait_attempted(stack) -> None:
    async def attempted():
        rows = (await stack.client.get("/v1/deliveries")).json()["deliveries"]
        return rows and rows[0]["attempts"] > 0

    await wait_for(attempted)


async def test_a_slow_subscriber_cannot_starve_the_others(database_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(
            database_url, emulator, delivery_timeout_s=5.0, delivery_concurrency=4
        ) as stack,
        running_subscriber(default="stall") as slow,
        running_subscriber() as fast,
    ):
        for subscriber in (slow, fast):
            await _subscribe(stack, subscriber.url, events=["job.failed"])
        for _ in range(10):
            await _failed_job_event(stack)
        await fast.wait_for(10, within_s=4.0)  # well before the slow one's first timeout
        await slow.wait_for(4, within_s=1.0)
        assert len(slow.received) == 4, "at most 4 in flight per subscription"
