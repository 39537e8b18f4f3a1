"""Helpers for the emulator tests: a running emulator, a webhook receiver, condition waits."""

import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from service.emulator import EmulatorConfig, create_emulator_app
from tests.support.servers import running_server
from tests.support.waiting import wait_for

KEY = "test-key"


@dataclass
class Emulator:
    url: str
    http: httpx.AsyncClient

    async def submit(self, model: str = "flux-dev", key: str = KEY, **inputs) -> httpx.Response:
        inputs.setdefault("prompt", "a red fox")
        return await self.http.post(f"/v1/{model}", json=inputs, headers={"x-key": key})

    async def configure(self, **changes) -> dict:
        response = await self.http.post("/_emulator/config", json=changes)
        assert response.status_code == 200, response.text
        return response.json()

    async def task(self, task_id: str) -> dict:
        return (await self.http.get(f"/_emulator/tasks/{task_id}")).json()

    async def finish(self, task_id: str, status: str = "Ready") -> httpx.Response:
        return await self.http.post(f"/_emulator/tasks/{task_id}/finish", json={"status": status})

    async def stats(self) -> dict:
        return (await self.http.get("/_emulator/stats")).json()

    async def poll(self, task_id: str) -> dict:
        return (await self.http.get("/v1/get_result", params={"id": task_id})).json()

    async def wait_terminal(self, task_id: str) -> dict:
        async def terminal():
            body = await self.poll(task_id)
            return body if body["status"] != "Pending" else None

        return await wait_for(terminal)


@contextlib.asynccontextmanager
async def emulator(config: EmulatorConfig | None = None, **kwargs) -> AsyncIterator[Emulator]:
    app = create_emulator_app(config or EmulatorConfig(seed=7), **kwargs)
    async with running_server(app) as url, httpx.AsyncClient(base_url=url, timeout=10) as http:
        yield Emulator(url, http)


@dataclass
class Received:
    headers: dict
    raw: bytes
    at: float

    @property
    def json(self) -> dict:
        return json.loads(self.raw)


@dataclass
class Receiver:
    """A webhook endpoint that records every POST and answers `statuses` in turn, then 200."""

    statuses: list[int] = field(default_factory=list)
    stall: anyio.Event | None = None  # first request waits for this before answering
    requests: list[Received] = field(default_factory=list)

    @property
    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        raw = await request.body()
        self.requests.append(Received(dict(request.headers), raw, anyio.current_time()))
        if self.stall is not None and len(self.requests) == 1:
            await self.stall.wait()
        return Response(status_code=self.statuses.pop(0) if self.statuses else 200)

    async def count(self, n: int) -> list[Received]:
        async def enough():
            return self.requests if len(self.requests) >= n else None

        return await wait_for(enough)


@contextlib.asynccontextmanager
async def receiver(**kwargs) -> AsyncIterator[tuple[Receiver, str]]:
    hook = Receiver(**kwargs)
    async with running_server(hook.app) as url:
        yield hook, f"{url}/hook"
