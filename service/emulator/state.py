"""Tasks, per-key balances and the counters: the emulator's memory, free of I/O."""

import collections
from dataclasses import dataclass, field

import anyio

from service.catalog import ModelSpec, Price

TERMINAL = ("Ready", "Error", "Request Moderated", "Content Moderated")
MARKERS = {  # prompt marker -> outcome; request moderation is checked first, before generation
    "[request-moderated]": "Request Moderated",
    "[content-moderated]": "Content Moderated",
    "[error]": "Error",
}


def planned_outcome(prompt: str) -> str:
    return next((status for marker, status in MARKERS.items() if marker in prompt), "Ready")


@dataclass
class Attempt:
    event: str  # "terminal" or "progress"
    at: float  # epoch seconds when the POST started
    status_code: int | None  # None: no HTTP answer (connection error, timeout)
    error: str | None


@dataclass(eq=False)
class Task:
    id: str
    key: str
    model: ModelSpec
    inputs: dict
    seed: int
    region: str
    base_url: str  # the emulator's URL as the submitting client saw it: webhooks link here
    created_at: float
    duration_s: float
    manual: bool
    price: Price
    size: tuple[int, int]
    outcome: str
    webhook_url: str | None = None
    webhook_secret: str | None = None
    webhook_dropped: bool = False
    status: str = "Pending"
    finished_at: float | None = None
    details: dict | None = None
    legacy_status: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)

    @property
    def prompt(self) -> str:
        return self.inputs.get("prompt") or ""

    @property
    def output_format(self) -> str:
        return self.inputs.get("output_format") or "jpeg"

    def progress(self, now: float) -> float:
        """flux-dev style: 0.1 at once, then a tenth more per tenth of the run, at most 1.0."""
        fraction = (now - self.created_at) / self.duration_s if self.duration_s else 1.0
        return round(min(1.0, 0.1 + int(max(fraction, 0.0) * 10) / 10), 1)


@dataclass
class Stats:
    submits: int = 0
    tasks_created: int = 0
    get_result: int = 0
    get_result_by_task: collections.Counter = field(default_factory=collections.Counter)
    webhooks_attempted: int = 0
    webhooks_delivered: int = 0
    webhooks_failed: int = 0
    webhooks_dropped: int = 0
    max_active: int = 0
    # Images served whole-body (200) from /delivery: a client that downloads twice shows here.
    deliveries: int = 0
    delivery_bytes: int = 0
    deliveries_by_task: collections.Counter = field(default_factory=collections.Counter)

    def count_delivery(self, task_id: str, size: int) -> None:
        self.deliveries += 1
        self.delivery_bytes += size
        self.deliveries_by_task[task_id] += 1


class Store:
    """Tasks in submit order, who has how many running, and every key's credits."""

    def __init__(self, default_credits: float, keys: list[str] | None) -> None:
        self.tasks: dict[str, Task] = {}
        self.stats = Stats()
        self.default_credits = default_credits
        self.credits = dict.fromkeys(keys or (), default_credits)
        self._active: collections.Counter = collections.Counter()
        self._finished: collections.deque[Task] = collections.deque()

    def balance(self, key: str) -> float:
        return self.credits.get(key, self.default_credits)

    def set_all_credits(self, amount: float) -> None:
        self.default_credits = amount
        self.credits = dict.fromkeys(self.credits, amount)

    def active(self, key: str, slot_class: str | None = None) -> int:
        return self._active[(key, slot_class)] if slot_class else self._active[key]

    @property
    def active_total(self) -> int:
        return self._active["*"]

    def add(self, task: Task) -> None:
        self.tasks[task.id] = task
        self.credits[task.key] = self.balance(task.key) - task.price.cost
        self.stats.tasks_created += 1
        for slot in (task.key, (task.key, task.model.slot_class), "*"):
            self._active[slot] += 1
        self.stats.max_active = max(self.stats.max_active, self.active_total)

    def finished(self, task: Task) -> None:
        for slot in (task.key, (task.key, task.model.slot_class), "*"):
            self._active[slot] -= 1
        self._finished.append(task)

    def forget_older_than(self, cutoff: float) -> None:
        """Drop tasks that finished before `cutoff` (epoch seconds): BFL forgets them too."""
        while self._finished and self._finished[0].finished_at < cutoff:
            self.tasks.pop(self._finished.popleft().id, None)
