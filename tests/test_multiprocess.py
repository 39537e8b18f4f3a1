"""Two fluxhook processes on one PostgreSQL behave like one: streams, limits, deliveries."""

from collections import Counter

import anyio
import httpx
import pytest

from tests.support import postgres
from tests.support.processes import cli, fluxhook_env, fluxhook_process, free_port
from tests.support.sse import open_stream
from tests.support.stack import running_emulator
from tests.support.subscriber import running_subscriber

SMALL = {"width": 256, "height": 256}
pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_url(postgres_cluster):
    name = postgres.create_database(postgres_cluster)
    yield postgres_cluster.url(name)
    postgres.drop_database(postgres_cluster, name)


def _client(env: dict, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=env["PUBLIC_URL"], headers={"x-key": key}, timeout=30)


async def test_a_stream_on_one_process_sees_a_webhook_received_by_the_other(pg_url, tmp_path):
    async with running_emulator(time_scale=0.02) as emulator:
        web = fluxhook_env(pg_url, emulator.url, free_port(), RUN_WORKERS="false")
        worker = fluxhook_env(pg_url, emulator.url, free_port())
        key = cli("keys", "create", "two", env=web).splitlines()[-1]
        async with (
            fluxhook_process(web, tmp_path / "web.log"),
            fluxhook_process(worker, tmp_path / "worker.log"),
            _client(web, key) as a,
            open_stream(a, "/v1/events") as stream,
        ):
            job = (await a.post("/v1/flux-dev", json={"prompt": "x", **SMALL})).json()
            events = await stream.take(2)
            assert [m.event for m in events] == ["job.submitted", "job.ready"]
            assert events[-1].data["data"]["id"] == job["id"]
        (task,) = await emulator.tasks()
        assert task["webhook_url"].startswith(worker["PUBLIC_URL"]), "BFL called process B"


async def test_limits_fifo_and_deliveries_hold_across_processes(pg_url, tmp_path):
    async with running_emulator(time_scale=0.3, seed=2) as emulator, running_subscriber() as sub:
        envs = [fluxhook_env(pg_url, emulator.url, free_port(), BFL_MAX_ACTIVE=24) for _ in "ab"]
        key = cli("keys", "create", "two", env=envs[0]).splitlines()[-1]
        async with (
            fluxhook_process(envs[0], tmp_path / "a.log"),
            fluxhook_process(envs[1], tmp_path / "b.log"),
            _client(envs[0], key) as a,
            _client(envs[1], key) as b,
        ):
            await a.post("/v1/subscriptions", json={"url": sub.url, "events": ["job.ready"]})
            responses = []
            for i in range(100):
                client = (a, b)[i % 2]
                body = {"prompt": f"burst {i}", **SMALL}
                responses.append(await client.post("/v1/flux-2-klein-4b", json=body))
            assert {r.status_code for r in responses} == {200}
            jobs = [r.json() for r in responses]
            with anyio.fail_after(120):
                for job in jobs:
                    while (await a.get(f"/v1/get_result?id={job['id']}&wait=20")).json()[
                        "status"
                    ] == "Pending":
                        pass
            await sub.wait_for(100, within_s=60)
            details = [(await a.get(f"/v1/jobs/{job['id']}")).json() for job in jobs]
        stats = await emulator.stats()
        assert stats["max_active"] <= 24 and stats["submits"] == 100
        admitted = [d["admitted_at"] for d in details]
        assert admitted == sorted(admitted), "FIFO across both processes"
        ids = Counter(sub.delivered_ids())
        assert len(ids) == 100 and set(ids.values()) == {1}, "each delivery sent exactly once"
        hosts = Counter(t["webhook_url"].split("/webhooks")[0] for t in await emulator.tasks())
        assert len(hosts) == 2, "both processes admitted jobs"
