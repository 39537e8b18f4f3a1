"""Run an ASGI app under hypercorn: the one way the CLI, the tests and the benchmarks serve."""

import logging
import socket
from collections.abc import Awaitable, Callable

from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config

# Heroku sends SIGKILL 30 s after SIGTERM: 10 s for open requests to finish, then the
# lifespan's own 10 s for background work (service.runtime), with room to exit.
GRACEFUL_TIMEOUT_S = 10.0


def listening_socket(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    """A bound, listening TCP socket; port 0 picks a free port (see `.getsockname()`)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.set_inheritable(True)
    return sock


def hypercorn_config(sock: socket.socket, graceful_timeout_s: float = GRACEFUL_TIMEOUT_S) -> Config:
    """Hypercorn's settings; it takes ownership of `sock` (and closes it on shutdown)."""
    config = Config()
    config.bind = [f"fd://{sock.detach()}"]
    config.accesslog = None
    config.errorlog = logging.getLogger("hypercorn.error")  # through our log format
    config.graceful_timeout = graceful_timeout_s
    config.keep_alive_timeout = 75.0  # longer than the PaaS router's idle timeout (55 s)
    config.include_server_header = False
    config.startup_timeout = 60.0
    config.shutdown_timeout = 15.0  # the lifespan drains background work for up to 10 s
    return config


async def serve(
    app,
    sock: socket.socket,
    shutdown_trigger: Callable[[], Awaitable],
    graceful_timeout_s: float = GRACEFUL_TIMEOUT_S,
) -> None:
    """Serve `app` on `sock` until `shutdown_trigger` returns, then shut down gracefully.

    Read the address (`base_url(sock)`) before calling: hypercorn takes the socket over.
    """
    config = hypercorn_config(sock, graceful_timeout_s)
    await hypercorn_serve(app, config, shutdown_trigger=shutdown_trigger)


def base_url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{host}:{port}"
