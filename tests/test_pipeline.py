"""End to end: fluxhook and the emulator each under hypercorn; jobs finish by webhook alone."""

import httpx
import pytest

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
