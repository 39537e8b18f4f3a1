"""Everything a running fluxhook holds: built at startup, handed to routes and loops, and torn
down in order at shutdown (stop taking work, end streams, finish or release leases, exit)."""

import contextlib
import functools
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import timedelta

import anyio
import httpx
from sqlalchemy.exc import IntegrityError

from service.api import compat
from service.api.auth import KeyCache
from service.batching import GroupCommit
from service.bfl import BFLClient
from service.clock import SystemClock
from service.db import Database, create_engine
from service.guard import GuardedBackend, GuardedTransport, origin
from service.hub import Hub
from service.images import ImageStore
from service.loops.admission import Admission, Limits
from service.loops.base import Loop, supervise
from service.loops.dispatcher import Dispatcher
from service.loops.images import ImageFetcher
from service.loops.reconciler import Reconciler
from service.metrics import Metrics
from service.models import AppSecret
from service.records import act_on_jobs
from service.retention import Retention
from service.settings import Settings
from service.signals import Signals
from service.signing import Signing
from service.transfers import Transfers
from service.views import Urls

log = logging.getLogger(__name__)
LOOP_GRACE_S = 10.0  # in-flight work may finish this long after SIGTERM; then it is released
# Just above what the loops put in flight: submits 32 + downloads 16 + polls 8; deliveries
# 64.
UPSTREAM_LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=64)
DELIVERY_LIMITS = httpx.Limits(max_connections=80, max_keepalive_connections=80)


@dataclass
class Services:
    settings: Settings
    db: Database
    clock: object
    signals: Signals
    signing: Signing
    urls: Urls
    bfl: BFLClient
    hub: Hub
    images: ImageStore
    metrics: Metrics
    keys: KeyCache
    transfers: Transfers = field(default_factory=Transfers)  # image downloads in progress
    fetcher: ImageFetcher | None = None
    loops: list[Loop] = field(default_factory=list)
    job_commits: GroupCommit | None = None  # per-job actions, group-committed
    image_commits: GroupCommit | None = None  # the same for stored images (not urgent)
    submit_commits: GroupCommit | None = None  # new jobs, group-committed

    def begin_shutdown(self) -> None:
        """SIGTERM: end every stream, and let the loops stop claiming work."""
        self.hub.close()
        for loop in self.loops:
            loop.stop()


async def secret_keys(settings: Settings, db: Database) -> list[str]:
    """SECRET_KEY, or (dev only) one generated once and kept in the database."""
    if settings.secret_keys:
        return list(settings.secret_keys)
    log.warning("SECRET_KEY is not set: using a generated key kept in the database (dev only)")
    return [await stored_secret(db, "secret_key", lambda: secrets.token_urlsafe(32))]


async def stored_secret(db: Database, name: str, make) -> str:
    """A value generated once and kept in `app_secrets` (the first process to write wins)."""
    async with db.read() as session:
        row = await session.get(AppSecret, name)
    if row is not None:
        return row.value
    try:
        async with db.write() as session:
            session.add(AppSecret(name=name, value=make()))
    except IntegrityError:
        pass  # another process stored it first; read theirs below
    async with db.read() as session:
        return (await session.get(AppSecret, name)).value


def build_loops(
    svc: Services, upstream: httpx.AsyncBaseTransport, delivery: httpx.AsyncBaseTransport
) -> None:
    """The background loops; `upstream` carries their requests to BFL and its image hosts,
    `delivery` their callbacks to subscribers (`service.outbound`)."""
    s = svc.settings
    limits = Limits(
        total=s.bfl_max_active,
        kontext_max=s.bfl_max_active_kontext_max,
        per_tenant=s.tenant_max_active,
    )
    common = {"db": svc.db, "signals": svc.signals, "clock": svc.clock}
    svc.fetcher = ImageFetcher(
        **common,
        transport=upstream,
        bfl=svc.bfl,
        store=svc.images,
        urls=svc.urls,
        metrics=svc.metrics,
        commits=svc.image_commits,
        transfers=svc.transfers,
        timeout_s=s.image_fetch_timeout_s,
    )
    svc.loops = [
        Admission(
            **common,
            commits=svc.job_commits,
            bfl=svc.bfl,
            signing=svc.signing,
            urls=svc.urls,
            metrics=svc.metrics,
            limits=limits,
            slack_s=s.reconcile_slack_s,
            order=s.admission_order,
        ),
        svc.fetcher,
        Dispatcher(
            **common,
            transport=delivery,
            metrics=svc.metrics,
            timeout_s=s.delivery_timeout_s,
            per_subscription=s.delivery_concurrency,
        ),
        Reconciler(
            **common,
            bfl=svc.bfl,
            urls=svc.urls,
            metrics=svc.metrics,
            interval_s=s.reconcile_interval_s,
            early_checks=s.reconcile_early_checks,
        ),
    ]
    if s.retention_days > 0:
        keep = timedelta(days=s.retention_days)
        svc.loops.append(Retention(**common, store=svc.images, keep=keep))


