"""`python -m bench` (`make bench`): the load and latency harness; prints one table.

`--smoke` (`make bench-smoke`, run in CI) does one tiny run of every measurement: it checks
that the harness works, not the numbers. Raw figures go to bench/results/latest.json.
"""

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench import (
    economy,
    fairness,
    ingest,
    machine,
    notify,
    pipeline,
    pixels,
    profiling,
    report,
    scale,
    slots,
    soak,
    streams,
)
from bench.stack import Databases

RESULTS = Path(__file__).parent / "results" / "latest.json"


@dataclass(frozen=True)
class Measurement:
    name: str
    run: object  # async (databases, workdir) -> figures
    needs_postgres: bool = False


def measurements(smoke: bool) -> list[Measurement]:
    def plan(module):
        return module.SMOKE if smoke else module.FULL

    light = notify.SMOKE_LIGHT if smoke else notify.LIGHT
    out = [
        Measurement("notify", lambda d, w: notify.measure(plan(notify), d, w)),
        Measurement("notify_light", lambda d, w: notify.measure(light, d, w)),
        Measurement("economy", lambda d, w: economy.measure(plan(economy), d, w)),
    ]
    for engine in ("sqlite", "postgres"):
        postgres = engine == "postgres"
        out += [
            Measurement(
                f"ingest_{engine}",
                lambda d, w, e=engine: ingest.measure(plan(ingest), d, w, e),
                postgres,
            ),
            Measurement(
                f"pipeline_{engine}",
                lambda d, w, e=engine: pipeline.measure(plan(pipeline), d, w, e),
                postgres,
            ),
        ]
    for clients in plan(streams).clients:
        out.append(
            Measurement(
                f"streams_{clients}",
                lambda d, w, n=clients: streams.measure(plan(streams), d, w, n),
            )
        )
    out.append(Measurement("slots", lambda d, w: slots.measure(plan(slots), d, w)))
    out.append(Measurement("soak", lambda d, w: soak.measure(plan(soak), d, w)))
    out.append(Measurement("fairness", lambda d, w: fairness.measure(plan(fairness), d, w)))
    for processes in (1, 2):
        out.append(
            Measurement(
                f"scale_pg_{processes}",
                lambda d, w, n=processes: scale.measure(plan(scale), d, w, n),
                needs_postgres=True,
            )
        )
    for load in plan(pixels):
        out.append(
            Measurement(f"pixels_{load.rate:g}", lambda d, w, p=load: pixels.measure(p, d, w))
        )
    return out


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def run_all(runs: int, smoke: bool, only: set[str], workdir: Path, profile: bool) -> dict:
    databases = Databases(workdir)
    chosen = [m for m in measurements(smoke) if not only or m.name in only]
    results: dict = {m.name: [] for m in chosen}
    try:
        for number in range(1, runs + 1):
            for m in chosen:
                if m.needs_postgres and not databases.has_postgres:
                    results[m.name] = report.SKIPPED
                    continue
                if profile:
                    profiling.TARGET.set(RESULTS.parent / f"profile-{m.name}-run{number}")
                results[m.name].append(await _one(m, number, runs, databases, workdir))
    finally:
        databases.close()
    return results


async def _one(m: Measurement, number: int, runs: int, databases, workdir) -> dict:
    started = time.monotonic()
    log(f"[run {number}/{runs}] {m.name} ...")
    try:
        figures = await m.run(databases, workdir)
    except Exception as exc:
        traceback.print_exc()
        figures = {"error": f"{type(exc).__name__}: {exc}"}
    figures["seconds"] = round(time.monotonic() - started, 1)
    log(f"[run {number}/{runs}] {m.name} done in {figures['seconds']} s")
    return figures


def shape(smoke: bool) -> report.Shape:
    def plan(module):
        return module.SMOKE if smoke else module.FULL

    return report.Shape(
        notify_rate=plan(notify).rate,
        light_rate=(notify.SMOKE_LIGHT if smoke else notify.LIGHT).rate,
        pipeline_rate=plan(pipeline).rate,
        stream_sizes=plan(streams).clients,
        latencies=plan(economy).latencies_s,
        slots_load=plan(slots).describe(),
        pixel_rates=tuple(load.rate for load in plan(pixels)),
        soak_jobs=plan(soak).jobs,
        fairness_load=plan(fairness).describe(),
        scale_rate=plan(scale).rate,
    )


def render(meta: dict, results: dict, smoke: bool) -> tuple[str, dict]:
    text, summary = report.table(report.rows(shape(smoke)), report.with_derived(results))
    head = [
        f"fluxhook bench ({meta['mode']}, {meta['runs']} run(s) each; median [min–max])",
        f"machine: {meta['machine_line']}",
        f"command: {meta['command']}    finished: {meta['finished']}    "
        f"took: {meta['seconds']:.0f} s",
        "fluxhook, the BFL emulator and the load generator are separate processes on this "
        "machine's cores: the emulator and the generator compete with fluxhook for the CPU.",
        "",
    ]
    notes = report.late_notes(results)
    tail = ["", "notes:", *(f"- {note}" for note in notes)] if notes else []
    return "\n".join([*head, text, *tail]), summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="one tiny run of everything")
    parser.add_argument("--runs", type=int, help="repetitions (default 3; smoke 1)")
    parser.add_argument("--only", nargs="*", default=[], help="measurement names to run")
    parser.add_argument(
        "--profile", action="store_true", help="py-spy fluxhook during each measurement"
    )
    args = parser.parse_args(argv)
    runs = args.runs or (1 if args.smoke else 3)
    workdir = Path(tempfile.mkdtemp(prefix="fluxhook-bench-"))
    RESULTS.parent.mkdir(exist_ok=True)
    started = time.monotonic()
    results = asyncio.run(run_all(runs, args.smoke, set(args.only), workdir, args.profile))
    info = machine.describe()
    meta = {
        "mode": "smoke" if args.smoke else "full",
        "runs": runs,
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "machine": info,
        "machine_line": machine.summary_line(info),
        "finished": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "seconds": time.monotonic() - started,
    }
    text, summary = render(meta, results, args.smoke)
    print(text, flush=True)
    RESULTS.write_text(json.dumps({"meta": meta, "table": summary, "results": results}, indent=1))
    failed = [name for name, runs_ in results.items() if _failed(runs_)]
    if failed:
        log(f"failed: {', '.join(failed)}; process logs kept in {workdir}")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _failed(runs) -> bool:
    return isinstance(runs, list) and (not runs or any("error" in run for run in runs))


if __name__ == "__main__":
    sys.exit(main())
