"""End to end: fluxhook and the emulator each under hypercorn; jobs finish by webhook alone."""

import anyio
import httpx
import pytest

from tests.support import official_client
from tests.support.stack import running_emulator, running_stack

FAST = {"time_scale": 0.01}


async def test_job_reaches_ready_through_the_webhook_alone(database_url):
    async with running_emulator(**FAST) as emulator, running_stack(database_url, emulator) as stack:
        job = await stack.submit("flux-dev", prompt="a red fox", width=512, height=512, seed=7)
        assert job["polling_url"] == f"{stack.url}/v1/get_result?id={job['id']}"
        result = await stack.settled(job["id"])
        assert result["status"] == "Ready"
        assert list(result) == ["id", "status", "result", "progress", "details", "preview"]
        stats = await emulator.stats()
        assert stats["submits"] == 1
        assert stats["get_result"] == 0, "the happy path must not poll BFL"

        stored = await stack.client.get(result["result"]["sample"])
        assert stored.status_code == 200
        assert stored.headers["access-control-allow-origin"] == "*"
        detail = (await stack.client.get(f"/v1/jobs/{job['id']}")).json()
        assert detail["completed_via"] == "webhook"
        assert [e["type"] for e in detail["events"]] == ["job.submitted", "job.ready"]
        upstream = await _emulator_image(emulator, detail["bfl_id"])
        assert stored.content == upstream


async def _emulator_image(emulator, task_id: str) -> bytes:
    async with httpx.AsyncClient() as http:
        body = (await http.get(f"{emulator.url}/v1/get_result", params={"id": task_id})).json()
        return (await http.get(body["result"]["sample"])).content


@pytest.mark.parametrize(
    ("marker", "status"),
    [("[error]", "Error"), ("[request-moderated]", "Request Moderated"),
     ("[content-moderated]", "Content Moderated")],
)  # fmt: skip
async def test_failures_and_moderation_end_in_their_state(sqlite_url, marker, status):
    async with running_emulator(**FAST) as emulator, running_stack(sqlite_url, emulator) as stack:
        job = await stack.submit("flux-dev", prompt=f"a cat {marker}")
        result = await stack.settled(job["id"])
        assert result["status"] == status
        assert result["result"] is None
        assert result["details"]


SCENARIOS = {
    "legacy dialect": {"dialect": "legacy"},
    "progress events": {"progress_events": True},
    "duplicate webhooks": {"duplicate_webhooks": 1.0},
    "progress after the terminal event": {"progress_events": True, "reorder": True},
    "webhook before the submit response": {"webhook_before_response": True},
    "signed webhooks": {"signature_header": True},
}


@pytest.mark.parametrize("scenario", SCENARIOS)
async def test_webhook_scenarios_end_ready_with_one_ready_event(database_url, scenario):
    config = FAST | SCENARIOS[scenario]
    async with (
        running_emulator(**config) as emulator,
        running_stack(database_url, emulator) as stack,
    ):
        job = await stack.submit("flux-dev", prompt="a heron", width=256, height=256)
        assert (await stack.settled(job["id"]))["status"] == "Ready"
        detail = (await stack.client.get(f"/v1/jobs/{job['id']}")).json()
        types = [e["type"] for e in detail["events"]]
        assert types[0] == "job.submitted"
        assert types.count("job.submitted") == types.count("job.ready") == 1
        assert types[-1] == "job.ready"
        if scenario.startswith("progress"):
            progress = [e["progress"] for e in detail["events"] if e["type"] == "job.progress"]
            assert progress and progress == sorted(progress)
        assert (await emulator.stats())["get_result"] == 0


async def test_official_bfl_client_generates_through_fluxhook(sqlite_url):
    async with running_emulator(**FAST) as emulator, running_stack(sqlite_url, emulator) as stack:
        inputs = {"prompt": "a lighthouse", "width": 512, "height": 512}
        result = await anyio.to_thread.run_sync(
            official_client.generate, stack.key, stack.url, "flux-dev", inputs
        )
        async with httpx.AsyncClient() as http:
            image = await http.get(result.result["sample"])
        assert image.headers["content-type"] == "image/jpeg"
        assert image.content.startswith(b"\xff\xd8\xff")
