"""When the happy path breaks: lost webhooks, regional hosts, admission limits, credits, faults."""

import uuid
from collections import Counter

import anyio
import httpx
import pytest
from sqlmodel import select

from service.clock import FakeClock
from service.loops.admission import Admission
from service.loops.reconciler import Reconciler
from service.models import IdempotencyKey, Job
from service.runtime import build_loops
from tests.support.stack import running_emulator, running_stack

SMALL = {"width": 256, "height": 256}
# flux-2-klein-4b: BFL says ~1 s, so a webhook is overdue after 2 s + RECONCILE_SLACK_S.
FAST_MODEL = "flux-2-klein-4b"
RECONCILING = {"reconcile_slack_s": 0.5, "reconcile_interval_s": 0.2}


async def _settle_all(stack, jobs: list[dict], within_s: float = 60) -> list[dict]:
    results = [None] * len(jobs)

    async def settle(index: int, job: dict) -> None:
        while True:
            results[index] = await stack.settled(job["id"], timeout_s=20)
            if results[index]["status"] != "Pending":
                return

    with anyio.fail_after(within_s):
        async with anyio.create_task_group() as tg:
            for index, job in enumerate(jobs):
                tg.start_soon(settle, index, job)
    return results


def _loop(stack, kind):
    return next(loop for loop in stack.services.loops if isinstance(loop, kind))


async def _rows(stack) -> dict[str, Job]:
    async with stack.services.db.read() as session:
        return {str(job.id): job for job in (await session.exec(select(Job))).all()}


def _prompt(index: int) -> str:
    outcome = {0: " [error]", 1: " [content-moderated]"}.get(index % 20, "")
    return f"job {index:03d}{outcome}"


EXPECTED = {" [error]": "Error", " [content-moderated]": "Content Moderated", "": "Ready"}


@pytest.mark.slow
async def test_lost_webhooks_are_reconciled_and_nothing_else_is_polled(database_url):
    config = {"time_scale": 0.05, "drop_webhooks": 0.3, "seed": 11}
    # Only the overdue window is under test: early checks (tests/test_early_check.py) poll a
    # late webhook by design, and 2 s of slack keeps a webhook slowed by a loaded machine
    # from counting as lost.
    patient = {**RECONCILING, "reconcile_slack_s": 2.0, "reconcile_early_checks": False}
    async with (
        running_emulator(**config) as emulator,
        running_stack(database_url, emulator, **patient) as stack,
    ):
        jobs = [await stack.submit(FAST_MODEL, prompt=_prompt(i), **SMALL) for i in range(200)]
        results = await _settle_all(stack, jobs)
        for index, result in enumerate(results):
            expected = EXPECTED[_prompt(index).removeprefix(f"job {index:03d}")]
            assert result["status"] == expected, (index, result)
            assert (result["result"] is not None) == (expected == "Ready")
        tasks = {task["id"]: task for task in await emulator.tasks()}
        polled = (await emulator.stats())["get_result_by_task"]
        dropped = {tid for tid, task in tasks.items() if task["webhook_dropped"]}
        assert 30 < len(dropped) < 90
        assert set(polled) == dropped, "polls only for the tasks whose webhook never came"
        rows = await _rows(stack)
        via = Counter(job.completed_via for job in rows.values())
        assert via["reconciler"] == len(dropped)
        assert via["webhook"] == 200 - len(dropped)


async def test_global_mode_falls_back_to_the_poll_hosts(database_url):
    config = {"time_scale": 0.05, "drop_webhooks": 1.0, "global_mode": True}
    async with running_emulator(**config) as emulator:
        regional = (f"{emulator.url}/regions/eu4",)
        async with running_stack(
            database_url, emulator, bfl_poll_hosts=regional, **RECONCILING
        ) as stack:
            jobs = [await stack.submit(FAST_MODEL, **SMALL) for _ in range(5)]
            assert {r["status"] for r in await _settle_all(stack, jobs)} == {"Ready"}


async def test_a_burst_waits_in_fifo_order_for_upstream_slots(database_url):
    config = {"time_scale": 0.3, "seed": 3}
    async with (
        running_emulator(**config) as emulator,
        running_stack(database_url, emulator, bfl_max_active=24) as stack,
    ):
        responses = await _burst(stack, 100)
        assert {r.status_code for r in responses} == {200}, "no client ever sees a 429"
        jobs = [r.json() for r in responses]
        results = await _settle_all(stack, jobs, within_s=120)
        assert {r["status"] for r in results} == {"Ready"}
        stats = await emulator.stats()
        assert stats["max_active"] <= 24
        assert stats["submits"] == 100, "no upstream 429 either"
        rows = await _rows(stack)
        admitted = [rows[job["id"]].admitted_at for job in jobs]
        assert admitted == sorted(admitted), "admitted in the order they were accepted"


async def _burst(stack, count: int) -> list[httpx.Response]:
    """`count` submissions, accepted one after another (so their FIFO order is known)."""
    return [
        await stack.client.post(f"/v1/{FAST_MODEL}", json={"prompt": f"burst {i}", **SMALL})
        for i in range(count)
    ]


async def test_running_out_of_credits_fails_exactly_the_unpaid_jobs(database_url):
    price = 1.4  # flux-2-klein-4b at ≤ 1 MP
    config = {"time_scale": 0.05, "credits": price * 10.5}  # enough for 10 jobs, not 11
    async with (
        running_emulator(**config) as emulator,
        running_stack(database_url, emulator) as stack,
    ):
        jobs = [await stack.submit(FAST_MODEL, **SMALL) for _ in range(15)]
        results = await _settle_all(stack, jobs)
        statuses = Counter(r["status"] for r in results)
        assert statuses == {"Ready": 10, "Error": 5}
        failed = [r for r in results if r["status"] == "Error"]
        assert all(r["details"] == {"error": "insufficient credits"} for r in failed)


