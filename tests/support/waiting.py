"""Waiting on a condition with a deadline (never a bare sleep standing in for a condition)."""

from collections.abc import Awaitable, Callable

import anyio


async def wait_for(check: Callable[[], Awaitable], within_s: float = 10.0, every_s: float = 0.01):
    """The first truthy result of `check()`, asked every `every_s` until `within_s` passes."""
    with anyio.fail_after(within_s):
        while True:
            result = await check()
            if result:
                return result
            await anyio.sleep(every_s)
