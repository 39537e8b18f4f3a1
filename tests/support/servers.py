"""Real HTTP on loopback: run an ASGI app under hypercorn inside the test's event loop."""

import contextlib
import socket
from collections.abc import AsyncIterator

import anyio
import httpx

from service.server import base_url, listening_socket, serve


@contextlib.asynccontextmanager
async def running_server(app, sock: socket.socket | None = None) -> AsyncIterator[str]:
    """Serve `app` on `sock` (default: a free loopback port); yields its base URL."""
    sock = sock or listening_socket()
    url = base_url(sock)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        # Requests still open at the end of a test (a stalled subscriber) get 1 s.
        tg.start_soon(serve, app, sock, stop.wait, 1.0)
        try:
            await _started(url)
            yield url
        finally:
            stop.set()


async def _started(url: str) -> None:
    """The socket already listens, so one request waits (in the backlog) until hypercorn has
    run the app's lifespan startup and begun to accept."""
    async with httpx.AsyncClient(timeout=60) as client:
        await client.get(f"{url}/healthz")
