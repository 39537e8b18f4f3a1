"""`/metrics` with several processes (PROMETHEUS_MULTIPROC_DIR): whichever process a scrape
reaches, counters are the sum over all of them, the SSE gauge the sum over the live ones, and
the gauges read from the database are not multiplied by the number of processes."""

import os
import subprocess
import sys
import textwrap

import httpx
import pytest
from prometheus_client.multiprocess import mark_process_dead

from service.metrics import MULTIPROC_DIR, Metrics
from service.settings import SettingsError
from tests.support import postgres
from tests.support.processes import cli, fluxhook_env, fluxhook_process, free_port
from tests.support.sse import open_stream
from tests.support.stack import running_emulator
from tests.support.waiting import wait_for
from tests.test_ops import parse_metrics

SMALL = {"width": 256, "height": 256}
SUBMITTED = 'fluxhook_jobs_submitted_total{model="flux-dev"}'


@pytest.fixture
def pg_url(postgres_cluster):
    name = postgres.create_database(postgres_cluster)
    yield postgres_cluster.url(name)
    postgres.drop_database(postgres_cluster, name)


async def _scrape(client: httpx.AsyncClient) -> dict[str, float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    return parse_metrics(response.text)


async def _settle(client: httpx.AsyncClient, job_id: str) -> None:
    async def done():
        result = (await client.get(f"/v1/get_result?id={job_id}&wait=5")).json()
        return result["status"] != "Pending"

    await wait_for(done, within_s=60)


@pytest.mark.postgres
async def test_a_scrape_of_either_process_shows_both(pg_url, tmp_path):
    shared = tmp_path / "prometheus"
    shared.mkdir()
    async with running_emulator(time_scale=0.02) as emulator:
        envs = [fluxhook_env(pg_url, emulator.url, free_port(), **{MULTIPROC_DIR: shared})
                for _ in "ab"]  # fmt: skip
        key = cli("keys", "create", "metrics", env=envs[0]).splitlines()[-1]
        async with (
            fluxhook_process(envs[0], tmp_path / "a.log"),
            fluxhook_process(envs[1], tmp_path / "b.log") as b_process,
            httpx.AsyncClient(base_url=envs[0]["PUBLIC_URL"], headers={"x-key": key}) as a,
            httpx.AsyncClient(base_url=envs[1]["PUBLIC_URL"], headers={"x-key": key}) as b,
        ):
            jobs = []
            for client, count in ((a, 3), (b, 2)):
                for i in range(count):
                    body = {"prompt": f"job {i}", **SMALL}
                    jobs.append((await client.post("/v1/flux-dev", json=body)).json())
            for job in jobs:
                await _settle(a, job["id"])
            for client in (a, b):
                metrics = await _scrape(client)
                assert metrics[SUBMITTED] == 5, "3 on a + 2 on b"
                assert metrics['fluxhook_upstream_responses_total{op="submit",outcome="ok"}'] == 5
                assert metrics['fluxhook_jobs_completed_total{via="webhook"}'] == 5
                assert metrics['fluxhook_jobs{model="flux-dev",status="Ready"}'] == 5, "once"
                assert metrics["fluxhook_queue_depth"] == 0
                assert metrics["fluxhook_upstream_in_flight"] == 0

            async with open_stream(a, "/v1/events"), open_stream(b, "/v1/events"):
                assert (await _scrape(a))["fluxhook_sse_clients"] == 2
                b_process.kill()  # no goodbye: its file still says one stream
                assert (await _scrape(a))["fluxhook_sse_clients"] == 2
                mark_process_dead(b_process.popen.pid, str(shared))  # what a supervisor does
                after = await _scrape(a)
            assert after["fluxhook_sse_clients"] == 1, "a dead process's streams are gone"
            assert after[SUBMITTED] == 5, "its counts are not"


def _child(shared, code: str) -> str:
    """Run `code` in a fresh interpreter in multiprocess mode; its stdout."""
    preamble = "from service.metrics import Metrics\nmetrics = Metrics()\n"
    env = {**os.environ, MULTIPROC_DIR: str(shared)}
    done = subprocess.run([sys.executable, "-c", preamble + textwrap.dedent(code)], env=env,
                          capture_output=True, text=True, timeout=60, check=True)  # fmt: skip
    return done.stdout


def test_processes_that_exited_still_count_and_only_the_scraper_reads_the_database(tmp_path):
    for model in ("flux-dev", "flux-pro"):
        _child(tmp_path, f"""
            metrics.jobs_submitted.inc(model="flux-dev")
            metrics.jobs_submitted.inc(model="{model}")
            metrics.delivery_latency.observe(0.02)
            metrics.sse_clients.inc()
            metrics.jobs.inc(7, model="flux-dev", status="Ready")  # never written to the files
        """)  # fmt: skip
    text = _child(
        tmp_path,
        """
        metrics.queue_depth.set(4)
        metrics.upstream_in_flight.set(1)
        print(metrics.render())
    """,
    )
    metrics = parse_metrics(text)
    assert metrics[SUBMITTED] == 3
    assert metrics['fluxhook_jobs_submitted_total{model="flux-pro"}'] == 1
    assert metrics["fluxhook_delivery_latency_seconds_count"] == 2
    assert metrics['fluxhook_delivery_latency_seconds_bucket{le="0.025"}'] == 2
    assert metrics["fluxhook_sse_clients"] == 2, "nobody marked the children dead"
    assert metrics["fluxhook_queue_depth"] == 4 and metrics["fluxhook_upstream_in_flight"] == 1
    assert not [name for name in metrics if name.startswith("fluxhook_jobs{")]


def test_one_process_exposes_the_same_series_without_created_samples():
    metrics = Metrics()
    metrics.jobs_submitted.inc(model="flux-dev")
    metrics.sse_clients.inc()
    metrics.sse_clients.inc(-1)
    text = metrics.render()
    assert "_created" not in text
    assert parse_metrics(text)[SUBMITTED] == 1 and metrics.jobs_submitted.value(model="flux-dev")
    assert parse_metrics(text)["fluxhook_sse_clients"] == 0
    assert "# TYPE fluxhook_jobs_submitted_total counter" in text


def test_the_variable_must_be_set_before_the_process_starts(tmp_path, monkeypatch):
    # This process imported prometheus_client without it: its values live in memory only.
    monkeypatch.setenv(MULTIPROC_DIR, str(tmp_path))
    with pytest.raises(SettingsError, match=MULTIPROC_DIR):
        Metrics()


def test_the_directory_must_exist(tmp_path):
    code = "from service.metrics import Metrics\nMetrics()\n"
    env = {**os.environ, MULTIPROC_DIR: str(tmp_path / "missing")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, check=False)  # fmt: skip
    assert done.returncode != 0
    assert f"{MULTIPROC_DIR}: " in done.stderr and "is not a directory" in done.stderr
