"""The tables. UUID keys, UTC timestamps, a naming convention so migrations stay stable."""

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

SQLModel.metadata.naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(sa.TypeDecorator):
    """Aware UTC datetimes on every engine (SQLite keeps no zone: store UTC, read back aware).

    On SQLite a value is written and read in one step each, as the text SQLAlchemy's DATETIME
    stores (`YYYY-MM-DD HH:MM:SS.ffffff`, UTC): `isoformat` writes it and `fromisoformat`
    reads it, both in C. The decorator's step followed by the dialect's (a `%` format of seven
    fields) cost twice as much, on every timestamp of every statement (bench/README.md,
    twelfth pass)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        """Every engine but SQLite (whose `bind_processor` is below); SQLite's literal
        rendering formats the UTC value's fields, so it needs no zone stripped either."""
        return None if value is None else _in_utc(value)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None or value.tzinfo is not None:
            return value
        return value.replace(tzinfo=UTC)

    def bind_processor(self, dialect):
        if dialect.name != "sqlite":
            return super().bind_processor(dialect)
        return _sqlite_text

    def result_processor(self, dialect, coltype):
        if dialect.name != "sqlite":
            return super().result_processor(dialect, coltype)
        return _from_sqlite_text


def _in_utc(value: datetime) -> datetime:
    assert value.tzinfo is not None, "naive datetime reached the database"
    return value.astimezone(UTC)


def _sqlite_text(value: datetime | None) -> str | None:
    if value is None:
        return None
    return _in_utc(value).replace(tzinfo=None).isoformat(" ", "microseconds")


def _from_sqlite_text(value: str | None, _parse=datetime.fromisoformat) -> datetime | None:
    return None if value is None else _parse(value).replace(tzinfo=UTC)


def _time(nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_column=sa.Column(UTCDateTime(), nullable=nullable, index=index))


def _json(nullable: bool = True) -> Any:
    return Field(default=None, sa_column=sa.Column(sa.JSON(), nullable=nullable))


BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class Tenant(SQLModel, table=True):
    __tablename__ = "tenants"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=200)
    created_at: datetime = _time(nullable=False)


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", index=True)
    name: str = Field(max_length=200, unique=True)  # operators tell keys apart by name
    prefix: str = Field(max_length=16)
    key_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = _time(nullable=False)
    revoked_at: datetime | None = _time()
    last_used_at: datetime | None = _time()  # written at most once a minute per key


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        sa.Index("ix_jobs_queue", "status", "holds_slot", "created_at"),
        sa.Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
    )
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id")
    model: str = Field(max_length=64)
    status: str = Field(max_length=32)  # looked up through ix_jobs_queue, which leads with it
    inputs: dict = _json(nullable=False)
    slot_class: str = Field(max_length=32)
    holds_slot: bool = Field(default=False, index=True)
    submit_attempts: int = 0
    admitted_at: datetime | None = _time()  # first given an upstream slot (FIFO by created_at)
    next_attempt_at: datetime | None = _time()
    lease_expires_at: datetime | None = _time()
    bfl_id: str | None = Field(default=None, max_length=64, index=True)
    polling_url: str | None = Field(default=None, max_length=2083)
    submitted_at: datetime | None = _time()
    webhook_due_at: datetime | None = _time(index=True)
    poll_attempts: int = 0
    next_poll_at: datetime | None = _time()
    progress: float | None = None
    result: dict | None = _json()
    details: dict | None = _json()
    sample_url: str | None = Field(default=None, max_length=4096)
    upstream_ready_at: datetime | None = _time()
    fetch_attempts: int = 0
    image_stored: bool = False
    cost: float | None = None
    input_mp: float | None = None
    output_mp: float | None = None
    completed_via: str | None = Field(default=None, max_length=16)
    created_at: datetime = _time(nullable=False)
    updated_at: datetime = _time(nullable=False)
    finished_at: datetime | None = _time()


