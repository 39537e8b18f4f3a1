"""`python -m bench.cost`: fluxhook's CPU per job, stage by stage (a profiling aid).

Jobs go through fluxhook at a pace it keeps up with (so queueing does not inflate the
cost) in three set-ups, each on a fresh stack: the submit path alone (the emulator in
`manual` mode never finishes a task: submit, admission, BFL submit, its outcome); then
jobs that finish (+ webhook, image download and store); then with a subscriber (+ the
signed callback). Cost = fluxhook's CPU time (user + system) from the first submit until
it is idle again, divided by the jobs. The differences between the rows are what each
stage costs; 1000 ms divided by the last row is what one core can sustain.
"""

import argparse
import asyncio
import contextlib
import statistics
import tempfile
from pathlib import Path

from bench import listen, profiling
from bench.loadgen import open_loop
from bench.processes import cpu_seconds
from bench.stack import Databases, running_stack

RATE, JOBS = 100, 600
IDLE_CPU_S = 0.05  # less CPU than this in a second: fluxhook is done
SETTLE_LIMIT_S = 120.0
STAGES = ("submit path", "+ webhook and stored image", "+ delivered callback")


async def measure(databases: Databases, workdir: Path, engine: str, stage: str) -> float:
    """fluxhook's CPU milliseconds per job for one set-up."""
    with databases.fresh(engine) as database_url:
        manual = stage == STAGES[0]
        async with contextlib.AsyncExitStack() as context:
            stack = await context.enter_async_context(
                running_stack(workdir, database_url, manual=manual, latency_s=0.5)
            )
            if stage == STAGES[2]:
                sink = await context.enter_async_context(listen.sink())
                await stack.subscribe(sink.url, ["job.ready"])
            started = cpu_seconds(stack.process.pid)
            suffix = f"-{engine}-stage{STAGES.index(stage) + 1}"
            async with profiling.sampling(stack.process.pid, suffix):
                load = await open_loop(RATE, JOBS, stack.submit)
                used = await _until_idle(stack.process.pid) - started
    return round(1000 * used / (len(load.sent) - load.failures), 2)


async def _until_idle(pid: int) -> float:
    """fluxhook's CPU seconds once a second has passed with (almost) none used."""
    last = cpu_seconds(pid)
    for _ in range(int(SETTLE_LIMIT_S)):
        await asyncio.sleep(1.0)  # sampling the process's CPU, not waiting for an event
        now = cpu_seconds(pid)
        if now - last < IDLE_CPU_S:
            return now
        last = now
    raise RuntimeError(f"fluxhook was still busy after {SETTLE_LIMIT_S} s")


async def main(engines: list[str], profile: Path | None, runs: int = 1) -> None:
    if profile is not None:
        profiling.TARGET.set(profile / "profile-cost")
    print(f"fluxhook CPU per job, {JOBS} jobs at {RATE}/s (python -m bench.cost, {_of(runs)})")
    with tempfile.TemporaryDirectory(prefix="fluxhook-cost-") as tmp:
        databases = Databases(Path(tmp))
        try:
            for engine in engines:
                if engine == "postgres" and not databases.has_postgres:
                    print("postgres: skipped (no PostgreSQL)")
                    continue
                for stage in STAGES:
                    workdir = Path(tmp)
                    costs = [await measure(databases, workdir, engine, stage) for _ in range(runs)]
                    print(f"  {engine:<9} {stage:<28} {_summary(costs)}")
        finally:
            databases.close()


def _of(runs: int) -> str:
    return "1 run" if runs == 1 else f"median [min–max] of {runs} runs"


def _summary(costs: list[float]) -> str:
    """One run's figure, or the median of several with their range: on a shared machine the
    cost of the same stage moves by ±0.5 ms (SQLite) or more (PostgreSQL) between runs."""
    median = f"{statistics.median(costs):7.2f} ms"
    return median if len(costs) == 1 else f"{median} [{min(costs):.2f}–{max(costs):.2f}]"


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("engines", nargs="*", default=["sqlite", "postgres"])
    parser.add_argument(
        "--profile", type=Path, help="py-spy each stage; summaries go to this directory"
    )
    parser.add_argument("--runs", type=int, default=1, help="runs per stage (median, range)")
    args = parser.parse_args()
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
    asyncio.run(main(args.engines, args.profile, args.runs))
