"""How tasks run: latency, outcomes, manual finish, progress, seeds, images, URLs, retention."""

import io

import httpx
from PIL import Image

from service.emulator import EmulatorConfig
from service.emulator.images import render
from tests.emulator.support import emulator, wait_for

FAST = EmulatorConfig(seed=7, latency_s=0.02)
MANUAL = EmulatorConfig(seed=7, manual=True)


async def test_a_task_runs_pending_then_ready():
    async with emulator(FAST) as emu:
        submitted = (await emu.submit("flux-dev", width=256, height=256, seed=42)).json()
        ready = await emu.wait_terminal(submitted["id"])
        result = ready["result"]
        assert (ready["status"], ready["progress"], ready["details"]) == ("Ready", None, None)
        assert list(result) == ["sample", "prompt", "seed", "start_time", "end_time", "duration"]
        assert (result["prompt"], result["seed"]) == ("a red fox", 42)
        assert result["duration"] == result["end_time"] - result["start_time"]
        task = await emu.task(submitted["id"])
        assert task["finished_at"] >= task["created_at"]


async def test_flux2_result_keys():
    async with emulator(FAST) as emu:
        submitted = (await emu.submit("flux-2-pro", seed=3)).json()
        ready = await emu.wait_terminal(submitted["id"])
        assert list(ready["result"]) == ["start_time", "prompt", "seed", "sample"]
        assert ready["progress"] is None


async def test_prompt_markers_choose_the_outcome():
    async with emulator(FAST) as emu:
        outcomes = {}
        for marker in ("[error]", "[request-moderated]", "[content-moderated]"):
            task_id = (await emu.submit(prompt=f"a cat {marker}")).json()["id"]
            outcomes[marker] = await emu.wait_terminal(task_id)
        assert outcomes["[error]"]["status"] == "Error"
        assert set(outcomes["[error]"]["details"]) == {"error"}
        for marker, status in (
            ("[request-moderated]", "Request Moderated"),
            ("[content-moderated]", "Content Moderated"),
        ):
            assert outcomes[marker]["status"] == status
            assert outcomes[marker]["result"] is None
            assert list(outcomes[marker]["details"]) == ["Moderation Reasons"]


async def test_request_moderation_is_fast():
    async with emulator(EmulatorConfig(seed=7, latency_s=4.0)) as emu:
        normal = (await emu.submit(prompt="x")).json()["id"]
        moderated = (await emu.submit(prompt="[request-moderated] x")).json()["id"]
        finished = await wait_for(lambda: _terminal_task(emu, moderated))
        assert finished["status"] == "Request Moderated"
        assert (await emu.task(normal))["status"] == "Pending"


async def _terminal_task(emu, task_id):
    task = await emu.task(task_id)
    return task if task["finished_at"] else None


async def test_manual_mode_finishes_only_on_request():
    async with emulator(MANUAL) as emu:
        task_id = (await emu.submit("flux-2-max")).json()["id"]
        assert (await emu.poll(task_id))["status"] == "Pending"
        for status in ("Ready", "Error", "Request Moderated", "Content Moderated"):
            other = (await emu.submit("flux-2-max")).json()["id"]
            response = await emu.finish(other, status)
            assert response.json()["status"] == status
            assert (await emu.poll(other))["status"] == status
        response = await emu.finish(task_id, "Done")
        assert response.status_code == 422
        assert (await emu.finish(task_id)).status_code == 200
        assert (await emu.finish(task_id)).status_code == 409
        assert (await emu.finish("nope")).status_code == 404


async def test_progress_is_fractional_for_dev_style_models_only():
    async with emulator(EmulatorConfig(seed=7, manual=True, latency_s=0.05)) as emu:
        dev = (await emu.submit("flux-dev")).json()["id"]
        pro = (await emu.submit("flux-2-pro")).json()["id"]
        first = (await emu.poll(dev))["progress"]
        assert first in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)
        full = await wait_for(lambda: _progress_is(emu, dev, 1.0))
        assert full["status"] == "Pending"
        assert (await emu.poll(pro))["progress"] is None


async def _progress_is(emu, task_id, value):
    body = await emu.poll(task_id)
    return body if body["progress"] == value else None