class JobEvent(SQLModel, table=True):
    """The event log: SSE ids and replay, and the source of every delivery."""

    __tablename__ = "job_events"
    __table_args__ = (
        sa.Index("ix_job_events_tenant_seq", "tenant_id", "seq"),
        sa.Index("ix_job_events_job_seq", "job_id", "seq"),
        # A sequence number is never handed out twice, even after the newest event is pruned
        # (a client may hold it to resume after); PostgreSQL's sequences never reuse either.
        {"sqlite_autoincrement": True},
    )
    seq: int | None = Field(default=None, sa_column=sa.Column(BigId, primary_key=True))
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id")
    job_id: uuid.UUID | None = Field(default=None, foreign_key="jobs.id")
    type: str = Field(max_length=64)
    data: dict = _json(nullable=False)
    created_at: datetime = _time(nullable=False)


class Image(SQLModel, table=True):
    __tablename__ = "images"
    job_id: uuid.UUID = Field(foreign_key="jobs.id", primary_key=True)
    content_type: str = Field(max_length=64)
    size: int
    sha256: str = Field(max_length=64)
    data: bytes | None = Field(default=None, sa_column=sa.Column(sa.LargeBinary(), nullable=True))
    path: str | None = Field(default=None, max_length=1024)
    created_at: datetime = _time(nullable=False)


class Subscription(SQLModel, table=True):
    """A callback endpoint: a tenant's standing subscription, or one job's drop-in webhook_url."""

    __tablename__ = "subscriptions"
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", index=True)
    job_id: uuid.UUID | None = Field(default=None, foreign_key="jobs.id", index=True)
    url: str = Field(max_length=2083)
    events: list = _json(nullable=False)
    description: str = Field(default="", max_length=500)
    secret: str | None = Field(default=None, max_length=200)
    previous_secret: str | None = Field(default=None, max_length=200)
    previous_secret_expires_at: datetime | None = _time()
    enabled: bool = True
    disabled_reason: str | None = Field(default=None, max_length=500)
    failing_since: datetime | None = _time()
    created_at: datetime = _time(nullable=False)
    updated_at: datetime = _time(nullable=False)


class Delivery(SQLModel, table=True):
    """The outbox: one row per (event, subscription), written with the event it carries."""

    __tablename__ = "deliveries"
    __table_args__ = (sa.Index("ix_deliveries_due", "status", "next_attempt_at"),)
    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", index=True)
    subscription_id: uuid.UUID = Field(foreign_key="subscriptions.id", index=True)
    job_id: uuid.UUID | None = Field(default=None, foreign_key="jobs.id", index=True)
    event_seq: int = Field(sa_column=sa.Column(BigId, sa.ForeignKey("job_events.seq")))
    event_type: str = Field(max_length=64)
    status: str = Field(default="pending", max_length=16)
    attempts: int = 0
    next_attempt_at: datetime | None = _time()
    lease_expires_at: datetime | None = _time()
    last_status_code: int | None = None
    last_error: str | None = Field(default=None, max_length=500)
    last_attempt_at: datetime | None = _time()
    delivered_at: datetime | None = _time()
    created_at: datetime = _time(nullable=False)


IDEMPOTENCY_WINDOW = timedelta(hours=24)  # a repeated Idempotency-Key answers this long


class IdempotencyKey(SQLModel, table=True):
    __tablename__ = "idempotency_keys"
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", primary_key=True)
    key: str = Field(max_length=255, primary_key=True)
    request_hash: str = Field(max_length=64)
    job_id: uuid.UUID = Field(foreign_key="jobs.id")
    response: dict = _json(nullable=False)
    created_at: datetime = _time(nullable=False, index=True)


class AppSecret(SQLModel, table=True):
    """Values fluxhook generates once and keeps (dev SECRET_KEY, the emulator-mode dev key)."""

    __tablename__ = "app_secrets"
    name: str = Field(primary_key=True, max_length=64)
    value: str = Field(max_length=500)


class UsageDay(SQLModel, table=True):
    """What each tenant spent: jobs and BFL's cost per day, model and final status. Written in
    the transaction that records a job's final state; kept when retention prunes the jobs."""

    __tablename__ = "usage_days"
    tenant_id: uuid.UUID = Field(foreign_key="tenants.id", primary_key=True)
    day: date = Field(sa_column=sa.Column(sa.Date(), primary_key=True))
    model: str = Field(max_length=64, primary_key=True)
    status: str = Field(max_length=32, primary_key=True)
    jobs: int = 0
    cost: float = 0.0  # BFL's credits, as reported for the jobs
