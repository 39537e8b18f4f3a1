"""The one table: each figure as median [min–max] over runs, its target, and whether it meets it.

Rows name a measurement and one of the figures it returns per run. A measurement that could
not run on this machine (no PostgreSQL) is shown as skipped; one that failed, as failed.
"""

import math
from dataclasses import dataclass

from bench.stats import spread

SKIPPED = "skipped (no PostgreSQL)"


@dataclass(frozen=True)
class Target:
    op: str  # "<=", ">=" or "=="
    value: float

    def met(self, figure: float) -> bool:
        if self.op == "==":
            return figure == self.value
        return figure <= self.value if self.op == "<=" else figure >= self.value


@dataclass(frozen=True)
class Row:
    label: str
    source: str  # measurement name
    metric: str  # figure name within it
    unit: str  # "ms", "/s", "x", "%", "+%" (a change), "MB", "calls"
    target: Target | None = None
    also: str | None = None  # a second figure shown beside the first (RSS: end beside peak)


def at_most(value: float) -> Target:
    return Target("<=", value)


def at_least(value: float) -> Target:
    return Target(">=", value)


@dataclass(frozen=True)
class Shape:
    """The parts of the plans that the row labels name."""

    notify_rate: float
    light_rate: float
    pipeline_rate: float
    stream_sizes: tuple[int, int]
    latencies: tuple[float, ...]
    slots_load: str
    pixel_rates: tuple[float, ...]
    soak_jobs: int
    fairness_load: str
    scale_rate: float


def rows(shape: Shape) -> list[tuple[str, list[Row]]]:
    return [
        (
            f"1. Time to notification (SQLite, {shape.notify_rate:g} jobs/s, from the "
            "emulator's terminal event; fluxhook on a core of its own, bench/cores.py)",
            [*_notify_rows("notify", at_most(15), at_most(50)), *_speedup_rows(),
             *_leg_rows("notify")],
        ),
        (f"   the same at {shape.light_rate:g} jobs/s (no target)",
         _notify_rows("notify_light") + _leg_rows("notify_light")),
        ("2. Upstream economy (BFL calls per completed job: submit + get_result)",
         _economy_rows(shape.latencies)),
        ("3. Receiver ingest (verified webhooks/s into one process, 32 connections)",
         _ingest_rows()),
        (f"4. Whole pipeline (submit → webhook → stored image → delivered callback; offered "
         f"{shape.pipeline_rate:g} jobs/s)", _pipeline_rows()),
        ("5. Streams (N SSE clients on one process, SQLite)", _stream_rows(*shape.stream_sizes)),
        ("6. fluxhook resident memory under each load (peak · end)", _rss_rows(shape)),
        (f"7. Slots come back fast (queue wait, accepted → submitted upstream; {shape.slots_load})",
         _slots_rows()),
        (f"8. Storage and retention (SQLite, {shape.soak_jobs} jobs of 1024×768 JPEG, MB)",
         _soak_rows()),
        ("9. Time to pixels (SQLite; delivery hop: 0.15 s to first byte, 20 MB/s; "
         "1024×768 JPEG; from the emulator's terminal event; fluxhook on a core of its own)",
         [row for rate in shape.pixel_rates for row in _pixel_rows(rate)]),
        (f"10. Fair share (tenant B's queue wait, accepted → submitted upstream; "
         f"{shape.fairness_load}; SQLite)", _fairness_rows()),
        (f"11. Scale-out (PostgreSQL: `serve` with WEB_CONCURRENCY=N, plus one `worker`; offered "
         f"{shape.scale_rate:g} jobs/s; CPU of every fluxhook process)", _scale_rows()),
    ]  # fmt: skip


def _soak_rows() -> list[Row]:
    rows = []
    for store in ("db", "s3"):
        rows += [
            Row(f"{store}: database, empty", "soak", f"{store}_empty_mb", "MB"),
            Row(f"{store}: database after the load", "soak", f"{store}_loaded_mb", "MB"),
            Row(f"{store}: database after a prune", "soak", f"{store}_pruned_mb", "MB"),
        ]
    return [
        *rows,
        Row("s3: bucket after the load", "soak", "s3_bucket_loaded_mb", "MB"),
        Row("s3: bucket after a prune", "soak", "s3_bucket_pruned_mb", "MB"),
        Row("s3: one image through fluxhook's link (streamed), p50", "soak",
            "serve_stream_ms", "ms"),
        Row("s3: the same as a 302 + presigned GET would cost, p50", "soak",
            "serve_redirect_ms", "ms"),
    ]  # fmt: skip


