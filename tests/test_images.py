"""Images: fetched at once, refreshed when BFL's URL has expired, given up on after the window,
served with ETags, and from a directory with IMAGE_STORE=fs:PATH."""

import uuid

import httpx
import pytest

from service.clock import FakeClock
from service.runtime import build_loops
from tests.support.stack import running_emulator, running_stack
from tests.support.subscriber import running_subscriber
from tests.support.waiting import wait_for


@pytest.fixture
async def quiet(database_url):
    """Loops built but not running: the test drives the fetcher on a fake clock."""
    clock = FakeClock()
    async with (
        running_emulator(manual=True, time_scale=1.0) as emulator,
        running_stack(database_url, emulator, {"run_workers": False, "clock": clock}) as stack,
        httpx.AsyncClient() as http,
        httpx.AsyncHTTPTransport() as transport,
    ):
        build_loops(stack.services, transport, transport)
        yield stack, emulator, clock, http


async def _finished_task(emulator, http) -> str:
    submitted = await http.post(f"{emulator.url}/v1/flux-dev", headers={"x-key": "k"},
                                json={"prompt": "a wren", "width": 256, "height": 256})  # fmt: skip
    task_id = submitted.json()["id"]
    await emulator.finish(task_id)
    return task_id


async def test_an_expired_url_is_refreshed_with_get_result(quiet):
    stack, emulator, _, http = quiet
    task_id = await _finished_task(emulator, http)
    await emulator.configure(url_ttl_s=0.05)
    expired = (await http.get(f"{emulator.url}/v1/get_result", params={"id": task_id})).json()

    async def is_expired():
        return (await http.get(expired["result"]["sample"])).status_code == 403

    await wait_for(is_expired)
    await emulator.configure(url_ttl_s=600)
    job = await stack.submit("flux-dev")
    assert (await stack.post_webhook(job["id"], expired)).status_code == 200
    await stack.services.fetcher.run_until_idle()
    result = (await stack.client.get(f"/v1/get_result?id={job['id']}")).json()
    assert result["status"] == "Ready"
    stored = await stack.client.get(f"/v1/jobs/{job['id']}/image")
    fresh = (await http.get(f"{emulator.url}/v1/get_result", params={"id": task_id})).json()
    assert stored.content == (await http.get(fresh["result"]["sample"])).content


async def test_a_fetch_another_process_holds_is_taken_once_its_lease_runs_out(quiet):
    """The receiver leased the download to its process's fetcher, and that process died
    before it: another process's fetcher leaves the job until the lease runs out, then
    fetches the image."""
    stack, emulator, clock, http = quiet
    task_id = await _finished_task(emulator, http)
    ready = (await http.get(f"{emulator.url}/v1/get_result", params={"id": task_id})).json()
    job = await stack.submit("flux-dev")
    holder = stack.services.fetcher
    assert (await stack.post_webhook(job["id"], ready)).status_code == 200
    build_loops(stack.services, holder.transport, holder.transport)  # the other process's
    fetcher = stack.services.fetcher
    await fetcher.run_until_idle()
    shown = (await stack.client.get(f"/v1/jobs/{job['id']}")).json()
    assert not shown["image_stored"], "leased to the process that died: not fetched yet"
    clock.advance(holder.lease.total_seconds() + 1)
    await fetcher.run_until_idle()
    shown = (await stack.client.get(f"/v1/jobs/{job['id']}")).json()
    assert shown["image_stored"]


async def test_an_image_that_cannot_be_fetched_fails_the_job_after_the_window(quiet):
    stack, _, clock, _ = quiet
    async with running_subscriber(default=500) as broken:
        job = await stack.submit("flux-dev")
        ready = {"id": "t", "status": "Ready", "result": {"sample": broken.url}}
        assert (await stack.post_webhook(job["id"], ready)).status_code == 200
        fetcher = stack.services.fetcher
        await fetcher.run_until_idle()
        shown = (await stack.client.get(f"/v1/jobs/{job['id']}")).json()
        assert (shown["status"], shown["image_stored"]) == ("Ready", False)
        clock.advance(16 * 60)
        await fetcher.run_until_idle()
    detail = (await stack.client.get(f"/v1/jobs/{job['id']}")).json()
    assert detail["status"] == "Error"
    assert "could not be fetched" in detail["details"]["error"]
    assert [e["type"] for e in detail["events"]] == ["job.submitted", "job.ready", "job.failed"]


async def test_stored_images_have_etags_and_signed_links_expire(sqlite_url):
    async with (
        running_emulator(time_scale=0.01) as emulator,
        running_stack(sqlite_url, emulator, image_url_ttl_s=3600) as stack,
    ):
        job = await stack.submit("flux-dev", width=256, height=256, output_format="png")
        result = await stack.settled(job["id"])
        await stack.stored(job["id"])
        image = await stack.client.get(f"/v1/jobs/{job['id']}/image")
        assert image.headers["content-type"] == "image/png"
        cached = await stack.client.get(
            f"/v1/jobs/{job['id']}/image", headers={"if-none-match": image.headers["etag"]}
        )
        assert cached.status_code == 304
        async with httpx.AsyncClient() as anonymous:
            public = await anonymous.get(result["result"]["sample"])
            assert public.content == image.content
            assert public.headers["access-control-allow-origin"] == "*"
            forged = await anonymous.get(f"{stack.url}/images/not-a-token")
            assert forged.status_code == 404


async def test_images_can_live_in_a_directory(sqlite_url, tmp_path):
    async with (
        running_emulator(time_scale=0.01) as emulator,
        running_stack(sqlite_url, emulator, image_store=f"fs:{tmp_path / 'images'}") as stack,
    ):
        job = await stack.submit("flux-dev", width=256, height=256)
        await stack.stored(job["id"])
        files = list((tmp_path / "images").iterdir())
        assert [f.name for f in files] == [uuid.UUID(job["id"]).hex]
        image = await stack.client.get(f"/v1/jobs/{job['id']}/image")
        assert image.content == files[0].read_bytes()
