"""Webhooks: both dialects, headers, progress events, retries and the delivery faults."""

import hashlib
import hmac
import itertools

import anyio

from service.emulator import EmulatorConfig
from tests.emulator.support import emulator, receiver, wait_for

MANUAL = EmulatorConfig(seed=7, manual=True)
FAST = EmulatorConfig(seed=7, latency_s=0.0)
RESULT_KEYS = ["id", "status", "result", "progress", "details", "preview"]


async def test_submit_with_webhook_url_has_no_polling_url():
    async with receiver() as (_, hook), emulator(MANUAL) as emu:
        response = await emu.submit("flux-2-pro", webhook_url=hook, webhook_secret="s3cret")
        body = response.json()
        assert list(body) == ["id", "status", "webhook_url", "cost", "input_mp", "output_mp"]
        assert (body["status"], body["webhook_url"]) == ("Pending", hook)
        assert (await emu.poll(body["id"]))["status"] == "Pending"


async def test_current_dialect_mirrors_get_result_plus_cost():
    async with receiver() as (hook, url), emulator(MANUAL) as emu:
        task_id = (await emu.submit("flux-dev", webhook_url=url, webhook_secret="s3cret")).json()[
            "id"
        ]
        await emu.finish(task_id)
        (event,) = await hook.count(1)
        assert list(event.json) == [*RESULT_KEYS, "cost"]
        assert (event.json["id"], event.json["status"], event.json["cost"]) == (
            task_id,
            "Ready",
            2.5,
        )
        assert list(event.json["result"]) == [
            "sample",
            "prompt",
            "seed",
            "start_time",
            "end_time",
            "duration",
        ]
        assert event.headers["content-type"] == "application/json"
        assert event.headers["x-webhook-secret"] == "s3cret"
        assert "x-bfl-signature" not in event.headers
        image = await emu.http.get(event.json["result"]["sample"])
        assert image.status_code == 200


async def test_no_secret_no_secret_header():
    async with receiver() as (hook, url), emulator(FAST) as emu:
        await emu.submit(webhook_url=url)
        (event,) = await hook.count(1)
        assert "x-webhook-secret" not in event.headers


async def test_signature_header_signs_the_raw_body():
    config = EmulatorConfig(seed=7, latency_s=0.0, signature_header=True)
    async with receiver() as (hook, url), emulator(config) as emu:
        await emu.submit(webhook_url=url, webhook_secret="s3cret")
        (event,) = await hook.count(1)
        digest = hmac.new(b"s3cret", event.raw, hashlib.sha256).hexdigest()
        assert event.headers["x-bfl-signature"] == f"sha256={digest}"


async def test_failures_and_moderation_send_webhooks_too():
    async with receiver() as (hook, url), emulator(FAST) as emu:
        await emu.submit(prompt="[error]", webhook_url=url)
        await emu.submit(prompt="[content-moderated]", webhook_url=url)
        events = {event.json["status"]: event.json for event in await hook.count(2)}
        assert events["Error"]["details"]["error"]
        assert events["Content Moderated"]["details"]["Moderation Reasons"]
        assert events["Content Moderated"]["result"] is None


async def test_legacy_dialect():
    config = EmulatorConfig(
        seed=7, manual=True, dialect="legacy", legacy_moderated_status="GENERATED CONTENT MODERATED"
    )
    async with receiver() as (hook, url), emulator(config) as emu:
        statuses = ("Ready", "Error", "Content Moderated", "Request Moderated")
        for status in statuses:
            task_id = (await emu.submit(webhook_url=url)).json()["id"]
            await emu.finish(task_id, status)
            await hook.count(statuses.index(status) + 1)
        ready, failed, content, request = (event.json for event in hook.requests)
        for event in (ready, failed, content, request):
            assert list(event) == ["task_id", "status", "result", "progress", "error"]
        assert (ready["status"], ready["error"]) == ("SUCCESS", None)
        assert list(ready["result"]) == [
            "sample", "prompt", "seed", "start_time", "end_time", "duration", "pre_filtered"
        ]  # fmt: skip
        assert (failed["status"], failed["result"]) == ("FAILED", None)
        assert failed["error"]
        assert content["status"] == "GENERATED CONTENT MODERATED"
        assert request["status"] == "Request Moderated"


