"""The `fluxhook` command: server verbs and client verbs, their output and exit codes."""

import json
import os
import subprocess
import sys

import anyio
import httpx
import pytest

from service.server import base_url, listening_socket
from tests.support.processes import Process, cleanup, cli, fluxhook_env, free_port
from tests.support.stack import running_emulator, running_stack
from tests.support.subscriber import running_subscriber
from tests.support.waiting import wait_for


async def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "service", *args]
    full_env = {**os.environ, **(env or {})}
    return await anyio.run_process(command, env=full_env, check=False)


def _client_env(stack) -> dict:
    return {"FLUXHOOK_URL": stack.url, "FLUXHOOK_KEY": stack.key}


async def test_submit_waits_with_a_progress_line_and_saves_the_image(sqlite_url, tmp_path):
    async with (
        running_emulator(time_scale=0.05, progress_events=True) as emulator,
        running_stack(sqlite_url, emulator) as stack,
    ):
        out = tmp_path / "fox.jpg"
        args = ["a fox", "--model", "flux-dev", "--width", "256", "--height", "256"]
        done = await run_cli("submit", *args, "--wait", "--out", str(out), env=_client_env(stack))
        assert done.returncode == 0, done.stderr
        job_id = done.stdout.decode().splitlines()[0]
        progress = done.stderr.decode().splitlines()
        assert progress[0].split()[0] in ("Pending", "Processing") and progress[-1] == "Ready"
        assert any("%" in line for line in progress), "progress shown while waiting"
        assert out.read_bytes().startswith(b"\xff\xd8")
        listed = await run_cli("jobs", env=_client_env(stack))
        assert job_id in listed.stdout.decode()


async def test_a_failed_job_exits_1_with_its_reason(sqlite_url):
    async with (
        running_emulator(time_scale=0.05) as emulator,
        running_stack(sqlite_url, emulator) as stack,
    ):
        done = await run_cli("submit", "x [content-moderated]", "--wait", env=_client_env(stack))
        assert done.returncode == 1
        assert "Content Moderated" in done.stderr.decode()


async def test_errors_go_to_stderr_with_exit_codes(sqlite_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(sqlite_url, emulator) as stack,
    ):
        no_key = await run_cli("jobs", env={"FLUXHOOK_URL": stack.url, "FLUXHOOK_KEY": ""})
        assert no_key.returncode == 2 and "FLUXHOOK_KEY" in no_key.stderr.decode()
        bad_key = await run_cli("jobs", "--url", stack.url, "--key", "fh_wrong")
        assert bad_key.returncode == 3 and "403" in bad_key.stderr.decode()
        unreachable = await run_cli("jobs", "--url", "http://127.0.0.1:9", "--key", "k")
        assert unreachable.returncode == 3 and "could not reach" in unreachable.stderr.decode()
        invalid = await run_cli("submit", "x", "--width", "7", env=_client_env(stack))
        assert invalid.returncode == 3 and "422" in invalid.stderr.decode()
        usage = await run_cli("frobnicate")
        assert usage.returncode == 2


async def test_deliveries_and_redeliver(sqlite_url):
    async with (
        running_emulator(time_scale=0.05) as emulator,
        running_stack(sqlite_url, emulator, delivery_timeout_s=0.5) as stack,
        running_subscriber(default=410) as subscriber,
    ):
        sub = (await stack.client.post("/v1/subscriptions", json={"url": subscriber.url})).json()
        job = await stack.submit(width=256, height=256)
        await stack.settled(job["id"])

        async def dead():
            return (await stack.client.get("/v1/deliveries?status=failed")).json()["deliveries"]

        (dead_letter, *_) = await wait_for(dead)
        failed = await run_cli("deliveries", "--failed", env=_client_env(stack))
        assert dead_letter["id"] in failed.stdout.decode() and "last=410" in failed.stdout.decode()
        refused = await run_cli("redeliver", dead_letter["id"], env=_client_env(stack))
        assert refused.returncode == 3 and "disabled" in refused.stderr.decode()
        await stack.client.post(f"/v1/subscriptions/{sub['id']}/enable")
        subscriber.default = 200
        again = await run_cli("redeliver", dead_letter["id"], env=_client_env(stack))
        assert again.returncode == 0 and "pending again" in again.stdout.decode()


