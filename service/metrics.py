"""Prometheus metrics on `prometheus_client`, correct with one process or several.

Three kinds of metric, each summed the way its meaning needs:

- Counters and the histogram the code increments (jobs submitted, webhooks, deliveries…):
  each process counts its own; a scrape shows the sum over every process.
- `fluxhook_sse_clients`, a gauge each process moves: the sum over the *live* processes
  (multiprocess mode `livesum`).
- Gauges read from the database at scrape time (`fluxhook_jobs`, `fluxhook_queue_depth`,
  `fluxhook_upstream_in_flight`): the database is shared, so only the process answering the
  scrape reports them (each process reporting them would count every job once per process).

Multiprocess mode is on when `PROMETHEUS_MULTIPROC_DIR` names a directory (prometheus_client's
convention). It must be set before the process starts: prometheus_client picks its value class
once, at import. Each increment then also writes to this process's memory-mapped file there
(`counter_<pid>.db`…), and `/metrics`, from whichever process it reaches, merges every file.
The directory must be empty when the first process starts (files left by an earlier run would
be added in) and shared only by processes of one deployment on one machine; a `fluxhook worker`
pointed at it is counted too. When a process exits, whoever started it calls
`prometheus_client.multiprocess.mark_process_dead(pid)`, which drops its live gauges; its
counters stay in the sums, as counters must. The supervisor of `fluxhook serve` with
`WEB_CONCURRENCY` > 1 does both: a fresh directory in its children's environment, and
`mark_process_dead` as each one exits. Without the variable, everything stays in memory and
`/metrics` describes this process alone.

Each app has a private `CollectorRegistry` (tests build many apps in one process); in
multiprocess mode, there is one `Metrics` per process (two would write over each other's file
entries).
"""

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest, values
from prometheus_client import Counter as _Counter
from prometheus_client import Gauge as _Gauge
from prometheus_client import Histogram as _Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector

from service.settings import SettingsError

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Instrument:
    """A prometheus_client metric behind fluxhook's call API: `inc(amount, **labels)`,
    `observe(value, **labels)`. Children are cached: `labels()` costs ~1.2 µs a call."""

    def __init__(self, metric: _Counter | _Gauge | _Histogram, sample: str) -> None:
        self._metric, self._sample = metric, sample
        self._children: dict[tuple, _Counter | _Gauge | _Histogram] = {}

    def _child(self, labels: dict[str, str]):
        if not labels:
            return self._metric
        key = tuple(labels.items())
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._metric.labels(**labels)
        return child

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        self._child(labels).inc(amount)

    def observe(self, value: float, **labels: str) -> None:
        self._child(labels).observe(value)

    def value(self, **labels: str) -> float:
        """This process's value for these labels (0 if never touched)."""
        wanted = {key: str(value) for key, value in labels.items()}
        for family in self._metric.collect():
            for sample in family.samples:
                if sample.name == self._sample and sample.labels == wanted:
                    return sample.value
        return 0.0

    def collect(self) -> Iterator[Metric]:
        """For the in-memory registry; without `_created` samples, which multiprocess mode
        does not have either, so both modes expose the same series."""
        for family in self._metric.collect():
            family.samples = [s for s in family.samples if not s.name.endswith("_created")]
            yield family


class ScrapeGauge:
    """A gauge the scraping process sets just before rendering (from the database), reported
    by that process only: never written to the multiprocess files."""

    def __init__(self, name: str, help: str, labelnames: tuple[str, ...] = ()) -> None:
        self.name, self.help, self._labelnames = name, help, labelnames
        self._values: dict[tuple[str, ...], float] = {}

    def _key(self, labels: dict[str, str]) -> tuple[str, ...]:
        assert set(labels) == set(self._labelnames), (self.name, labels)
        return tuple(str(labels[name]) for name in self._labelnames)

    def set(self, value: float, **labels: str) -> None:
        self._values[self._key(labels)] = value

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        self._values[key] = self._values.get(key, 0.0) + amount

    def clear(self) -> None:
        self._values.clear()

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(self.name, self.help, labels=self._labelnames)
        for key, value in sorted(self._values.items()):
            family.add_metric(key, value)
        yield family


