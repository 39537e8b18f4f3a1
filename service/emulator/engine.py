"""The emulated BFL: admits tasks, runs them on its clock, answers for them, resets.

Routes (`routes.py`, `control.py`) translate HTTP into calls here; background work (task runs,
webhook couriers) is spawned into the task group the app's lifespan provides, and cancelled on
reset. Every random choice draws from one `random.Random(seed)`; task ids are real uuid4s, so
they stay unique across restarts of a seeded emulator.
"""

import logging
import random
import secrets
import time
import uuid
from collections.abc import Callable

import anyio
import httpx

from service import catalog
from service.emulator.config import EmulatorConfig
from service.emulator.courier import Courier, Outbox
from service.emulator.images import ImageCache, UrlSigner
from service.emulator.state import TERMINAL, Store, Task, planned_outcome
from service.emulator.webhooks import LEGACY_STATUS, Event, progress_body, terminal_body

logger = logging.getLogger(__name__)
MODERATION_REASONS = ("Sexual Content", "Violence", "Public Figures", "Derivative Works")
REQUEST_MODERATION_SHARE = 0.05  # request moderation answers in 5% of the model's latency


WEBHOOK_CONCURRENCY = 64


class Rejected(Exception):
    """BFL refuses the submit (402, 429); nothing was created or charged."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


class Emulator:
    def __init__(
        self,
        config: EmulatorConfig,
        keys: list[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if config.seed is None:
            config = config.model_copy(update={"seed": secrets.randbelow(2**31)})
        self.startup_config = config
        self.keys = keys
        self.clock = clock
        self.images = ImageCache()
        self.signer = UrlSigner(secrets.token_bytes(32))
        self.http: httpx.AsyncClient | None = None
        self._task_group = None
        self._scopes: set[anyio.CancelScope] = set()
        self._outboxes: dict[str, Outbox] = {}
        self.reset()

    # ---- lifecycle ----------------------------------------------------------------------

    def start(self, task_group, http: httpx.AsyncClient) -> None:
        self._task_group, self.http = task_group, http
        # Fewer webhook POSTs in flight than the client's connections: a request queued
        # inside httpcore's pool costs a rescan of the whole queue on every change.
        self.webhook_gate = anyio.CapacityLimiter(WEBHOOK_CONCURRENCY)

    def reset(self) -> None:
        for scope in list(self._scopes):
            scope.cancel()
        self.config = self.startup_config
        self.rng = random.Random(self.config.seed)
        self.store = Store(self.config.credits, self.keys)
        self._outboxes = {}

    def configure(self, changes: object) -> EmulatorConfig:
        new = self.config.updated(changes)
        if new.seed != self.config.seed:
            self.rng = random.Random(new.seed)
        if isinstance(changes, dict) and "credits" in changes:
            self.store.set_all_credits(new.credits)
        self.config = new
        return new

    def draw(self, probability: float) -> bool:
        """A fault fires with `probability`; no draw at 0 keeps the sequence stable."""
        return probability > 0 and self.rng.random() < probability

    def spawn(self, fn, *args) -> None:
        self._task_group.start_soon(self._supervised, fn, args)

    async def _supervised(self, fn, args) -> None:
        with anyio.CancelScope() as scope:
            self._scopes.add(scope)
            try:
                await fn(*args)
            except Exception:
                logger.exception("emulator background task %s crashed", fn.__name__)
            finally:
                self._scopes.discard(scope)

    # ---- tasks --------------------------------------------------------------------------

    def admit(self, key: str, model: catalog.ModelSpec, inputs: dict, base_url: str) -> Task:
        self.forget_old()
        config, store = self.config, self.store
        if store.active(key) >= config.active_limit:
            raise Rejected(429, _too_many(config.active_limit, "tasks"))
        slot = model.slot_class
        if slot != "default" and store.active(key, slot) >= config.kontext_max_limit:
            raise Rejected(429, _too_many(config.kontext_max_limit, f"{slot} tasks"))
        price = catalog.price(model, inputs)
        if price.cost > store.balance(key):
            raise Rejected(402, _insufficient(price.cost, store.balance(key)))
        task = self._new_task(key, model, inputs, base_url, price)
        store.add(task)
        if task.webhook_url and not task.webhook_dropped:
            self._outboxes[task.id] = outbox = Outbox()
            self.spawn(Courier(self, task, outbox).run)
        if not config.webhook_before_response:
            self.spawn(self._run, task)
        return task

    def _new_task(self, key, model, inputs, base_url, price) -> Task:
        config, now = self.config, self.clock()
        seed = inputs.get("seed")
        outcome = planned_outcome(inputs.get("prompt") or "")
        duration = config.latency(model.name)
        webhook_url = inputs.get("webhook_url") if model.webhooks else None
        dropped = bool(webhook_url) and self.draw(config.drop_webhooks)
        self.store.stats.webhooks_dropped += dropped
        return Task(
            id=str(uuid.uuid4()),
            key=key,
            model=model,
            inputs=inputs,
            seed=self.rng.randrange(2**32) if seed is None else seed,
            region=config.region,
            base_url=base_url,
            created_at=now,
            duration_s=duration
            * (REQUEST_MODERATION_SHARE if outcome == "Request Moderated" else 1),
            manual=config.manual,
            price=price,
            size=catalog.output_size(model, inputs),
            outcome=outcome,
            webhook_url=webhook_url,
            webhook_secret=inputs.get("webhook_secret") if webhook_url else None,
            webhook_dropped=dropped,
        )

    async def _run(self, task: Task) -> None:
        if task.manual:
            return
        with anyio.move_on_after(task.duration_s):
            await task.done.wait()
        if task.status == "Pending":
            self.finish(task, task.outcome)

    def finish(self, task: Task, status: str) -> list[Event]:
        """Make `task` terminal now; returns the webhook events queued for it."""
        assert task.status == "Pending", task.status
        assert status in TERMINAL, status
        task.status, task.finished_at = status, self.clock()
        task.details = self._details(status)
        if status == "Content Moderated":
            task.legacy_status = self._legacy_moderated_status()
        self.store.finished(task)
        task.done.set()
        return self._queue_terminal(task)

    async def finish_before_response(self, task: Task) -> None:
        """`webhook_before_response`: terminal at once, first webhook attempt made."""
        events = self.finish(task, task.outcome)
        if events:
            await events[0].attempted.wait()

    def _details(self, status: str) -> dict | None:
        if status == "Error":
            return {"error": "Generation failed: the model raised an internal error"}
        if status in ("Request Moderated", "Content Moderated"):
            return {"Moderation Reasons": [self.rng.choice(MODERATION_REASONS)]}
        return None

    def _legacy_moderated_status(self) -> str:
        wording = self.config.legacy_moderated_status
        if wording != "random":
            return wording
        return self.rng.choice(("Content Moderated", "GENERATED CONTENT MODERATED"))

    def _queue_terminal(self, task: Task) -> list[Event]:
        outbox = self._outboxes.pop(task.id, None)
        if outbox is None:
            return []
        config = self.config
        low, high = config.webhook_delay_s
        events = [Event("terminal", delay_s=self.rng.uniform(low, high) if high else 0.0)]
        if self.draw(config.duplicate_webhooks):
            events.append(Event("terminal"))
        if config.reorder:
            events.append(Event("progress", progress=90))
        outbox.put(*events, last=True)
        return events

    # ---- answers ------------------------------------------------------------------------

    def forget_old(self) -> None:
        self.store.forget_older_than(self.clock() - self.config.scaled(self.config.retention_s))

    def lookup(self, task_id: str, region: str | None) -> Task | None:
        """The task as `/v1/get_result` (region None) or a regional path sees it."""
        self.forget_old()
        task = self.store.tasks.get(task_id)
        if task is None or (region is None and self.config.global_mode):
            return None
        return task if region in (None, task.region) else None

    def result_body(self, task: Task) -> dict:
        progress = task.progress(self.clock()) if task.model.progress else None
        return {
            "id": task.id,
            "status": task.status,
            "result": self._result(task) if task.status == "Ready" else None,
            "progress": progress if task.status == "Pending" else None,
            "details": task.details,
            "preview": None,
        }

    def _result(self, task: Task) -> dict:
        start, end = task.created_at, task.finished_at
        sample = self.sample_url(task)
        if task.model.result_style == "flux2":
            return {"start_time": start, "prompt": task.prompt, "seed": task.seed, "sample": sample}
        return {
            "sample": sample,
            "prompt": task.prompt,
            "seed": task.seed,
            "start_time": start,
            "end_time": end,
            "duration": end - start,
        }

    def sample_url(self, task: Task) -> str:
        config = self.config
        expires = self.clock() + config.scaled(config.url_ttl_s)
        precise = config.time_scale < 1
        return self.signer.url(task.base_url, task.id, task.output_format, expires, precise=precise)

    def event_body(self, task: Task, event: Event) -> dict:
        dialect = self.config.dialect
        if event.kind == "progress":
            return progress_body(task.id, event.progress, dialect)
        legacy = task.legacy_status or LEGACY_STATUS.get(task.status, task.status)
        return terminal_body(self.result_body(task), task.price.cost, dialect, legacy)


def _too_many(limit: int, what: str) -> str:
    return (
        f"Too many active tasks: this API key already has {limit} active {what} "
        f"(limit {limit}). Wait for one to finish and retry."
    )


def _insufficient(cost: float, balance: float) -> str:
    return f"Insufficient credits: this request costs {cost:g} credits, {balance:g} left."
