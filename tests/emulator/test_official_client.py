"""BFL's official Python client (`blackforest` 0.1.3) works against the emulator unchanged."""

import functools
import io
import warnings

import anyio
from PIL import Image

from service.emulator import EmulatorConfig
from tests.emulator.support import KEY, emulator


def generate(base_url: str) -> dict:
    with warnings.catch_warnings():  # blackforest's pydantic models use deprecated Field kwargs
        warnings.simplefilter("ignore")
        from blackforest import BFLClient
        from blackforest.types.general.client_config import ClientConfig

        client = BFLClient(api_key=KEY, base_url=base_url)
        config = ClientConfig(sync=True, polling_interval=0.1, timeout=30)
        inputs = {"prompt": "a lighthouse at dawn", "width": 512, "height": 256, "seed": 1}
        return client.generate("flux-dev", inputs, config).result


async def test_the_official_client_generates_an_image():
    async with emulator(EmulatorConfig(seed=7, latency_s=0.3)) as emu:
        result = await anyio.to_thread.run_sync(functools.partial(generate, emu.url))
        assert (result["prompt"], result["seed"]) == ("a lighthouse at dawn", 1)
        image = await emu.http.get(result["sample"])
        assert Image.open(io.BytesIO(image.content)).size == (512, 256)