def _counter(name: str, help: str, *labelnames: str) -> Instrument:
    # registry=None: the scrape registry reads them (directly, or from the files).
    return Instrument(_Counter(name, help, labelnames, registry=None), name)


def multiprocess_dir() -> str | None:
    """PROMETHEUS_MULTIPROC_DIR when multiprocess mode is on; an error if prometheus_client
    was imported before the variable was set (or after it was removed)."""
    path = os.environ.get(MULTIPROC_DIR)
    if (path is None) != (values.ValueClass is values.MutexValue):
        raise SettingsError(f"{MULTIPROC_DIR}: set or unset after prometheus_client was imported")
    if path is not None and not os.path.isdir(path):
        raise SettingsError(f"{MULTIPROC_DIR}: {path!r} is not a directory")
    return path


class Metrics:
    """Every metric fluxhook exposes, by name (see README, Operations). Label names are listed
    in alphabetical order: that is the order they are rendered in, in both modes."""

    def __init__(self) -> None:
        path = multiprocess_dir()  # first: unlabelled metrics open their file when built
        p = "fluxhook_"
        self.jobs = ScrapeGauge(
            p + "jobs", "Jobs by status and model (read at scrape time).", ("model", "status")
        )
        self.queue_depth = ScrapeGauge(p + "queue_depth", "Jobs waiting for an upstream slot.")
        self.upstream_in_flight = ScrapeGauge(p + "upstream_in_flight", "BFL tasks holding a slot.")
        sse = _Gauge(
            p + "sse_clients",
            "Open Server-Sent-Event streams.",
            registry=None,
            multiprocess_mode="livesum",
        )
        self.sse_clients = Instrument(sse, p + "sse_clients")
        self.jobs_submitted = _counter(
            p + "jobs_submitted_total", "Jobs accepted from clients.", "model"
        )
        self.webhooks_received = _counter(
            p + "webhooks_received_total", "Verified BFL webhooks, by outcome.", "outcome"
        )
        self.webhooks_rejected = _counter(
            p + "webhooks_rejected_total", "BFL webhooks refused, by reason.", "reason"
        )
        self.upstream_responses = _counter(
            p + "upstream_responses_total",
            "Calls to BFL by operation and outcome.",
            "op",
            "outcome",
        )
        self.reconciler_polls = _counter(
            p + "reconciler_polls_total",
            "get_result calls by the reconciler, by outcome.",
            "outcome",
        )
        self.jobs_completed = _counter(
            p + "jobs_completed_total", "Jobs BFL finished, by how fluxhook learned it.", "via"
        )
        self.images_stored = _counter(p + "images_stored_total", "Images fetched and stored.")
        self.image_fetch_failures = _counter(
            p + "image_fetch_failures_total", "Failed image downloads, by reason.", "reason"
        )
        self.delivery_attempts = _counter(
            p + "delivery_attempts_total", "Callback POSTs to subscribers, by outcome.", "outcome"
        )
        self.delivery_failures = _counter(
            p + "delivery_failures_total", "Deliveries that became dead letters."
        )
        latency = _Histogram(
            p + "delivery_latency_seconds",
            "From event commit to a subscriber's 2xx.",
            buckets=LATENCY_BUCKETS_S,
            registry=None,
        )
        self.delivery_latency = Instrument(latency, p + "delivery_latency_seconds")
        self.registry = self._registry(path)

    def _registry(self, path: str | None) -> CollectorRegistry:
        registry = CollectorRegistry()
        for gauge in (self.jobs, self.queue_depth, self.upstream_in_flight):
            registry.register(gauge)
        if path is not None:
            MultiProcessCollector(registry, path)  # registers itself: every process's files
        else:
            for value in vars(self).values():
                if isinstance(value, Instrument):
                    registry.register(value)
        return registry

    def render(self) -> str:
        return generate_latest(self.registry).decode()
