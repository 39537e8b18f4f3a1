"""Settings from the environment (DESIGN §2)."""

import pytest

from service.settings import Settings, SettingsError, normalise_database_url


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgres://u:p@db.example:5432/app", "postgresql+psycopg://u:p@db.example:5432/app"),
        ("postgresql://u@h/app?sslmode=require", "postgresql+psycopg://u@h/app?sslmode=require"),
        ("sqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
        ("sqlite+aiosqlite:///./x.db", "sqlite+aiosqlite:///./x.db"),
    ],
)
def test_database_urls_are_normalised_to_async_drivers(given, expected):
    assert normalise_database_url(given) == expected


def test_defaults_are_emulator_mode_on_sqlite():
    settings = Settings.from_env({})
    assert settings.emulator_mode
    assert settings.database_url == "sqlite+aiosqlite:///./fluxhook.db"
    assert settings.public_url == "http://127.0.0.1:8000"
    assert settings.bfl_api_url == "http://127.0.0.1:8000/emulator"
    assert settings.allow_private_targets
    assert (settings.bfl_max_active, settings.bfl_max_active_kontext_max) == (24, 6)
    assert settings.run_workers and settings.image_store == "db"


def test_a_real_deployment():
    env = {
        "DATABASE_URL": "postgres://u:p@h:5432/d",
        "PORT": "5000",
        "PUBLIC_URL": "https://app.example.com/",
        "SECRET_KEY": "new, old",
        "BFL_API_KEY": "bfl-key",
        "BFL_POLL_HOSTS": "api.eu.bfl.ai, https://api.us.bfl.ai/",
        "RUN_WORKERS": "false",
        "IMAGE_STORE": "fs:/var/images",
        "DYNO": "web.1",
    }
    settings = Settings.from_env(env)
    assert not settings.emulator_mode and settings.is_postgres
    assert settings.secret_keys == ("new", "old")
    assert settings.public_url == "https://app.example.com"
    assert settings.bfl_api_url == "https://api.bfl.ai"
    assert settings.bfl_poll_hosts == ("https://api.eu.bfl.ai", "https://api.us.bfl.ai")
    assert not settings.allow_private_targets and not settings.run_workers
    assert settings.log_format == "json" and settings.port == 5000


@pytest.mark.parametrize(
    ("name", "value"),
    [("DATABASE_URL", "mysql://x"), ("DATABASE_URL", "nonsense"), ("PORT", "eighty"),
     ("RUN_WORKERS", "maybe"), ("LOG_FORMAT", "xml"), ("IMAGE_STORE", "s3"),
     ("BFL_MAX_ACTIVE", "-1"), ("LOG_LEVEL", "LOUD"), ("DELIVERY_CONCURRENCY", "0"),
     ("PORT", "70000"), ("PORT", "0"), ("HOST", "999.1.1.1"), ("HOST", "bad host"),
     ("PUBLIC_URL", "notaurl"), ("PUBLIC_URL", "ftp://example.com")],
)  # fmt: skip
def test_bad_values_name_the_variable(name, value):
    with pytest.raises(SettingsError, match=name):
        Settings.from_env({name: value})


def test_hosts_and_public_urls_that_are_fine():
    env = {"HOST": "::", "PUBLIC_URL": "https://fluxhook.example.com:8443/base/"}
    settings = Settings.from_env(env)
    assert settings.host == "::" and settings.public_url == "https://fluxhook.example.com:8443/base"
    assert Settings.from_env({"HOST": "localhost"}).host == "localhost"
    assert Settings.from_env({}).host == "0.0.0.0"  # noqa: S104 - the default, checked


def test_admission_order_is_fair_unless_set_to_fifo():
    assert Settings.from_env({}).admission_order == "fair"
    assert Settings.from_env({"ADMISSION_ORDER": " FIFO "}).admission_order == "fifo"
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"ADMISSION_ORDER": "lifo"})
    assert str(refused.value) == "ADMISSION_ORDER must be fair or fifo, not 'lifo'"
