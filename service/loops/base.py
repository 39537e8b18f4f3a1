"""The shape every background loop shares (procrastinate's worker loop).

A loop waits for any of: a wake-up (a commit gave it work), its poll interval, or shutdown;
then claims a batch and works each item. Failure is contained per item, by construction:
whatever one item's work raises is logged and handed to `failed(item, exc)`, which records it
as that item's outcome; it never cancels a sibling or ends the loop. `run_until_idle()` runs
passes until one claims nothing, which is how tests drive loops deterministically. At shutdown
a loop stops claiming, lets its in-flight work finish, and whatever is cut short gives its
leases back (`release`).
"""

import abc
import asyncio
import logging
from collections.abc import Awaitable, Callable

import anyio

from service.signals import Signals

log = logging.getLogger(__name__)
RESTART_DELAY_S = 1.0


class Loop(abc.ABC):
    name: str = "loop"
    interval_s: float = 1.0

    def __init__(self, signals: Signals) -> None:
        self.signals = signals
        self.stopping = False
        self._cut_short: list = []

    @abc.abstractmethod
    async def claim(self) -> list:
        """Lease a batch of work; [] when there is none."""

    @abc.abstractmethod
    async def work(self, item) -> None:
        """Act on one claimed item and commit the outcome."""

    @abc.abstractmethod
    async def failed(self, item, exc: Exception) -> None:
        """Record that work on `item` raised `exc`, as that item's own failure."""

    async def release(self, items: list) -> None:  # noqa: B027 - most loops keep nothing
        """Give back the leases of items whose work was cut short by shutdown."""

    def may_find_more(self, claimed: list) -> bool:
        """Whether to claim again at once rather than wait for a wake-up: by default after any
        claim that found work (the batch may have been full)."""
        return bool(claimed)

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            while not self.stopping:
                claimed = await self.claim()
                for item in claimed:
                    tg.start_soon(self._tracked, item)
                if not self.may_find_more(claimed) and not self.stopping:
                    await self.signals.wait(self.name, self.interval_s)

    async def _tracked(self, item) -> None:
        try:
            await self.contained(item)
        except anyio.get_cancelled_exc_class():
            self._cut_short.append(item)
            raise

    async def contained(self, item) -> None:
        """`work(item)`; whatever it raises becomes the item's recorded failure."""
        try:
            await self.work(item)
        except Exception as exc:
            log.exception("%s: work on %s failed", self.name, describe(item))
            try:
                await self.failed(item, exc)
            except Exception:
                # Its lease runs out and the item is claimed again: nothing is lost.
                log.exception("%s: could not record the failure of %s", self.name, describe(item))

    async def run_once(self) -> bool:
        """One pass; True if it claimed anything (so another pass may find more)."""
        claimed = await self.claim()
        async with anyio.create_task_group() as tg:
            for item in claimed:
                tg.start_soon(self.contained, item)
        return bool(claimed)

    async def run_until_idle(self, max_passes: int = 10_000) -> None:
        for _ in range(max_passes):
            if not await self.run_once():
                return
        raise RuntimeError(f"{self.name} never went idle")

    def stop(self) -> None:
        self.stopping = True
        self.signals.wake(self.name)

    async def release_cut_short(self) -> None:
        items, self._cut_short = self._cut_short, []
        if items:
            await self.release(items)


def describe(item) -> str:
    """A short name for a work item in a log line: its id where it has one."""
    for attribute in ("id", "job_id", "delivery"):
        value = getattr(item, attribute, None)
        if value is not None:
            return str(getattr(value, "id", value))
    return type(item).__name__


def failure_reason(exc: Exception) -> str:
    """One line for an item's record: the exception's type and message, bounded."""
    return f"{type(exc).__name__}: {exc}"[:500]


async def supervise(loop: Loop, run: Callable[[], Awaitable[None]] | None = None) -> None:
    """Run the loop until it stops: a crash is logged with its traceback and it restarts."""
    run = run or loop.run
    while not loop.stopping:
        try:
            await run()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "background loop %s crashed; restarting in %ss", loop.name, RESTART_DELAY_S
            )
            await asyncio.sleep(RESTART_DELAY_S)
