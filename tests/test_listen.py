"""`fluxhook listen`: the tenant's stream forwarded, signed, to a local handler, across restarts."""

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Callable

import anyio
import httpx
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from httpx import MockTransport
from standardwebhooks import Webhook

from service.client_cli import RequestFailed
from service.listen import Forwarder, event_types
from service.signing import new_subscription_secret
from tests.support.processes import Process, cleanup, cli, fluxhook_env, free_port
from tests.support.stack import running_emulator, running_stack
from tests.support.subscriber import Callback, Subscriber, running_subscriber
from tests.support.waiting import wait_for

SMALL = {"width": 256, "height": 256}
SSE = "text/event-stream"


class Listen:
    """A running `fluxhook listen`, its stdout read line by line as the test asks."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._stdout = BufferedByteReceiveStream(process.stdout)

    async def line(self, matches: Callable[[str], bool], within_s: float = 30.0) -> str:
        """The next line of output that `matches` (the ones before it are kept in `lines`)."""
        with anyio.fail_after(within_s):
            while True:
                line = (await self._stdout.receive_until(b"\n", 65536)).decode()
                self.lines.append(line)
                if matches(line):
                    return line

    async def interrupt(self) -> tuple[int, str]:
        """Ctrl-C: the exit code and what went to stderr (the rest of stdout goes to `lines`)."""
        self.process.send_signal(signal.SIGINT)
        with anyio.fail_after(15):
            code = await self.process.wait()
            rest = b"".join([chunk async for chunk in self._stdout]).decode()
            errors = b"".join([chunk async for chunk in self.process.stderr]).decode()
        self.lines += rest.splitlines()
        return code, errors


@contextlib.asynccontextmanager
async def listening_after(server: Process, key: str, *args: str) -> AsyncIterator[Listen]:
    """`listen` against a fluxhook process (killed at the end if the test has not)."""
    with cleanup(server):
        await server.ready()
        async with listening(server.url, key, *args) as listen:
            yield listen


@contextlib.asynccontextmanager
async def listening(url: str, key: str, *args: str) -> AsyncIterator[Listen]:
    """`fluxhook listen …` against fluxhook at `url`, once it is connected (its `ready:` line)."""
    env = {**os.environ, "FLUXHOOK_URL": url, "FLUXHOOK_KEY": key}
    command = [sys.executable, "-m", "service", "listen", *args]
    with _ctrl_c_not_ignored():
        process = await anyio.open_process(command, env=env)
    async with process:
        try:
            listen = Listen(process)
            await listen.line(lambda line: line.startswith("ready: "))
            yield listen
        finally:
            if process.returncode is None:
                process.kill()


@contextlib.contextmanager
def _ctrl_c_not_ignored():
    """A test run started in the background (`pytest &` in a script) ignores SIGINT, and so
    would each process it starts: `listen` would never hear the test's Ctrl-C. A process
    started while SIGINT has a handler here gets the default (Python's KeyboardInterrupt)."""
    if signal.getsignal(signal.SIGINT) != signal.SIG_IGN:
        yield
        return
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def _seq(callback: Callback) -> int:
    return int(callback.webhook_id.removeprefix("msg_event_"))


async def _tenant_seqs(client: httpx.AsyncClient, jobs: list[dict]) -> list[int]:
    """Every event fluxhook recorded for these jobs, by sequence number."""
    details = [(await client.get(f"/v1/jobs/{job['id']}")).json() for job in jobs]
    return sorted(event["seq"] for job in details for event in job["events"])


async def _received_all(handler: Subscriber, client: httpx.AsyncClient, jobs: list[dict]):
    """Once every job is terminal and the handler has each of their events: the events."""

    async def check():
        for job in jobs:
            result = (await client.get(f"/v1/get_result?id={job['id']}")).json()
            if result["status"] == "Pending":
                return None
        expected = await _tenant_seqs(client, jobs)
        return expected if set(expected) <= {_seq(c) for c in handler.received} else None

    return await wait_for(check, within_s=90, every_s=0.1)


async def _submit(client: httpx.AsyncClient, prompt: str) -> dict:
    response = await client.post("/v1/flux-dev", json={"prompt": prompt, **SMALL})
    assert response.status_code == 200, response.text
    return response.json()


async def test_forwards_signed_events_and_misses_none_across_a_restart(sqlite_url, tmp_path):
    async with running_emulator(time_scale=0.05) as emulator, running_subscriber() as handler:
        env = fluxhook_env(sqlite_url, emulator.url, free_port(), RECONCILE_SLACK_S=1)
        key = cli("keys", "create", "listener", env=env).splitlines()[-1]
        client = httpx.AsyncClient(base_url=env["PUBLIC_URL"], headers={"x-key": key}, timeout=30)
        first = Process(env, tmp_path / "first.log")
        async with client, listening_after(first, key, "--forward-to", handler.url) as listen:
            secret = listen.lines[0]
            assert secret.startswith("whsec_")
            jobs = [await _submit(client, "a lighthouse")]
            await listen.line(lambda line: "job.ready" in line)
            (ready,) = [c for c in handler.received if c.json["type"] == "job.ready"]
            event = Webhook(secret).verify(ready.body, ready.headers)
            assert event["type"] == "job.ready" and event["data"]["id"] == jobs[0]["id"]
            # A job in flight, then fluxhook dies mid-stream and comes back on the same database.
            jobs.append(await _submit(client, "a harbour"))
            first.kill()
            await listen.line(lambda line: "lost the stream" in line)
            second = Process(env, tmp_path / "second.log")
            with cleanup(second):
                await second.ready()
                jobs.append(await _submit(client, "a storm"))
                expected = await _received_all(handler, client, jobs)
                listed = (await client.get("/v1/jobs")).json()["jobs"]
                assert {job["id"] for job in listed} == {job["id"] for job in jobs}
                assert [_seq(c) for c in handler.received] == expected, "none missed or repeated"
                # The last event the listener could have seen before the kill: the first job's
                # `job.ready`, or the second job's `job.submitted` if it came in time.
                second_job = (await client.get(f"/v1/jobs/{jobs[1]['id']}")).json()
                seen_last = {_seq(ready)} | {
                    e["seq"] for e in second_job["events"] if e["type"] == "job.submitted"
                }
                for callback in handler.received:
                    Webhook(secret).verify(callback.body, callback.headers)
                assert await listen.interrupt() == (0, "")
        (lost,) = [line for line in listen.lines if "lost the stream" in line]
        resumed_after = lost.rpartition("reconnecting after event ")[2]  # one line, not one a try
        assert resumed_after.isdigit() and int(resumed_after) in seen_last
        events = [line for line in listen.lines[2:] if line != lost]
        assert len(events) == len(expected) and all(" 200 in " in line for line in events)


async def _done(client: httpx.AsyncClient, job: dict) -> None:
    async def finished() -> bool:
        result = (await client.get("/v1/get_result", params={"id": job["id"]})).json()
        return result["status"] != "Pending"

    await wait_for(finished, within_s=30, every_s=0.05)


async def test_a_stream_lost_before_any_event_resumes_after_its_start_id(sqlite_url, tmp_path):
    async with running_emulator(time_scale=0.05) as emulator, running_subscriber() as handler:
        env = fluxhook_env(sqlite_url, emulator.url, free_port())
        key = cli("keys", "create", "listener", env=env).splitlines()[-1]
        auth = {"x-key": key}
        first = Process(env, tmp_path / "first.log")
        with cleanup(first):
            await first.ready()
            async with httpx.AsyncClient(base_url=first.url, headers=auth, timeout=30) as client:
                earlier = await _submit(client, "a job before listen")
                await _done(client, earlier)
                start = (await _tenant_seqs(client, [earlier]))[-1]
            async with listening(first.url, key, "--forward-to", handler.url) as listen:
                first.kill()  # no event has reached the stream yet
                await listen.line(lambda line: "lost the stream" in line)
                # While fluxhook is down there, another process on the same database runs a
                # job to its end: a stream that started from now again would never see it.
                async with (
                    running_stack(sqlite_url, emulator) as other,
                    httpx.AsyncClient(base_url=other.url, headers=auth, timeout=30) as client,
                ):
                    missed = await _submit(client, "a job while listen is away")
                    await _done(client, missed)
                second = Process(env, tmp_path / "second.log")
                with cleanup(second):
                    await second.ready()
                    async with httpx.AsyncClient(
                        base_url=second.url, headers=auth, timeout=30
                    ) as client:
                        expected = await _received_all(handler, client, [missed])
                    assert [_seq(c) for c in handler.received] == expected, "all, and only those"
                    assert await listen.interrupt() == (0, "")
        secret, ready, lost, *forwarded = listen.lines
        assert ready.startswith("ready: ") and secret.startswith("whsec_")
        assert lost.endswith(f"reconnecting after event {start}"), "the id the stream started after"
        assert len(forwarded) == len(expected) and all(" 200 in " in line for line in forwarded)


async def test_forwards_only_the_asked_types_with_the_body_a_subscription_gets(sqlite_url):
    async with (
        running_emulator(time_scale=0.05) as emulator,
        running_stack(sqlite_url, emulator) as stack,
        running_subscriber() as subscription,
        running_subscriber() as handler,
    ):
        body = {"url": subscription.url, "events": ["job.ready"]}
        assert (await stack.client.post("/v1/subscriptions", json=body)).status_code == 201
        args = ("--forward-to", handler.url, "--events", "job.ready,job.failed")
        async with listening(stack.url, stack.key, *args) as listen:
            assert listen.lines[-1].startswith("ready: forwarding job.ready, job.failed to ")
            job = await stack.submit(**SMALL)
            line = await listen.line(lambda line: "job.ready" in line)
            assert job["id"] in line and " 200 in " in line
            (delivered,) = await subscription.wait_for(1)
            # job.submitted came first on the stream: had it been forwarded, it would be here.
            (forwarded,) = handler.received
            assert forwarded.body == delivered.body, "the body the dispatcher sends"
            for name in ("content-type", "user-agent"):
                assert forwarded.headers[name] == delivered.headers[name]
            assert forwarded.webhook_id == f"msg_event_{_seq(forwarded)}"
            assert await listen.interrupt() == (0, "")


async def test_a_first_stream_that_ends_before_its_start_id_ends_listen():
    def connected_only(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=": connected\n\n", headers={"content-type": SSE})

    fluxhook = MockTransport(connected_only)
    handler = MockTransport(lambda _request: httpx.Response(204))
    said = []
    async with (
        httpx.AsyncClient(base_url="http://127.0.0.1:9", transport=fluxhook) as stream,
        httpx.AsyncClient(transport=handler) as http,
    ):
        target, secret = "http://127.0.0.1:9/hook", new_subscription_secret()
        forwarder = Forwarder(stream, http, target, secret, event_types(None), say=said.append)
        with pytest.raises(RequestFailed, match="ended the stream before it started"):
            await forwarder.run()
    assert said == [], "no ready line: nothing was promised"


def test_unknown_event_types_are_refused_before_anything_is_sent():
    env = {**os.environ, "FLUXHOOK_URL": "http://127.0.0.1:9", "FLUXHOOK_KEY": "fh_any"}
    args = ["--forward-to", "http://127.0.0.1:9/hook", "--events", "job.ready,job.redy"]
    done = subprocess.run([sys.executable, "-m", "service", "listen", *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    (error,) = done.stderr.splitlines()
    assert "unknown event type job.redy" in error and "job.ready" in error.split("known:")[1]


async def test_from_start_replays_what_fluxhook_still_has(sqlite_url):
    async with (
        running_emulator(time_scale=0.05) as emulator,
        running_stack(sqlite_url, emulator) as stack,
        running_subscriber() as handler,
    ):
        job = await stack.submit(**SMALL)
        await stack.settled(job["id"])
        async with listening(stack.url, stack.key, "--forward-to", handler.url, "--from-start"):
            expected = await _received_all(handler, stack.client, [job])
            assert [_seq(c) for c in handler.received] == expected
            assert [c.json["type"] for c in handler.received] == ["job.submitted", "job.ready"]


@pytest.mark.parametrize("handler_is", ["down", "failing"])
async def test_a_handler_that_is_down_or_failing_gets_a_line_and_listen_goes_on(
    sqlite_url, handler_is
):
    async with (
        running_emulator(time_scale=0.05) as emulator,
        running_stack(sqlite_url, emulator) as stack,
        running_subscriber(default=503) as handler,
    ):
        down = f"http://127.0.0.1:{free_port()}/hook"  # nothing listens there
        target, outcome = (
            (down, "ConnectError") if handler_is == "down" else (handler.url, " 503 in ")
        )
        async with listening(stack.url, stack.key, "--forward-to", target) as listen:
            job = await stack.submit(**SMALL)
            submitted = await listen.line(lambda line: "job.submitted" in line)
            ready = await listen.line(lambda line: "job.ready" in line)
            assert all(job["id"] in line and outcome in line for line in (submitted, ready))
            assert await listen.interrupt() == (0, "")
        assert len(handler.received) == (0 if handler_is == "down" else 2), "one attempt each"


async def test_ctrl_c_exits_0_quietly_and_fluxhook_errors_exit_3(sqlite_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(sqlite_url, emulator) as stack,
    ):
        async with listening(stack.url, stack.key, "--forward-to", "http://127.0.0.1:1/") as listen:
            assert await listen.interrupt() == (0, "")
        assert len(listen.lines) == 2, "the secret and the ready line, nothing more"
        command = [sys.executable, "-m", "service", "listen", "--forward-to", "http://127.0.0.1:1/"]
        bad_key = await anyio.run_process(
            [*command, "--url", stack.url, "--key", "fh_wrong"], check=False
        )
        assert bad_key.returncode == 3 and "403" in bad_key.stderr.decode()
        gone = await anyio.run_process(
            [*command, "--url", "http://127.0.0.1:9", "--key", "k"], check=False
        )
        assert gone.returncode == 3 and "could not reach fluxhook" in gone.stderr.decode()