async def test_sigterm_under_load_exits_in_time_and_loses_nothing(database_url, tmp_path):
    async with running_emulator(time_scale=0.2) as emulator, running_subscriber() as subscriber:
        subscriber.default = "stall"
        env = fluxhook_env(database_url, emulator.url, free_port(), DELIVERY_TIMEOUT_S=1,
                           RECONCILE_SLACK_S=1, IMAGE_FETCH_TIMEOUT_S=2)  # fmt: skip
        key = cli("keys", "create", "sigterm", env=env).splitlines()[-1]
        assert key.startswith("fh_")
        first = Process(env, tmp_path / "first.log")
        async with httpx.AsyncClient(base_url=env["PUBLIC_URL"], headers={"x-key": key}) as client:
            with cleanup(first):
                await first.ready()
                await client.post("/v1/subscriptions", json={"url": subscriber.url})
                jobs = [(await client.post("/v1/flux-2-klein-4b", json={"prompt": f"p{i}"})).json()
                        for i in range(20)]  # fmt: skip
                await subscriber.wait_for(1)
                started = anyio.current_time()
                code = await anyio.to_thread.run_sync(first.terminate, 30)
                assert code == 0 and anyio.current_time() - started < 30
            subscriber.default = 200
            second = Process(env, tmp_path / "second.log")
            with cleanup(second):
                await second.ready()
                for job in jobs:
                    result = await client.get(f"/v1/get_result?id={job['id']}&wait=25", timeout=30)
                    assert result.json()["status"] == "Ready", result.json()["details"]

                async def delivered():
                    rows = (await client.get("/v1/deliveries")).json()["deliveries"]
                    return len(rows) == 40 and all(r["status"] == "delivered" for r in rows)

                await wait_for(delivered, within_s=60)


@pytest.mark.parametrize("verb", ["serve", "worker", "migrate"])
def test_bad_configuration_is_refused_with_a_message(verb):
    env = {**os.environ, "DATABASE_URL": "mysql://nope"}
    done = subprocess.run([sys.executable, "-m", "service", verb], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode == 2
    assert "DATABASE_URL" in done.stderr


def _run(verb: str, env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", verb, *args], env=env,
                          capture_output=True, text=True, timeout=60, check=False)  # fmt: skip


@pytest.mark.parametrize("verb", ["serve", "worker"])
@pytest.mark.parametrize("emulated", [True, False])
def test_an_unmigrated_database_is_refused_with_one_line(verb, emulated, tmp_path):
    env = fluxhook_env(f"sqlite+aiosqlite:///{tmp_path / 'new.db'}", "http://127.0.0.1:9",
                       free_port())  # fmt: skip
    if emulated:
        del env["BFL_API_KEY"], env["BFL_API_URL"]
    done = _run(verb, env)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "fluxhook: the database has no schema yet: run `fluxhook migrate` first"
    ]


@pytest.mark.parametrize(
    ("name", "value"),
    [("PORT", "70000"), ("HOST", "999.1.1.1"), ("PUBLIC_URL", "notaurl")],
)
def test_bad_listening_settings_name_the_variable(name, value, sqlite_url):
    env = {**fluxhook_env(sqlite_url, "http://127.0.0.1:9", free_port()), name: value}
    done = _run("serve", env)
    assert done.returncode == 2
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"fluxhook: {name} ")


