"""Fair admission across tenants (DESIGN §4) and the per-tenant caps (DESIGN §2)."""

import itertools
import time

import anyio
import httpx
import pytest

from service.settings import Settings, SettingsError
from tests.support import postgres
from tests.support.processes import cli, fluxhook_env, fluxhook_process, free_port
from tests.support.stack import running_emulator, running_stack
from tests.support.waiting import wait_for

SMALL = {"width": 256, "height": 256}
FAST_MODEL = "flux-2-klein-4b"
# 0.05 s a task, fixed: 200 jobs through 4 slots take a few seconds, long enough for a
# second tenant to arrive while the first one's queue is still long.
FIXED_LATENCY = {"latency_s": 0.05, "time_scale": 1.0, "seed": 5}


async def _submit_many(client: httpx.AsyncClient, prompts: list[str]) -> None:
    """Submit concurrently (their order within the tenant does not matter here)."""

    async def submit(prompt: str) -> None:
        response = await client.post(f"/v1/{FAST_MODEL}", json={"prompt": prompt, **SMALL})
        assert response.status_code == 200, response.text

    async with anyio.create_task_group() as tg:
        for prompt in prompts:
            tg.start_soon(submit, prompt)


async def _tasks_in_start_order(emulator, count: int) -> list[dict]:
    """The emulator's tasks, once `count` have started and finished, in the order it got them."""

    async def all_done() -> list[dict] | None:
        tasks = await emulator.tasks()
        done = len(tasks) >= count and all(task["finished_at"] for task in tasks)
        return tasks if done else None

    tasks = await wait_for(all_done, within_s=60, every_s=0.1)
    return sorted(tasks, key=lambda task: task["created_at"])


def _a_tasks_ahead_of_each_b(tasks: list[dict], b_arrived_at: float) -> list[int]:
    """How many of tenant A's tasks BFL got before each of B's: from B's first job being
    accepted to B's first task, then between each two of B's tasks."""
    a_starts = [task["created_at"] for task in tasks if task["prompt"].startswith("a ")]
    b_starts = [task["created_at"] for task in tasks if task["prompt"].startswith("b ")]
    gaps = itertools.pairwise([b_arrived_at, *b_starts])
    return [sum(since < a < until for a in a_starts) for since, until in gaps]


async def test_a_second_tenant_is_not_stuck_behind_a_first_tenants_burst(database_url):
    async with (
        running_emulator(**FIXED_LATENCY) as emulator,
        running_stack(database_url, emulator, bfl_max_active=4) as stack,
    ):
        headers = {"x-key": await stack.new_key("tenant-b")}
        async with httpx.AsyncClient(base_url=stack.url, headers=headers) as tenant_b:
            await _burst_then_five(stack.client, tenant_b, emulator)


@pytest.mark.postgres
async def test_fair_share_holds_across_two_processes(postgres_cluster, tmp_path):
    name = postgres.create_database(postgres_cluster)
    try:
        async with running_emulator(**FIXED_LATENCY) as emulator:
            envs = [
                fluxhook_env(
                    postgres_cluster.url(name), emulator.url, free_port(), BFL_MAX_ACTIVE=4
                )
                for _ in "ab"
            ]
            keys = [cli("keys", "create", tenant, env=envs[0]).splitlines()[-1] for tenant in "ab"]
            async with (
                fluxhook_process(envs[0], tmp_path / "a.log"),
                fluxhook_process(envs[1], tmp_path / "b.log"),
                _client(envs[0], keys[0]) as tenant_a,
                _client(envs[1], keys[1]) as tenant_b,
            ):
                await _burst_then_five(tenant_a, tenant_b, emulator)
    finally:
        postgres.drop_database(postgres_cluster, name)


def _client(env: dict, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=env["PUBLIC_URL"], headers={"x-key": key}, timeout=30)


