"""fluxhook and the BFL emulator, each under its own hypercorn on loopback, for end-to-end tests."""

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator

import anyio
import httpx

from service.api.auth import create_key
from service.app import create_app
from service.emulator import create_emulator_app
from service.server import base_url, listening_socket
from service.settings import Settings
from tests.support.servers import running_server
from tests.support.waiting import wait_for

TEST_SECRET = "test-secret-key"


class Emulator:
    """The emulator's control API (`/_emulator/*`)."""

    def __init__(self, url: str, http: httpx.AsyncClient) -> None:
        self.url = url
        self.http = http

    async def configure(self, **changes) -> dict:
        response = await self.http.post(f"{self.url}/_emulator/config", json=changes)
        response.raise_for_status()
        return response.json()

    async def stats(self) -> dict:
        return (await self.http.get(f"{self.url}/_emulator/stats")).raise_for_status().json()

    async def tasks(self) -> list[dict]:
        return (await self.http.get(f"{self.url}/_emulator/tasks")).raise_for_status().json()

    async def finish(self, task_id: str, status: str = "Ready") -> None:
        url = f"{self.url}/_emulator/tasks/{task_id}/finish"
        (await self.http.post(url, json={"status": status})).raise_for_status()


@contextlib.asynccontextmanager
async def running_emulator(**config) -> AsyncIterator[Emulator]:
    async with running_server(create_emulator_app()) as url, httpx.AsyncClient() as http:
        emulator = Emulator(url, http)
        if config:
            await emulator.configure(**config)
        yield emulator


@dataclasses.dataclass
class Stack:
    url: str
    key: str
    client: httpx.AsyncClient  # authenticated as the stack's tenant
    emulator: Emulator
    services: object
    settings: Settings

    async def submit(self, model: str = "flux-dev", **inputs) -> dict:
        inputs.setdefault("prompt", "a lighthouse at dawn")
        response = await self.client.post(f"/v1/{model}", json=inputs)
        assert response.status_code == 200, response.text
        return response.json()

    async def settled(self, job_id: str, timeout_s: float = 25.0) -> dict:
        """get_result once the job is terminal (fluxhook's own long-poll waits for it)."""
        with anyio.fail_after(timeout_s + 5):
            response = await self.client.get(f"/v1/get_result?id={job_id}&wait={timeout_s}")
        return response.json()

    async def stored(self, job_id: str, timeout_s: float = 25.0) -> dict:
        """The job (native view) once its image is in the store: it shows `Ready` earlier,
        when its link already works by streaming the download."""

        async def image_stored() -> dict | None:
            job = (await self.client.get(f"/v1/jobs/{job_id}")).json()
            return job if job["image_stored"] else None

        await self.settled(job_id, timeout_s)
        return await wait_for(image_stored, within_s=timeout_s)

    async def reaches(self, job_id: str, status: str, timeout_s: float = 25.0) -> dict:
        """The job (native view) once it shows `status` (a `Ready` can still end `Error`
        when its image cannot be fetched)."""

        async def shown() -> dict | None:
            job = (await self.client.get(f"/v1/jobs/{job_id}")).json()
            return job if job["status"] == status else None

        return await wait_for(shown, within_s=timeout_s)

    def webhook(self, job_id: str) -> tuple[str, str]:
        """The BFL webhook URL fluxhook gave this job, and the secret BFL would echo."""
        signing, job = self.services.signing, uuid.UUID(job_id)
        return f"{self.url}/webhooks/bfl/{signing.webhook_token(job)}", signing.webhook_secret(job)

    async def post_webhook(self, job_id: str, body: dict) -> httpx.Response:
        """POST `body` to the job's webhook as BFL would (with the right secret)."""
        url, secret = self.webhook(job_id)
        async with httpx.AsyncClient() as http:
            return await http.post(url, json=body, headers={"x-webhook-secret": secret})

    async def new_key(self, name: str = "other") -> str:
        async with self.services.db.write() as session:
            return await create_key(session, name, self.services.clock.now())


def stack_settings(database_url: str, public_url: str, emulator_url: str, **overrides) -> Settings:
    return dataclasses.replace(
        Settings(
            database_url=Settings.from_env({"DATABASE_URL": database_url}).database_url,
            public_url=public_url,
            secret_keys=(TEST_SECRET,),
            bfl_api_key="test-bfl-key",
            bfl_api_url=emulator_url,
            allow_private_targets=True,
            reconcile_interval_s=0.2,
            bfl_timeout_s=5.0,
        ),
        **overrides,
    )


@contextlib.asynccontextmanager
async def running_stack(
    database_url: str, emulator: Emulator, runtime: dict | None = None, **overrides
) -> AsyncIterator[Stack]:
    sock = listening_socket()
    url = base_url(sock)
    settings = stack_settings(database_url, url, emulator.url, **overrides)
    app = create_app(settings, **(runtime or {}))
    async with running_server(app, sock):
        services = app.state.services
        async with services.db.write() as session:
            key = await create_key(session, f"tenant-{uuid.uuid4().hex[:6]}", services.clock.now())
        async with httpx.AsyncClient(base_url=url, headers={"x-key": key}, timeout=30) as client:
            yield Stack(url, key, client, emulator, services, settings)
