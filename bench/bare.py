"""The bare endpoint of measurement 3: Starlette under hypercorn, with fluxhook's server
settings (`service.server`), answering the webhook POST with no verification and no database.
It reads and parses the body as the receiver does, so the ratio prices fluxhook's own work.

Run: `python -m bench.bare --port N`.
"""

import argparse
import json
import signal

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.server import listening_socket, serve


async def receive(request: Request) -> JSONResponse:
    json.loads(await request.body())
    return JSONResponse({"status": "applied"})


async def healthz(_request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


def create_bare_app() -> Starlette:
    return Starlette(
        routes=[
            Route("/webhooks/bfl/{token}", receive, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
        ]
    )


async def _until_signal() -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
        async for _ in received:
            return


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bare")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    anyio.run(serve, create_bare_app(), listening_socket("127.0.0.1", args.port), _until_signal)


if __name__ == "__main__":
    main()