async def _burst_then_five(tenant_a, tenant_b, emulator) -> None:
    """A submits 200 jobs, then B 5: each of B's goes upstream after at most BFL_MAX_ACTIVE (4)
    more of A's (round-robin makes it about one)."""
    await _submit_many(tenant_a, [f"a {i:03d}" for i in range(200)])
    b_arrived_at = None
    for i in range(5):
        response = await _post(tenant_b, f"b {i}")
        assert response.status_code == 200, response.text
        b_arrived_at = b_arrived_at or time.time()
    tasks = await _tasks_in_start_order(emulator, 205)
    ahead = _a_tasks_ahead_of_each_b(tasks, b_arrived_at)
    # Before B's first: the A jobs that held the 4 slots when it arrived, and at most one
    # admitted after it whose concurrent submit reached BFL first.
    assert len(ahead) == 5 and ahead[0] <= 4 + 1 and max(ahead[1:]) <= 4, ahead
    last_b = max(i for i, task in enumerate(tasks) if task["prompt"].startswith("b "))
    assert len(tasks) - last_b > 50, "A still had a long queue when B was served"


async def _prompts_at_bfl(emulator, prefix: str) -> list[dict]:
    return [task for task in await emulator.tasks() if task["prompt"].startswith(prefix)]


async def _post(client: httpx.AsyncClient, prompt: str) -> httpx.Response:
    return await client.post(f"/v1/{FAST_MODEL}", json={"prompt": prompt, **SMALL})


async def test_fifo_order_serves_a_second_tenant_after_every_earlier_job(database_url):
    """ADMISSION_ORDER=fifo, the order before fair admission (kept for the benchmark): one
    queue by age, so B's jobs go upstream after all of A's that came before them."""
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(database_url, emulator, bfl_max_active=2, admission_order="fifo") as stack,
    ):
        headers = {"x-key": await stack.new_key("tenant-b")}
        async with httpx.AsyncClient(base_url=stack.url, headers=headers) as tenant_b:
            # A's first alone, so that no two of A's are submitted concurrently.
            assert (await _post(stack.client, "a 00")).status_code == 200
            await wait_for(lambda: _prompts_at_bfl(emulator, "a "))
            for i in range(1, 12):
                assert (await _post(stack.client, f"a {i:02d}")).status_code == 200
            for i in range(2):
                assert (await _post(tenant_b, f"b {i}")).status_code == 200
            order = await _started_one_slot_at_a_time(emulator, count=14, slots=2)
    assert order == [f"a {i:02d}" for i in range(12)] + ["b 0", "b 1"]


async def _started_one_slot_at_a_time(emulator, count: int, slots: int) -> list[str]:
    """The prompts in the order BFL got them. Once the slots are full, the oldest running
    task finishes, so each admission has exactly one slot to give."""
    for expected in range(slots, count + 1):

        async def started(expected=expected) -> list[dict] | None:
            tasks = await emulator.tasks()
            return tasks if len(tasks) >= expected else None

        tasks = sorted(await wait_for(started), key=lambda task: task["created_at"])
        if expected < count:
            running = [task for task in tasks if task["finished_at"] is None]
            await emulator.finish(running[0]["id"])
    return [task["prompt"] for task in tasks]


@pytest.mark.parametrize("order", ["fair", "fifo"])
async def test_tenant_max_active_caps_one_tenants_upstream_slots(database_url, order):
    caps = {"tenant_max_active": 2, "admission_order": order}
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(database_url, emulator, **caps) as stack,
    ):
        headers = {"x-key": await stack.new_key("tenant-b")}
        async with httpx.AsyncClient(base_url=stack.url, headers=headers) as tenant_b:
            for i in range(5):
                assert (await _post(stack.client, f"a {i}")).status_code == 200
            assert (await _post(tenant_b, "b 0")).status_code == 200
            # B's job came after A's waiting ones: once it is upstream, admission has passed
            # over A's, with 22 slots free.
            await wait_for(lambda: _prompts_at_bfl(emulator, "b "))
            first_two = await _prompts_at_bfl(emulator, "a ")
            assert [task["prompt"] for task in first_two] == ["a 0", "a 1"]
            await emulator.finish(first_two[0]["id"])

            async def a_third_started() -> bool:
                return len(await _prompts_at_bfl(emulator, "a ")) == 3

            await wait_for(a_third_started)
            assert [t["prompt"] for t in await _prompts_at_bfl(emulator, "a ")][2] == "a 2"