async def test_progress_events_then_the_terminal_one():
    config = EmulatorConfig(seed=7, manual=True, latency_s=0.05, progress_events=True)
    async with receiver() as (hook, url), emulator(config) as emu:
        task_id = (await emu.submit(webhook_url=url)).json()["id"]
        progress = await hook.count(10)
        assert [event.json for event in progress] == [
            {"task_id": task_id, "status": "processing", "progress": percent}
            for percent in range(10, 101, 10)
        ]
        await emu.finish(task_id)
        events = await hook.count(11)
        assert events[-1].json["status"] == "Ready"


async def test_legacy_progress_events():
    config = EmulatorConfig(seed=7, manual=True, dialect="legacy", progress_events=True)
    async with receiver() as (hook, url), emulator(config) as emu:
        task_id = (await emu.submit(webhook_url=url)).json()["id"]
        (first,) = await hook.count(1)
        assert first.json == {
            "task_id": task_id,
            "status": "processing",
            "result": None,
            "progress": 10,
            "error": None,
        }


async def test_retries_until_a_2xx():
    config = EmulatorConfig(seed=7, latency_s=0.0, time_scale=0.01)  # gaps 10 ms, 50 ms, 300 ms
    async with receiver(statuses=[500, 503]) as (hook, url), emulator(config) as emu:
        task_id = (await emu.submit(webhook_url=url)).json()["id"]
        await hook.count(3)
        task = await wait_for(lambda: _attempts(emu, task_id, 3))
        attempts = task["webhook_attempts"]
        assert [attempt["status_code"] for attempt in attempts] == [500, 503, 200]
        gaps = [later["at"] - earlier["at"] for earlier, later in itertools.pairwise(attempts)]
        assert gaps[0] >= 0.9 * 0.01
        assert gaps[1] >= 0.9 * 0.05
        stats = await emu.stats()
        assert (stats["webhooks_attempted"], stats["webhooks_delivered"]) == (3, 1)


async def test_gives_up_after_four_attempts():
    config = EmulatorConfig(seed=7, latency_s=0.0, time_scale=0.01)  # gaps 10 ms, 50 ms, 300 ms
    async with receiver(statuses=[500] * 10) as (hook, url), emulator(config) as emu:
        task_id = (await emu.submit(webhook_url=url)).json()["id"]

        async def given_up():
            stats = await emu.stats()
            return stats if stats["webhooks_failed"] else None

        stats = await wait_for(given_up)
        assert (stats["webhooks_attempted"], stats["webhooks_delivered"]) == (4, 0)
        attempts = (await emu.task(task_id))["webhook_attempts"]
        gaps = [later["at"] - earlier["at"] for earlier, later in itertools.pairwise(attempts)]
        assert len(attempts) == len(hook.requests) == 4
        assert [
            gap >= 0.9 * scheduled for gap, scheduled in zip(gaps, (0.01, 0.05, 0.3), strict=True)
        ] == [True] * 3
        assert max(gaps) == gaps[2]


async def test_connection_errors_are_retried():
    config = EmulatorConfig(seed=7, latency_s=0.0, time_scale=0.001)
    async with receiver() as (_, url):
        pass  # once the receiver has stopped, its port refuses connections
    async with emulator(config) as emu:
        task_id = (await emu.submit(webhook_url=url)).json()["id"]
        task = await wait_for(lambda: _attempts(emu, task_id, 4))
        assert {attempt["status_code"] for attempt in task["webhook_attempts"]} == {None}
        assert "ConnectError" in task["webhook_attempts"][0]["error"]


