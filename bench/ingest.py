"""Measurement 3: receiver ingest, verified webhooks per second into one fluxhook process.

Real jobs are submitted and stay in flight upstream (the emulator in `manual` mode never
finishes them). Then the bench plays BFL: progress webhooks for those jobs, each with the
job's real token and `X-Webhook-Secret` (derived with `service.signing.Signing` from the
SECRET_KEY fluxhook runs with) and a progress higher than the last, so every request passes
verification and commits the receiver's transaction (job row, `job.progress` event). The same
requests then go to a bare Starlette endpoint under hypercorn; the ratio is fluxhook's share.

Both runs are saturation runs: the generator offers far more than a server takes and keeps
`CONNECTIONS` requests in flight, like BFL's webhook senders; throughput is completed
requests over the time from the first send to the last answer.
"""

import json
import math
import uuid
from dataclasses import dataclass

from bench import listen, wire
from bench.loadgen import open_loop
from bench.processes import child_env, free_port, start
from bench.stack import SECRET_KEY, Databases, Stack, running_stack
from bench.stats import ratio
from service.signing import Signing

CONNECTIONS = 32
SATURATE = 1_000_000.0  # offered requests per second: always more than a server takes
SUBMIT_RATE = 100.0
DRAIN_S = 60.0


@dataclass(frozen=True)
class Plan:
    jobs: int
    steps: int  # progress webhooks per job

    @property
    def webhooks(self) -> int:
        return self.jobs * self.steps


FULL = Plan(jobs=100, steps=20)
SMOKE = Plan(jobs=10, steps=5)


@dataclass(frozen=True)
class Webhook:
    target: str
    headers: dict[str, str]
    body: bytes


async def measure(plan: Plan, databases: Databases, workdir, engine: str) -> dict:
    with databases.fresh(engine) as database_url:
        async with running_stack(workdir, database_url, plan.jobs, manual=True) as stack:
            hooks = webhooks(await _jobs_in_flight(stack, plan.jobs), plan.steps)
            stack.meter.reset()
            fluxhook = await _saturate(stack.url, hooks)
            figures = {**stack.meter.summary()}
    bare = await _bare(workdir, hooks)
    figures.update(
        fluxhook_per_s=fluxhook["per_s"],
        bare_per_s=bare["per_s"],
        share=ratio(fluxhook["per_s"], bare["per_s"]),
        fluxhook_load=fluxhook,
        bare_load=bare,
    )
    return figures


async def _jobs_in_flight(stack: Stack, count: int) -> list[tuple[str, str]]:
    """Submit `count` jobs and wait until BFL (the emulator) has each: (job id, task id)."""
    async with listen.streams(stack) as (stream,):
        await open_loop(SUBMIT_RATE, count, stack.submit)
        if not await stream.wait_for("job.submitted", count, DRAIN_S):
            raise RuntimeError(f"only {stream.counts['job.submitted']}/{count} jobs went upstream")
    submitted = [data["data"] for _, kind, data in stream.events() if kind == "job.submitted"]
    return [(job["id"], job["bfl_id"]) for job in submitted]


def webhooks(jobs: list[tuple[str, str]], steps: int) -> list[Webhook]:
    """Progress 1 … `steps` percent for every job, in rounds, so a job's progress rises."""
    signing = Signing([SECRET_KEY])
    keyed = []
    for job_id, task_id in jobs:
        job = uuid.UUID(job_id)
        target = f"/webhooks/bfl/{signing.webhook_token(job)}"
        secret = signing.webhook_secret(job)
        headers = {"content-type": "application/json", "x-webhook-secret": secret}
        keyed.append((target, headers, task_id))
    return [
        Webhook(target, headers, _progress_body(task_id, percent))
        for percent in range(1, steps + 1)
        for target, headers, task_id in keyed
    ]


def _progress_body(task_id: str, percent: int) -> bytes:
    return json.dumps({"task_id": task_id, "status": "processing", "progress": percent}).encode()


async def _saturate(url: str, hooks: list[Webhook]) -> dict:
    pool = wire.Pool(url, CONNECTIONS)

    async def send(index: int) -> int:
        hook = hooks[index]
        response = await pool.request("POST", hook.target, hook.body, hook.headers)
        if response.status != 200:
            raise RuntimeError(f"webhook answered {response.status}: {response.body[:200]!r}")
        return response.status

    try:
        load = await open_loop(
            SATURATE, len(hooks), send, in_flight=CONNECTIONS, give_up_s=math.inf
        )
    finally:
        pool.close()
    completed = len(load.sent) - load.failures
    per_s = round(completed / load.elapsed_s, 1) if load.elapsed_s else 0.0
    return {"per_s": per_s, "completed": completed, "failures": load.failures}


async def _bare(workdir, hooks: list[Webhook]) -> dict:
    port = free_port()
    args = ["-m", "bench.bare", "--port", str(port)]
    process = await start("bare", args, child_env(), workdir, port, "/healthz")
    try:
        return await _saturate(process.url, hooks)
    finally:
        await process.stop()
