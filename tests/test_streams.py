"""Server-Sent Events: live, resumable with Last-Event-ID, tenant-scoped, heartbeats, shutdown."""

import asyncio
import json
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import anyio
import httpx

from service.db import Database, create_engine
from service.hub import CLOSED, RESYNC, Hub, StreamEvent
from service.settings import Settings
from service.signals import Signals
from tests.support.rows import new_note, new_tenant
from tests.support.sse import open_stream
from tests.support.stack import running_emulator, running_stack

FAST = {"time_scale": 0.01}
NOW = datetime(2026, 12, 7, 7, 30, tzinfo=UTC)
SMALL = {"width": 256, "height": 256}


async def _job_events(stack, job_id: str) -> list[int]:
    detail = (await stack.client.get(f"/v1/jobs/{job_id}")).json()
    return [event["seq"] for event in detail["events"]]


async def _first_messages(stack, path: str, count: int, headers=None) -> str:
    """The stream's first `count` messages (comments included), exactly as sent."""
    received = ""
    async with stack.client.stream("GET", path, headers=headers, timeout=None) as response:
        with anyio.fail_after(15):
            async for text in response.aiter_text():
                received += text
                if received.count("\n\n") >= count:
                    return received
    raise AssertionError(f"the stream ended after {received!r}")


async def test_a_stream_from_now_first_says_which_id_it_starts_after(database_url):
    async with (
        running_emulator(**FAST) as emulator,
        running_stack(database_url, emulator, sse_heartbeat_s=0.05) as stack,
    ):
        empty = await _first_messages(stack, "/v1/events", 2)
        assert empty == ": connected\n\nid: 0\n\n", "no event yet: it starts after none"
        job = await stack.submit(**SMALL)
        await stack.settled(job["id"])
        first, *_, latest = await _job_events(stack, job["id"])
        fresh = await _first_messages(stack, "/v1/events", 2)
        assert fresh == f": connected\n\nid: {latest}\n\n"
        # A resumed stream has its id already; nothing to replay here, so a heartbeat is next.
        resume = {"last-event-id": str(latest)}
        resumed = await _first_messages(stack, "/v1/events", 2, headers=resume)
        assert resumed == ": connected\n\n: heartbeat\n\n"
        # A job's stream without an id replays the job's history: no start id either.
        history = await _first_messages(stack, f"/v1/jobs/{job['id']}/events", 2)
        assert history.startswith(f": connected\n\nid: {first}\nevent: job.submitted\n")


async def test_a_stream_that_drops_before_any_event_resumes_from_its_start_id(database_url):
    async with running_emulator(**FAST) as emulator, running_stack(database_url, emulator) as stack:
        before = await stack.submit(**SMALL)
        await stack.settled(before["id"])
        async with open_stream(stack.client, "/v1/events") as stream:
            start = await stream.start()
        assert start == max(await _job_events(stack, before["id"]))
        # The stream dropped before any event; a job runs its course before the client is back.
        missed = await stack.submit(**SMALL)
        await stack.settled(missed["id"])
        resume = {"last-event-id": str(start)}
        async with open_stream(stack.client, "/v1/events", headers=resume) as stream:
            replayed = await stream.take(2)
        assert [m.id for m in replayed] == await _job_events(stack, missed["id"])
        assert [m.event for m in replayed] == ["job.submitted", "job.ready"]


async def test_reconnecting_with_last_event_id_replays_exactly_what_was_missed(database_url):
    async with running_emulator(**FAST) as emulator, running_stack(database_url, emulator) as stack:
        async with open_stream(stack.client, "/v1/events") as stream:
            first = await stack.submit(**SMALL)
            seen = await stream.take(2)
        assert [m.event for m in seen] == ["job.submitted", "job.ready"]
        assert seen[-1].data["data"]["result"]["sample"]
        missed = [await stack.submit(**SMALL) for _ in range(3)]
        for job in missed:
            await stack.settled(job["id"])
        expected = [seq for job in missed for seq in await _job_events(stack, job["id"])]
        resume = {"last-event-id": str(seen[-1].id)}
        async with open_stream(stack.client, "/v1/events", headers=resume) as stream:
            replayed = await stream.take(len(expected))
            assert sorted(m.id for m in replayed) == sorted(expected)
            assert [m.id for m in replayed] == sorted(m.id for m in replayed), "in order"
            live = await stack.submit(**SMALL)
            after = await stream.take(2)
        assert [m.data["data"]["id"] for m in after] == [live["id"]] * 2
        assert first["id"] not in {m.data["data"]["id"] for m in replayed + after}


async def test_a_tenant_never_sees_another_tenants_events(database_url):
    async with running_emulator(**FAST) as emulator, running_stack(database_url, emulator) as stack:
        other_key = await stack.new_key("tenant-b")
        async with (
            httpx.AsyncClient(base_url=stack.url, headers={"x-key": other_key}) as b,
            open_stream(b, "/v1/events") as b_stream,
        ):
            a_job = await stack.submit(**SMALL)
            await stack.settled(a_job["id"])
            b_job = (await b.post("/v1/flux-dev", json={"prompt": "b", **SMALL})).json()
            events = await b_stream.take(2)
        assert {m.data["data"]["id"] for m in events} == {b_job["id"]}