async def test_a_slow_receiver_times_out_and_is_retried():
    config = EmulatorConfig(seed=7, latency_s=0.0, time_scale=0.01, webhook_timeout_s=0.2)
    release = anyio.Event()
    async with receiver(stall=release) as (_, url), emulator(config) as emu:
        task_id = (await emu.submit(webhook_url=url)).json()["id"]
        task = await wait_for(lambda: _attempts(emu, task_id, 2))
        first, second = task["webhook_attempts"]
        assert (first["status_code"], second["status_code"]) == (None, 200)
        assert "Timeout" in first["error"]
        release.set()


async def test_dropped_tasks_send_nothing():
    async with (
        receiver() as (hook, url),
        emulator(EmulatorConfig(seed=7, drop_webhooks=1.0, latency_s=0.0)) as emu,
    ):
        dropped = (await emu.submit(webhook_url=url)).json()["id"]
        await emu.wait_terminal(dropped)
        await emu.configure(drop_webhooks=0.0)
        delivered = (await emu.submit(webhook_url=url)).json()["id"]
        (event,) = await hook.count(1)
        assert event.json["id"] == delivered
        task = await emu.task(dropped)
        assert (task["webhook_dropped"], task["webhook_attempts"]) == (True, [])
        assert (await emu.stats())["webhooks_dropped"] == 1


async def test_duplicate_webhooks_send_the_terminal_event_twice():
    async with (
        receiver() as (hook, url),
        emulator(EmulatorConfig(seed=7, duplicate_webhooks=1.0, latency_s=0.0)) as emu,
    ):
        task_id = (await emu.submit(webhook_url=url)).json()["id"]
        first, second = await hook.count(2)
        assert first.json["id"] == second.json["id"] == task_id
        assert first.json["status"] == second.json["status"] == "Ready"


async def test_reorder_sends_a_progress_event_after_the_terminal_one():
    async with (
        receiver() as (hook, url),
        emulator(EmulatorConfig(seed=7, reorder=True, latency_s=0.0)) as emu,
    ):
        task_id = (await emu.submit(webhook_url=url)).json()["id"]
        terminal, late = await hook.count(2)
        assert terminal.json["status"] == "Ready"
        assert late.json == {"task_id": task_id, "status": "processing", "progress": 90}


async def test_webhook_before_response():
    config = EmulatorConfig(seed=7, webhook_before_response=True, latency_s=60.0)
    async with receiver() as (hook, url), emulator(config) as emu:
        task_id = (await emu.submit(webhook_url=url)).json()["id"]
        assert [event.json["id"] for event in hook.requests] == [task_id]
        assert hook.requests[0].json["status"] == "Ready"


async def test_webhook_delay():
    config = EmulatorConfig(seed=7, latency_s=0.0, webhook_delay_s=(0.2, 0.2))
    async with receiver() as (_, url), emulator(config) as emu:
        task_id = (await emu.submit(webhook_url=url)).json()["id"]
        task = await wait_for(lambda: _attempts(emu, task_id, 1))
        assert task["webhook_attempts"][0]["at"] - task["finished_at"] >= 0.2


async def test_routes_without_webhooks_ignore_webhook_url():
    async with receiver() as (_, url), emulator(MANUAL) as emu:
        body = {"input_image": "aW1n", "width": 512, "height": 512, "webhook_url": url}
        submitted = (await emu.submit("flux-tools/outpainting-v1", **body)).json()
        assert "polling_url" in submitted
        assert (await emu.task(submitted["id"]))["webhook_url"] is None


async def test_bad_webhook_urls_are_422():
    async with emulator(MANUAL) as emu:
        for url, kind in (
            ("ftp://x", "url_scheme"),
            ("not a url", "url_parsing"),
            ("", "url_parsing"),
        ):
            response = await emu.submit(webhook_url=url)
            assert response.status_code == 422
            assert response.json()["detail"][0]["type"] == kind


async def _attempts(emu, task_id, n):
    task = await emu.task(task_id)
    return task if len(task["webhook_attempts"]) >= n else None
