"""The delivery hop: time to first byte, paced transfer, and BFL-sized deterministic images.

Timing assertions are lower bounds only, read on anyio's monotonic clock around real HTTP calls
on loopback: a loaded machine may be slow, but a response must never arrive early.
"""

import io

import anyio
from PIL import Image

from service.emulator import EmulatorConfig
from service.emulator.delivery import CHUNK, paced
from service.emulator.images import render
from tests.emulator.support import emulator

FAST = EmulatorConfig(seed=7, latency_s=0.0)
KB, MB = 1000, 1000 * 1000
SLACK_S = 0.002  # asyncio may wake a timer up to its clock resolution early


async def ready_sample(emu, **inputs) -> str:
    task_id = (await emu.submit(**inputs)).json()["id"]
    return (await emu.wait_terminal(task_id))["result"]["sample"]


async def test_delivery_keys_are_accepted_validated_and_reset():
    async with emulator(FAST) as emu:
        config = await emu.configure(delivery_ttfb_s=0.15, delivery_bytes_per_s=20e6)
        assert (config["delivery_ttfb_s"], config["delivery_bytes_per_s"]) == (0.15, 20e6)
        for bad in (
            {"delivery_ttfb_s": -0.1},
            {"delivery_bytes_per_s": -1},
            {"delivery_bytes_per_s": 0},
            {"delivery_ttfb_s": "soon"},
        ):
            response = await emu.http.post("/_emulator/config", json=bad)
            assert response.status_code == 422
            assert next(iter(bad)) in response.json()["detail"]
        startup = (await emu.http.post("/_emulator/reset")).json()["config"]
        assert (startup["delivery_ttfb_s"], startup["delivery_bytes_per_s"]) == (0.0, None)


async def test_a_paced_delivery_returns_exactly_the_image_bytes_no_sooner():
    ttfb_s, bytes_per_s = 0.1, 2e6  # a ~207 KB JPEG: ~0.1 s of transfer
    async with emulator(FAST) as emu:
        sample = await ready_sample(emu, seed=3, prompt="a slow fox")
        unpaced = (await emu.http.get(sample)).content
        await emu.configure(delivery_ttfb_s=ttfb_s, delivery_bytes_per_s=bytes_per_s)
        started = anyio.current_time()
        async with emu.http.stream("GET", sample) as response:
            headers_at = anyio.current_time()
            content = await response.aread()
        done_at = anyio.current_time()
    assert response.status_code == 200
    assert content == unpaced == render(3, "a slow fox", (1024, 768), "jpeg")
    assert response.headers["content-length"] == str(len(content))
    assert "transfer-encoding" not in response.headers
    assert "access-control-allow-origin" not in response.headers
    assert headers_at - started >= ttfb_s - SLACK_S
    assert done_at - started >= ttfb_s + len(content) / bytes_per_s - SLACK_S


async def test_time_scale_scales_neither_ttfb_nor_rate():
    async with emulator(EmulatorConfig(seed=7, latency_s=0.0, time_scale=0.01)) as emu:
        sample = await ready_sample(emu, width=256, height=256)
        await emu.configure(delivery_ttfb_s=0.05, delivery_bytes_per_s=1e6)
        started = anyio.current_time()
        response = await emu.http.get(sample)
        elapsed = anyio.current_time() - started
    assert response.status_code == 200
    assert elapsed >= 0.05 + len(response.content) / 1e6 - SLACK_S


async def test_refusals_wait_for_the_first_byte_too():
    async with emulator(FAST) as emu:
        sample = await ready_sample(emu, width=256, height=256)
        await emu.configure(delivery_ttfb_s=0.05, delivery_bytes_per_s=1e6)
        started = anyio.current_time()
        response = await emu.http.get(sample.replace("sig=", "sig=x"))
        elapsed = anyio.current_time() - started
    assert response.status_code == 403
    assert elapsed >= 0.05 - SLACK_S


async def test_paced_chunks_join_to_the_content():
    content = bytes(range(256)) * (CHUNK * 5 // 2 // 256)  # two full chunks and a half
    chunks = [chunk async for chunk in paced(content, bytes_per_s=1e12)]
    assert b"".join(chunks) == content
    assert [len(chunk) for chunk in chunks] == [CHUNK, CHUNK, CHUNK // 2]
    assert [chunk async for chunk in paced(b"", bytes_per_s=1.0)] == []


async def test_default_flux_dev_images_have_bfl_sizes():
    async with emulator(FAST) as emu:
        jpeg = (await emu.http.get(await ready_sample(emu, seed=1))).content
        png = (await emu.http.get(await ready_sample(emu, seed=1, output_format="png"))).content
    assert Image.open(io.BytesIO(jpeg)).size == Image.open(io.BytesIO(png)).size == (1024, 768)
    assert 150 * KB <= len(jpeg) <= 300 * KB, len(jpeg)
    assert 1 * MB <= len(png) <= 2 * MB, len(png)


def test_images_are_a_function_of_seed_and_prompt():
    for fmt in ("jpeg", "png", "webp"):
        image = render(5, "a fox", (256, 192), fmt)
        assert image == render(5, "a fox", (256, 192), fmt), fmt
        assert image != render(6, "a fox", (256, 192), fmt), fmt
        assert image != render(5, "a cat", (256, 192), fmt), fmt
        assert Image.open(io.BytesIO(image)).format == fmt.upper()
