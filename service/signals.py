"""Wake-ups for the background loops and the hub.

A commit that gives a loop work wakes it at once instead of at its next poll. In-process the
wake is an event; on PostgreSQL a NOTIFY in the same transaction also wakes the loops of every
other process (the hub's listener turns it back into a local wake). The NOTIFY names the
process that sent it, which ignores its own: its loop was woken at the commit already, and a
second wake made a second claim that found nothing (the submit path on PostgreSQL: 1.64
admission claims a job). And when a loop of this process takes such work at once (it runs
here, with room: `taken_here`), no other process is woken for it: each would make a claim
that finds nothing (two serve processes and a worker at 60 jobs/s: 2.2 admission claims a
job, 62 % of them empty). They still poll; if this process dies before its claim, another
finds the work within its poll interval.
"""

import asyncio
import uuid
from collections import defaultdict
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy import func

from service import direct
from service.db import on_commit

WAKE_CHANNEL = "fluxhook_wake"
WAKE_ALL = sa.select(func.pg_notify(WAKE_CHANNEL, sa.bindparam("name", type_=sa.Text)))


class Signals:
    def __init__(self, postgres: bool) -> None:
        self._postgres = postgres
        self.origin = uuid.uuid4().hex  # this process, in the wake NOTIFYs it sends
        self._events: dict[str, asyncio.Event] = defaultdict(asyncio.Event)
        # Without NOTIFY (SQLite), committed events go straight to the in-process hub.
        self.event_committed: Callable[[object], None] | None = None
        # The dispatcher of this process, if it runs here: new deliveries can be leased to it
        # in the transaction that writes them, and handed over on commit (no claim needed).
        self.deliveries = None
        # Loops of this process that take their work at once, by name: whether they can now.
        self.taken_here: dict[str, Callable[[], bool]] = {}

    def wake(self, name: str) -> None:
        self._events[name].set()

    def woken_from_elsewhere(self, payload: str) -> None:
        """A wake NOTIFY (`name@origin`, or a bare `name` from a process that predates the
        origin): wake `name` here, unless this process sent it."""
        name, _, origin = payload.partition("@")
        if origin != self.origin:
            self.wake(name)

    async def wait(self, name: str, timeout_s: float) -> bool:
        """Wait for a wake-up or the timeout; True if woken. Clears the wake-up."""
        event = self._events[name]
        try:
            async with asyncio.timeout(timeout_s):
                await event.wait()
        except TimeoutError:
            return False
        finally:
            event.clear()
        return True

    def publish_after_commit(self, session: direct.InTransaction, event) -> None:
        """SQLite: hand the event to this process's hub once it has committed. (Writers are
        serialised, and after-commit hooks run in commit order, so events arrive in order.)"""
        if self.event_committed is not None:
            on_commit(session, lambda: self.event_committed(event))

    async def after_commit(self, session: direct.InTransaction, *names: str) -> None:
        """Wake `names` here once the session commits, and (PostgreSQL) in every process,
        unless a loop here takes the work."""
        for name in names:
            on_commit(session, lambda name=name: self.wake(name))
            if self._postgres and not self._takes_here(name):
                wake = {"name": f"{name}@{self.origin}"}
                await direct.execute_later(session, WAKE_ALL, [wake])

    def _takes_here(self, name: str) -> bool:
        can_take = self.taken_here.get(name)
        return can_take is not None and can_take()