async def test_a_job_stream_replays_the_jobs_history(sqlite_url):
    async with running_emulator(**FAST) as emulator, running_stack(sqlite_url, emulator) as stack:
        job = await stack.submit(**SMALL)
        await stack.settled(job["id"])
        async with open_stream(stack.client, f"/v1/jobs/{job['id']}/events") as stream:
            history = await stream.take(2)
            assert await stream.ended(), "a finished job's stream closes"
        assert [m.event for m in history] == ["job.submitted", "job.ready"]
        bad = await stack.client.get("/v1/events", headers={"last-event-id": "x"})
        assert bad.status_code == 422


async def test_idle_streams_get_heartbeats_and_end_at_shutdown(sqlite_url):
    async with (
        running_emulator(**FAST) as emulator,
        running_stack(sqlite_url, emulator, sse_heartbeat_s=0.05) as stack,
        open_stream(stack.client, "/v1/events") as stream,
    ):
        assert await stream.comment() == "heartbeat"
        stack.services.begin_shutdown()
        assert await stream.ended()


def _event(seq: int, tenant: uuid.UUID) -> StreamEvent:
    return StreamEvent(seq, tenant, None, "job.progress", "{}")


async def test_a_stream_that_falls_behind_resyncs_from_the_table_instead_of_growing():
    hub = Hub(db=SimpleNamespace(is_postgres=True), signals=None, backlog=3)
    tenant = uuid.uuid4()
    with hub.listen(tenant) as listener:
        for seq in range(1, 6):
            hub.publish(_event(seq, tenant))
        assert await listener.next(1) is RESYNC
        hub.publish(_event(6, tenant))
        assert (await listener.next(1)).seq == 6
        hub.publish(_event(7, uuid.uuid4()))
        assert await listener.next(0.01) is None, "another tenant's event"
        hub.close()
        assert await listener.next(1) is CLOSED


async def test_a_heartbeat_comes_after_its_own_silence_whatever_the_waits_before_it():
    """Waits that each ended with an event leave an alarm behind, set for the first of them:
    a later, longer wait does not end when it rings."""
    hub = Hub(db=SimpleNamespace(is_postgres=True), signals=None, backlog=100)
    tenant, loop = uuid.uuid4(), asyncio.get_running_loop()
    with hub.listen(tenant) as listener:
        async with asyncio.timeout(30):
            for seq in range(1, 20):
                waiting = asyncio.ensure_future(listener.next(0.3))
                await anyio.wait_all_tasks_blocked()  # the wait has begun
                hub.publish(_event(seq, tenant))
                assert (await waiting).seq == seq
            started = loop.time()
            assert await listener.next(0.6) is None
            assert loop.time() - started >= 0.6 - 1e-3, "not at the alarm set 0.3 s in"
            assert await listener.next(0.01) is None


async def test_a_job_stream_closes_after_the_live_terminal_event(sqlite_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(sqlite_url, emulator) as stack,
    ):
        job = await stack.submit(**SMALL)
        async with open_stream(stack.client, f"/v1/jobs/{job['id']}/events") as stream:
            assert (await stream.take(1))[0].event == "job.submitted"
            (task,) = await emulator.tasks()
            await emulator.finish(task["id"])
            (ready,) = await stream.take(1)
            assert ready.event == "job.ready"
            assert await stream.ended()


async def test_on_sqlite_a_workers_events_reach_the_streams_before_this_process_later_ones(
    sqlite_url,
):
    """`fluxhook worker` beside `serve` on one SQLite file: serve's hub reads the worker's
    events from the table. One of serve's own events that commits after them must not jump
    ahead (the cursor would pass them, and they would never reach the streams)."""
    settings = Settings.from_env({"DATABASE_URL": sqlite_url})
    serve, worker = Database(create_engine(settings)), Database(create_engine(settings))
    signals = Signals(postgres=False)
    hub = Hub(serve, signals)
    tenant = await new_tenant(serve, NOW)
    await hub.publish_new_rows()  # the cursor starts after what is there
    try:
        with hub.listen(tenant) as listener:
            await new_note(worker, Signals(postgres=False), tenant, "the worker's", NOW)
            await new_note(serve, signals, tenant, "serve's, after it", NOW)
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(hub.run)
                got = [await listener.next(5.0) for _ in range(2)]
                await new_note(serve, signals, tenant, "serve's next, at once", NOW)
                got.append(await listener.next(5.0))
                tasks.cancel_scope.cancel()
    finally:
        await serve.dispose()
        await worker.dispose()
    notes = [json.loads(event.body)["data"]["note"] for event in got]
    assert notes == ["the worker's", "serve's, after it", "serve's next, at once"]
    assert [event.seq for event in got] == sorted(event.seq for event in got)
