"""A round-robin TCP proxy on loopback, as a PaaS router in front of several web processes.

Each new connection goes to the next backend that accepts it (a dead one is skipped); its bytes
are piped both ways until either side closes. The turns are kept per kind of request (the
first segment of the first request's path: `webhooks`, `v1`…), so BFL's webhooks alternate
between the backends however the API's connections fall between them. `opened` records, per
connection, the backend and the first line of the first request, so a test can tell where the
webhooks went.
"""

import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import anyio
from anyio.abc import ByteStream, SocketAttribute, SocketStream, TaskGroup

CHUNK = 65536


@dataclass
class Proxy:
    ports: list[int]
    url: str = ""
    opened: list[tuple[int, bytes]] = field(default_factory=list)  # (port, first request line)

    def __post_init__(self) -> None:
        self._turns: dict[bytes, Iterator[int]] = {}

    def connections_to(self, port: int, starting: bytes) -> int:
        return sum(1 for to, line in self.opened if to == port and line.startswith(starting))

    async def handle(self, client: SocketStream) -> None:
        async with client:
            try:
                first = await client.receive(CHUNK)
            except (anyio.EndOfStream, anyio.BrokenResourceError):
                return
            line = first.split(b"\r\n", 1)[0]
            upstream, port = await self._connect(_kind(line))
            if upstream is None:
                return
            self.opened.append((port, line))
            async with upstream, anyio.create_task_group() as tg:
                tg.start_soon(self._pipe, upstream, client, tg)
                with contextlib.suppress(anyio.BrokenResourceError):
                    await upstream.send(first)
                await self._pipe(client, upstream, tg)

    async def _connect(self, kind: bytes) -> tuple[SocketStream | None, int]:
        turn = self._turns.setdefault(kind, itertools.cycle(self.ports))
        for _ in self.ports:
            port = next(turn)
            with contextlib.suppress(OSError):
                return await anyio.connect_tcp("127.0.0.1", port), port
        return None, 0

    async def _pipe(self, source: ByteStream, sink: ByteStream, tg: TaskGroup) -> None:
        try:
            async for chunk in source:
                await sink.send(chunk)
            await sink.send_eof()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            tg.cancel_scope.cancel()  # one side is gone: so is the connection


def _kind(request_line: bytes) -> bytes:
    """`POST /webhooks/bfl/… HTTP/1.1` → `webhooks`."""
    parts = request_line.split(b" ")
    path = parts[1] if len(parts) > 1 else b""
    return path.lstrip(b"/").split(b"/", 1)[0]


@contextlib.asynccontextmanager
async def running_proxy(ports: list[int]) -> AsyncIterator[Proxy]:
    proxy = Proxy(ports)
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
    async with listener, anyio.create_task_group() as tg:
        port = listener.extra(SocketAttribute.local_port)  # noqa: S610 - anyio, not Django
        proxy.url = f"http://127.0.0.1:{port}"
        tg.start_soon(listener.serve, proxy.handle, tg)
        yield proxy
        tg.cancel_scope.cancel()
