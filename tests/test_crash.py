"""No data loss: SIGKILL fluxhook at a bad moment, start it again, and nothing is missing."""

import httpx

from tests.support.processes import Process, cleanup, cli, fluxhook_env, free_port
from tests.support.stack import running_emulator
from tests.support.subscriber import running_subscriber
from tests.support.waiting import wait_for

SMALL = {"width": 256, "height": 256}


def _env(database_url: str, emulator, **extra) -> dict:
    return fluxhook_env(database_url, emulator.url, free_port(), **extra)


async def test_sigkill_loses_no_owed_delivery(database_url, tmp_path):
    async with running_emulator(time_scale=0.01) as emulator, running_subscriber() as subscriber:
        subscriber.default = "stall"
        env = _env(database_url, emulator, DELIVERY_TIMEOUT_S=1)
        key = cli("keys", "create", "crash-test", env=env).splitlines()[-1]
        client = httpx.AsyncClient(base_url=env["PUBLIC_URL"], headers={"x-key": key}, timeout=30)
        first = Process(env, tmp_path / "first.log")
        async with client:
            with cleanup(first):
                await first.ready()
                await client.post("/v1/subscriptions", json={"url": subscriber.url})
                jobs = [(await client.post("/v1/flux-dev", json={"prompt": "x", **SMALL})).json()
                        for _ in range(5)]  # fmt: skip
                for job in jobs:
                    assert (await client.get(f"/v1/get_result?id={job['id']}&wait=20")).json()[
                        "status"
                    ] == "Ready"
                await subscriber.wait_for(1)  # deliveries are in flight, and stalled
                first.kill()
            subscriber.default = 200
            second = Process(env, tmp_path / "second.log")
            with cleanup(second):
                await second.ready()

                async def all_delivered():
                    rows = (await client.get("/v1/deliveries")).json()["deliveries"]
                    return rows if all(r["status"] == "delivered" for r in rows) else None

                deliveries = await wait_for(all_delivered, within_s=30)
        assert len(deliveries) == 10, "job.submitted and job.ready for each of 5 jobs"
        owed = {d["webhook_id"] for d in deliveries}
        assert owed <= set(subscriber.delivered_ids())


async def test_sigkill_loses_no_accepted_job(database_url, tmp_path):
    async with running_emulator(time_scale=0.1) as emulator:
        env = _env(database_url, emulator, RECONCILE_SLACK_S=1, IMAGE_FETCH_TIMEOUT_S=2)
        key = cli("keys", "create", "crash-test", env=env).splitlines()[-1]
        client = httpx.AsyncClient(base_url=env["PUBLIC_URL"], headers={"x-key": key}, timeout=30)
        first = Process(env, tmp_path / "first.log")
        async with client:
            with cleanup(first):
                await first.ready()
                jobs = [(await client.post("/v1/flux-2-klein-4b", json={"prompt": "x", **SMALL}))
                        .json() for _ in range(10)]  # fmt: skip
                first.kill()  # accepted, some sent upstream, none finished here
            second = Process(env, tmp_path / "second.log")
            with cleanup(second):
                await second.ready()
                for job in jobs:
                    result = await client.get(f"/v1/get_result?id={job['id']}&wait=25")
                    detail = (await client.get(f"/v1/jobs/{job['id']}")).json()
                    assert result.json()["status"] == "Ready", detail