@pytest.mark.parametrize("fault", ["submit_5xx", "submit_timeout"])
async def test_submit_faults_end_every_job_once_and_charge_once(database_url, fault):
    config = {"time_scale": 0.05, "seed": 5, fault: 0.4, "submit_stall_s": 3.0}
    async with (
        running_emulator(**config) as emulator,
        running_stack(database_url, emulator, bfl_timeout_s=0.5, **RECONCILING) as stack,
    ):
        keys = [str(uuid.uuid4()) for _ in range(20)]
        jobs = [await _submit_idempotent(stack, key) for key in keys]
        again = [await _submit_idempotent(stack, key) for key in keys]  # a client retrying
        assert [j["id"] for j in again] == [j["id"] for j in jobs]
        results = await _settle_all(stack, jobs)
        assert {r["status"] for r in results} == {"Ready"}
        for job in jobs:
            events = (await stack.client.get(f"/v1/jobs/{job['id']}")).json()["events"]
            terminal = [e for e in events if e["type"] in ("job.ready", "job.failed")]
            assert len(terminal) == 1
        rows = await _rows(stack)
        assert len(rows) == 20, "a repeated Idempotency-Key creates nothing"
        stats = await emulator.stats()
        spent = 1000 - next(iter(stats["credits"].values()))
        assert spent == pytest.approx(1.4 * 20), "each job paid for once upstream"


async def _submit_idempotent(stack, key: str) -> dict:
    body = {"prompt": f"idempotent {key[:8]}", **SMALL}
    response = await stack.client.post(f"/v1/{FAST_MODEL}", json=body,
                                       headers={"idempotency-key": key})  # fmt: skip
    assert response.status_code == 200, response.text
    return response.json()


async def test_idempotency_keys_last_a_day_and_bind_the_request(database_url):
    clock = FakeClock()
    runtime = {"run_workers": False, "clock": clock}
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(database_url, emulator, runtime) as stack,
    ):
        first = await _submit_idempotent(stack, "key-1")
        assert (await _submit_idempotent(stack, "key-1")) == first
        other = await stack.client.post(f"/v1/{FAST_MODEL}", json={"prompt": "different"},
                                        headers={"idempotency-key": "key-1"})  # fmt: skip
        assert other.status_code == 422
        too_long = await stack.client.post(f"/v1/{FAST_MODEL}", json={"prompt": "x"},
                                           headers={"idempotency-key": "k" * 300})  # fmt: skip
        assert too_long.status_code == 400
        clock.advance(24 * 3600 + 1)
        assert (await _submit_idempotent(stack, "key-1"))["id"] != first["id"]
        await _submit_idempotent(stack, "key-2")
        clock.advance(24 * 3600 + 1)
        async with httpx.AsyncHTTPTransport() as transport:
            build_loops(stack.services, transport, transport)
            reconciler = _loop(stack, Reconciler)
            await reconciler.run_once()
        async with stack.services.db.read() as session:
            assert (await session.exec(select(IdempotencyKey))).all() == [], "a day later: gone"
        other_tenant = await stack.new_key("b")
        async with httpx.AsyncClient(base_url=stack.url, headers={"x-key": other_tenant}) as b:
            theirs = await b.post(f"/v1/{FAST_MODEL}", json={"prompt": "idempotent key-1"},
                                  headers={"idempotency-key": "key-1"})  # fmt: skip
        assert theirs.json()["id"] != first["id"], "keys are per tenant"


async def test_upstream_429s_go_back_to_the_queue_until_slots_free(sqlite_url):
    """BFL's limit is lower than fluxhook was told: its 429s requeue, nobody sees them."""
    async with (
        running_emulator(time_scale=0.05, active_limit=2) as emulator,
        running_stack(sqlite_url, emulator, bfl_max_active=24) as stack,
    ):
        jobs = []
        async with anyio.create_task_group() as tg:  # at once, so they overlap upstream
            for _ in range(10):
                tg.start_soon(lambda: _append(jobs, stack.submit(FAST_MODEL, **SMALL)))
        assert {r["status"] for r in await _settle_all(stack, jobs)} == {"Ready"}
        metrics = stack.services.metrics.upstream_responses
        assert metrics.value(op="submit", outcome="429") > 0
        assert metrics.value(op="submit", outcome="ok") == 10


async def _append(items: list, awaitable) -> None:
    items.append(await awaitable)


async def test_a_task_no_host_knows_ends_in_error_after_the_image_window(database_url):
    clock = FakeClock()
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(database_url, emulator, {"run_workers": False, "clock": clock}) as stack,
        httpx.AsyncClient() as http,
        httpx.AsyncHTTPTransport() as transport,
    ):
        build_loops(stack.services, transport, transport)
        admission, reconciler = _loop(stack, Admission), _loop(stack, Reconciler)
        job = await stack.submit(FAST_MODEL)
        await admission.run_until_idle()
        await http.post(f"{emulator.url}/_emulator/reset")  # BFL forgets the task
        clock.advance(60)
        await reconciler.run_until_idle()
        detail = (await stack.client.get(f"/v1/jobs/{job['id']}")).json()
        assert detail["status"] == "Pending", "unknown for a minute: asked again later"
        clock.advance(11 * 60)
        await reconciler.run_until_idle()
        detail = (await stack.client.get(f"/v1/jobs/{job['id']}")).json()
        assert detail["status"] == "Error"
        assert "does not know this task on any host" in detail["details"]["error"]
        assert detail["completed_via"] == "reconciler"
