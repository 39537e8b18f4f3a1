"""BFL's official Python client (`blackforest` on PyPI), imported once with its warning muted:
its pydantic models pass `example=` to Field, deprecated since pydantic 2.0."""

import warnings

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    from blackforest import BFLClient
    from blackforest.types.general.client_config import ClientConfig


def generate(api_key: str, base_url: str, model: str, inputs: dict):
    """One synchronous generation, polling every 0.1 s (call it in a thread)."""
    client = BFLClient(api_key=api_key, base_url=base_url)
    config = ClientConfig(sync=True, polling_interval=0.1, max_retries=300)
    return client.generate(model, inputs, config)
