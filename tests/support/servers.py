"""Real HTTP on loopback: run an ASGI app under hypercorn inside the test's event loop."""

import contextlib
from collections.abc import AsyncIterator

import anyio

from service.server import base_url, listening_socket, serve


@contextlib.asynccontextmanager
async def running_server(app) -> AsyncIterator[str]:
    """Serve `app` on a free loopback port; yields its base URL, shuts it down on exit."""
    sock = listening_socket()
    url = base_url(sock)
    stop = anyio.Event()
    async with anyio.create_task_group() as tg:
        tg.start_soon(serve, app, sock, stop.wait)
        try:
            yield url
        finally:
            stop.set()
