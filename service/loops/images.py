"""The image fetcher: BFL's signed URL dies after 10 minutes, so download it at once and keep it.

`job.ready` went out when the webhook committed; the download runs into a shared `Transfer`
that readers of the image link stream from while it arrives (`service.transfers`), and the
job is marked `image_stored` once the bytes are in the store. A job the receiver leased to
this process arrives by `handoff()` with no claim round-trip; anything else (a crash,
another process's lease that expired, a retry that came due) is claimed from the table.
"""

import asyncio
import functools
import logging
import random
from datetime import timedelta

import anyio
import httpx
import sqlalchemy as sa
from sqlalchemy import or_
from sqlmodel import select

from service import direct, jobs, logs, outbound
from service.batching import GroupCommit
from service.bfl import BFLClient, BFLError
from service.db import Database
from service.events import record_job_event
from service.guard import refusal
from service.images import FetchTask, ImageStore, sniff_content_type
from service.loops.base import Loop, failure_reason
from service.metrics import Metrics
from service.models import Image, Job
from service.schedule import backoff_s
from service.signals import Signals
from service.stores import StoreError
from service.transfers import SNIFF_BYTES, Transfer, Transfers
from service.views import Urls

log = logging.getLogger(__name__)
MAX_IMAGE_BYTES = 64 * 1024 * 1024
# Past BFL's 10-minute URL window (and a fresh get_result's), the image is gone for good.
GIVE_UP_AFTER = timedelta(minutes=15)
CLAIM_BATCH = 32
EXPIRED_STATUSES = (401, 403, 404, 410)
IMAGES = Image.__table__
INSERT_IMAGE = direct.insert_of(IMAGES)


class FetchFailed(Exception):
    pass


class UrlExpired(FetchFailed):
    pass


class FetchRefused(FetchFailed):
    """The image URL is one fluxhook may not or cannot fetch: no retry can help."""


# A URL httpx cannot send (bad host, IDNA, scheme) fails the same way on every try.
UNSENDABLE = (httpx.InvalidURL, httpx.UnsupportedProtocol, UnicodeError)


async def download(
    transport: httpx.AsyncBaseTransport, url: str, timeout_s: float, into: Transfer
) -> str:
    """Stream the image at `url` into `into`; its content type. UrlExpired on 403/404,
    FetchFailed else (readers of `into` then see the error)."""
    try:
        async with outbound.stream(transport, "GET", url, timeouts=timeout_s) as response:
            if response.status_code in EXPIRED_STATUSES:
                raise UrlExpired(f"image URL answered {response.status_code}")
            if response.status_code != 200:
                raise FetchFailed(f"image URL answered {response.status_code}")
            into.length = _content_length(response)
            await _read_limited(response, into)
    except FetchFailed:
        raise
    except Exception as exc:  # a transport error, or a URL httpx cannot send
        if refused := refusal(exc):
            raise FetchRefused(f"image URL refused: {refused}") from exc
        if isinstance(exc, UNSENDABLE):
            raise FetchRefused(f"image URL cannot be fetched: {failure_reason(exc)}") from exc
        raise FetchFailed(f"image download failed: {failure_reason(exc)}") from exc
    content_type = sniff_content_type(into.data()[:SNIFF_BYTES])
    if content_type is None:
        raise FetchFailed("the image URL did not return a JPEG, PNG or WebP image")
    return content_type


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    return int(value) if value.isascii() and value.isdigit() else None


async def _read_limited(response: httpx.Response, into: Transfer) -> None:
    async for chunk in response.aiter_bytes():
        if into.size + len(chunk) > MAX_IMAGE_BYTES:
            raise FetchFailed(f"image larger than {MAX_IMAGE_BYTES} bytes")
        into.add(chunk)


def _is_due(now) -> tuple:
    """A job whose image to fetch now: Ready, not stored, its attempt due, and no process
    holding it (or its lease ran out). `now`: a time, or a bound parameter."""
    lease_free = or_(Job.lease_expires_at.is_(None), Job.lease_expires_at <= now)
    return (Job.status == jobs.READY, ~Job.image_stored, Job.next_attempt_at <= now, lease_free)


ANY_DUE = sa.select(Job.id).where(*_is_due(sa.bindparam("now"))).limit(1)


