"""Group commit: concurrent writers share one transaction.

Each transaction costs round trips (BEGIN, the statements, COMMIT) that dwarf the work of
one small change; under load many small changes wait for the same database anyway. A caller
that finds no batch in progress leads: it takes what is queued (its own change among it),
applies it in one write transaction and answers every caller in it. Then leadership passes
to a caller still waiting, so no caller waits on batches after its own, however long the
load lasts. Callers return only after their change has committed. If a batch fails, its
items are retried one by one, so one bad item fails alone.

Before it takes the queue, a leader lets the event loop turn until `QUIET_TURNS` turns in a
row bring nobody (at most `GATHER_TURNS` turns). On SQLite a transaction runs on the loop
without waiting, so nothing can join it once begun: without those turns, the requests that
arrived together (each a few turns from its handler to here, in whatever order the loop runs
them) went in batches of about three. With them, 32 webhooks in flight commit ≈ 1.5× as many
per second for ≈ a third less CPU each (bench/README.md, ninth pass); alone, a caller waits
three turns of an idle loop (tens of microseconds).
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio
from sqlmodel.ext.asyncio.session import AsyncSession

from service.db import Database

Item = TypeVar("Item")
Result = TypeVar("Result")
GATHER_TURNS = 8  # at most, while callers keep joining (see above)
QUIET_TURNS = 3  # turns in a row with nobody joining: the batch is what it will be
Apply = Callable[[AsyncSession, list], Awaitable[list]]


class GroupCommit(Generic[Item, Result]):
    def __init__(
        self,
        db: Database,
        apply: Apply,
        max_items: int = 256,
        urgent: bool = False,
        on_driver: bool = False,
    ) -> None:
        """`apply(session, items)` makes the changes and returns one result per item;
        `urgent` batches take SQLite's writer ahead of ordinary writers (`Database.write`);
        `on_driver`: `apply` runs every statement through `direct`, so the batch's transaction
        may be one on the driver (`Database.write_direct`)."""
        self._urgent = urgent
        self._transaction = db.write_direct if on_driver else db.write
        self._apply = apply
        self._max_items = max_items
        self._queue: list[tuple[Item, asyncio.Future]] = []
        self._leading = False
        self._batch_over = asyncio.Event()

    async def submit(self, item: Item) -> Result:
        entry = (item, asyncio.get_running_loop().create_future())
        self._queue.append(entry)
        future = entry[1]
        try:
            while not future.done():
                if self._leading:
                    await self._batch_over.wait()
                else:
                    # Shielded: the leader's own caller going away must not strand the others.
                    with anyio.CancelScope(shield=True):
                        await self._lead_one_batch()
        except BaseException:
            self._forget(entry)  # cancelled while it waited: its change is not made
            raise
        return future.result()

    async def _lead_one_batch(self) -> None:
        self._leading = True
        try:
            await self._let_others_join()
            batch = self._queue[: self._max_items]
            del self._queue[: self._max_items]
            await _to_the_end(self._commit(batch))
        finally:
            self._leading = False
            self._batch_over.set()  # the waiting callers: answered, or one of them leads next
            self._batch_over = asyncio.Event()

    async def _let_others_join(self) -> None:
        quiet = 0
        for _ in range(GATHER_TURNS):
            queued = len(self._queue)
            await asyncio.sleep(0)  # one turn of the loop: callers on their way get here
            quiet = quiet + 1 if len(self._queue) == queued else 0
            if quiet == QUIET_TURNS or len(self._queue) >= self._max_items:
                return

    def _forget(self, entry: tuple[Item, asyncio.Future]) -> None:
        for index, queued in enumerate(self._queue):
            if queued is entry:
                del self._queue[index]
                return

    async def _commit(self, batch: list[tuple[Item, asyncio.Future]]) -> None:
        try:
            async with self._transaction(urgent=self._urgent) as session:
                results = await self._apply(session, [item for item, _ in batch])
        except Exception as exc:
            if len(batch) == 1:
                _settle(batch[0][1], exc=exc)
                return
            for entry in batch:
                await self._commit([entry])
            return
        for (_, future), result in zip(batch, results, strict=True):
            _settle(future, result=result)


async def _to_the_end(work: Awaitable[None]) -> None:
    """`work` in a task of its own, awaited to its end even if the caller is cancelled
    meanwhile (then the cancellation follows). A plain asyncio cancellation passes anyio's
    shield: a server dropping the leader's request must not abandon the batch it took, whose
    other callers only its commit answers."""
    task = asyncio.ensure_future(work)
    cancelled: asyncio.CancelledError | None = None
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError as exc:
            cancelled = exc
    if cancelled is not None:
        raise cancelled
    task.result()


def _settle(future: asyncio.Future, result=None, exc: BaseException | None = None) -> None:
    if future.done():
        return  # its caller went away
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
