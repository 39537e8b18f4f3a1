"""Measurement 2: upstream economy, BFL calls per completed job (submits + get_result).

For each model latency, the same jobs go once through fluxhook (webhooks flowing, so only the
submit should reach BFL) and once through the docs' polling loop; the emulator's counters
(`/_emulator/stats`, reset before each half) say how many calls each made.
"""

import asyncio
import time
from dataclasses import dataclass

from bench import listen
from bench.loadgen import open_loop
from bench.polling import DOCS_INTERVAL_S, polling_clients
from bench.stack import Databases, Stack, emulator_config, running_stack
from bench.stats import ratio

DRAIN_S = 60.0
MAX_ACTIVE = 1000
STORED_POLL_S = 0.05


@dataclass(frozen=True)
class Plan:
    rate: float
    jobs: int
    latencies_s: tuple[float, ...] = (1.0, 4.0, 10.0)
    time_scale: float = 1.0  # smoke: everything (latency, polling interval) 10x faster


FULL = Plan(rate=10, jobs=10)
SMOKE = Plan(rate=10, jobs=3, time_scale=0.1)


async def measure(plan: Plan, databases: Databases, workdir) -> dict:
    figures = {}
    with databases.fresh("sqlite") as database_url:
        async with running_stack(workdir, database_url, MAX_ACTIVE) as stack:
            for latency in plan.latencies_s:
                name = f"{latency:g}s"
                config = emulator_config(MAX_ACTIVE, latency_s=latency * plan.time_scale)
                await stack.emulator.reset(**config)
                pushed = await _fluxhook_calls(stack, plan)
                await stack.emulator.reset(**config)
                polled = await _polling_calls(stack, plan)
                figures[f"fluxhook_{name}"] = pushed
                figures[f"polling_{name}"] = polled
                figures[f"ratio_{name}"] = ratio(polled, pushed)
    return figures


def _per_job(stats: dict, completed: int) -> float:
    return round((stats["submits"] + stats["get_result"]) / completed, 3) if completed else 0.0


async def _fluxhook_calls(stack: Stack, plan: Plan) -> float:
    async with listen.streams(stack) as (stream,):
        await open_loop(plan.rate, plan.jobs, stack.submit)
        await stream.wait_for("job.ready", plan.jobs, DRAIN_S + max(plan.latencies_s))
    ready = [data["data"]["id"] for _, kind, data in stream.events() if kind == "job.ready"]
    await _until_stored(stack, ready)
    return _per_job(await stack.emulator.stats(), stream.counts["job.ready"])


async def _until_stored(stack: Stack, job_ids: list[str]) -> None:
    """`job.ready` goes out before fluxhook has downloaded the image, and the next half resets
    the emulator, which forgets the tasks and their images: a download cut short by the reset
    asks `get_result` for a fresh URL, again at each retry, and those calls were counted
    against the halves that followed (1.1–1.2 a job for the 10 s model, thirteenth pass)."""
    deadline = time.monotonic() + DRAIN_S
    waiting = set(job_ids)
    while True:
        for job_id in list(waiting):
            job = (await stack.http.get(f"/v1/jobs/{job_id}")).raise_for_status().json()
            if job["image_stored"]:
                waiting.discard(job_id)
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{len(waiting)} images not stored after {DRAIN_S} s")
        await asyncio.sleep(STORED_POLL_S)  # the bench's own check, not a test's wait


async def _polling_calls(stack: Stack, plan: Plan) -> float:
    interval = DOCS_INTERVAL_S * plan.time_scale
    load, _ = await polling_clients(stack.emulator, plan.rate, plan.jobs, interval)
    return _per_job(await stack.emulator.stats(), len(load.sent) - load.failures)
