"""`fluxhook listen`: the tenant's event stream, each event forwarded, signed, to a local URL.

The handler gets what the dispatcher would send it as a standing subscription: the body is the
stream message's data, which *is* the Standard Webhooks envelope serialised as
`callbacks.body_for` does; the headers come from `callbacks.headers_for`, signed with the
`whsec_` secret printed on the first line. `webhook-id` is `msg_event_<seq>`: one id per event,
the same if it is forwarded again (as a redelivery keeps its id). Events go one at a time, in
order, one attempt each: a handler that is down or answers 5xx gets a line saying so, not a retry.

When the stream drops (fluxhook restarted, the network blinked), it reconnects with backoff and
resumes with `Last-Event-ID`, so the handler sees every event exactly once. That holds from the
`ready:` line on, even if the stream drops before any event: a stream from now first says which
id it starts after, and `ready:` waits for it. Errors: `ClientError` (bad options, exit 2) and
`RequestFailed` (fluxhook refused us, exit 3).
"""

import contextlib
import functools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime

import anyio
import httpx

from service import jobs
from service.api.subscriptions import SUBSCRIPTION_EVENTS
from service.callbacks import headers_for
from service.client_cli import ClientError, RequestFailed, connection
from service.clock import SystemClock
from service.loops.base import failure_reason
from service.models import Subscription
from service.signing import SUBSCRIPTION_SECRET_PREFIX, new_subscription_secret, secret_bytes

FORWARD_TIMEOUT_S = 10.0  # as a subscription's delivery (DELIVERY_TIMEOUT_S)
# fluxhook sends a heartbeat comment every 15 s: three missed ones mean the connection is dead.
STREAM_TIMEOUT = httpx.Timeout(10.0, read=45.0)
RECONNECT_FIRST_S, RECONNECT_MAX_S = 0.25, 5.0


@dataclass(frozen=True)
class Event:
    seq: int
    type: str
    body: bytes  # the envelope, exactly as the stream carried it; empty: an id-only message

    @property
    def subject(self) -> str:
        """The id in the event's data: the job's (the subscription's for subscription.*)."""
        return str(json.loads(self.body)["data"].get("id", "-"))


def event_types(value: str | None) -> frozenset[str]:
    """`--events job.ready,job.failed`; every job event when absent, as for a subscription."""
    if value is None:
        return frozenset(jobs.EVENT_TYPES)
    asked = {name.strip() for name in value.split(",") if name.strip()}
    unknown = sorted(asked - set(SUBSCRIPTION_EVENTS))
    if unknown or not asked:
        what = f"unknown event type {', '.join(unknown)}" if unknown else "no event type given"
        raise ClientError(f"--events: {what}; known: {', '.join(SUBSCRIPTION_EVENTS)}")
    return frozenset(asked)


def signing_secret(value: str | None) -> str:
    if value is None:
        return new_subscription_secret()
    try:
        key = secret_bytes(value) if value.startswith(SUBSCRIPTION_SECRET_PREFIX) else b""
    except ValueError:
        key = b""
    if not key:
        raise ClientError("--secret must be a whsec_ secret (base64 after the prefix)")
    return value


def forward_target(value: str) -> str:
    url = httpx.URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ClientError(f"--forward-to must be an http(s) URL, not {value!r}")
    return value


def reconnect_delay(failures: int) -> float:
    """Seconds before reconnect attempt `failures + 1`: doubling, capped."""
    return min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2**failures)


def event_line(at: datetime, event: Event, outcome: str) -> str:
    return f"{at.astimezone():%H:%M:%S}  {event.type:<14} {event.subject:<36}  {outcome}"


async def stream_events(lines: AsyncIterator[str]) -> AsyncIterator[Event]:
    """Messages with an id from SSE lines: events, and id-only messages (no type, empty body:
    the id a stream from now starts after). Comments (the heartbeat) are skipped."""
    fields: dict[str, list[str]] = {}
    async for line in lines:
        if line == "":
            if "id" in fields:
                data = "\n".join(fields.get("data", [])).encode()
                yield Event(int(fields["id"][-1]), fields.get("event", [""])[-1], data)
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value.removeprefix(" "))