def _pixel_rows(rate: float) -> list[Row]:
    source = f"pixels_{rate:g}"
    light = rate <= 10  # the light-load goals
    return [
        Row(f"{rate:g} jobs/s: SSE client gets job.ready, p50", source, "sse_p50_ms", "ms",
            at_most(5) if light else None),
        Row(f"{rate:g} jobs/s: SSE client gets job.ready, p99", source, "sse_p99_ms", "ms",
            at_most(20) if light else None),
        Row(f"{rate:g} jobs/s: subscriber gets job.ready, p50", source, "callback_p50_ms", "ms",
            at_most(5) if light else None),
        Row(f"{rate:g} jobs/s: subscriber gets job.ready, p99", source, "callback_p99_ms", "ms",
            at_most(20) if light else None),
        Row(f"{rate:g} jobs/s: image in the SSE client's hand, p50", source, "pixels_p50_ms",
            "ms"),
        Row(f"{rate:g} jobs/s: image in the SSE client's hand, p99", source, "pixels_p99_ms",
            "ms"),
        Row(f"{rate:g} jobs/s: polling loop, image in hand, p50", source,
            "polling_pixels_p50_ms", "ms"),
        Row(f"{rate:g} jobs/s: fluxhook sooner than polling, p50", source,
            "pixels_sooner_p50_ms", "ms", at_least(200)),
        Row(f"{rate:g} jobs/s: downloads from BFL's delivery route per job", source,
            "downloads_per_job", "calls", Target("==", 1.0)),
    ]  # fmt: skip


def _notify_rows(source: str, p50: Target | None = None, p99: Target | None = None) -> list:
    return [
        Row("SSE client gets job.ready, p50", source, "sse_p50_ms", "ms", p50),
        Row("SSE client gets job.ready, p99", source, "sse_p99_ms", "ms", p99),
        Row("subscriber callback, p50", source, "callback_p50_ms", "ms", p50),
        Row("subscriber callback, p99", source, "callback_p99_ms", "ms", p99),
        Row("baseline: docs' 0.5 s polling loop, p50", source, "polling_p50_ms", "ms"),
        Row("baseline: docs' 0.5 s polling loop, p99", source, "polling_p99_ms", "ms"),
    ]


def _leg_rows(source: str) -> list[Row]:
    return [
        Row("  p50 legs: emulator event → webhook sent", source, "leg_emulator_p50_ms", "ms"),
        Row("  webhook → image stored, job.ready recorded", source, "leg_stored_p50_ms", "ms"),
        Row("  recorded → SSE client", source, "leg_to_sse_p50_ms", "ms"),
        Row("  recorded → subscriber callback", source, "leg_to_callback_p50_ms", "ms"),
    ]  # fmt: skip


def _speedup_rows() -> list[Row]:
    return [
        Row("speed-up vs polling, SSE (ratio of p50s)", "notify", "speedup_sse", "x", at_least(10)),
        Row("speed-up vs polling, callback (ratio of p50s)", "notify", "speedup_callback", "x",
            at_least(10)),
    ]  # fmt: skip


def _ingest_rows() -> list[Row]:
    out = []
    for engine, name in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
        source = f"ingest_{engine}"
        out += [
            Row(f"fluxhook receiver, {name}", source, "fluxhook_per_s", "/s"),
            Row("bare Starlette + hypercorn, same run", source, "bare_per_s", "/s"),
            Row(f"fluxhook / bare, {name}", source, "share", "%", at_least(0.6)),
        ]
    return out


def _pipeline_rows() -> list[Row]:
    out = []
    for engine, name in (("sqlite", "SQLite"), ("postgres", "PostgreSQL")):
        source = f"pipeline_{engine}"
        out += [
            Row(f"sustained jobs/s, {name}", source, "sustained_per_s", "/s", at_least(250)),
            Row(f"end-to-end p99, {name}", source, "e2e_p99_ms", "ms"),
            Row("  stages: submits answered/s", source, "accepted_per_s", "/s"),
            Row("  images stored (job.ready at an SSE client)/s", source, "stored_per_s", "/s"),
            Row("  CPU, % of one core: fluxhook", source, "cpu_percent", "pct"),
            Row("  CPU, % of one core: the emulator", source, "emulator_cpu_percent", "pct"),
        ]
    return out