@contextlib.asynccontextmanager
async def running(
    settings: Settings,
    *,
    clock=None,
    upstream_transport: httpx.AsyncBaseTransport | None = None,
    delivery_transport: httpx.AsyncBaseTransport | None = None,
    run_workers: bool | None = None,
) -> AsyncIterator[Services]:
    db = Database(create_engine(settings))
    try:
        async with _transports(settings, upstream_transport, delivery_transport) as (
            upstream,
            delivery,
        ):
            svc = await _services(settings, db, clock or SystemClock(), upstream)
            if settings.run_workers if run_workers is None else run_workers:
                build_loops(svc, upstream, delivery)
            async with _background(svc):
                yield svc
    finally:
        await db.dispose()


@contextlib.asynccontextmanager
async def _transports(settings: Settings, upstream_transport, delivery_transport):
    # Loading the CA bundle takes tens of milliseconds: once, for all the pools.
    tls = httpx.create_ssl_context()
    if upstream_transport is None:
        # Submits, get_result, credits and image downloads: only the configured upstream
        # origins may be private (the emulator on loopback); every other address is vetted.
        trusted = [origin(url) for url in (settings.bfl_api_url, *settings.bfl_poll_hosts)]
        upstream_backend = GuardedBackend(trusted=trusted)
        upstream_transport = GuardedTransport(upstream_backend, UPSTREAM_LIMITS, tls)
    if delivery_transport is None:
        backend = GuardedBackend(allow_private=settings.allow_private_targets)
        delivery_transport = GuardedTransport(backend, DELIVERY_LIMITS, tls)
    async with upstream_transport, delivery_transport:
        yield upstream_transport, delivery_transport


async def _services(
    settings: Settings, db: Database, clock, upstream: httpx.AsyncBaseTransport
) -> Services:
    signing = Signing(await secret_keys(settings, db))
    signals = Signals(postgres=db.is_postgres)
    bfl = BFLClient(
        upstream,
        settings.bfl_api_key or "emulator",
        settings.bfl_api_url,
        settings.bfl_poll_hosts,
        timeout_s=settings.bfl_timeout_s,
    )
    svc = Services(
        settings=settings,
        db=db,
        clock=clock,
        signals=signals,
        signing=signing,
        urls=Urls(settings.public_url, signing, settings.image_url_ttl_s),
        bfl=bfl,
        hub=Hub(db, signals),
        images=ImageStore(settings.image_store, settings.s3),
        metrics=Metrics(),
        keys=KeyCache(),
    )
    # Urgent: BFL's webhooks are applied here, and someone waits for their events.
    act_on_jobs = functools.partial(_act_on_jobs, clock)
    svc.job_commits = GroupCommit(db, act_on_jobs, urgent=True, on_driver=True)
    # Apart, so that a webhook's transaction never carries an image's bytes (`IMAGE_STORE=db`).
    svc.image_commits = GroupCommit(db, act_on_jobs, on_driver=True)
    create_jobs = functools.partial(compat.create_jobs, svc)
    svc.submit_commits = GroupCommit(db, create_jobs, on_driver=True)
    return svc


@contextlib.asynccontextmanager
async def _background(svc: Services) -> AsyncIterator[None]:
    async with anyio.create_task_group() as tg:
        tg.start_soon(_supervise_hub, svc.hub)
        async with anyio.create_task_group() as loop_tasks:
            for loop in svc.loops:
                loop_tasks.start_soon(supervise, loop)
            try:
                yield
            finally:
                svc.begin_shutdown()
                # Loops stop claiming now; in-flight work gets a grace period, then is cut.
                loop_tasks.cancel_scope.deadline = anyio.current_time() + LOOP_GRACE_S
        with anyio.CancelScope(shield=True):
            for loop in svc.loops:
                await loop.release_cut_short()
        tg.cancel_scope.cancel()


async def _supervise_hub(hub: Hub) -> None:
    while not hub.closed:
        try:
            await hub.run()
        except Exception:
            log.exception("hub crashed; restarting")
            await anyio.sleep(1.0)


async def ensure_dev_key(db: Database, now) -> str:
    """Emulator mode: one dev tenant whose key stays the same across restarts (kept in
    plain text, which is acceptable only because emulator mode is for development)."""
    from service.api.auth import create_key

    async with db.read() as session:
        row = await session.get(AppSecret, "dev_api_key")
    if row is not None:
        return row.value
    try:
        async with db.write() as session:
            key = await create_key(session, "dev", now)
            session.add(AppSecret(name="dev_api_key", value=key))
        return key
    except IntegrityError:
        return await ensure_dev_key(db, now)


async def _act_on_jobs(clock, session, items: list) -> list:
    return await act_on_jobs(session, items, clock.now())
