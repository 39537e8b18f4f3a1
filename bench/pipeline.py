"""Measurement 4: the whole pipeline, sustained jobs per second.

Jobs are offered at `rate` for `seconds` (open loop). Each goes submit → admission → BFL
(the emulator) → webhook → receiver → image download and store → `job.ready` → a signed
callback to the bench's subscriber. A job is done when its callback arrives; its end-to-end
latency runs from its scheduled submit to that arrival.

Sustained rate: the pace of the completions themselves, over their middle 80% (from the 10th
to the 90th percentile of arrival times), so neither the ramp-up nor the drain counts. A
stack that keeps up shows the offered rate; one that cannot shows what it completes while
the backlog grows. Jobs not done `DRAIN_S` after the last submit count as never done.
"""

import math
from dataclasses import dataclass

from bench import listen
from bench.loadgen import open_loop
from bench.stack import SUBMIT_POOL, Databases, running_stack
from bench.stats import latency_ms, percentile

DRAIN_S = 20.0  # after the last submit; a job not done by then counts as never done


@dataclass(frozen=True)
class Plan:
    rate: float
    seconds: float
    latency_s: float = 0.5  # the emulated model's run time

    @property
    def jobs(self) -> int:
        return int(self.rate * self.seconds)


FULL = Plan(rate=250, seconds=6)
SMOKE = Plan(rate=10, seconds=1.5)


async def measure(plan: Plan, databases: Databases, workdir, engine: str) -> dict:
    with databases.fresh(engine) as database_url:
        async with (
            running_stack(workdir, database_url, latency_s=plan.latency_s) as stack,
            listen.sink() as sink,
            listen.streams(stack) as (stream,),
        ):
            await stack.subscribe(sink.url, ["job.ready"])
            stack.meter.reset()
            stack.emulator_meter.reset()
            load = await open_loop(plan.rate, plan.jobs, stack.submit, in_flight=SUBMIT_POOL)
            drained = await sink.wait_for(len(load.sent) - load.failures, DRAIN_S)
            rss = stack.meter.summary()
            emulator_cpu = stack.emulator_meter.cpu_percent()
    submitted = {s.result["id"]: s.scheduled for s in load.sent if s.ok}
    arrivals = [(at, body["data"]["id"]) for at, body in sink.callbacks()]
    done = [(at, submitted[job]) for at, job in arrivals if job in submitted]
    return {
        "sustained_per_s": sustained([at for at, _ in done]),
        # The stages before the callback, to show where the pipeline narrows.
        "accepted_per_s": sustained([s.finished for s in load.sent if s.ok]),
        "stored_per_s": sustained([at for at, kind, _ in stream.events() if kind == "job.ready"]),
        "completed": len(done),
        "drained": drained,
        **latency_ms([at - s for at, s in done], "e2e", len(submitted) - len(done)),
        **rss,
        "emulator_cpu_percent": emulator_cpu,
        "load": load.summary(),
    }


def sustained(arrivals: list[float]) -> float:
    """Completions per second over the middle 80% of their arrival times."""
    if len(arrivals) < 10:
        return math.nan
    first, last = percentile(arrivals, 10), percentile(arrivals, 90)
    inside = sum(1 for at in arrivals if first <= at <= last)
    return round(inside / (last - first), 1) if last > first else math.nan