def _stream_rows(small: int, large: int) -> list[Row]:
    return [
        Row(f"fan-out p99, N={small}", f"streams_{small}", "fanout_p99_ms", "ms"),
        Row(f"fan-out p99, N={large}", f"streams_{large}", "fanout_p99_ms", "ms", at_most(100)),
        Row(f"  fan-out p50, N={large}", f"streams_{large}", "fanout_p50_ms", "ms"),
        Row(
            "  CPU per event to all N: fluxhook",
            f"streams_{large}",
            "fluxhook_cpu_ms_per_event",
            "ms",
        ),
        Row(
            "  CPU per event to all N: the generator",
            f"streams_{large}",
            "generator_cpu_ms_per_event",
            "ms",
        ),
        Row(f"RSS peak, N={small}", f"streams_{small}", "rss_peak_mb", "MB"),
        Row(f"RSS peak, N={large}", f"streams_{large}", "rss_peak_mb", "MB", at_most(250)),
    ]


def _rss_rows(shape: Shape) -> list[Row]:
    small, large = shape.stream_sizes
    loads = (
        (f"notification, {shape.notify_rate:g} jobs/s", "notify"),
        ("ingest, SQLite", "ingest_sqlite"),
        ("ingest, PostgreSQL", "ingest_postgres"),
        ("pipeline, SQLite", "pipeline_sqlite"),
        ("pipeline, PostgreSQL", "pipeline_postgres"),
        (f"{small} SSE streams", f"streams_{small}"),
        (f"{large} SSE streams", f"streams_{large}"),
    )
    return [Row(label, source, "rss_peak_mb", "MB", also="rss_end_mb") for label, source in loads]


def _slots_rows() -> list[Row]:
    return [
        Row("queue wait p50, early checks", "slots", "early_wait_p50_ms", "ms", at_most(5000)),
        Row("queue wait p99, early checks", "slots", "early_wait_p99_ms", "ms"),
        Row("  get_result per lost webhook, at the last submit", "slots",
            "early_polls_per_lost", "calls"),
        Row("before: queue wait p50, no early checks", "slots", "without_wait_p50_ms", "ms"),
        Row("before: queue wait p99, no early checks", "slots", "without_wait_p99_ms", "ms"),
        Row("  get_result per lost webhook, at the last submit", "slots",
            "without_polls_per_lost", "calls"),
    ]  # fmt: skip


def _fairness_rows() -> list[Row]:
    return [
        Row("fair (round-robin): B's queue wait p50", "fairness", "fair_wait_p50_ms", "ms"),
        Row("fair (round-robin): B's queue wait p99", "fairness", "fair_wait_p99_ms", "ms"),
        Row("before: fifo, B's queue wait p50", "fairness", "fifo_wait_p50_ms", "ms"),
        Row("before: fifo, B's queue wait p99", "fairness", "fifo_wait_p99_ms", "ms"),
    ]


def _scale_rows() -> list[Row]:
    out = []
    for processes in (1, 2):
        source, n = f"scale_pg_{processes}", f"N={processes}"
        out += [
            Row(f"{n}: sustained jobs/s", source, "sustained_per_s", "/s"),
            Row(f"{n}: CPU per job", source, "cpu_ms_per_job", "ms"),
            Row(f"{n}: SSE client gets job.ready, p50", source, "sse_p50_ms", "ms"),
            Row(f"{n}: SSE client gets job.ready, p99", source, "sse_p99_ms", "ms"),
            Row(f"{n}: subscriber gets job.ready, p50", source, "callback_p50_ms", "ms"),
            Row(f"{n}: subscriber gets job.ready, p99", source, "callback_p99_ms", "ms"),
        ]
    out.append(Row("N=2: busiest serve process's share of their CPU", "scale_pg_2",
                   "busiest_serve_share", "%"))  # fmt: skip
    out.append(Row("N=2 against N=1: CPU per job grows by", SCALE_GROWTH, "cpu_growth", "+%",
                   at_most(0.10)))  # fmt: skip
    return out


SCALE_GROWTH = "scale_growth"


def with_derived(results: dict) -> dict:
    """`results` and the figures made of two measurements' runs: how much the CPU per job
    grows with the second serve process, run by run (each run measures N=1, then N=2)."""
    one, two = results.get("scale_pg_1"), results.get("scale_pg_2")
    if SKIPPED in (one, two):
        return {**results, SCALE_GROWTH: SKIPPED}
    if not one or not two:
        return results
    growth = [
        {"cpu_growth": b["cpu_ms_per_job"] / a["cpu_ms_per_job"] - 1}
        for a, b in zip(one, two, strict=False)
        if "error" not in a and "error" not in b
    ]
    return {**results, SCALE_GROWTH: growth}


