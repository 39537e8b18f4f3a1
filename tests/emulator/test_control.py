"""The control API and the submit faults: stats, reset, config validation, 5xx, stalls."""

import httpx
import pytest

from service.emulator import EmulatorConfig
from tests.emulator.support import KEY, emulator

MANUAL = EmulatorConfig(seed=7, manual=True)


async def test_stats_count_since_start():
    async with emulator(MANUAL) as emu:
        first = (await emu.submit()).json()["id"]
        second = (await emu.submit()).json()["id"]
        await emu.poll(first)
        await emu.poll(first)
        await emu.poll("unknown")
        await emu.finish(first)
        stats = await emu.stats()
        assert stats["submits"] == stats["tasks_created"] == 2
        assert stats["get_result"] == 3
        assert stats["get_result_by_task"] == {first: 2, "unknown": 1}
        assert (stats["active_tasks"], stats["max_active"]) == (1, 2)
        assert stats["credits"] == {KEY: 995.0}
        assert (await emu.task(second))["status"] == "Pending"


async def test_tasks_list_in_submit_order_with_timestamps():
    async with emulator(MANUAL) as emu:
        ids = [(await emu.submit(prompt=f"p{n}")).json()["id"] for n in range(3)]
        tasks = (await emu.http.get("/_emulator/tasks")).json()
        assert [task["id"] for task in tasks] == ids
        assert [task["prompt"] for task in tasks] == ["p0", "p1", "p2"]
        assert tasks[0]["created_at"] <= tasks[1]["created_at"] <= tasks[2]["created_at"]
        assert (await emu.http.get("/_emulator/tasks/nope")).status_code == 404


async def test_reset_forgets_tasks_counters_and_config():
    async with emulator(MANUAL) as emu:
        task_id = (await emu.submit()).json()["id"]
        await emu.configure(dialect="legacy", credits=50, seed=99)
        startup = (await emu.http.post("/_emulator/reset")).json()["config"]
        assert (startup["dialect"], startup["credits"], startup["seed"]) == ("current", 1000.0, 7)
        assert (await emu.http.get("/_emulator/tasks")).json() == []
        assert (await emu.http.get("/v1/get_result", params={"id": task_id})).status_code == 404
        stats = await emu.stats()
        assert (stats["submits"], stats["get_result"], stats["credits"]) == (0, 1, {})
        assert (await emu.http.get("/_emulator/config")).json() == startup


async def test_config_updates_are_partial_and_validated():
    async with emulator(MANUAL) as emu:
        config = await emu.configure(time_scale=0.5, latency_s={"flux-dev": 1})
        assert (config["time_scale"], config["latency_s"], config["dialect"]) == (
            0.5,
            {"flux-dev": 1.0},
            "current",
        )
        for bad, words in (
            ({"nope": 1}, "nope: unknown key"),
            ({"drop_webhooks": 2}, "drop_webhooks"),
            ({"latency_s": {"flux-9000": 1}}, "unknown model(s): flux-9000"),
            ({"latency_s": {"image": 1}}, "unknown model(s): image"),  # it runs as flux-pro
            ({"webhook_delay_s": [2, 1]}, "min <= max"),
            ({"dialect": "klingon"}, "dialect"),
            ([1, 2], "JSON object"),
        ):
            response = await emu.http.post("/_emulator/config", json=bad)
            assert response.status_code == 422
            assert words in response.json()["detail"]
        assert (await emu.http.get("/_emulator/config")).json() == config


async def test_credits_config_sets_every_balance():
    async with emulator(MANUAL, keys=["a", "b"]) as emu:
        await emu.configure(credits=3)
        assert (await emu.stats())["credits"] == {"a": 3.0, "b": 3.0}
        assert (await emu.submit("flux-dev", key="a")).status_code == 200
        assert (await emu.submit("flux-dev", key="a")).status_code == 402


async def test_submit_5xx_creates_nothing():
    async with emulator(EmulatorConfig(seed=7, manual=True, submit_5xx=1.0)) as emu:
        for _ in range(5):
            response = await emu.submit()
            assert response.status_code in (500, 502, 503)
            assert set(response.json()) == {"detail"}
        assert (await emu.http.get("/_emulator/tasks")).json() == []
        assert (await emu.stats())["credits"] == {}


async def test_faults_replay_with_the_same_seed():
    async def statuses(seed):
        async with emulator(EmulatorConfig(seed=seed, manual=True, submit_5xx=0.5)) as emu:
            return [(await emu.submit()).status_code for _ in range(12)]

    first = await statuses(3)
    assert first == await statuses(3)
    assert {200, 500, 502, 503} & set(first) != {200}


async def test_submit_timeout_creates_the_task_then_stalls():
    config = EmulatorConfig(seed=7, manual=True, submit_timeout=1.0, submit_stall_s=30.0)
    async with emulator(config) as emu:
        with pytest.raises(httpx.ReadTimeout):
            await emu.http.post(
                "/v1/flux-dev", json={"prompt": "x"}, headers={"x-key": KEY}, timeout=0.3
            )
        (task,) = (await emu.http.get("/_emulator/tasks")).json()
        assert task["status"] == "Pending"


async def test_a_short_stall_still_answers():
    config = EmulatorConfig(seed=7, manual=True, submit_timeout=1.0, submit_stall_s=0.05)
    async with emulator(config) as emu:
        response = await emu.submit()
        assert response.status_code == 200
        assert (await emu.task(response.json()["id"]))["status"] == "Pending"
