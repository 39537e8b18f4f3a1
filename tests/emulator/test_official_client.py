"""BFL's official Python client (`blackforest` 0.1.3) works against the emulator unchanged."""

import io

import anyio
from PIL import Image

from service.emulator import EmulatorConfig
from tests.emulator.support import KEY, emulator
from tests.support import official_client


async def test_the_official_client_generates_an_image():
    inputs = {"prompt": "a lighthouse at dawn", "width": 512, "height": 256, "seed": 1}
    async with emulator(EmulatorConfig(seed=7, latency_s=0.3)) as emu:
        generated = await anyio.to_thread.run_sync(
            official_client.generate, KEY, emu.url, "flux-dev", inputs
        )
        result = generated.result
        assert (result["prompt"], result["seed"]) == ("a lighthouse at dawn", 1)
        image = await emu.http.get(result["sample"])
        assert Image.open(io.BytesIO(image.content)).size == (512, 256)