class Forwarder:
    """Follows `/v1/events` on `stream` and forwards each wanted event to `target` on `http`."""

    def __init__(self, stream: httpx.AsyncClient, http: httpx.AsyncClient, target: str,
                 secret: str, types: frozenset[str], say=print, clock=None) -> None:  # fmt: skip
        self.stream, self.http, self.target, self.types = stream, http, target, types
        # Signed as the dispatcher signs for a standing subscription with this secret.
        self.subscription = Subscription(secret=secret)
        self.say, self.clock = say, clock or SystemClock()
        # The id to resume after: the last event's, else the one the stream started after.
        self.last: int | None = None

    async def run(self, from_start: bool = False) -> None:
        """Follow the stream until cancelled. A first connection that fails, or ends before
        it says where it starts, or a refusal (4xx: a revoked key) at any time, ends it; a
        stream that drops later is one line, then quiet reconnections, with backoff, until
        one holds."""
        self.last = 0 if from_start else None
        where = self.stream.base_url
        try:
            reason = await self._follow(on_start=self._ready)
        except (httpx.TransportError, httpx.HTTPStatusError) as exc:
            raise RequestFailed(f"could not reach fluxhook at {where}: {exc}") from exc
        if self.last is None:
            raise RequestFailed(f"fluxhook at {where} ended the stream before it started: {reason}")
        while True:
            self.say(
                f"{self._now()}  lost the stream ({reason}); reconnecting after event {self.last}"
            )
            reason = await self._reconnect()

    async def _reconnect(self) -> str:
        """Connect again, with backoff, until a stream holds; why that one ended."""
        failures = 0
        while True:
            await anyio.sleep(reconnect_delay(failures))
            try:
                return await self._follow()
            except (httpx.TransportError, httpx.HTTPStatusError):  # fluxhook is not back yet
                failures += 1

    async def _follow(self, on_start=None) -> str:
        """One stream, resumed after `self.last` (from now if None), handled to its end; why it
        ended. `on_start` runs once the stream has an id to resume after: at once when it
        resumes, at its first message (the id-only one) when it starts from now."""
        headers = {} if self.last is None else {"last-event-id": str(self.last)}
        async with self.stream.stream("GET", "/v1/events", headers=headers) as response:
            await _check(response)
            if on_start and self.last is not None:
                on_start()
            try:
                async for event in stream_events(response.aiter_lines()):
                    if event.body:
                        await self._handle(event)
                    if on_start and self.last is None:
                        on_start()
                    self.last = event.seq
            except httpx.TransportError as exc:
                return failure_reason(exc)
        return "fluxhook closed it"

    def _ready(self) -> None:
        wanted = ", ".join(t for t in SUBSCRIPTION_EVENTS if t in self.types)
        self.say(f"ready: forwarding {wanted} to {self.target} (Ctrl-C to stop)")

    async def _handle(self, event: Event) -> None:
        if event.type in self.types:
            outcome = await self.forward(event)
            self.say(event_line(self.clock.now(), event, outcome))

    async def forward(self, event: Event) -> str:
        """One POST of the event; the line's outcome: the status and duration, or the error."""
        msg_id = f"msg_event_{event.seq}"
        headers = headers_for(self.subscription, msg_id, event.body, self.clock.now())
        started = anyio.current_time()
        try:
            response = await self.http.post(self.target, content=event.body, headers=headers)
        except httpx.TimeoutException:
            return f"no answer within {FORWARD_TIMEOUT_S:g} s"
        except httpx.HTTPError as exc:
            return failure_reason(exc)
        took_ms = round((anyio.current_time() - started) * 1000)
        return f"{response.status_code} in {took_ms} ms"

    def _now(self) -> str:
        return f"{self.clock.now().astimezone():%H:%M:%S}"


async def _check(response: httpx.Response) -> None:
    """A 4xx (a wrong or revoked key) ends `listen`; a 5xx raises HTTPStatusError."""
    if response.is_client_error:
        await response.aread()
        try:
            detail = response.json().get("detail")
        except ValueError:
            detail = response.text[:200]
        raise RequestFailed(f"fluxhook answered {response.status_code}: {detail}")
    response.raise_for_status()


def listen(args) -> int:
    types, secret = event_types(args.events), signing_secret(args.secret)
    target = forward_target(args.forward_to)
    url, key = connection(args)
    print(secret, flush=True)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how one stops listening
        anyio.run(_listen, url, key, target, secret, types, args.from_start)
    return 0


async def _listen(url: str, key: str, target: str, secret: str, types, from_start: bool) -> None:
    async with (
        httpx.AsyncClient(base_url=url, headers={"x-key": key}, timeout=STREAM_TIMEOUT) as stream,
        # The developer's own machine: no proxy from the environment; redirects not followed.
        httpx.AsyncClient(timeout=FORWARD_TIMEOUT_S, trust_env=False) as http,
    ):
        say = functools.partial(print, flush=True)
        await Forwarder(stream, http, target, secret, types, say=say).run(from_start)
