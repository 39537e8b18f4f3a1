"""The open-loop load generator: sends go out on a fixed schedule, whatever the answers do.

Request `i` is due at `start + i / rate`. Each request is timed from that *scheduled* moment,
so a server that stalls is charged for the requests that queued behind it (no coordinated
omission). When the generator itself cannot start a request on time (its event loop is busy,
or every connection of the pool is in use), the send is late: lateness is recorded, never
hidden, and the report says when the generator fell behind. A generator that falls more than
`give_up_s` behind (the server takes requests far slower than offered) stops there: the
sends it never made are counted as `abandoned`, which bounds the run's time.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

LATE_S = 0.010  # a send starting 10 ms or more after its schedule counts as late


@dataclass
class Sent:
    index: int
    scheduled: float  # epoch seconds
    started: float
    finished: float = 0.0
    ok: bool = False
    result: object = None

    @property
    def latency_s(self) -> float:
        return self.finished - self.scheduled


@dataclass
class Load:
    rate: float
    sent: list[Sent] = field(default_factory=list)
    abandoned: int = 0

    @property
    def late(self) -> int:
        return sum(1 for s in self.sent if s.started - s.scheduled >= LATE_S)

    @property
    def max_lag_s(self) -> float:
        return max((s.started - s.scheduled for s in self.sent), default=0.0)

    @property
    def failures(self) -> int:
        return sum(1 for s in self.sent if not s.ok)

    @property
    def elapsed_s(self) -> float:
        """From the first scheduled send to the last answer."""
        if not self.sent:
            return 0.0
        return max(s.finished for s in self.sent) - self.sent[0].scheduled

    def summary(self) -> dict:
        return {
            "offered_rate": self.rate,
            "requests": len(self.sent),
            "failures": self.failures,
            "late_sends": self.late,
            "max_lag_ms": round(self.max_lag_s * 1000, 1),
            "abandoned": self.abandoned,
        }


async def open_loop(
    rate: float,
    count: int,
    send: Callable[[int], Awaitable[object]],
    in_flight: int | None = None,
    give_up_s: float = 10.0,
) -> Load:
    """Send `count` requests at `rate` per second; `send(i)` returns a result or raises.

    `in_flight` caps concurrent requests (a saturation run: offer more than the server takes
    and measure what it completes); a send waiting for room is late.
    """
    load = Load(rate)
    room = asyncio.Semaphore(in_flight) if in_flight else None  # never released once given up
    start = time.time() + 0.05
    async with asyncio.TaskGroup() as group:
        for index in range(count):
            scheduled = start + index / rate
            delay = scheduled - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if room is not None:
                await room.acquire()
            if time.time() - scheduled > give_up_s:
                load.abandoned = count - index
                break
            sent = Sent(index, scheduled, time.time())
            load.sent.append(sent)
            group.create_task(_timed(send, sent, room))
    return load


async def _timed(send, sent: Sent, room: asyncio.Semaphore | None) -> None:
    try:
        sent.result = await send(sent.index)
        sent.ok = True
    except Exception as exc:  # a failed request is data: counted, not fatal
        sent.result = exc
    finally:
        sent.finished = time.time()
        if room is not None:
            room.release()
