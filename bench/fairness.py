"""Measurement 10: fair share, how long a second tenant's jobs wait for an upstream slot
behind the first tenant's burst.

Tenant A submits `burst` jobs at once; once they are all accepted, tenant B submits `later`,
one after the other. fluxhook has `BFL_MAX_ACTIVE` slots and the emulator runs every task for
a fixed `latency_s`. Queue wait: from B's job accepted (`created_at`) to BFL accepting its
submit (`submitted_at`), both as fluxhook records them, read from each job's `job.submitted`
event on B's SSE stream. A job of B's not submitted `DRAIN_S` after the last send counts as
infinitely late.

The same load runs twice, each on a fresh stack: with `ADMISSION_ORDER=fifo` (one queue by
age, the order before fair admission: B waits for the whole burst) and with `fair` (the
default: round-robin across tenants), so the two are one run. The stack stops once B's jobs
are upstream: what is left of A's burst is cut short.
"""

import asyncio
import dataclasses
import sys
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from bench import listen
from bench.processes import child_env, run
from bench.stack import Databases, running_stack
from bench.stats import latency_ms

# After B's last send (s): under fifo, B's jobs go once A's burst is through, about
# burst / max_active × latency_s (25 s in the full plan).
DRAIN_S = 120.0
ORDER = "ADMISSION_ORDER"


@dataclass(frozen=True)
class Plan:
    burst: int  # tenant A's jobs, submitted at once
    later: int = 5  # tenant B's, submitted after A's burst is accepted
    max_active: int = 4  # BFL_MAX_ACTIVE, and the emulator's limit to match
    latency_s: float = 0.5  # how long the emulated BFL runs every task, fixed

    def describe(self) -> str:
        return (
            f"B's {self.later} jobs behind A's {self.burst}-job burst, "
            f"BFL_MAX_ACTIVE={self.max_active}, BFL takes {self.latency_s:g} s"
        )


FULL = Plan(burst=200)
SMOKE = Plan(burst=12, later=2, max_active=2, latency_s=0.2)


async def measure(plan: Plan, databases: Databases, workdir: Path) -> dict:
    figures = {}
    for order in ("fifo", "fair"):
        with databases.fresh("sqlite") as database_url:
            figures |= await _queue_waits(plan, database_url, workdir, order)
    return figures


async def _queue_waits(plan: Plan, database_url: str, workdir: Path, order: str) -> dict:
    emulator = {"latency_s": plan.latency_s}
    env = {ORDER: order}
    async with running_stack(workdir, database_url, plan.max_active, env, **emulator) as stack:
        tenant_b = dataclasses.replace(stack, key=await _new_key(database_url, workdir, "b"))
        async with listen.streams(tenant_b) as (stream,):
            await asyncio.gather(*(stack.submit(i) for i in range(plan.burst)))
            for i in range(plan.later):
                await tenant_b.submit(i)
            await stream.wait_for("job.submitted", plan.later, DRAIN_S)
    events = stream.events()
    waits = [_wait_s(body["data"]) for _, kind, body in events if kind == "job.submitted"]
    return latency_ms(waits, f"{order}_wait", plan.later - len(waits))


async def _new_key(database_url: str, workdir: Path, name: str) -> str:
    """A second tenant's key, made as an operator makes one: `fluxhook keys create NAME`."""
    args = [sys.executable, "-m", "service", "keys", "create", name]
    env = child_env(DATABASE_URL=database_url)
    out = await asyncio.to_thread(run, args, env, workdir / "keys.log")
    return out.strip().splitlines()[-1]


def _wait_s(job: dict) -> float:
    """Seconds from the job accepted to BFL accepting its submit."""
    created = datetime.fromisoformat(job["created_at"])
    return (datetime.fromisoformat(job["submitted_at"]) - created).total_seconds()