@pytest.mark.parametrize("order", ["fair", "fifo"])
async def test_the_kontext_max_sub_limit_holds_in_either_order(database_url, order):
    limits = {"bfl_max_active_kontext_max": 1, "admission_order": order}
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(database_url, emulator, **limits) as stack,
    ):
        for i in range(2):
            await stack.submit("flux-kontext-max", prompt=f"max {i}")
        await stack.submit(FAST_MODEL, prompt="fast 0", **SMALL)
        # The fast job came last: once it is upstream, admission has passed over max 1.
        await wait_for(lambda: _prompts_at_bfl(emulator, "fast "))
        [first] = await _prompts_at_bfl(emulator, "max ")
        assert first["prompt"] == "max 0"
        await emulator.finish(first["id"])

        async def second_started() -> bool:
            return len(await _prompts_at_bfl(emulator, "max ")) == 2

        await wait_for(second_started)


async def test_tenant_max_queued_answers_429_only_to_the_tenant_over_it(database_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(database_url, emulator, bfl_max_active=1, tenant_max_queued=2) as stack,
    ):
        headers = {"x-key": await stack.new_key("tenant-b")}
        async with httpx.AsyncClient(base_url=stack.url, headers=headers) as tenant_b:
            assert (await _post(stack.client, "a 0")).status_code == 200
            [upstream] = await wait_for(lambda: _prompts_at_bfl(emulator, "a "))
            for i in (1, 2):  # a 0 holds the slot: these two wait
                assert (await _post(stack.client, f"a {i}")).status_code == 200
            refused = await _post(stack.client, "a 3")
            assert refused.status_code == 429
            assert refused.json() == {
                "detail": "Too many queued jobs for this key: 2 are waiting (limit 2)"
            }
            assert int(refused.headers["retry-after"]) >= 1
            assert (await _post(tenant_b, "b 0")).status_code == 200, "B is under its own cap"
            jobs = (await stack.client.get("/v1/jobs")).json()["jobs"]
            assert len(jobs) == 3, "a refused submit leaves no job"
            await emulator.finish(upstream["id"])

            async def a_1_started() -> bool:
                return len(await _prompts_at_bfl(emulator, "a ")) == 2

            await wait_for(a_1_started)
            assert (await _post(stack.client, "a 3")).status_code == 200


async def test_tenant_max_queued_holds_for_concurrent_submits(database_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(database_url, emulator, bfl_max_active=1, tenant_max_queued=2) as stack,
    ):
        assert (await _post(stack.client, "a 0")).status_code == 200
        await wait_for(lambda: _prompts_at_bfl(emulator, "a "))
        codes = []

        async def submit(i: int) -> None:
            codes.append((await _post(stack.client, f"a {i}")).status_code)

        async with anyio.create_task_group() as tg:  # group-committed together
            for i in range(1, 7):
                tg.start_soon(submit, i)
        assert sorted(codes) == [200, 200, 429, 429, 429, 429]
        jobs = (await stack.client.get("/v1/jobs")).json()
        assert len(jobs["jobs"]) == 3, "a refused submit leaves no job"


@pytest.mark.parametrize("value", ["0", "-1", "two", "1.5"])
def test_per_tenant_caps_must_be_whole_numbers_of_at_least_one(value):
    for name in ("TENANT_MAX_ACTIVE", "TENANT_MAX_QUEUED"):
        with pytest.raises(SettingsError, match=name):
            Settings.from_env({name: value})


def test_per_tenant_caps_are_off_unless_set():
    settings = Settings.from_env({"TENANT_MAX_ACTIVE": "", "TENANT_MAX_QUEUED": " "})
    assert (settings.tenant_max_active, settings.tenant_max_queued) == (None, None)
    settings = Settings.from_env({"TENANT_MAX_ACTIVE": "3", "TENANT_MAX_QUEUED": "50"})
    assert (settings.tenant_max_active, settings.tenant_max_queued) == (3, 50)
