"""Measurement 2: upstream economy, BFL calls per completed job (submits + get_result).

For each model latency, the same jobs go once through fluxhook (webhooks flowing, so only the
submit should reach BFL) and once through the docs' polling loop; the emulator's counters
(`/_emulator/stats`, reset before each half) say how many calls each made.
"""

from dataclasses import dataclass

from bench import listen
from bench.loadgen import open_loop
from bench.polling import DOCS_INTERVAL_S, polling_clients
from bench.stack import Databases, Stack, emulator_config, running_stack
from bench.stats import ratio

DRAIN_S = 60.0
MAX_ACTIVE = 1000


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
    return _per_job(await stack.emulator.stats(), stream.counts["job.ready"])


async def _polling_calls(stack: Stack, plan: Plan) -> float:
    interval = DOCS_INTERVAL_S * plan.time_scale
    load, _ = await polling_clients(stack.emulator, plan.rate, plan.jobs, interval)
    return _per_job(await stack.emulator.stats(), len(load.sent) - load.failures)
