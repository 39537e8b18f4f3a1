"""Several serve processes: WEB_CONCURRENCY, and two of them plus a worker behaving as one."""

import contextlib
import itertools
import os
import signal
import subprocess
import sys
import uuid
from collections import defaultdict
from pathlib import Path

import anyio
import httpx
import psycopg
import pytest

from service.settings import Settings, SettingsError
from tests.support import postgres
from tests.support.processes import Process, cleanup, cli, fluxhook_env, free_port
from tests.support.proxy import running_proxy
from tests.support.sse import messages
from tests.support.stack import running_emulator
from tests.support.subscriber import running_subscriber
from tests.support.waiting import wait_for

SMALL = {"width": 256, "height": 256}
JOBS = 40
TERMINAL = {"Ready", "Error", "Request Moderated", "Content Moderated"}


@pytest.fixture
def pg_url(postgres_cluster):
    name = postgres.create_database(postgres_cluster)
    yield postgres_cluster.url(name)
    postgres.drop_database(postgres_cluster, name)


def _serve(env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", "serve"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("2", "WEB_CONCURRENCY must be 1 on SQLite, not 2"),
        ("0", "WEB_CONCURRENCY must be at least 1"),
        ("-1", "WEB_CONCURRENCY must not be negative"),
        ("abc", "WEB_CONCURRENCY must be a number, not 'abc'"),
    ],
)
def test_web_concurrency_refused_in_one_line(tmp_path, value, said):
    env = fluxhook_env(f"sqlite:///{tmp_path}/f.db", "http://127.0.0.1:9", free_port())
    done = _serve({**env, "WEB_CONCURRENCY": value})
    assert done.returncode == 2
    assert done.stderr.startswith(f"fluxhook: {said}")
    assert len(done.stderr.splitlines()) == 1, done.stderr


def test_web_concurrency_needs_postgres_and_a_real_upstream():
    pg = {"DATABASE_URL": "postgres://u@db.example/app"}
    assert Settings.from_env({}).web_concurrency == 1
    settings = Settings.from_env({**pg, "WEB_CONCURRENCY": "3", "BFL_API_KEY": "k"})
    assert settings.web_concurrency == 3
    outside = {**pg, "WEB_CONCURRENCY": "2", "BFL_API_URL": "http://127.0.0.1:9100"}
    assert Settings.from_env(outside).web_concurrency == 2, "an emulator of its own is fine"
    with pytest.raises(SettingsError, match=r"^WEB_CONCURRENCY must be 1 in emulator mode"):
        Settings.from_env({**pg, "WEB_CONCURRENCY": "2"})  # each process would embed one


def _children(pid: int) -> list[int]:
    """The live child processes of `pid` (Linux /proc)."""
    with contextlib.suppress(FileNotFoundError):
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return []


async def _answers(url: str) -> bool:
    """/healthz on a new connection (so whichever process accepts it answers)."""
    async with httpx.AsyncClient(timeout=5) as http:
        return (await http.get(f"{url}/healthz")).status_code == 200


async def _supervised(pg_url: str, emulator, tmp_path: Path, name: str) -> tuple[Process, list]:
    env = fluxhook_env(pg_url, emulator.url, free_port(), WEB_CONCURRENCY=2)
    supervisor = Process(env, tmp_path / f"{name}.log")
    await supervisor.ready()

    async def both_started():
        children = _children(supervisor.popen.pid)
        return children if len(children) == 2 else None

    return supervisor, await wait_for(both_started, within_s=30)


@pytest.mark.postgres
async def test_two_processes_serve_one_port_and_drain_on_sigterm(pg_url, tmp_path):
    async with running_emulator(time_scale=0.02) as emulator:
        supervisor, children = await _supervised(pg_url, emulator, tmp_path, "two")
        with cleanup(supervisor):
            for child in children:
                assert "serve" in _command_line(child)
            # Stop each child in turn: the other still answers on the same port.
            for stopped in children:
                os.kill(stopped, signal.SIGSTOP)
                try:
                    assert await _answers(supervisor.url)
                finally:
                    os.kill(stopped, signal.SIGCONT)
            assert supervisor.terminate() == 0
        assert supervisor.logs().count('"shut down in') == 2, "each child drained"
        assert not any(_alive(child) for child in children)


