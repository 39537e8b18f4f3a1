"""Waiting on a condition with a deadline (never a bare sleep standing in for a condition),
or driving the event loop a counted number of turns."""

from collections.abc import Awaitable, Callable

import anyio
from anyio.lowlevel import checkpoint


async def wait_for(check: Callable[[], Awaitable], within_s: float = 10.0, every_s: float = 0.01):
    """The first truthy result of `check()`, asked every `every_s` until `within_s` passes."""
    with anyio.fail_after(within_s):
        while True:
            result = await check()
            if result:
                return result
            await anyio.sleep(every_s)


async def turns(count: int) -> None:
    """Let the event loop run `count` turns (each a checkpoint: no time passes): for code
    whose next step is a known number of turns away."""
    for _ in range(count):
        await checkpoint()
