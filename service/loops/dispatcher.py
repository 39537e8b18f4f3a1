"""The dispatcher: sends the outbox. Claims due deliveries with leases (SKIP LOCKED on
PostgreSQL), at most `per_subscription` in flight per subscription across all processes so
one slow subscriber cannot starve the others, signs, POSTs with a timeout and no redirects,
and applies the pure schedule of `service.schedule`.

The fast path: while it runs, the transaction that writes new deliveries asks it for room
(`leases`) and leases them to it at once; on commit they are handed over (`take`) and sent
without a claim's round trip. Without room (load, or a busy subscription), new deliveries
wait for the claim as before.

A handed-over callback goes before the work that nobody waits on: the receiver answers
BFL's webhook (and so starts the image download), and the image route serves a client that
has already heard of the image, only once the callbacks handed over so far are written to
their sockets (`handoffs_on_the_wire`). Otherwise that work runs first, in the turns of the
event loop before the callback's task starts and writes its request, and the subscriber
hears the event later (bench/README.md, "seventh pass" and "eighth pass"). The wait is
bounded: a callback that must open a connection lets go when it starts connecting, one that
fails when it fails, and none is waited for longer than HOLD_BACK_LIMIT_S.
"""

import asyncio
import functools
import logging
import random
import uuid
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from types import SimpleNamespace

import anyio
import httpx
import sqlalchemy as sa
from sqlalchemy import func, or_
from sqlmodel import select

from service import direct, outbound, schedule
from service.batching import GroupCommit
from service.callbacks import body_for, headers_for, message_id
from service.db import Database
from service.events import StagedEvent, record_event
from service.loops.base import Loop, failure_reason
from service.metrics import Metrics
from service.models import Delivery, JobEvent, Subscription
from service.schedule import Attempt, Decision
from service.signals import Signals

log = logging.getLogger(__name__)
# POSTs in flight from one process: fewer than the client's connections, so none waits for
# a connection.
SEND_CONCURRENCY = 64
DISPATCH_LOCK = 0x466C7578_03
PENDING = "pending"
ANSWERED_CHUNK = 200  # subscription ids per statement
HOLD_BACK_LIMIT_S = 0.005
# The trace events (`service.http11`) after which a callback no longer holds other work back:
# its request is written, or it has to connect first (a round trip at least, maybe TLS).
LET_GO = frozenset({"http11.send_request_body.complete", "connection.connect_tcp.started"})
DELIVERIES, SUBSCRIPTIONS = Delivery.__table__, Subscription.__table__
# The common outcome, a 2xx, in two statements for the whole batch (no rows loaded).
MARK_DELIVERED = (
    sa.update(DELIVERIES)
    .where(DELIVERIES.c.id == sa.bindparam("delivery"))
    .values(
        status=schedule.DELIVERED,
        attempts=DELIVERIES.c.attempts + 1,
        delivered_at=sa.bindparam("now"),
        last_attempt_at=sa.bindparam("now"),
        lease_expires_at=None,
        last_status_code=sa.bindparam("code"),
        last_error=None,
    )
)


@functools.lru_cache(maxsize=64)
def _subscribers_answered(count: int) -> sa.Update:
    """Subscriptions `subscription_<i>` answered: they are not failing (any more)."""
    ids = [sa.bindparam(f"subscription_{i}", type_=SUBSCRIPTIONS.c.id.type) for i in range(count)]
    return (
        sa.update(SUBSCRIPTIONS)
        .where(SUBSCRIPTIONS.c.id.in_(ids), SUBSCRIPTIONS.c.failing_since.is_not(None))
        .values(failing_since=None)
    )


@dataclass(frozen=True)
class Send:
    """A claimed delivery with what it carries: no read is needed to send it. A handoff
    (`Dispatcher.take`) carries the same attributes as plain rows and its staged event."""

    delivery: Delivery | SimpleNamespace
    subscription: Subscription | sa.Row
    event: JobEvent | StagedEvent
    # A handoff's: done once its request is written (or it let go, see LET_GO).
    on_the_wire: asyncio.Future | None = None


@dataclass(frozen=True)
class Outcome:
    delivery_id: uuid.UUID
    subscription_id: uuid.UUID
    attempt: Attempt
    error: str | None
    decision: Decision
    event_at: datetime


async def _with_what_they_carry(session, deliveries: list[Delivery]) -> list[Send]:
    if not deliveries:
        return []
    owners = {d.subscription_id for d in deliveries}
    seqs = {d.event_seq for d in deliveries}
    query = select(Subscription).where(Subscription.id.in_(owners))
    subscriptions = {s.id: s for s in (await session.exec(query)).all()}
    events = {
        e.seq: e for e in (await session.exec(select(JobEvent).where(JobEvent.seq.in_(seqs)))).all()
    }
    return [Send(d, subscriptions[d.subscription_id], events[d.event_seq]) for d in deliveries]