@pytest.mark.postgres
async def test_a_child_that_dies_stops_the_supervisor_with_an_error(pg_url, tmp_path):
    async with running_emulator(time_scale=0.02) as emulator:
        supervisor, (dead, other) = await _supervised(pg_url, emulator, tmp_path, "dies")
        with cleanup(supervisor):
            os.kill(dead, signal.SIGKILL)
            assert await anyio.to_thread.run_sync(supervisor.popen.wait, 30) == 1
            supervisor.terminate()  # already exited: this only closes its log
        assert f"serve process {dead} exited unexpectedly" in supervisor.logs()
        assert not _alive(other)


@pytest.mark.postgres
async def test_children_of_a_killed_supervisor_shut_down(pg_url, tmp_path):
    async with running_emulator(time_scale=0.02) as emulator:
        supervisor, children = await _supervised(pg_url, emulator, tmp_path, "orphans")
        supervisor.kill()

        async def all_gone():
            return not any(_alive(child) for child in children)

        await wait_for(all_gone, within_s=30, every_s=0.1)


def _command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")


def _alive(pid: int) -> bool:
    """Running, and not a zombie (an orphan is reaped by init, not by us)."""
    with contextlib.suppress(FileNotFoundError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    return False


class Follower:
    """An SSE client on `/v1/events`: the ids it saw, in arrival order."""

    def __init__(self, key: str) -> None:
        self.key, self.seen, self.connected = key, [], anyio.Event()

    async def follow(self, *urls: str) -> None:
        """Read from each process in turn, the next one once the last is gone."""
        for url in urls:
            await self._follow_one(url)

    async def _follow_one(self, url: str) -> None:
        """Read until the process goes away, resuming after the last id seen."""
        headers = {"x-key": self.key}
        if self.seen:
            headers["Last-Event-ID"] = str(self.seen[-1])
        with contextlib.suppress(httpx.TransportError):
            async with (
                httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=None)) as http,
                http.stream("GET", f"{url}/v1/events", headers=headers) as response,
            ):
                async for message in messages(response):
                    if message.comment == "connected":
                        self.connected.set()
                    elif message.id is not None:
                        self.seen.append(message.id)


async def _submit(http: httpx.AsyncClient, accepted: dict, index: int) -> None:
    """One job, retried with its Idempotency-Key until a 2xx: what a careful client does. (A
    retry goes at once: the proxy sends it to a process that is up.)"""
    headers = {"Idempotency-Key": f"job-{index}"}
    while True:
        with contextlib.suppress(httpx.TransportError):
            body = {"prompt": f"scale {index}", **SMALL}
            response = await http.post("/v1/flux-dev", json=body, headers=headers)
            if response.status_code == 200:
                accepted[index] = response.json()["id"]
                return


async def _database(url: str):
    async with await psycopg.AsyncConnection.connect(url) as conn:
        jobs = dict(await (await conn.execute("SELECT id::text, status FROM jobs")).fetchall())
        events = await conn.execute("SELECT seq FROM job_events ORDER BY seq")
        seqs = [seq for (seq,) in await events.fetchall()]
        rows = await conn.execute("SELECT id, status FROM deliveries")
        deliveries = {f"msg_{uuid.UUID(str(i)).hex}": s for i, s in await rows.fetchall()}
    return jobs, seqs, deliveries


