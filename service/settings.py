"""Settings from the environment (12-factor), built by `create_app` or the CLI, never at import."""

import ipaddress
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

DEFAULT_DATABASE_URL = "sqlite+aiosqlite:///./fluxhook.db"
DEFAULT_BFL_API_URL = "https://api.bfl.ai"
# Where the embedded emulator is mounted in emulator mode (no BFL_API_KEY).
EMULATOR_PREFIX = "/emulator"


class SettingsError(ValueError):
    """A configuration value that cannot be used; the message names the variable."""


def normalise_database_url(url: str) -> str:
    """Heroku's `postgres://` and plain `postgresql://` or `sqlite://` URLs → async drivers."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise SettingsError(f"DATABASE_URL is not a URL: {url!r}")
    drivers = {
        "postgres": "postgresql+psycopg",
        "postgresql": "postgresql+psycopg",
        "postgresql+psycopg": "postgresql+psycopg",
        "sqlite": "sqlite+aiosqlite",
        "sqlite+aiosqlite": "sqlite+aiosqlite",
    }
    if scheme not in drivers:
        raise SettingsError(f"DATABASE_URL: unsupported scheme {scheme!r} (use postgres or sqlite)")
    return f"{drivers[scheme]}://{rest}"


def _bool(environ: Mapping[str, str], name: str, default: bool) -> bool:
    value = environ.get(name, "").strip().lower()
    if not value:
        return default
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be true or false, not {value!r}")


def _number(environ: Mapping[str, str], name: str, default: float, kind=int):
    value = environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = kind(value)
    except ValueError:
        raise SettingsError(f"{name} must be a number, not {value!r}") from None
    if number < 0:
        raise SettingsError(f"{name} must not be negative")
    return number


def _at_least_one(environ: Mapping[str, str], name: str, default: int) -> int:
    number = _number(environ, name, default)
    if number < 1:
        raise SettingsError(f"{name} must be at least 1")
    return number


def _port(environ: Mapping[str, str]) -> int:
    port = _number(environ, "PORT", 8000)
    if not 1 <= port <= 65535:
        raise SettingsError(f"PORT must be between 1 and 65535, not {port}")
    return port


# A DNS name (RFC 1123 labels); anything made only of digits and dots must be an IPv4 address.
HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*")


def _host(environ: Mapping[str, str]) -> str:
    value = (environ.get("HOST") or "0.0.0.0").strip()  # noqa: S104 - a PaaS routes to $PORT
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if re.fullmatch(r"[\d.]+", value) or not HOSTNAME.fullmatch(value):
            raise SettingsError(
                f"HOST must be an IP address or a host name, not {value!r}"
            ) from None
    return value


def _public_url(environ: Mapping[str, str], port: int) -> str:
    value = (environ.get("PUBLIC_URL") or f"http://127.0.0.1:{port}").strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        # BFL and subscribers are sent links built on it: it must be an absolute http(s) URL.
        raise SettingsError(
            f"PUBLIC_URL must be an http(s) URL such as https://app.example.com, not {value!r}"
        )
    return value


def _optional_cap(environ: Mapping[str, str], name: str) -> int | None:
    """A per-tenant cap: unset (or empty) means none; set, it must be a whole number ≥ 1."""
    if not environ.get(name, "").strip():
        return None
    return _at_least_one(environ, name, 1)


def _list(environ: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in environ.get(name, "").split(",") if item.strip())


def _poll_host_url(host: str) -> str:
    """BFL_POLL_HOSTS takes bare hosts (`api.eu.bfl.ai`) or base URLs."""
    url = host if "://" in host else f"https://{host}"
    return url.rstrip("/")


def parse_image_store(value: str) -> str:
    if value == "db" or (value.startswith("fs:") and len(value) > 3):
        return value
    if value.startswith("s3://") and value[5:].split("/")[0]:
        return value.rstrip("/")
    raise SettingsError(
        f"IMAGE_STORE must be 'db', 'fs:PATH' or 's3://BUCKET[/PREFIX]', not {value!r}"
    )


@dataclass(frozen=True)
class S3Access:
    """The standard AWS variables, for an S3-compatible store (AWS, R2, MinIO, Bucketeer)."""

    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    region: str | None = None
    endpoint_url: str | None = None  # non-AWS endpoints (R2, MinIO…)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "S3Access":
        return cls(
            access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
            secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
            session_token=env.get("AWS_SESSION_TOKEN") or None,
            region=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
            endpoint_url=env.get("AWS_ENDPOINT_URL") or None,
        )


def _metrics_key(environ: Mapping[str, str]) -> str | None:
    """A bearer token: visible ASCII, no spaces (what an Authorization header can carry)."""
    value = environ.get("METRICS_KEY", "").strip()
    if value and not all("!" <= char <= "~" for char in value):
        raise SettingsError("METRICS_KEY must be visible ASCII characters without spaces")
    return value or None


ADMISSION_ORDERS = ("fair", "fifo")


def _admission_order(environ: Mapping[str, str]) -> str:
    """`fair` (round-robin across tenants) or `fifo` (one queue by age, as before fairness)."""
    value = (environ.get("ADMISSION_ORDER") or "fair").strip().lower()
    if value not in ADMISSION_ORDERS:
        raise SettingsError(f"ADMISSION_ORDER must be fair or fifo, not {value!r}")
    return value


def _retention_days(environ: Mapping[str, str]) -> float:
    days = _number(environ, "RETENTION_DAYS", 30.0, float)
    if not math.isfinite(days):
        raise SettingsError("RETENTION_DAYS must be a number of days (0 keeps everything)")
    return days


def _web_concurrency(environ: Mapping[str, str], database_url: str, embedded_upstream: bool) -> int:
    """How many `serve` processes share $PORT: several only on PostgreSQL, with a real upstream."""
    count = _at_least_one(environ, "WEB_CONCURRENCY", 1)
    if count > 1 and not database_url.startswith("postgresql"):
        raise SettingsError(
            f"WEB_CONCURRENCY must be 1 on SQLite, not {count}: several serve processes need "
            "PostgreSQL (DATABASE_URL)"
        )
    if count > 1 and embedded_upstream:
        # Each process would hold its own emulator: a task submitted through one is unknown
        # to the others, so its image download or poll would miss.
        raise SettingsError(
            f"WEB_CONCURRENCY must be 1 in emulator mode, not {count}: set BFL_API_KEY, or run "
            "`fluxhook emulator` and point BFL_API_URL at it"
        )
    return count


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    port: int = 8000
    host: str = "0.0.0.0"  # noqa: S104 - where `serve` listens; a PaaS routes to $PORT
    public_url: str = "http://127.0.0.1:8000"
    secret_keys: tuple[str, ...] = ()
    bfl_api_key: str | None = None
    bfl_api_url: str = DEFAULT_BFL_API_URL
    bfl_poll_hosts: tuple[str, ...] = ()
    bfl_max_active: int = 24
    bfl_max_active_kontext_max: int = 6
    bfl_timeout_s: float = 30.0
    tenant_max_active: int | None = None  # upstream slots one tenant may hold; None: all
    tenant_max_queued: int | None = None  # jobs one tenant may have waiting; None: no cap
    # Free slots go round-robin across tenants (fair) or to the oldest waiting job (fifo: the
    # order before fair admission; for comparisons).
    admission_order: str = "fair"
    run_workers: bool = True
    allow_private_targets: bool = False
    log_format: str = "text"
    log_level: str = "INFO"
    image_store: str = "db"
    s3: S3Access = field(default_factory=S3Access)
    retention_days: float = 30.0  # finished jobs older than this are pruned; 0 keeps all
    image_url_ttl_s: int = 7 * 24 * 3600  # 7 days: result.sample links stay usable a week
    db_pool_size: int = 5  # small PostgreSQL plans allow ~20 connections in all
    reconcile_interval_s: float = 10.0
    reconcile_slack_s: float = 30.0  # a webhook is overdue at expected latency × 2 + this
    # While jobs wait for slots, ask BFL early about a slot whose webhook is late (off: only
    # the overdue ones, the behaviour before early checks; for comparisons).
    reconcile_early_checks: bool = True
    delivery_timeout_s: float = 10.0
    delivery_concurrency: int = 16  # callbacks in flight per subscription, all processes
    image_fetch_timeout_s: float = 30.0
    sse_heartbeat_s: float = 15.0  # PaaS routers cut a stream idle for 55 s
    # When set, /metrics needs `Authorization: Bearer <metrics_key>`. Kept out of repr().
    metrics_key: str | None = field(default=None, repr=False)
    web_concurrency: int = 1  # `serve` processes sharing $PORT (PostgreSQL only)

    @property
    def emulator_mode(self) -> bool:
        """No BFL key: the embedded emulator is the upstream."""
        return self.bfl_api_key is None

    @property
    def is_postgres(self) -> bool:
        return self.database_url.startswith("postgresql")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if environ is None else environ
        port = _port(env)
        public_url = _public_url(env, port)
        bfl_api_key = env.get("BFL_API_KEY") or None
        default_upstream = (
            public_url + EMULATOR_PREFIX if bfl_api_key is None else DEFAULT_BFL_API_URL
        )
        on_paas = "DYNO" in env
        database_url = normalise_database_url(env.get("DATABASE_URL") or DEFAULT_DATABASE_URL)
        bfl_api_url = (env.get("BFL_API_URL") or default_upstream).rstrip("/")
        embedded_upstream = bfl_api_key is None and bfl_api_url == public_url + EMULATOR_PREFIX
        return cls(
            database_url=database_url,
            port=port,
            host=_host(env),
            public_url=public_url,
            secret_keys=_list(env, "SECRET_KEY"),
            bfl_api_key=bfl_api_key,
            bfl_api_url=bfl_api_url,
            bfl_poll_hosts=tuple(_poll_host_url(h) for h in _list(env, "BFL_POLL_HOSTS")),
            bfl_max_active=_number(env, "BFL_MAX_ACTIVE", 24),
            bfl_max_active_kontext_max=_number(env, "BFL_MAX_ACTIVE_KONTEXT_MAX", 6),
            bfl_timeout_s=_number(env, "BFL_TIMEOUT_S", 30.0, float),
            tenant_max_active=_optional_cap(env, "TENANT_MAX_ACTIVE"),
            tenant_max_queued=_optional_cap(env, "TENANT_MAX_QUEUED"),
            admission_order=_admission_order(env),
            run_workers=_bool(env, "RUN_WORKERS", True),
            allow_private_targets=_bool(env, "ALLOW_PRIVATE_TARGETS", bfl_api_key is None),
            log_format=_log_format(env, on_paas),
            log_level=_log_level(env),
            image_store=parse_image_store(env.get("IMAGE_STORE") or "db"),
            s3=S3Access.from_env(env),
            retention_days=_retention_days(env),
            image_url_ttl_s=_number(env, "IMAGE_URL_TTL_S", 7 * 24 * 3600),
            db_pool_size=_number(env, "DB_POOL_SIZE", 5),
            reconcile_interval_s=_number(env, "RECONCILE_INTERVAL_S", 10.0, float),
            reconcile_slack_s=_number(env, "RECONCILE_SLACK_S", 30.0, float),
            reconcile_early_checks=_bool(env, "RECONCILE_EARLY_CHECKS", True),
            delivery_timeout_s=_number(env, "DELIVERY_TIMEOUT_S", 10.0, float),
            delivery_concurrency=_at_least_one(env, "DELIVERY_CONCURRENCY", 16),
            image_fetch_timeout_s=_number(env, "IMAGE_FETCH_TIMEOUT_S", 30.0, float),
            sse_heartbeat_s=_number(env, "SSE_HEARTBEAT_S", 15.0, float),
            metrics_key=_metrics_key(env),
            web_concurrency=_web_concurrency(env, database_url, embedded_upstream),
        )


def _log_format(environ: Mapping[str, str], on_paas: bool) -> str:
    value = (environ.get("LOG_FORMAT") or "").strip().lower()
    if not value:
        return "json" if on_paas or not sys.stdout.isatty() else "text"
    if value not in {"json", "text"}:
        raise SettingsError(f"LOG_FORMAT must be json or text, not {value!r}")
    return value


def _log_level(environ: Mapping[str, str]) -> str:
    value = (environ.get("LOG_LEVEL") or "INFO").strip().upper()
    if value not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
        raise SettingsError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, not {value!r}")
    return value
