"""A round-robin TCP proxy on loopback, as a PaaS router in front of several web processes.

Each new connection goes to the next backend that accepts it (a dead one is skipped); its bytes
are piped both ways until either side closes. `opened` records, per connection, the backend and
the first line of the first request, so a test can tell where the webhooks went.
"""

import contextlib
import itertools
from collections.abc import AsyncIterator
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
        self._turn = itertools.cycle(self.ports)

    def connections_to(self, port: int, starting: bytes) -> int:
        return sum(1 for to, line in self.opened if to == port and line.startswith(starting))

    async def handle(self, client: SocketStream) -> None:
        async with client:
            upstream, port = await self._connect()
            if upstream is None:
                return
            async with upstream, anyio.create_task_group() as tg:
                tg.start_soon(self._pipe, upstream, client, tg)
                with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError):
                    first = await client.receive(CHUNK)
                    self.opened.append((port, first.split(b"\r\n", 1)[0]))
                    await upstream.send(first)
                await self._pipe(client, upstream, tg)

    async def _connect(self) -> tuple[SocketStream | None, int]:
        for _ in self.ports:
            port = next(self._turn)
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
