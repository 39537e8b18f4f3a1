"""Measurement 5: N concurrent SSE clients on one fluxhook process (SQLite).

N clients hold `/v1/events` open; jobs then run at a gentle rate, and every event
(`job.submitted`, `job.ready`) reaches every client. Fan-out delay per (event, client): from
the event's own timestamp (set in the transaction that records it) to the client's read.
Resident memory: with the N streams open and idle, and at its peak under the events.
"""

import time
from dataclasses import dataclass
from datetime import datetime

from bench import listen, profiling
from bench.loadgen import open_loop
from bench.processes import cpu_seconds
from bench.stack import Databases, running_stack
from bench.stats import latency_ms

DRAIN_S = 60.0
EVENTS_PER_JOB = 2  # job.submitted, job.ready


@dataclass(frozen=True)
class Plan:
    clients: tuple[int, ...]
    jobs: int
    rate: float
    latency_s: float = 0.2


FULL = Plan(clients=(100, 1000), jobs=20, rate=2)
SMOKE = Plan(clients=(10, 50), jobs=3, rate=5)


async def measure(plan: Plan, databases: Databases, workdir, clients: int) -> dict:
    with databases.fresh("sqlite") as database_url:
        async with (
            running_stack(workdir, database_url, latency_s=plan.latency_s) as stack,
            listen.streams(stack, clients) as streams,
        ):
            idle = stack.meter.summary("rss_idle")
            stack.meter.reset()
            # With --profile, the events alone as well (…-events.txt): not the connects.
            generator_cpu_from = time.process_time()
            fluxhook_cpu_from = cpu_seconds(stack.process.pid)
            async with profiling.sampling(stack.process.pid, "-events"):
                load = await open_loop(plan.rate, plan.jobs, stack.submit)
                for stream in streams:
                    await stream.wait_for("job.ready", plan.jobs, DRAIN_S)
            generator_cpu_s = time.process_time() - generator_cpu_from
            fluxhook_cpu_s = cpu_seconds(stack.process.pid) - fluxhook_cpu_from
            rss = stack.meter.summary()
    delays = [arrival - _timestamp(body) for s in streams for arrival, _, body in s.events()]
    events = plan.jobs * EVENTS_PER_JOB
    expected = clients * events
    return {
        **latency_ms(delays, "fanout"),
        "delivered_share": round(len(delays) / expected, 4),
        "rss_idle_mb": idle["rss_idle_end_mb"],
        **rss,
        # CPU per event for all N clients (the load generator reads every stream).
        "fluxhook_cpu_ms_per_event": round(1000 * fluxhook_cpu_s / events, 1),
        "generator_cpu_ms_per_event": round(1000 * generator_cpu_s / events, 1),
        "load": load.summary(),
    }


def _timestamp(envelope: dict) -> float:
    return datetime.fromisoformat(envelope["timestamp"]).timestamp()
