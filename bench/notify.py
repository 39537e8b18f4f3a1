"""Measurement 1: time to notification, push against the docs' polling loop.

fluxhook on SQLite takes jobs at `rate` (open loop); one SSE client on `/v1/events` and one
subscriber (a standing subscription to `job.ready`) note when `job.ready` reaches them. Each
delay runs from the emulator's terminal event (`finished_at` in `/_emulator/tasks`) to the
arrival, so it covers the webhook, the receiver's transaction, the image download and store,
and the fan-out. Then, in the same run, polling clients do the same jobs against the emulator
at the same rate; the ratio of the medians is the speed-up.
"""

from dataclasses import dataclass
from datetime import datetime

from bench import listen
from bench.loadgen import open_loop
from bench.polling import DOCS_INTERVAL_S, polling_clients
from bench.stack import SUBMIT_POOL, Databases, running_stack
from bench.stats import latency_ms, ratio

DRAIN_S = 30.0  # after the last submit; a job notified later counts as never


@dataclass(frozen=True)
class Plan:
    rate: float  # jobs per second
    jobs: int
    # The emulated model's run time. Not a multiple of the 0.5 s polling interval: a real
    # model's run time varies, so a poll lands on average half an interval after the end;
    # a fixed 1.0 s would let every poll land just after it and flatter the baseline.
    latency_s: float = 1.25


FULL = Plan(rate=100, jobs=500)
SMOKE = Plan(rate=20, jobs=20)
# The same at a tenth of the rate: the delay of the path itself, without queueing.
LIGHT = Plan(rate=10, jobs=50)
SMOKE_LIGHT = Plan(rate=5, jobs=5)


async def measure(plan: Plan, databases: Databases, workdir) -> dict:
    with databases.fresh("sqlite") as database_url:
        async with running_stack(workdir, database_url, latency_s=plan.latency_s) as stack:
            with stack.cores_apart() as split:
                pushed = await _pushed(stack, plan)
            polled_load, polled = await polling_clients(stack.emulator, plan.rate, plan.jobs)
    figures = {**pushed, **latency_ms(polled, "polling"), "cores": split}
    figures["speedup_sse"] = ratio(figures["polling_p50_ms"], figures["sse_p50_ms"])
    figures["speedup_callback"] = ratio(figures["polling_p50_ms"], figures["callback_p50_ms"])
    figures["polling_load"] = polled_load.summary()
    figures["polling_interval_s"] = DOCS_INTERVAL_S
    return figures


async def _pushed(stack, plan: Plan) -> dict:
    async with listen.sink() as sink:
        await stack.subscribe(sink.url, ["job.ready"])
        async with listen.streams(stack) as (stream,):
            stack.meter.reset()
            load = await open_loop(plan.rate, plan.jobs, stack.submit, in_flight=SUBMIT_POOL)
            await stream.wait_for("job.ready", plan.jobs, DRAIN_S)
            await sink.wait_for(plan.jobs, DRAIN_S)
            rss = stack.meter.summary()
        tasks = await stack.emulator.tasks()
    finished = {task_id: task["finished_at"] for task_id, task in tasks.items()}
    sse = listen.delays(listen.ready_by_task(stream), finished)
    callbacks = [(arrival, body["data"]["bfl_id"]) for arrival, body in sink.callbacks()]
    callback = listen.delays(callbacks, finished)
    expected = len(load.sent) - load.failures
    return {
        **latency_ms(sse, "sse", expected - len(sse)),
        **latency_ms(callback, "callback", expected - len(callback)),
        **stages(stream, sink, tasks),
        **rss,
        "load": load.summary(),
    }


def stages(stream, sink, tasks: dict[str, dict]) -> dict:
    """Where the time to an SSE client goes, p50 of each leg (ms): the emulator's terminal
    event → its webhook POST → fluxhook records `job.ready` (the image stored; the event's
    timestamp) → the SSE client, and → the subscriber."""
    legs = {"emulator": [], "stored": [], "to_sse": [], "to_callback": []}
    for arrival, kind, body in stream.events():
        task = tasks.get(body["data"]["bfl_id"]) if kind == "job.ready" else None
        if task is None or not task["webhook_attempts"]:
            continue
        posted, recorded = task["webhook_attempts"][0]["at"], _epoch(body["timestamp"])
        legs["emulator"].append(posted - task["finished_at"])
        legs["stored"].append(recorded - posted)
        legs["to_sse"].append(arrival - recorded)
    for arrival, body in sink.callbacks():
        legs["to_callback"].append(arrival - _epoch(body["timestamp"]))
    return {
        f"leg_{name}_p50_ms": latency_ms(values, "x")["x_p50_ms"] for name, values in legs.items()
    }


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp).timestamp()