def _economy_rows(latencies: tuple[float, ...]) -> list[Row]:
    out = []
    for latency in latencies:
        name = f"{latency:g}s"
        out += [
            Row(f"fluxhook, {name} model", "economy", f"fluxhook_{name}", "calls", at_most(1.05)),
            Row(f"polling loop, {name} model", "economy", f"polling_{name}", "calls"),
            Row(f"polling / fluxhook, {name} model", "economy", f"ratio_{name}", "x"),
        ]
    return out


def fmt(value: float, unit: str) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "∞"
    if unit == "%":
        return f"{value * 100:.0f}%"
    if unit == "+%":  # a change, signed, to a tenth of a point
        return f"{value * 100:+.1f}%"
    if unit == "pct":  # already a percentage
        return f"{value:.0f}%"
    if unit == "x":
        return f"{value:.1f}x" if value >= 1 else f"{value:.2f}x"
    if unit == "calls":
        return f"{value:.2f}"
    if unit == "MB" and value < 10:  # a database file near empty: 0.2 MB, not 0
        return f"{value:.2f}"
    if unit in ("/s", "MB"):
        return f"{value:.0f}"
    return f"{value:.1f}"


def _unit(unit: str) -> str:
    return {"%": "", "+%": "", "pct": "", "x": "", "calls": ""}.get(unit, " " + unit)


def _cell(values: list[float], unit: str) -> str:
    s = spread(values)
    if len([v for v in values if v == v]) <= 1:
        return fmt(s["median"], unit) + _unit(unit)
    return f"{fmt(s['median'], unit)} [{fmt(s['min'], unit)}–{fmt(s['max'], unit)}]{_unit(unit)}"


def _target(row: Row) -> str:
    if row.target is None:
        return ""
    sign = {"<=": "≤", ">=": "≥", "==": "="}[row.target.op]
    return f"{sign} {fmt(row.target.value, row.unit)}{_unit(row.unit)}"


def evaluate(row: Row, runs: list | str | None) -> tuple[str, str]:
    """(value cell, meets cell) of a row, from the measurement's per-run figures."""
    if runs == SKIPPED:
        return SKIPPED, "–"
    figures = [run for run in runs or [] if "error" not in run]
    if not figures:
        return "failed (see log)" if runs else "not run", "–"
    values = [run.get(row.metric, math.nan) for run in figures]
    cell = _cell(values, row.unit)
    if row.also:
        cell += " · " + _cell([run.get(row.also, math.nan) for run in figures], row.unit)
    if row.target is None:
        return cell, ""
    median = spread(values)["median"]
    if math.isnan(median):
        return cell, "–"
    return cell, "yes" if row.target.met(median) else "NO"


def table(sections: list[tuple[str, list[Row]]], results: dict) -> tuple[str, dict]:
    """The table as text, and each row's summary for the JSON file."""
    lines, summary = [], {}
    widths = (54, 34, 10)
    header = ("measurement", "median [min–max]", "target", "meets?")
    lines.append(_line(header, widths))
    lines.append(_line((*("-" * w for w in widths), "------"), widths))
    for title, section_rows in sections:
        lines.append(title)
        for row in section_rows:
            cell, meets = evaluate(row, results.get(row.source))
            lines.append(_line(("  " + row.label, cell, _target(row), meets), widths))
            summary[f"{row.source}.{row.metric}"] = {
                "value": cell,
                "target": _target(row),
                "meets": meets,
            }
    return "\n".join(lines), summary


def _line(cells: tuple[str, ...], widths: tuple[int, ...]) -> str:
    padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=False)]
    return " ".join([*padded, cells[-1]]).rstrip()


def late_notes(results: dict) -> list[str]:
    """Where the load generator fell behind its schedule, or a load did not finish."""
    notes = []
    for name, runs in results.items():
        if not isinstance(runs, list):
            continue
        for number, run in enumerate(runs, 1):
            if "error" in run:
                notes.append(f"{name} run {number} failed: {run['error']}")
                continue
            for key in ("load", "polling_load", "early_load", "without_load"):
                load = run.get(key)
                if load and load["late_sends"]:
                    notes.append(
                        f"{name} run {number} ({key}): {load['late_sends']} of {load['requests']} "
                        f"sends started ≥10 ms late (max {load['max_lag_ms']:.0f} ms)"
                    )
                if load and load.get("abandoned"):
                    notes.append(
                        f"{name} run {number} ({key}): the generator fell over 10 s behind and "
                        f"gave up {load['abandoned']} sends"
                    )
            if run.get("drained") is False:
                notes.append(f"{name} run {number}: not every job was done within the drain time")
    return notes
