"""Bare HTTP/1.1 over asyncio streams, for the hot paths of the load.

Why not httpx here: on a 2-core machine the load generator shares the CPU with the servers it
measures, and httpx costs several times more per request than the servers under test. This
client speaks just enough HTTP/1.1 (keep-alive, Content-Length or chunked bodies) to drive
fluxhook, the emulator and the bare endpoint, and to read Server-Sent Events. The sink is its
server side: it records each request's arrival time and answers 200 at once. Control calls
(config, stats, subscriptions) still go through httpx.
"""

import asyncio
import collections
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

HEAD_END = b"\r\n\r\n"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self):
        return json.loads(self.body)


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port or 80


def _head(method: str, target: str, host: str, headers: dict[str, str], length: int) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"host: {host}", f"content-length: {length}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _split_head(raw: bytes) -> tuple[str, dict[str, str]]:
    """(first line, lower-cased headers) of a request or response head."""
    first, *lines = raw.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    return first, headers


def _parse_head(raw: bytes) -> tuple[int, dict[str, str]]:
    status_line, headers = _split_head(raw)
    return int(status_line.split(" ", 2)[1]), headers


async def _chunks(reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
    """The data of a chunked body, chunk by chunk, as it arrives."""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return
        data = await reader.readexactly(size + 2)
        yield data[:-2]


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> "Connection":
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, limit=2**20)
        return self

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.reader = self.writer = None

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: dict | None = None
    ) -> Response:
        if self.writer is None:
            await self.open()
        host = f"{self.host}:{self.port}"
        self.writer.write(_head(method, target, host, headers or {}, len(body)) + body)
        status, head = _parse_head(await self.reader.readuntil(HEAD_END))
        if head.get("transfer-encoding") == "chunked":
            content = b"".join([chunk async for chunk in _chunks(self.reader)])
        else:
            content = await self.reader.readexactly(int(head.get("content-length", "0")))
        if head.get("connection") == "close":
            self.close()
        return Response(status, head, content)


class Pool:
    """At most `size` keep-alive connections to one server; a request waits for a free one.
    A connection that fails is dropped and the error raised; the next use opens a new one."""

    def __init__(self, url: str, size: int) -> None:
        host, port = address(url)
        self._idle: asyncio.Queue[Connection] = asyncio.Queue()
        for _ in range(size):
            self._idle.put_nowait(Connection(host, port))

    async def request(self, method: str, target: str, body: bytes = b"", headers=None):
        connection = await self._idle.get()
        try:
            return await connection.request(method, target, body, headers)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            connection.close()
            raise
        finally:
            self._idle.put_nowait(connection)

    async def post_json(self, target: str, payload, headers: dict | None = None) -> Response:
        head = {"content-type": "application/json", **(headers or {})}
        return await self.request("POST", target, json.dumps(payload).encode(), head)

    def close(self) -> None:
        while not self._idle.empty():
            self._idle.get_nowait().close()


@dataclass
class EventStream:
    """One SSE client. `messages` collects (arrival epoch seconds, raw message) pairs."""

    url: str
    path: str
    headers: dict[str, str]
    messages: list[tuple[float, bytes]] = field(default_factory=list)
    counts: collections.Counter = field(default_factory=collections.Counter)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        connection = Connection(*address(self.url))
        await connection.open()
        try:
            connection.writer.write(_head("GET", self.path, connection.host, self.headers, 0))
            status, _ = _parse_head(await connection.reader.readuntil(HEAD_END))
            if status != 200:
                raise RuntimeError(f"event stream {self.path} answered {status}")
            await self._read(connection.reader)
        finally:
            connection.close()

    async def _read(self, reader: asyncio.StreamReader) -> None:
        buffer = b""
        async for chunk in _chunks(reader):
            now = time.time()
            buffer += chunk
            *complete, buffer = buffer.split(b"\n\n")
            for message in complete:
                if message.startswith(b":"):
                    self.connected.set()
                elif _carries_data(message):  # else the id-only start id: no event
                    self.messages.append((now, message))
                    self.counts[_event_type(message)] += 1
            self.changed.set()

    def events(self, start: int = 0) -> list[tuple[float, str, dict]]:
        """(arrival, event type, data) of every message received, from the `start`th on
        (a reader that keeps up parses only what is new: its work is the load generator's,
        on the cores fluxhook uses)."""
        out = []
        for arrival, raw in self.messages[start:]:
            fields = dict(line.split(": ", 1) for line in raw.decode().split("\n"))
            out.append((arrival, fields["event"], json.loads(fields["data"])))
        return out

    async def wait_for(self, event_type: str, count: int, timeout_s: float) -> bool:
        """Until `count` events of the type have arrived (True) or `timeout_s` passes."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while self.counts[event_type] < count:
                    self.changed.clear()
                    await self.changed.wait()
        return self.counts[event_type] >= count


def _carries_data(message: bytes) -> bool:
    return any(line.startswith(b"data:") for line in message.split(b"\n"))


def _event_type(message: bytes) -> str:
    for line in message.split(b"\n"):
        if line.startswith(b"event: "):
            return line[7:].decode()
    return ""


class Sink:
    """A callback receiver on loopback: records (arrival epoch seconds, body) and answers 200."""

    def __init__(self) -> None:
        self.received: list[tuple[float, bytes]] = []
        self.changed = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self.url = ""

    async def start(self, port: int = 0) -> "Sink":
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}/hook"
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                _, head = _split_head(await reader.readuntil(HEAD_END))
                body = await reader.readexactly(int(head.get("content-length", "0")))
                self.received.append((time.time(), body))
                self.changed.set()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self._writers.discard(writer)
            writer.close()

    def callbacks(self) -> list[tuple[float, dict]]:
        return [(arrival, json.loads(body)) for arrival, body in self.received]

    async def wait_for(self, count: int, timeout_s: float) -> bool:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                while len(self.received) < count:
                    self.changed.clear()
                    await self.changed.wait()
        return len(self.received) >= count

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.close()
            await self._server.wait_closed()
