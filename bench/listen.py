"""Listening to fluxhook as its users do: SSE streams on `/v1/events`, callbacks at a sink."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from bench import wire
from bench.stack import Stack

CONNECT_TIMEOUT_S = 60.0


@contextlib.asynccontextmanager
async def streams(stack: Stack, count: int = 1) -> AsyncIterator[list[wire.EventStream]]:
    """`count` SSE clients on `/v1/events`, each connected (its first comment read)."""
    clients = [stack.event_stream() for _ in range(count)]
    tasks = [asyncio.create_task(client.run()) for client in clients]
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            for client, task in zip(clients, tasks, strict=True):
                connected = asyncio.create_task(client.connected.wait())
                await asyncio.wait([connected, task], return_when=asyncio.FIRST_COMPLETED)
                if task.done():
                    connected.cancel()
                    task.result()  # raises what ended the stream
        yield clients
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


@contextlib.asynccontextmanager
async def sink() -> AsyncIterator[wire.Sink]:
    receiver = await wire.Sink().start()
    try:
        yield receiver
    finally:
        await receiver.stop()


def ready_by_task(stream: wire.EventStream) -> list[tuple[float, str]]:
    """(arrival, BFL task id) of every `job.ready` the stream received."""
    return [
        (arrival, body["data"]["bfl_id"])
        for arrival, kind, body in stream.events()
        if kind == "job.ready"
    ]


def delays(arrivals: list[tuple[float, str]], finished: dict[str, float]) -> list[float]:
    """Seconds from each task's terminal event at the emulator to its arrival here."""
    return [arrival - finished[task] for arrival, task in arrivals if task in finished]
