"""One courier per task with a `webhook_url`: sends its events in order, with retries.

Events are queued on the task (`Outbox`); the courier also emits progress events on BFL's clock
when `progress_events` is on. Every attempt is recorded on the task and counted in the stats.
"""

from dataclasses import dataclass, field

import anyio

from service.emulator import webhooks
from service.emulator.state import Attempt, Task
from service.emulator.webhooks import Event


@dataclass
class Outbox:
    events: list[Event] = field(default_factory=list)
    closed: bool = False  # the terminal events are queued; nothing more will come
    wake: anyio.Event = field(default_factory=anyio.Event)

    def put(self, *events: Event, last: bool = False) -> None:
        self.events.extend(events)
        self.closed = self.closed or last
        self.wake.set()


class Courier:
    def __init__(self, emulator, task: Task, outbox: Outbox) -> None:
        self.emulator = emulator
        self.task = task
        self.outbox = outbox
        progress = emulator.config.progress_events and not emulator.config.webhook_before_response
        self.next_percent = 10 if progress else None

    async def run(self) -> None:
        sent = 0
        while True:
            if sent < len(self.outbox.events):
                await self.deliver(self.outbox.events[sent])
                sent += 1
            elif self.outbox.closed:
                return
            else:
                await self.wait_for_news()

    async def wait_for_news(self) -> None:
        """Until an event is queued, or the next progress event is due (and queued)."""
        self.outbox.wake = wake = anyio.Event()
        if self.next_percent is None or self.task.status != "Pending":
            await wake.wait()
            return
        due = self.task.created_at + self.task.duration_s * (self.next_percent - 10) / 100
        with anyio.move_on_after(max(0.0, due - self.emulator.clock())):
            await wake.wait()
            return
        self.outbox.put(Event("progress", self.next_percent))
        self.next_percent = self.next_percent + 10 if self.next_percent < 100 else None

    async def deliver(self, event: Event) -> None:
        await anyio.sleep(event.delay_s)
        attempt = 0
        while True:
            attempt += 1
            status_code = await self.attempt(event)
            event.attempted.set()
            if webhooks.succeeded(status_code):
                self.emulator.store.stats.webhooks_delivered += 1
                return
            config = self.emulator.config
            delay = webhooks.retry_delay(attempt, config.webhook_retry_s, config.time_scale)
            if delay is None:
                self.emulator.store.stats.webhooks_failed += 1
                return
            await anyio.sleep(delay)

    async def attempt(self, event: Event) -> int | None:
        emulator, task, config = self.emulator, self.task, self.emulator.config
        body = webhooks.encode(emulator.event_body(task, event))
        head = webhooks.headers(body, task.webhook_secret, config.signature_header)
        at = emulator.clock()
        emulator.store.stats.webhooks_attempted += 1
        async with emulator.webhook_gate:
            status_code, error = await webhooks.post_once(
                emulator.http, task.webhook_url, body, head, config.webhook_timeout_s
            )
        task.attempts.append(Attempt(event.kind, at, status_code, error))
        return status_code