def _let_go(on_the_wire: asyncio.Future | None) -> None:
    if on_the_wire is not None and not on_the_wire.done():
        on_the_wire.set_result(None)


def _letting_go(on_the_wire: asyncio.Future) -> outbound.Trace:
    async def trace(event: str, _info: dict) -> None:
        if event in LET_GO:
            _let_go(on_the_wire)

    return trace


def _is_due(now) -> tuple:
    """A delivery to send now: pending, its attempt due, its subscription enabled, and no
    process holding it (or its lease ran out). `now`: a time, or a bound parameter."""
    lease_free = or_(Delivery.lease_expires_at.is_(None), Delivery.lease_expires_at <= now)
    return (
        Delivery.status == PENDING,
        Delivery.next_attempt_at <= now,
        Subscription.enabled,
        lease_free,
    )


ANY_DUE = (
    sa.select(Delivery.id)
    .join(Subscription, Subscription.id == Delivery.subscription_id)
    .where(*_is_due(sa.bindparam("now")))
    .limit(1)
)


class Dispatcher(Loop):
    name = "dispatcher"
    interval_s = 1.0

    def __init__(
        self,
        db: Database,
        signals: Signals,
        clock,
        transport: httpx.AsyncBaseTransport,
        metrics: Metrics,
        timeout_s: float = 10.0,
        per_subscription: int = 16,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(signals)
        self.db, self.clock, self.transport, self.metrics = db, clock, transport, metrics
        self.timeout_s = timeout_s
        self.per_subscription = per_subscription
        self.lease = timedelta(seconds=timeout_s * 3)
        self._rng = rng or random.Random()
        self._sending = 0
        self._in_flight: Counter[uuid.UUID] = Counter()  # per subscription, this process
        self._sends = None  # the running loop's task group: a handoff starts its send there
        # Due deliveries were left waiting for room (by the last claim, or by `leases`): a
        # finished send then wakes the loop to claim them. Otherwise it would claim nothing.
        self._left_waiting = False
        # Outcomes are group-committed: callbacks that answered 2xx (the hot path: every
        # statement on the driver), and the others (retries, give-ups, disabled endpoints).
        self._delivered = GroupCommit(db, self._record_delivered, on_driver=True)
        self._undelivered = GroupCommit(db, self._record_others)
        self._unwritten: set[asyncio.Future] = set()  # handoffs not yet on the wire

    def leases(self, subscription_ids: list[uuid.UUID], now: datetime) -> list[datetime | None]:
        """Inside the transaction that writes new deliveries: a lease for each that this
        process takes at once, None for each left to the claim. Handoffs use half of the
        send capacity, so claimed retries and other work always have room."""
        room = SEND_CONCURRENCY // 2 - self._sending
        taken: Counter[uuid.UUID] = Counter()
        leases = []
        for subscription_id in subscription_ids:
            busy = self._in_flight[subscription_id] + taken[subscription_id]
            if room > 0 and busy < self.per_subscription:
                taken[subscription_id] += 1
                room -= 1
                leases.append(now + self.lease)
            else:
                leases.append(None)
                self._left_waiting = True
        return leases

    def take(self, handed: list) -> None:
        """On commit: (delivery row, subscription row, staged event) leased to this process."""
        for row, subscription, event in handed:
            # As they are (the delivery's columns, the subscription's row, the staged event):
            # building ORM objects here cost more than the rest of the handoff.
            send = Send(SimpleNamespace(**row), subscription, event, self._unwritten_future())
            self._started(send)
            self._begin(send)

    def _unwritten_future(self) -> asyncio.Future:
        written = asyncio.get_running_loop().create_future()
        self._unwritten.add(written)
        written.add_done_callback(self._unwritten.discard)
        return written

    async def handoffs_on_the_wire(self, limit_s: float = HOLD_BACK_LIMIT_S) -> None:
        """Wait until the callbacks handed over so far are written, or let go (at most
        `limit_s`; later handoffs are not waited for)."""
        if self._unwritten:
            await asyncio.wait(list(self._unwritten), timeout=limit_s)

    def _begin(self, send: "Send") -> None:
        """A handed-over send starts at once, as a task of the running loop (no queue between:
        its POST leaves on the event loop's next turn)."""
        if self._sends is None:  # the loop has stopped: give it back
            self._give_back(send)
            return
        try:
            self._sends.start_soon(self._tracked, send)
        except RuntimeError:  # its task group has just closed
            self._give_back(send)

    def _give_back(self, send: "Send") -> None:
        _let_go(send.on_the_wire)
        self._cut_short.append(send)

    def _started(self, send: "Send") -> None:
        self._sending += 1
        self._in_flight[send.subscription.id] += 1

    async def run(self) -> None:
        self.signals.deliveries = self
        try:
            async with anyio.create_task_group() as self._sends:
                await super().run()
        finally:
            self.signals.deliveries = None
            self._sends = None

    async def claim(self) -> list[uuid.UUID]:
        capacity = SEND_CONCURRENCY - self._sending
        if capacity <= 0:
            self._left_waiting = True  # not looked: a finished send looks again
            return []
        # Most claims are a poll that finds nothing (new deliveries are handed over without
        # one), and the claim itself, a lock, the room per subscription and the due rows
        # ranked per subscription, costs ≈ 5 ms of CPU even then: one statement looks first
        # (bench/README.md, sixteenth pass).
        if not await self.db.finds_any(ANY_DUE, {"now": self.clock.now()}):
            self._left_waiting = False
            return []
        async with self.db.write() as session:
            if self.db.is_postgres:
                # One claim at a time across processes, so the per-subscription count holds.
                await direct.pg_xact_lock(session, DISPATCH_LOCK)
            now = self.clock.now()
            room = await self._room(session, now)
            rows = (await session.exec(self._due(now, capacity))).all()
            claimed = []
            for delivery in rows:
                free = room.get(delivery.subscription_id, self.per_subscription)
                if free > 0:
                    room[delivery.subscription_id] = free - 1
                    delivery.lease_expires_at = now + self.lease
                    claimed.append(delivery)
            self._left_waiting = len(rows) >= capacity or len(claimed) < len(rows)
            sends = await _with_what_they_carry(session, claimed)
        for send in sends:
            self._started(send)
        return sends

    async def _room(self, session, now: datetime) -> dict[uuid.UUID, int]:
        """Per busy subscription, how many more deliveries may be in flight (others: all)."""
        in_flight = sa.select(Delivery.subscription_id, func.count()).where(
            Delivery.status == PENDING, Delivery.lease_expires_at > now
        )
        busy = (await session.exec(in_flight.group_by(Delivery.subscription_id))).all()
        return {subscription_id: self.per_subscription - count for subscription_id, count in busy}

    def _due(self, now: datetime, capacity: int):
        ready = (
            sa.select(
                Delivery.id,
                func.row_number()
                .over(partition_by=Delivery.subscription_id, order_by=Delivery.next_attempt_at)
                .label("rank"),
            )
            .join(Subscription, Subscription.id == Delivery.subscription_id)
            .where(*_is_due(now))
            .subquery()
        )
        ids = sa.select(ready.c.id).where(ready.c.rank <= self.per_subscription)
        return (
            select(Delivery)
            .where(Delivery.id.in_(ids.scalar_subquery()))
            .order_by(Delivery.next_attempt_at)
            .limit(capacity)
            .with_for_update(skip_locked=True)
        )

    async def release(self, items: list["Send"]) -> None:
        async with self.db.write() as session:
            for send in items:
                delivery = await session.get(Delivery, send.delivery.id, with_for_update=True)
                if delivery is not None and delivery.status == PENDING:
                    delivery.lease_expires_at = None

    async def work(self, send: "Send") -> None:
        try:
            await self._send(send)
        finally:
            _let_go(send.on_the_wire)
            self._sending -= 1
            self._in_flight[send.subscription.id] -= 1
            if not self._in_flight[send.subscription.id]:
                del self._in_flight[send.subscription.id]
            if self._left_waiting:
                self.signals.wake(self.name)  # room for what the last claim left

    async def _send(self, send: "Send") -> None:
        delivery, subscription, event = send.delivery, send.subscription, send.event
        now = self.clock.now()
        body = body_for(subscription, event)
        headers = headers_for(subscription, message_id(delivery.id), body, now)
        trace = _letting_go(send.on_the_wire) if send.on_the_wire else None
        attempt, error = await self._post(subscription.url, body, headers, trace)
        await self._settle(send, attempt, error)

    async def failed(self, send: "Send", exc: Exception) -> None:
        """Signing or recording broke: a failed attempt, on the delivery's own schedule."""
        await self._settle(send, Attempt(None), f"internal error: {failure_reason(exc)}")

    async def _settle(self, send: "Send", attempt: Attempt, error: str | None) -> None:
        delivery, now = send.delivery, self.clock.now()
        decision = schedule.decide_delivery(delivery.attempts + 1, attempt, now, self._rng)
        if decision.outcome != schedule.DELIVERED:
            log.info(
                "delivery %s to subscription %s: %s (%s)",
                delivery.id,
                send.subscription.id,
                decision.outcome,
                error,
            )
        self.metrics.delivery_attempts.inc(outcome=decision.outcome)
        outcome = Outcome(
            delivery.id, send.subscription.id, attempt, error, decision, send.event.created_at
        )
        delivered = decision.outcome == schedule.DELIVERED
        await (self._delivered if delivered else self._undelivered).submit(outcome)

    async def _post(
        self, url: str, body: bytes, headers: dict, trace: outbound.Trace | None
    ) -> tuple[Attempt, str | None]:
        """One POST. Whatever it raises (a refused address, a URL httpx cannot send, a
        timeout) is this attempt's failure, never the loop's."""
        try:
            response = await outbound.request(
                self.transport,
                "POST",
                url,
                content=body,
                headers=headers,
                timeouts=self.timeout_s,
                trace=trace,
            )
        except Exception as exc:
            return Attempt(None), failure_reason(exc)
        retry_after = schedule.parse_retry_after(
            response.headers.get("retry-after"), self.clock.now()
        )
        error = None if response.is_success else f"HTTP {response.status_code}"
        return Attempt(response.status_code, retry_after), error

    async def _record_delivered(self, session, outcomes: list["Outcome"]) -> list[None]:
        """Callbacks answered 2xx. (A delivery deleted in flight, with its subscription,
        matches no row: its attempt is not kept.)"""
        now = self.clock.now()
        rows = [
            {"delivery": o.delivery_id, "now": now, "code": o.attempt.status_code} for o in outcomes
        ]
        await direct.execute_later(session, MARK_DELIVERED, rows)
        answered = sorted({o.subscription_id for o in outcomes})
        for start in range(0, len(answered), ANSWERED_CHUNK):
            chunk = answered[start : start + ANSWERED_CHUNK]
            params = {f"subscription_{i}": sub for i, sub in enumerate(chunk)}
            await direct.execute_later(session, _subscribers_answered(len(chunk)), [params])
        for outcome in outcomes:
            self.metrics.delivery_latency.observe((now - outcome.event_at).total_seconds())
        return [None] * len(outcomes)

    async def _record_others(self, session, outcomes: list["Outcome"]) -> list[None]:
        """Failed attempts: retried later, given up, or their endpoint disabled. (A delivery
        deleted in flight, with its subscription, matches no row: its attempt is not kept.)"""
        now = self.clock.now()
        ids = [outcome.delivery_id for outcome in outcomes]
        query = select(Delivery).where(Delivery.id.in_(ids)).with_for_update()
        deliveries = {d.id: d for d in (await session.exec(query)).all()}
        owners = {d.subscription_id for d in deliveries.values()}
        # Locked, in id order: a 2xx of the same endpoint commits in another group commit
        # (`_record_delivered`), and its `failing_since` must be read after it, not before.
        query = (
            select(Subscription)
            .where(Subscription.id.in_(owners))
            .order_by(Subscription.id)
            .with_for_update()
        )
        subscriptions = {s.id: s for s in (await session.exec(query)).all()}
        for outcome in outcomes:
            delivery = deliveries.get(outcome.delivery_id)
            if delivery is None:
                # Its subscription was deleted, with what it was owed, while this was in flight.
                log.info(
                    "delivery %s was deleted in flight; its attempt is not kept",
                    outcome.delivery_id,
                )
                continue
            subscription = subscriptions[delivery.subscription_id]
            await self._record_one(session, delivery, subscription, outcome, now)
        return [None] * len(outcomes)

    async def _record_one(self, session, delivery, subscription, outcome, now) -> None:
        decision = outcome.decision
        delivery.attempts += 1
        delivery.last_attempt_at, delivery.lease_expires_at = now, None
        delivery.last_status_code = outcome.attempt.status_code
        delivery.last_error = outcome.error
        subscription.failing_since = subscription.failing_since or now
        if decision.outcome == schedule.RETRY:
            delivery.next_attempt_at = decision.next_attempt_at
        else:
            delivery.status = schedule.DEAD
            self.metrics.delivery_failures.inc()
        if decision.outcome == schedule.GONE:
            await self._disable(session, subscription, "the endpoint answered 410 Gone", now)
        elif schedule.should_disable(subscription.failing_since, now):
            await self._disable(session, subscription, "every attempt failed for 5 days", now)

    async def _disable(self, session, subscription: Subscription, reason: str, now) -> None:
        if not subscription.enabled:
            return
        subscription.enabled, subscription.disabled_reason = False, reason
        subscription.updated_at = now
        log.warning("subscription %s disabled: %s", subscription.id, reason)
        await record_event(
            session,
            self.signals,
            tenant_id=subscription.tenant_id,
            job_id=subscription.job_id,
            type="subscription.disabled",
            data={"id": str(subscription.id), "url": subscription.url, "reason": reason},
            now=now,
        )
