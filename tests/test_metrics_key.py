"""METRICS_KEY: when set, `/metrics` answers only `Authorization: Bearer <METRICS_KEY>`;
unset, it is public."""

import io
import logging

import pytest

from service import logs
from service.settings import Settings, SettingsError
from tests.support.stack import running_emulator, running_stack

METRICS_KEY = "metrics-7f3c9a1e"


async def test_metrics_are_public_without_a_metrics_key(sqlite_url):
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(sqlite_url, emulator) as stack,
    ):
        response = await stack.client.get("/metrics", headers={"x-key": ""})
        assert response.status_code == 200
        assert "fluxhook_queue_depth" in response.text


async def test_a_metrics_key_is_required_when_set(sqlite_url):
    stream = io.StringIO()
    logs.configure("json", "DEBUG", stream=stream)
    try:
        async with (
            running_emulator(manual=True) as emulator,
            running_stack(sqlite_url, emulator, metrics_key=METRICS_KEY) as stack,
        ):
            refusals = {
                "missing": {},
                "tenant key": {"x-key": stack.key},
                "other scheme": {"authorization": f"Basic {METRICS_KEY}"},
                "wrong": {"authorization": "Bearer metrics-0000"},
                "prefix": {"authorization": f"Bearer {METRICS_KEY[:-1]}"},
                "not ascii": {"authorization": "Bearer m\u00e9trics".encode("latin-1")},
            }
            for case, headers in refusals.items():
                response = await stack.client.get("/metrics", headers={"x-key": "", **headers})
                assert response.status_code == 401, case
                assert "METRICS_KEY" in response.json()["detail"], case
                assert response.headers["www-authenticate"].startswith("Bearer")
            right = {"authorization": f"Bearer {METRICS_KEY}"}
            response = await stack.client.get("/metrics", headers=right)
            assert response.status_code == 200 and "fluxhook_queue_depth" in response.text
    finally:
        logging.getLogger().handlers.clear()
    assert "/metrics" in stream.getvalue(), "the requests were logged"
    assert METRICS_KEY[:-1] not in stream.getvalue(), "the key never is"


def test_metrics_key_comes_from_the_environment_and_stays_out_of_repr():
    settings = Settings.from_env({"METRICS_KEY": f" {METRICS_KEY} "})
    assert settings.metrics_key == METRICS_KEY
    assert METRICS_KEY not in repr(settings)
    assert Settings.from_env({"METRICS_KEY": ""}).metrics_key is None


@pytest.mark.parametrize("value", ["two words", "m\u00e9trics", "tab\tkey"])
def test_a_metrics_key_no_header_can_carry_is_refused(value):
    with pytest.raises(SettingsError, match="METRICS_KEY"):
        Settings.from_env({"METRICS_KEY": value})
