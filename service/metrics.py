"""Prometheus text exposition, in-process: counters and histograms the code increments, and
gauges read at scrape time (jobs by status, queue depth, SSE clients)."""

import math
from collections import defaultdict
from collections.abc import Iterable

LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{key}="{_escape(str(value))}"' for key, value in pairs)
    return "{" + inner + "}" if inner else ""


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class Counter:
    kind = "counter"

    def __init__(self, name: str, help: str) -> None:
        self.name, self.help = name, help
        self._values: dict[tuple, float] = defaultdict(float)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._values[tuple(sorted(labels.items()))] += amount

    def value(self, **labels: str) -> float:
        return self._values.get(tuple(sorted(labels.items())), 0.0)

    def samples(self) -> list[tuple[str, tuple, float]]:
        return [(self.name, key, value) for key, value in sorted(self._values.items())]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        self._values[tuple(sorted(labels.items()))] = value

    def clear(self) -> None:
        self._values.clear()


class Histogram:
    kind = "histogram"

    def __init__(self, name: str, help: str, buckets=LATENCY_BUCKETS_S) -> None:
        self.name, self.help = name, help
        self._buckets = (*buckets, math.inf)
        self._counts: dict[tuple, list[int]] = {}
        self._sums: dict[tuple, float] = defaultdict(float)

    def observe(self, value: float, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        counts = self._counts.setdefault(key, [0] * len(self._buckets))
        for index, bound in enumerate(self._buckets):
            if value <= bound:
                counts[index] += 1
        self._sums[key] += value

    def count(self, **labels: str) -> int:
        return self._counts.get(tuple(sorted(labels.items())), [0])[-1]

    def samples(self) -> list[tuple[str, tuple, float]]:
        rows = []
        for key, counts in sorted(self._counts.items()):
            for bound, count in zip(self._buckets, counts, strict=True):
                rows.append((f"{self.name}_bucket", (*key, ("le", _number(bound))), count))
            rows.append((f"{self.name}_sum", key, self._sums[key]))
            rows.append((f"{self.name}_count", key, counts[-1]))
        return rows


class Metrics:
    """Every metric fluxhook exposes, by name (see README, Operations)."""

    def __init__(self) -> None:
        p = "fluxhook_"
        self.jobs = Gauge(p + "jobs", "Jobs by status and model (read at scrape time).")
        self.queue_depth = Gauge(p + "queue_depth", "Jobs waiting for an upstream slot.")
        self.upstream_in_flight = Gauge(p + "upstream_in_flight", "BFL tasks holding a slot.")
        self.sse_clients = Gauge(p + "sse_clients", "Open Server-Sent-Event streams.")
        self.jobs_submitted = Counter(p + "jobs_submitted_total", "Jobs accepted from clients.")
        self.webhooks_received = Counter(
            p + "webhooks_received_total", "Verified BFL webhooks, by outcome."
        )
        self.webhooks_rejected = Counter(
            p + "webhooks_rejected_total", "BFL webhooks refused, by reason."
        )
        self.upstream_responses = Counter(
            p + "upstream_responses_total", "Calls to BFL by operation and outcome."
        )
        self.reconciler_polls = Counter(
            p + "reconciler_polls_total", "get_result calls by the reconciler, by outcome."
        )
        self.jobs_completed = Counter(
            p + "jobs_completed_total", "Jobs BFL finished, by how fluxhook learned it."
        )
        self.images_stored = Counter(p + "images_stored_total", "Images fetched and stored.")
        self.image_fetch_failures = Counter(
            p + "image_fetch_failures_total", "Failed image downloads, by reason."
        )
        self.delivery_attempts = Counter(
            p + "delivery_attempts_total", "Callback POSTs to subscribers, by outcome."
        )
        self.delivery_failures = Counter(
            p + "delivery_failures_total", "Deliveries that became dead letters."
        )
        self.delivery_latency = Histogram(
            p + "delivery_latency_seconds", "From event commit to a subscriber's 2xx."
        )

    def all(self) -> list:
        return [value for value in vars(self).values() if hasattr(value, "samples")]

    def render(self) -> str:
        lines = []
        for metric in self.all():
            lines.append(f"# HELP {metric.name} {metric.help}")
            lines.append(f"# TYPE {metric.name} {metric.kind}")
            for name, labels, value in metric.samples():
                lines.append(f"{name}{_labels(labels)} {_number(value)}")
        return "\n".join(lines) + "\n"