async def test_seeds_come_from_the_seeded_rng():
    async def seeds(config):
        async with emulator(config) as emu:
            ids = [(await emu.submit()).json()["id"] for _ in range(3)]
            return [(await emu.task(task_id))["seed"] for task_id in ids]

    first = await seeds(EmulatorConfig(seed=11, manual=True))
    assert first == await seeds(EmulatorConfig(seed=11, manual=True))
    assert first != await seeds(EmulatorConfig(seed=12, manual=True))


async def test_same_seed_and_prompt_give_the_same_image():
    async with emulator(FAST) as emu:
        samples = []
        for prompt in ("a fox", "a fox", "a cat"):
            task_id = (await emu.submit(prompt=prompt, seed=5, width=256, height=256)).json()["id"]
            ready = await emu.wait_terminal(task_id)
            samples.append((await emu.http.get(ready["result"]["sample"])).content)
        assert samples[0] == samples[1] != samples[2]
        assert Image.open(io.BytesIO(samples[0])).size == (256, 256)
    assert render(5, "a fox", (256, 256), "jpeg") == samples[0]


async def test_images_in_every_format():
    async with emulator(FAST) as emu:
        for fmt in ("jpeg", "png", "webp"):
            task_id = (await emu.submit("flux-2-klein-4b", output_format=fmt, width=320)).json()[
                "id"
            ]
            sample = (await emu.wait_terminal(task_id))["result"]["sample"]
            assert f"/sample.{fmt}?" in sample
            image = await emu.http.get(sample)
            assert image.headers["content-type"] == f"image/{fmt}"
            assert image.headers["etag"]
            assert "access-control-allow-origin" not in image.headers
            assert Image.open(io.BytesIO(image.content)).format == fmt.upper()
            assert Image.open(io.BytesIO(image.content)).size == (320, 1024)
            again = await emu.http.get(sample, headers={"if-none-match": image.headers["etag"]})
            assert again.status_code == 304


async def test_a_tampered_url_is_403():
    async with emulator(FAST) as emu:
        task_id = (await emu.submit()).json()["id"]
        sample = (await emu.wait_terminal(task_id))["result"]["sample"]
        response = await emu.http.get(sample.replace("sig=", "sig=x"))
        assert response.status_code == 403
        assert b"<Code>AuthenticationFailed</Code>" in response.content
        assert b"Signature did not match" in response.content


async def test_urls_expire_and_get_result_signs_a_fresh_one():
    # url_ttl 600 s x 0.001 = 0.6 s
    async with emulator(EmulatorConfig(seed=7, time_scale=0.001, latency_s=0.0)) as emu:
        task_id = (await emu.submit()).json()["id"]
        first = (await emu.wait_terminal(task_id))["result"]["sample"]
        assert (await emu.http.get(first)).status_code == 200

        async def expired():
            response = await emu.http.get(first)
            return response if response.status_code == 403 else None

        refused = await wait_for(expired)
        assert b"Signed expiry time" in refused.content
        assert refused.headers["content-type"] == "application/xml"
        fresh = (await emu.poll(task_id))["result"]["sample"]
        assert fresh != first
        assert (await emu.http.get(fresh)).status_code == 200


async def test_tasks_are_forgotten_after_retention():
    async with emulator(EmulatorConfig(seed=7, latency_s=0.0, retention_s=0.2)) as emu:
        task_id = (await emu.submit()).json()["id"]
        await emu.wait_terminal(task_id)

        async def forgotten():
            response = await emu.http.get("/v1/get_result", params={"id": task_id})
            return response.status_code == 404

        await wait_for(forgotten)
        assert (await emu.http.get("/_emulator/tasks")).json() == []


async def test_output_size_follows_the_catalog():
    async with emulator(FAST) as emu:
        task_id = (await emu.submit("flux-pro-1.1-ultra", aspect_ratio="21:9")).json()["id"]
        sample = (await emu.wait_terminal(task_id))["result"]["sample"]
        async with httpx.AsyncClient() as http:
            content = (await http.get(sample)).content
        width, height = Image.open(io.BytesIO(content)).size
        assert (width, height) == (3136, 1344)  # ~4 MP at 21:9


async def test_time_scale_scales_the_catalog_latency():
    async with emulator(EmulatorConfig(seed=7, time_scale=0.002)) as emu:  # 20 s -> 40 ms
        task_id = (await emu.submit("flux-2-max")).json()["id"]
        task = await wait_for(lambda: _terminal_task(emu, task_id))
        assert task["finished_at"] - task["created_at"] >= 0.9 * 0.04
