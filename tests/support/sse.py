"""A Server-Sent-Events reader over httpx, for the tests."""

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import anyio
import httpx


@dataclass
class Message:
    id: int | None
    event: str | None
    data: dict | None
    comment: str | None = None


async def messages(response: httpx.Response, id_only: bool = False) -> AsyncIterator[Message]:
    """Comments and events. A message with an id and no data dispatches no event (it only sets
    the last event id, as the start id of `/v1/events` does): skipped, unless `id_only` asks
    for it as `Message(id, None, None)`."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield Message(None, None, None, comment=line[1:].strip())
        elif line == "":
            seq = int(fields["id"]) if "id" in fields else None
            if "data" in fields:
                yield Message(seq, fields.get("event"), json.loads(fields["data"]))
            elif id_only and seq is not None:
                yield Message(seq, None, None)
            fields = {}
        else:
            name, _, value = line.partition(":")
            fields[name] = value.lstrip(" ")


class Stream:
    """An open SSE connection; `take(n)` returns the next n events (comments and id-only
    messages skipped); `start()` reads the id-only message a stream from now begins with."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._messages = messages(response, id_only=True)
        self.comments: list[str] = []

    async def start(self, within_s: float = 15.0) -> int:
        """The id the stream starts after: its first message must be the id-only one."""
        with anyio.fail_after(within_s):
            message = await anext(self._messages)
        assert message.id is not None and (message.data, message.comment) == (None, None), message
        return message.id

    async def take(self, count: int, within_s: float = 15.0) -> list[Message]:
        taken = []
        with anyio.fail_after(within_s):
            while len(taken) < count:
                message = await anext(self._messages)
                if message.comment is not None:
                    self.comments.append(message.comment)
                elif message.data is not None:
                    taken.append(message)
        return taken

    async def comment(self, within_s: float = 15.0) -> str:
        with anyio.fail_after(within_s):
            async for message in self._messages:
                if message.comment is not None:
                    return message.comment
        raise AssertionError("the stream ended")

    async def ended(self, within_s: float = 15.0) -> bool:
        with anyio.fail_after(within_s):
            async for _ in self._messages:
                pass
        return True


@contextlib.asynccontextmanager
async def open_stream(client: httpx.AsyncClient, path: str, headers=None) -> AsyncIterator[Stream]:
    async with client.stream("GET", path, headers=headers, timeout=None) as response:
        assert response.status_code == 200, await response.aread()
        assert response.headers["content-type"].startswith("text/event-stream")
        stream = Stream(response)
        assert (await stream.comment()) == "connected"
        yield stream