class ImageFetcher(Loop):
    name = "images"
    interval_s = 2.0

    def __init__(
        self,
        db: Database,
        signals: Signals,
        clock,
        transport: httpx.AsyncBaseTransport,
        bfl: BFLClient,
        store: ImageStore,
        urls: Urls,
        metrics: Metrics,
        commits: GroupCommit,
        transfers: Transfers | None = None,
        timeout_s: float = 30.0,
        concurrency: int = 16,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(signals)
        self.db, self.clock, self.transport, self.bfl = db, clock, transport, bfl
        self.transfers = transfers or Transfers()  # shared with the image routes
        self.store, self.urls, self.metrics = store, urls, metrics
        self.timeout_s = timeout_s
        self.commits = commits
        # Held while one process fetches; if that process dies, another may try after it.
        self.lease = timedelta(seconds=timeout_s * 1.5 + 2)
        self._limit = anyio.CapacityLimiter(concurrency)
        self._handoffs: asyncio.Queue[FetchTask] = asyncio.Queue()
        self._rng = rng or random.Random()

    def handoff(self, task: FetchTask) -> None:
        """The caller committed this job as Ready with a lease for this process."""
        self._handoffs.put_nowait(task)

    async def claim(self) -> list[FetchTask]:
        """Handed-off jobs first (already leased to us), then due jobs from the table."""
        handed = []
        while not self._handoffs.empty():
            handed.append(self._handoffs.get_nowait())
        return handed + await self._claim_due()

    async def run(self) -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._take_handoffs, tg)
            await super().run()
            tg.cancel_scope.cancel()

    async def _take_handoffs(self, tg) -> None:
        """A handoff starts at once rather than at the loop's next pass."""
        while True:
            tg.start_soon(self._tracked, await self._handoffs.get())

    async def release(self, items: list[FetchTask]) -> None:
        async with self.db.write() as session:
            for task in items:
                job = await session.get(Job, task.job_id, with_for_update=True)
                if job is not None and job.status == jobs.READY and not job.image_stored:
                    job.lease_expires_at = None

    async def _claim_due(self) -> list[FetchTask]:
        # Most claims are a poll that finds none (a Ready job is handed off), and the claim
        # (the ORM's rows, locked) costs ≈ 3 ms of CPU even then: one statement looks first
        # (bench/README.md, sixteenth pass).
        if not await self.db.finds_any(ANY_DUE, {"now": self.clock.now()}):
            return []
        async with self.db.write() as session:
            now = self.clock.now()
            query = (
                select(Job)
                .where(*_is_due(now))
                .order_by(Job.next_attempt_at)
                .limit(CLAIM_BATCH)
                .with_for_update(skip_locked=True)
            )
            claimed = (await session.exec(query)).all()
            for job in claimed:
                job.lease_expires_at = now + self.lease
            return [FetchTask.of(job) for job in claimed]

    async def work(self, task: FetchTask) -> None:
        with logs.job_context(task.job_id):
            await self._fetch(task)

    async def _fetch(self, task: FetchTask) -> None:
        # Begun before waiting for a download slot, so that readers wait on it, not on us.
        transfer = self.transfers.begin(task.job_id)
        try:
            async with self._limit:
                await self._fetch_into(task, transfer)
        finally:
            transfer.fail("the download was cut short")  # a no-op once it is complete
            self.transfers.end(transfer)

    async def _fetch_into(self, task: FetchTask, transfer: Transfer) -> None:
        try:
            content_type = await self._download(task, transfer)
            transfer.finish()  # readers have every byte; the store may take a moment more
            # The bytes are written first, outside any transaction; the row commits after.
            image = await self.store.keep(
                task.job_id, transfer.data(), content_type, self.clock.now()
            )
        except (FetchFailed, StoreError) as exc:
            transfer.fail(str(exc))
            await self._not_fetched(task, exc, str(exc))
            return
        if await self.commits.submit((task.job_id, functools.partial(self._store, image=image))):
            self.metrics.images_stored.inc()
            log.info("image stored (%d bytes, %s)", image.size, image.content_type)

    async def failed(self, task: FetchTask, exc: Exception) -> None:
        """The fetch broke in a way `download` does not expect: retried as any failed fetch."""
        await self._not_fetched(task, exc, failure_reason(exc))

    async def _not_fetched(self, task: FetchTask, exc: Exception, reason: str) -> None:
        self.metrics.image_fetch_failures.inc(reason=type(exc).__name__)
        if isinstance(exc, StoreError):
            reason = f"IMAGE_STORE refused it: {reason}"
        permanent = isinstance(exc, FetchRefused)
        retry = functools.partial(self._retry_later, reason=reason, permanent=permanent)
        await self.commits.submit((task.job_id, retry))

    async def _download(self, task: FetchTask, into: Transfer) -> str:
        try:
            return await download(self.transport, task.sample_url, self.timeout_s, into)
        except UrlExpired:  # refused before any byte arrived: `into` is still empty
            fresh = await self._fresh_sample(task)
            return await download(self.transport, fresh, self.timeout_s, into)

    async def _fresh_sample(self, task: FetchTask) -> str:
        """An expired URL: a new get_result signs a new one."""
        try:
            update = jobs.parse_update(await self.bfl.get_result(task.bfl_id, task.polling_url))
        except (BFLError, jobs.InvalidPayload) as exc:
            raise FetchFailed(f"could not refresh the image URL: {exc}") from exc
        if update.status != jobs.READY:
            raise FetchFailed(f"BFL no longer reports the task Ready ({update.status})")
        return update.result["sample"]

    async def _store(self, session, job, now, *, image: Image) -> bool:
        """Inside a group commit: point the job at the kept bytes (`job.ready` went out when
        BFL's webhook committed; the link served the bytes while they arrived)."""
        if job is None or job.status != jobs.READY or job.image_stored:
            return False  # another process stored it first
        await direct.execute_later(session, INSERT_IMAGE, [direct.row_of(image, IMAGES)])
        job.image_stored, job.updated_at = True, now
        job.lease_expires_at = None
        return True

    async def _retry_later(self, session, job, now, *, reason: str, permanent=False) -> None:
        if job is None or job.status != jobs.READY or job.image_stored:
            return
        job.fetch_attempts += 1
        job.lease_expires_at = None
        if now - job.upstream_ready_at < GIVE_UP_AFTER and not permanent:
            delay = backoff_s(job.fetch_attempts, base_s=1.0, cap_s=30.0, rng=self._rng)
            job.next_attempt_at = now + timedelta(seconds=delay)
            log.warning("image fetch failed (%s); retrying in %.1fs", reason, delay)
            return
        job.status, job.finished_at, job.updated_at = jobs.ERROR, now, now
        job.details = {"error": f"the image could not be fetched from BFL: {reason}"}
        await record_job_event(session, self.signals, self.urls, job, jobs.EVENT_FAILED, now)
