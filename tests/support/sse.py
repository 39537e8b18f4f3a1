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


async def messages(response: httpx.Response) -> AsyncIterator[Message]:
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line.startswith(":"):
            yield Message(None, None, None, comment=line[1:].strip())
        elif line == "":
            if "data" in fields:
                seq = int(fields["id"]) if "id" in fields else None
                yield Message(seq, fields.get("event"), json.loads(fields["data"]))
            fields = {}
        else:
            name, _, value = line.partition(":")
            fields[name] = value.lstrip(" ")


class Stream:
    """An open SSE connection; `take(n)` returns the next n events (comments skipped)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._messages = messages(response)
        self.comments: list[str] = []

    async def take(self, count: int, within_s: float = 15.0) -> list[Message]:
        taken = []
        with anyio.fail_after(within_s):
            while len(taken) < count:
                message = await anext(self._messages)
                if message.comment is not None:
                    self.comments.append(message.comment)
                else:
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
