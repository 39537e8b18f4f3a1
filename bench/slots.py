"""Measurement 7: slots come back fast, how long jobs wait for an upstream slot while BFL
loses some of the webhooks.

Jobs are offered at `rate` for `seconds` (open loop) to fluxhook with `BFL_MAX_ACTIVE` slots;
the emulator runs every task for `latency_s` and loses a `drop` share of the webhooks. A job
whose webhook is lost holds its slot until the reconciler finds the task done, so when slots
run short the queue grows. Queue wait: from the job accepted (`created_at`) to BFL accepting
its submit (`submitted_at`), both as fluxhook records them, read from each job's
`job.submitted` event on an SSE stream. A job not submitted `DRAIN_S` after the last send
counts as infinitely late.

The same load runs twice, each on a fresh stack: with the reconciler's early checks (the
default) and without them (`RECONCILE_EARLY_CHECKS=false`: a lost webhook holds its slot for
the whole webhook window, as before early checks), so "before" and "after" are one run.
"""

from dataclasses import dataclass
from datetime import datetime

from bench import listen
from bench.loadgen import open_loop
from bench.stack import Databases, Stack, running_stack
from bench.stats import latency_ms, ratio

# After the last send (s). Without early checks the backlog drains at ~1.6 jobs/s (a lost
# webhook holds its slot ~40 s), so a 300-job load needs about two minutes more.
DRAIN_S = 180.0
EARLY_CHECKS = "RECONCILE_EARLY_CHECKS"


@dataclass(frozen=True)
class Plan:
    rate: float
    seconds: float
    latency_s: float = 4.0  # how long the emulated BFL runs every task (flux-dev expects 3 s)
    drop: float = 0.3  # share of webhooks the emulated BFL loses
    max_active: int = 24  # BFL_MAX_ACTIVE, and the emulator's limit to match
    seed: int = 7  # the emulator's: the same webhooks are lost in both halves

    @property
    def jobs(self) -> int:
        return int(self.rate * self.seconds)

    def describe(self) -> str:
        return (
            f"{self.rate:g} jobs/s for {self.seconds:g} s, {self.drop:.0%} of webhooks lost, "
            f"BFL_MAX_ACTIVE={self.max_active}, BFL takes {self.latency_s:g} s"
        )


FULL = Plan(rate=5, seconds=60)
SMOKE = Plan(rate=5, seconds=2, latency_s=0.5)


async def measure(plan: Plan, databases: Databases, workdir) -> dict:
    figures = {}
    for name, early_checks in (("early", "true"), ("without", "false")):
        with databases.fresh("sqlite") as database_url:
            env = {EARLY_CHECKS: early_checks}
            figures |= await _queue_waits(plan, database_url, workdir, name, env)
    return figures


async def _queue_waits(plan: Plan, database_url: str, workdir, name: str, env: dict) -> dict:
    emulator = {"latency_s": plan.latency_s, "drop_webhooks": plan.drop, "seed": plan.seed}
    async with (
        running_stack(workdir, database_url, plan.max_active, env, **emulator) as stack,
        listen.streams(stack) as (stream,),
    ):
        load = await open_loop(plan.rate, plan.jobs, stack.submit)
        accepted = len(load.sent) - load.failures
        await stream.wait_for("job.submitted", accepted, DRAIN_S)
        lost = await _lost_webhooks(stack)
        polls = (await stack.emulator.stats())["get_result"]
    events = stream.events()
    waits = [_wait_s(body["data"]) for _, kind, body in events if kind == "job.submitted"]
    return {
        **latency_ms(waits, f"{name}_wait", accepted - len(waits)),
        f"{name}_lost_webhooks": lost,
        f"{name}_polls_per_lost": ratio(polls, lost),
        f"{name}_load": load.summary(),
    }


def _wait_s(job: dict) -> float:
    """Seconds from the job accepted to BFL accepting its submit."""
    created = datetime.fromisoformat(job["created_at"])
    return (datetime.fromisoformat(job["submitted_at"]) - created).total_seconds()


async def _lost_webhooks(stack: Stack) -> int:
    return sum(1 for task in (await stack.emulator.tasks()).values() if task["webhook_dropped"])
