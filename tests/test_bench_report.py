"""The bench's table: the scale-out growth row, made of two measurements' runs."""

from bench import report


def _run(cpu_ms: float) -> dict:
    return {"cpu_ms_per_job": cpu_ms}


def test_the_second_serve_process_growth_is_computed_run_by_run():
    results = {
        "scale_pg_1": [_run(10.0), _run(20.0), {"error": "boom"}],
        "scale_pg_2": [_run(10.5), _run(24.0), _run(9.0)],
    }
    derived = report.with_derived(results)
    growth = [run["cpu_growth"] for run in derived[report.SCALE_GROWTH]]
    assert [round(g, 3) for g in growth] == [0.05, 0.2]  # the failed run's pair is left out
    row = next(r for r in report._scale_rows() if r.source == report.SCALE_GROWTH)
    assert report.evaluate(row, derived[report.SCALE_GROWTH]) == ("+12.5% [+5.0%–+20.0%]", "NO")


def test_without_postgresql_the_growth_row_is_skipped_too():
    derived = report.with_derived({"scale_pg_1": report.SKIPPED, "scale_pg_2": report.SKIPPED})
    row = next(r for r in report._scale_rows() if r.source == report.SCALE_GROWTH)
    assert report.evaluate(row, derived[report.SCALE_GROWTH]) == (report.SKIPPED, "–")
    assert report.SCALE_GROWTH not in report.with_derived({"ingest_sqlite": []})
