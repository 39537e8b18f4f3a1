"""A subscriber endpoint for the tests: records every callback, answers as it is told."""

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.support.servers import running_server


@dataclass
class Callback:
    headers: dict[str, str]
    body: bytes
    answer: object = 200  # what the subscriber answered: a status, (status, headers) or "stall"

    @property
    def json(self):
        return json.loads(self.body)

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")


@dataclass
class Subscriber:
    url: str = ""
    received: list[Callback] = field(default_factory=list)
    # Each answer is a status code, a (status, headers) pair, or "stall" (never answers).
    answers: list = field(default_factory=list)
    default: int = 200
    changed: anyio.Event = field(default_factory=anyio.Event)

    def answer(self):
        return self.answers.pop(0) if self.answers else self.default

    def record(self, callback: Callback) -> None:
        self.received.append(callback)
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_for(self, count: int, within_s: float = 15.0) -> list[Callback]:
        """Block until `count` callbacks have arrived (no polling: woken per arrival)."""
        with anyio.fail_after(within_s):
            while len(self.received) < count:
                await self.changed.wait()
        return self.received

    def delivered_ids(self) -> list[str]:
        """webhook-ids of the callbacks this subscriber accepted (answered 2xx)."""
        return [c.webhook_id for c in self.received if c.answer in (200, 204)]


def _app(subscriber: Subscriber) -> Starlette:
    async def hook(request: Request) -> Response:
        answer = subscriber.answer()
        subscriber.record(Callback(dict(request.headers), await request.body(), answer))
        if answer == "stall":
            await anyio.sleep_forever()
        status, headers = answer if isinstance(answer, tuple) else (answer, {})
        return Response(status_code=status, headers=headers)

    async def ready(_request: Request) -> Response:
        return Response("ok")

    return Starlette(routes=[Route("/hook", hook, methods=["POST"]), Route("/healthz", ready)])


@contextlib.asynccontextmanager
async def running_subscriber(**options) -> AsyncIterator[Subscriber]:
    subscriber = Subscriber(**options)
    async with running_server(_app(subscriber)) as url:
        subscriber.url = f"{url}/hook"
        yield subscriber
