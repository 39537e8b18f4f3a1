"""Measurement 10: the whole pipeline on PostgreSQL with 1 and with 2 serve processes.

The same load as the pipeline measurement (submit → admission → the emulator → webhook →
receiver → stored image → `job.ready` to an SSE client and a subscriber), against `fluxhook
serve` with WEB_CONCURRENCY=N plus one `fluxhook worker`, all on one fresh PostgreSQL
database; every process runs the loops (RUN_WORKERS defaults to true), as a Procfile
deployment with `web` and `worker` dynos would.

Figures: sustained jobs/s (as in the pipeline measurement), CPU per job (user + system of every
fluxhook process: the supervisor, its serve processes and the worker, from the first submit
until the last callback, divided by the jobs done), each serve process's share of that CPU
(how evenly the shared socket spreads the load), and notification p50/p99 from the emulator's
terminal event to the SSE client and to the subscriber.
"""

import asyncio
import contextlib
import math
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench import listen, wire
from bench.loadgen import open_loop
from bench.pipeline import Plan, sustained
from bench.processes import Process, ProcessMeter, cpu_seconds, free_port, run, spawn, start
from bench.stack import SUBMIT_POOL, Databases, Stack, fluxhook_env, running_emulator
from bench.stats import latency_ms

DRAIN_S = 30.0  # after the last submit; a job not done by then counts as never done
START_S = 60.0  # for every serve process to be up
SETTLE_S, IDLE_SHARE = 0.25, 0.05  # idle: under 5 % of a core over a quarter of a second
WORKER_RUNNING = "fluxhook worker running"  # what `fluxhook worker` prints once it runs


# A rate that one serve process and the worker keep up with on this two-core box in its slow
# phases too (≈ 20 ms of CPU a job across them at this rate, beside PostgreSQL, the emulator
# and the load): the row compares what the processes spend, not how an overloaded box queues.
# (At 150 jobs/s, the rate before, both configurations fell behind in a slow phase, and the
# figure measured the backlog: bench/README.md, fourteenth pass.)
FULL = Plan(rate=60, seconds=10)
SMOKE = Plan(rate=10, seconds=1.5)


@dataclass
class Scaled:
    stack: Stack
    pids: list[int]  # every fluxhook process: supervisor (if any), serve processes, worker
    serving: list[int]  # the processes that serve HTTP


async def measure(plan: Plan, databases: Databases, workdir: Path, processes: int) -> dict:
    with databases.fresh("postgres") as database_url:
        async with (
            running_scaled(workdir, database_url, processes, plan.latency_s) as scaled,
            listen.sink() as sink,
            listen.streams(scaled.stack) as (stream,),
        ):
            stack = scaled.stack
            await stack.subscribe(sink.url, ["job.ready"])
            cpu_before = {pid: cpu_seconds(pid) for pid in scaled.pids}
            load = await open_loop(plan.rate, plan.jobs, stack.submit, in_flight=SUBMIT_POOL)
            expected = len(load.sent) - load.failures
            drained = await sink.wait_for(expected, DRAIN_S)
            await stream.wait_for("job.ready", expected, DRAIN_S)
            used = {pid: cpu_seconds(pid) - cpu_before[pid] for pid in scaled.pids}
            tasks = await stack.emulator.tasks()
    finished = {task_id: task["finished_at"] for task_id, task in tasks.items()}
    callbacks = [(arrival, body["data"]["bfl_id"]) for arrival, body in sink.callbacks()]
    sse = listen.delays(listen.ready_by_task(stream), finished)
    callback = listen.delays(callbacks, finished)
    done = len(callback)
    total_cpu_s = sum(used.values())
    serve_cpu = [used[pid] for pid in scaled.serving]
    return {
        "sustained_per_s": sustained([arrival for arrival, _ in sink.callbacks()]),
        "completed": done,
        "drained": drained,
        "cpu_ms_per_job": round(1000 * total_cpu_s / done, 2) if done else math.nan,
        "busiest_serve_share": round(max(serve_cpu) / sum(serve_cpu), 2),
        "cpu_s": {str(pid): round(seconds, 2) for pid, seconds in used.items()},
        **latency_ms(sse, "sse", expected - len(sse)),
        **latency_ms(callback, "callback", expected - done),
        "load": load.summary(),
    }


@contextlib.asynccontextmanager
async def running_scaled(
    workdir: Path, database_url: str, processes: int, latency_s: float
) -> AsyncIterator[Scaled]:
    """The emulator, `fluxhook serve` with WEB_CONCURRENCY=`processes`, and `fluxhook worker`."""
    max_active = 1000
    async with running_emulator(workdir, max_active, latency_s=latency_s) as emulator:
        port = free_port()
        env = fluxhook_env(database_url, port, emulator.url, max_active)
        env["WEB_CONCURRENCY"] = str(processes)
        cli = [sys.executable, "-m", "service"]
        run([*cli, "migrate"], env, workdir / "migrate.log")
        key = run([*cli, "keys", "create", "bench"], env, workdir / "keys.log")
        key = key.strip().splitlines()[-1]
        serve = await start(f"serve-{processes}", ["-m", "service", "serve"], env, workdir,
                            port, "/readyz")  # fmt: skip
        worker_env = env | {"PORT": str(free_port())}
        worker = start_worker(worker_env, workdir)
        submits = wire.Pool(serve.url, SUBMIT_POOL)
        try:
            # Its start-up (imports, the schema check, the pool) is not the jobs' CPU.
            await worker.wait_logged(WORKER_RUNNING)
            serving = await _serving(serve.pid, processes)
            pids = sorted({serve.pid, *serving, worker.pid})
            await _until_settled(pids)
            async with httpx.AsyncClient(
                base_url=serve.url, headers={"x-key": key}, timeout=30.0
            ) as http:
                meter = ProcessMeter(serve.pid)  # the stack's shape; its figures go unused
                stack = Stack(serve.url, key, emulator, serve, meter, http, submits, meter)
                yield Scaled(stack, pids, serving)
        finally:
            submits.close()
            await serve.stop()
            await worker.stop()


def start_worker(env: dict, workdir: Path) -> Process:
    """`fluxhook worker`: it serves no HTTP; it says when it runs (`WORKER_RUNNING`)."""
    log = workdir / "worker.log"
    return Process("worker", spawn(["-m", "service", "worker"], env, log), "", log)


async def _serving(pid: int, processes: int) -> list[int]:
    """The serve processes: `pid` itself, or its `processes` children once all have started."""
    if processes == 1:
        return [pid]
    deadline = time.monotonic() + START_S
    while time.monotonic() < deadline:
        found = _children(pid)
        if len(found) == processes:
            return found
        await asyncio.sleep(0.05)
    raise RuntimeError(f"fluxhook serve did not start {processes} processes in {START_S} s")


async def _until_settled(pids: list[int]) -> None:
    """Until every process is idle (start-up done: a supervised serve process announces
    nothing), so that no process's start-up counts as the jobs' CPU."""
    deadline = time.monotonic() + START_S
    last = {pid: cpu_seconds(pid) for pid in pids}
    while time.monotonic() < deadline:
        await asyncio.sleep(SETTLE_S)  # sampling the processes' CPU, not waiting for an event
        now = {pid: cpu_seconds(pid) for pid in pids}
        if all(now[pid] - last[pid] < SETTLE_S * IDLE_SHARE for pid in pids):
            return
        last = now
    raise RuntimeError(f"the fluxhook processes were still busy {START_S} s after starting")


def _children(pid: int) -> list[int]:
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
