"""Operations: health, readiness, Prometheus metrics after a known sequence, and logs that
never carry a secret."""

import gc
import io
import json
import logging
import re

import httpx

from service import logs
from service.app import create_app
from service.emulator.config import EmulatorConfig
from service.settings import EMULATOR_PREFIX, Settings
from tests.support.servers import running_server
from tests.support.sse import open_stream
from tests.support.stack import TEST_SECRET, running_emulator, running_stack, stack_settings
from tests.support.subscriber import running_subscriber
from tests.support.waiting import wait_for

SMALL = {"width": 256, "height": 256}


def parse_metrics(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


async def test_health_and_readiness(sqlite_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(sqlite_url, emulator) as stack,
    ):
        assert (await stack.client.get("/healthz")).json() == {"status": "ok"}
        ready = (await stack.client.get("/readyz")).json()
        assert ready["status"] == "ok" and ready["migration"]


async def test_readiness_fails_on_an_unmigrated_database(tmp_path):
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    settings = stack_settings(url, "http://127.0.0.1:9", "http://127.0.0.1:9", run_workers=False)
    async with running_server(create_app(settings)) as base, httpx.AsyncClient() as http:
        response = await http.get(f"{base}/readyz")
        assert response.status_code == 503
        assert "migration None" in response.json()["reason"]
        assert (await http.get(f"{base}/healthz")).status_code == 200


async def test_a_server_process_freezes_what_its_startup_built(sqlite_url):
    # `fluxhook serve` asks for it: the cycle collector then skips the startup's objects.
    settings = stack_settings(sqlite_url, "http://127.0.0.1:9", "http://127.0.0.1:9")
    frozen = gc.get_freeze_count()
    try:
        async with running_server(create_app(settings, run_workers=False)):
            assert gc.get_freeze_count() == frozen  # an app built for a test does not
        app = create_app(settings, freeze_after_startup=True, run_workers=False)
        async with running_server(app):
            assert gc.get_freeze_count() > frozen
    finally:
        gc.unfreeze()


async def test_metrics_after_a_known_sequence(database_url):
    async with (
        running_emulator(time_scale=0.01) as emulator,
        running_stack(database_url, emulator) as stack,
        running_subscriber() as subscriber,
    ):
        await stack.client.post("/v1/subscriptions", json={"url": subscriber.url})
        ok = await stack.submit("flux-dev", **SMALL)
        bad = await stack.submit("flux-dev", prompt="x [error]", **SMALL)
        for job in (ok, bad):
            await stack.settled(job["id"])
        await subscriber.wait_for(4)  # submitted + ready, submitted + failed

        async def recorded():
            rows = (await stack.client.get("/v1/deliveries")).json()["deliveries"]
            return len(rows) == 4 and all(row["status"] == "delivered" for row in rows)

        await wait_for(recorded)
        url, _ = stack.webhook(ok["id"])
        async with httpx.AsyncClient() as http:
            wrong = {"x-webhook-secret": "no"}
            await http.post(url, json={"id": "x", "status": "Ready"}, headers=wrong)
        async with open_stream(stack.client, "/v1/events"):
            text = (await stack.client.get("/metrics")).text
        metrics = parse_metrics(text)
        expected = {
            'fluxhook_jobs_submitted_total{model="flux-dev"}': 2,
            'fluxhook_jobs{model="flux-dev",status="Ready"}': 1,
            'fluxhook_jobs{model="flux-dev",status="Error"}': 1,
            'fluxhook_jobs_completed_total{via="webhook"}': 2,
            'fluxhook_webhooks_rejected_total{reason="wrong_secret"}': 1,
            'fluxhook_upstream_responses_total{op="submit",outcome="ok"}': 2,
            "fluxhook_images_stored_total": 1,
            'fluxhook_delivery_attempts_total{outcome="delivered"}': 4,
            "fluxhook_delivery_latency_seconds_count": 4,
            "fluxhook_queue_depth": 0,
            "fluxhook_upstream_in_flight": 0,
            "fluxhook_sse_clients": 1,
        }
        for name, value in expected.items():
            assert metrics.get(name) == value, (name, metrics.get(name))
        assert "# TYPE fluxhook_delivery_latency_seconds histogram" in text


def _capture(level=logging.DEBUG) -> io.StringIO:
    stream = io.StringIO()
    logs.configure("json", "DEBUG", stream=stream)
    return stream


async def test_no_log_line_carries_a_secret_or_a_key(database_url):
    stream = _capture()
    try:
        async with (
            running_emulator(time_scale=0.01, signature_header=True) as emulator,
            running_stack(database_url, emulator) as stack,
            running_subscriber() as subscriber,
        ):
            sub = (
                await stack.client.post("/v1/subscriptions", json={"url": subscriber.url})
            ).json()
            job = await stack.submit("flux-dev", webhook_url=subscriber.url,
                                     webhook_secret="drop-in-secret", **SMALL)  # fmt: skip
            result = await stack.settled(job["id"])
            await subscriber.wait_for(3)
            await stack.client.get("/v1/jobs", headers={"x-key": "fh_not-a-real-key"})
            hook_url, job_secret = stack.webhook(job["id"])
            token = hook_url.rsplit("/", 1)[1]
            image_token = result["result"]["sample"].rsplit("/", 1)[1]
            secrets = [stack.key, "fh_not-a-real-key", sub["secret"], "drop-in-secret",
                       job_secret, TEST_SECRET, token, image_token, "test-bfl-key"]  # fmt: skip
    finally:
        logging.getLogger().handlers.clear()
    text = stream.getvalue()
    lines = text.splitlines()
    assert len(lines) > 10
    for line in lines:
        record = json.loads(line)  # every line is one JSON object
        assert {"ts", "level", "logger", "msg"} <= set(record)
    for secret in secrets:
        assert secret not in text, "a secret reached the logs"
    accepted = [json.loads(line) for line in lines if "job accepted" in line]
    assert accepted and accepted[0]["job_id"] == job["id"] and accepted[0]["request_id"]
    paths = {json.loads(line).get("path", "") for line in lines}
    assert "/webhooks/bfl/…" in paths


async def test_request_ids_are_echoed(sqlite_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(sqlite_url, emulator) as stack,
    ):
        mine = await stack.client.get("/healthz", headers={"x-request-id": "abc-123"})
        assert mine.headers["x-request-id"] == "abc-123"
        fresh = await stack.client.get("/healthz", headers={"x-request-id": "bad id!"})
        assert re.fullmatch(r"[0-9a-f]{32}", fresh.headers["x-request-id"])
        both = [("x-request-id", "first"), ("x-request-id", "second")]
        last = await stack.client.get("/healthz", headers=both)
        assert last.headers["x-request-id"] == "second"  # as a dict of the headers would have it
        latin = await stack.client.get("/healthz", headers=[(b"x-request-id", b"caf\xe9")])
        assert re.fullmatch(r"[0-9a-f]{32}", latin.headers["x-request-id"])  # ASCII ids only


async def test_readiness_checks_log_no_alembic_lines(sqlite_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(sqlite_url, emulator) as stack,
    ):
        stream = _capture()
        try:
            for _ in range(3):
                assert (await stack.client.get("/readyz")).status_code == 200
        finally:
            logging.getLogger().handlers.clear()
    loggers = [json.loads(line)["logger"] for line in stream.getvalue().splitlines()]
    assert not [name for name in loggers if name.startswith("alembic")], loggers


def test_the_embedded_emulator_reports_progress(sqlite_url):
    # `make run` (emulator mode) should show progress; the standalone emulator keeps it off.
    settings = Settings.from_env({"DATABASE_URL": sqlite_url, "SECRET_KEY": TEST_SECRET})
    assert settings.emulator_mode
    app = create_app(settings, run_workers=False)
    (embedded,) = [r.app for r in app.routes if getattr(r, "path", None) == EMULATOR_PREFIX]
    assert embedded.state.emulator.config.progress_events is True
    assert EmulatorConfig().progress_events is False