@pytest.mark.postgres
async def test_two_serve_processes_and_a_worker_behave_as_one(pg_url, tmp_path):
    ports = [free_port(), free_port()]
    async with (
        running_emulator(time_scale=0.05, seed=14) as emulator,
        running_subscriber() as subscriber,
        running_proxy(ports) as proxy,
    ):
        common = {"PUBLIC_URL": proxy.url, "DELIVERY_TIMEOUT_S": 2, "IMAGE_FETCH_TIMEOUT_S": 2}
        common |= {"RECONCILE_SLACK_S": 2}
        envs = [fluxhook_env(pg_url, emulator.url, port, **common) for port in ports]
        worker_env = fluxhook_env(pg_url, emulator.url, free_port(), **common)
        key = cli("keys", "create", "scale", env=envs[0]).splitlines()[-1]
        serving = [Process(env, tmp_path / f"serve{i}.log") for i, env in enumerate(envs)]
        worker = Process(worker_env, tmp_path / "worker.log", verb="worker")
        with cleanup(*serving, worker):
            for process, port in zip(serving, ports, strict=True):
                process.url = f"http://127.0.0.1:{port}"  # its own port, not the proxy's
                await process.ready()
            doomed, survivor = serving
            auth = {"x-key": key}
            async with (
                httpx.AsyncClient(base_url=proxy.url, headers=auth, timeout=30) as http,
                anyio.create_task_group() as tg,
            ):
                followers = [Follower(key), Follower(key)]
                # The doomed process's client resumes on the survivor, after its last id.
                tg.start_soon(followers[0].follow, doomed.url, survivor.url)
                tg.start_soon(followers[1].follow, survivor.url)
                for follower in followers:
                    with anyio.fail_after(15):
                        await follower.connected.wait()
                await http.post("/v1/subscriptions", json={"url": subscriber.url})
                accepted: dict[int, str] = {}
                async with anyio.create_task_group() as load:
                    for index in range(JOBS):
                        load.start_soon(_submit, http, accepted, index)
                        if index == JOBS // 2:
                            await wait_for(_webhooks_reached_both(proxy, ports), within_s=30)
                            doomed.kill()  # mid-load: jobs queued, in flight and finishing
                jobs, seqs, deliveries = await wait_for(
                    _all_settled(pg_url, accepted, followers), within_s=90, every_s=0.2
                )
                tg.cancel_scope.cancel()
        stats = await emulator.stats()

    assert len(accepted) == JOBS
    assert set(accepted.values()) == set(jobs), "every accepted job, and only those"
    assert {jobs[job] for job in accepted.values()} == {"Ready"}
    assert stats["submits"] == JOBS, "one upstream task per accepted job"
    for follower in followers:
        assert follower.seen == seqs, "every event of the tenant, once, in order"
    webhooks = [proxy.connections_to(port, b"POST /webhooks/bfl/") for port in ports]
    assert all(webhooks), f"webhooks reached both serve processes: {webhooks}"
    _assert_deliveries(subscriber, deliveries)
    for process in (*serving, worker):  # no request or loop failed (a deadlock was one)
        logged = process.log_path.read_text(errors="replace")
        assert "unhandled error" not in logged and "deadlock" not in logged, logged[-3000:]


def _webhooks_reached_both(proxy, ports: list[int]):
    async def check():
        return all(proxy.connections_to(port, b"POST /webhooks/bfl/") for port in ports)

    return check


def _all_settled(pg_url: str, accepted: dict, followers: list[Follower]):
    async def check():
        jobs, seqs, deliveries = await _database(pg_url)
        settled = all(jobs.get(job) in TERMINAL for job in accepted.values())
        delivered = deliveries and all(s == "delivered" for s in deliveries.values())
        caught_up = all(f.seen and f.seen[-1] == seqs[-1] for f in followers)
        return (jobs, seqs, deliveries) if settled and delivered and caught_up else None

    return check


def _assert_deliveries(subscriber, deliveries: dict[str, str]) -> None:
    """Each delivery reached the subscriber; a resend (after the SIGKILL) kept its webhook-id."""
    ids_by_event = defaultdict(set)
    for callback in subscriber.received:
        body = callback.json
        ids_by_event[(body["data"]["id"], body["type"])].add(callback.webhook_id)
    assert all(len(ids) == 1 for ids in ids_by_event.values()), "one webhook-id per event"
    assert set(itertools.chain(*ids_by_event.values())) == set(deliveries)
    assert set(subscriber.delivered_ids()) == set(deliveries)