def test_a_port_in_use_is_refused_naming_port(sqlite_url):
    taken = listening_socket()
    port = int(base_url(taken).rsplit(":", 1)[1])
    try:
        done = _run("serve", fluxhook_env(sqlite_url, "http://127.0.0.1:9", port))
        emulator = _run("emulator", dict(os.environ), "--port", str(port))
    finally:
        taken.close()
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"fluxhook: PORT: port {port} is already in use"]
    assert emulator.returncode == 2
    assert emulator.stderr.splitlines() == [f"fluxhook: --port: port {port} is already in use"]


async def test_json_logs_put_the_banner_in_json_and_sigterm_in_one_line(sqlite_url, tmp_path):
    env = fluxhook_env(sqlite_url, "", free_port())
    del env["BFL_API_KEY"], env["BFL_API_URL"]  # emulator mode: a dev key line too
    process = Process(env, tmp_path / "serve.log")
    with cleanup(process):
        await process.ready()
        assert await anyio.to_thread.run_sync(process.terminate, 30) == 0
    records = [json.loads(line) for line in process.logs().splitlines()]  # all JSON
    messages = [record["msg"] for record in records]
    assert f"fluxhook on {env['PUBLIC_URL']}" in messages
    (dev_key,) = [record for record in records if "dev_api_key" in record]
    assert dev_key["dev_api_key"].startswith("fh_")
    (shutdown,) = [record for record in records if record["msg"].startswith("shut down in")]
    assert shutdown["took_s"] < 30 and shutdown["loops"] >= 4


async def test_submit_errors_say_what_is_wrong(sqlite_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(sqlite_url, emulator) as stack,
    ):
        env = _client_env(stack)
        invalid = await run_cli("submit", "x", "--width", "1000", env=env)
        assert invalid.returncode == 3
        assert "width: Input should be a multiple of 32" in invalid.stderr.decode().splitlines()
        unknown = await run_cli("submit", "x", "--model", "flux-pro-1.1-ultr", env=env)
        assert unknown.returncode == 2
        assert "unknown model 'flux-pro-1.1-ultr'" in unknown.stderr.decode()
        assert "flux-pro-1.1-ultra" in unknown.stderr.decode().split("did you mean")[1]
        sized = await run_cli("submit", "x", "--model", "flux-pro-1.1-ultra", "--width", "1024",
                              env=env)  # fmt: skip
        assert sized.returncode == 2
        assert "flux-pro-1.1-ultra does not take --width" in sized.stderr.decode()
        assert (await stack.client.get("/v1/jobs")).json()["jobs"] == [], "nothing submitted"


async def test_listings_have_a_header_or_say_they_are_empty(sqlite_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(sqlite_url, emulator) as stack,
    ):
        jobs = await run_cli("jobs", env=_client_env(stack))
        assert jobs.stdout.decode().split() == ["ID", "MODEL", "STATUS", "CREATED"]
        none = await run_cli("deliveries", env=_client_env(stack))
        assert none.returncode == 0 and none.stdout == b""
        assert none.stderr.decode().strip() == "no deliveries yet"


async def test_a_closed_pipe_ends_quietly(sqlite_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(sqlite_url, emulator) as stack,
    ):
        read_end, write_end = os.pipe()
        os.close(read_end)  # like `| head` that has already exited
        command = [sys.executable, "-m", "service", "jobs"]
        env = {**os.environ, **_client_env(stack)}
        try:
            done = await anyio.run_process(command, env=env, stdout=write_end, check=False)
        finally:
            os.close(write_end)
        assert done.stderr == b"" and done.returncode == 141


def test_help_describes_the_options_and_their_defaults():
    env = {**os.environ, "COLUMNS": "200"}  # argparse wraps help to the terminal's width
    submit = subprocess.run([sys.executable, "-m", "service", "submit", "--help"], env=env,
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    for text in ("--model", "default: flux-dev", "multiple of 32", "--aspect-ratio"):
        assert text in submit
    emulator = subprocess.run([sys.executable, "-m", "service", "emulator", "--help"], env=env,
                              capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "default: 9100" in emulator
