"""A measured stack: the BFL emulator and fluxhook, each its own process, on a fresh database.

fluxhook is configured by its environment only, as on a PaaS: `fluxhook migrate`, then
`fluxhook keys create bench` (the key is the last line it prints), then `fluxhook serve`, with
`BFL_API_URL` pointing at the external emulator.
"""

import contextlib
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psycopg

from bench import cores, profiling, wire
from bench.processes import Process, ProcessMeter, child_env, free_port, run, start

SECRET_KEY = "bench-secret-key"  # noqa: S105 - a throwaway key for a throwaway database
BFL_KEY = "bench-bfl-key"
MODEL = "flux-dev"
# Small, fixed images: the emulator renders one and serves it from its cache, so image
# generation is not what the bench measures.
JOB_INPUTS = {"prompt": "a lighthouse at dawn", "width": 256, "height": 256, "seed": 42}
JOB_BODY = {**JOB_INPUTS, "output_format": "jpeg"}
SUBMIT_POOL = 128  # keep-alive connections for submits: the most a load has in flight


class EmulatorControl:
    """The emulator's `/_emulator/*` API."""

    def __init__(self, process: Process, http: httpx.AsyncClient) -> None:
        self.process, self.url, self.http = process, process.url, http

    async def configure(self, **changes) -> dict:
        response = await self.http.post(f"{self.url}/_emulator/config", json=changes)
        response.raise_for_status()
        return response.json()

    async def reset(self, **changes) -> None:
        (await self.http.post(f"{self.url}/_emulator/reset")).raise_for_status()
        if changes:
            await self.configure(**changes)

    async def stats(self) -> dict:
        return (await self.http.get(f"{self.url}/_emulator/stats")).raise_for_status().json()

    async def tasks(self) -> dict[str, dict]:
        """Task id → the task as `/_emulator/tasks` shows it (epoch-second timestamps)."""
        tasks = (await self.http.get(f"{self.url}/_emulator/tasks")).raise_for_status().json()
        return {task["id"]: task for task in tasks}

    async def finished_at(self) -> dict[str, float]:
        """Task id → the epoch second it turned terminal (the emulator's own clock)."""
        tasks = await self.tasks()
        return {i: t["finished_at"] for i, t in tasks.items() if t["finished_at"] is not None}


def emulator_config(max_active: int, **changes) -> dict:
    """Limits and credits that never refuse the bench's load, plus `changes`."""
    return {"active_limit": max_active, "credits": 1e9, **changes}


@contextlib.asynccontextmanager
async def running_emulator(workdir: Path, max_active: int, **config):
    port = free_port()
    args = ["-m", "service", "emulator", "--port", str(port)]
    process = await start("emulator", args, child_env(), workdir, port, "/_emulator/stats")
    try:
        async with httpx.AsyncClient(timeout=30.0) as http:
            emulator = EmulatorControl(process, http)
            await emulator.configure(**emulator_config(max_active, **config))
            yield emulator
    finally:
        await process.stop()


@dataclass
class Stack:
    url: str
    key: str
    emulator: EmulatorControl
    process: Process
    meter: ProcessMeter  # fluxhook: RSS and CPU
    http: httpx.AsyncClient  # control calls, authenticated as the bench tenant
    submits: wire.Pool
    emulator_meter: ProcessMeter  # its CPU tells when the emulator, not fluxhook, is the limit

    @property
    def auth(self) -> dict[str, str]:
        return {"x-key": self.key}

    async def submit(self, _index: int = 0) -> dict:
        """One job through the BFL drop-in route; its submit response."""
        response = await self.submits.post_json(f"/v1/{MODEL}", JOB_BODY, self.auth)
        if response.status != 200:
            raise RuntimeError(f"submit answered {response.status}: {response.body[:200]!r}")
        return response.json()

    async def subscribe(self, url: str, events: list[str]) -> None:
        body = {"url": url, "events": events, "description": "bench"}
        (await self.http.post("/v1/subscriptions", json=body)).raise_for_status()

    def cores_apart(self):
        """A context: fluxhook on a core of its own, the bench and the emulator on the others
        (`bench.cores`); yields how the cores were split."""
        return cores.apart(self.process.pid, [self.emulator.process.pid])

    def event_stream(self) -> wire.EventStream:
        return wire.EventStream(self.url, "/v1/events", self.auth)


def fluxhook_env(database_url: str, port: int, emulator_url: str, max_active: int) -> dict:
    return child_env(
        DATABASE_URL=database_url,
        PORT=str(port),
        HOST="127.0.0.1",
        PUBLIC_URL=f"http://127.0.0.1:{port}",
        BFL_API_KEY=BFL_KEY,
        BFL_API_URL=emulator_url,
        SECRET_KEY=SECRET_KEY,
        ALLOW_PRIVATE_TARGETS="true",
        LOG_LEVEL="WARNING",
        LOG_FORMAT="text",
        BFL_MAX_ACTIVE=str(max_active),
    )


@contextlib.asynccontextmanager
async def running_stack(
    workdir: Path,
    database_url: str,
    max_active: int = 1000,
    env: dict[str, str] | None = None,
    **emulator_settings,
) -> AsyncIterator[Stack]:
    """`env`: more of fluxhook's environment (IMAGE_STORE, AWS_*…)."""
    extra_env = env or {}
    async with running_emulator(workdir, max_active, **emulator_settings) as emulator:
        port = free_port()
        env = fluxhook_env(database_url, port, emulator.url, max_active) | extra_env
        cli = ["-m", "service"]
        run([sys.executable, *cli, "migrate"], env, workdir / "migrate.log")
        key = run([sys.executable, *cli, "keys", "create", "bench"], env, workdir / "keys.log")
        key = key.strip().splitlines()[-1]
        process = await start("fluxhook", [*cli, "serve"], env, workdir, port, "/readyz")
        meter = ProcessMeter(process.pid).start()
        emulator_meter = ProcessMeter(emulator.process.pid)
        submits = wire.Pool(process.url, SUBMIT_POOL)
        auth = {"x-key": key}
        try:
            async with (
                httpx.AsyncClient(base_url=process.url, headers=auth, timeout=30.0) as http,
                profiling.sampling(process.pid),
                profiling.sampling(emulator.process.pid, "-emulator"),
            ):
                yield Stack(
                    process.url, key, emulator, process, meter, http, submits, emulator_meter
                )
        finally:
            submits.close()
            await meter.stop()
            await process.stop()


class Databases:
    """Fresh databases: a SQLite file in the work directory, or a database on a throwaway
    PostgreSQL cluster (started once, on first use, with `tests/support/postgres.py`)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._cluster = None
        self._looked = False

    @property
    def has_postgres(self) -> bool:
        if not self._looked:
            from tests.support.postgres import start_cluster

            self._looked = True
            self._cluster = start_cluster()
        return self._cluster is not None

    @contextlib.contextmanager
    def fresh(self, engine: str):
        name = "bench_" + uuid.uuid4().hex[:12]
        if engine == "sqlite":
            path = self.workdir / f"{name}.db"
            yield f"sqlite:///{path}"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
            return
        assert self.has_postgres, "check has_postgres first"
        with psycopg.connect(self._cluster.admin_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        try:
            yield self._cluster.url(name)
        finally:
            with psycopg.connect(self._cluster.admin_url, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def close(self) -> None:
        if self._cluster is not None:
            self._cluster.stop()
