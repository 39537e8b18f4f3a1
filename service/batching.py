"""Group commit: concurrent writers share one transaction.

Each transaction costs round trips (BEGIN, the statements, COMMIT) that dwarf the work of
one small change; under load many small changes wait for the same database anyway. The
first caller to arrive leads: it takes everything queued, applies it in one write
transaction, answers every caller, and repeats while more arrived meanwhile. Callers
still return only after their change has committed. If a batch fails, its items are
retried one by one, so one bad item fails alone.
"""

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import anyio
from sqlmodel.ext.asyncio.session import AsyncSession

from service.db import Database

Item = TypeVar("Item")
Result = TypeVar("Result")
Apply = Callable[[AsyncSession, list], Awaitable[list]]


class GroupCommit(Generic[Item, Result]):
    def __init__(self, db: Database, apply: Apply, max_items: int = 256) -> None:
        """`apply(session, items)` makes the changes and returns one result per item."""
        self._db = db
        self._apply = apply
        self._max_items = max_items
        self._queue: list[tuple[Item, asyncio.Future]] = []
        self._leading = False

    async def submit(self, item: Item) -> Result:
        future = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if not self._leading:
            # Shielded: the leader's own caller going away must not strand the others.
            with anyio.CancelScope(shield=True):
                await self._lead()
        return await future

    async def _lead(self) -> None:
        self._leading = True
        try:
            while self._queue:
                batch = self._queue[: self._max_items]
                del self._queue[: self._max_items]
                await self._commit(batch)
        finally:
            self._leading = False

    async def _commit(self, batch: list[tuple[Item, asyncio.Future]]) -> None:
        try:
            async with self._db.write() as session:
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


def _settle(future: asyncio.Future, result=None, exc: BaseException | None = None) -> None:
    if future.done():
        return  # its caller went away
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)
