"""Measurement 9: time to pixels, over a faithful delivery hop.

The emulator serves images as BFL's delivery hosts do: 1024×768 JPEGs of BFL's size
(~200 KB), `DELIVERY_TTFB_S` to the first byte, then `DELIVERY_BYTES_PER_S`. fluxhook on
SQLite takes jobs at `rate`; one SSE client on `/v1/events` and one subscriber note when
`job.ready` reaches them (notification latency), and the SSE client then GETs the image link
it carries (time to pixels: until it holds the whole image). Every delay runs from the
emulator's terminal event. In the same run, the docs' polling loop does the same jobs against
the emulator: poll every 0.5 s, then download BFL's URL itself. Downloads from the emulator's
delivery route per fluxhook job tell whether anything downloaded an image twice.
"""

import asyncio
import time
from dataclasses import dataclass

from bench import listen, wire
from bench.loadgen import open_loop
from bench.polling import polling_clients, request_target
from bench.stack import SUBMIT_POOL, Databases, running_stack
from bench.stats import latency_ms

DELIVERY = {"delivery_ttfb_s": 0.15, "delivery_bytes_per_s": 20e6}
BODY = {"prompt": "a lighthouse at dawn", "seed": 42}  # BFL's default size: 1024×768 JPEG
DRAIN_S = 30.0
READERS = 64  # keep-alive connections the SSE client's app uses to fetch images


@dataclass(frozen=True)
class Plan:
    rate: float
    jobs: int
    latency_s: float = 1.25  # not a multiple of the 0.5 s poll (see bench.notify)


FULL = (Plan(rate=10, jobs=100), Plan(rate=50, jobs=500))
SMOKE = (Plan(rate=5, jobs=5),)


async def measure(plan: Plan, databases: Databases, workdir) -> dict:
    with databases.fresh("sqlite") as database_url:
        emulator_settings = {"latency_s": plan.latency_s, **DELIVERY}
        async with running_stack(workdir, database_url, **emulator_settings) as stack:
            with stack.cores_apart() as split:
                pushed = await _pushed(stack, plan)
            before = (await stack.emulator.stats())["deliveries"]
            load, polled = await polling_clients(
                stack.emulator, plan.rate, plan.jobs, body=BODY, download=True
            )
            polled_downloads = (await stack.emulator.stats())["deliveries"] - before
    figures = {**pushed, **latency_ms(polled, "polling_pixels"), "cores": split}
    figures["pixels_sooner_p50_ms"] = round(
        figures["polling_pixels_p50_ms"] - figures["pixels_p50_ms"], 2
    )
    figures["polling_downloads_per_job"] = round(polled_downloads / max(len(polled), 1), 2)
    figures["polling_load"] = load.summary()
    return figures


async def _pushed(stack, plan: Plan) -> dict:
    async def submit(_index: int) -> dict:
        response = await stack.submits.post_json("/v1/flux-dev", BODY, stack.auth)
        if response.status != 200:
            raise RuntimeError(f"submit answered {response.status}")
        return response.json()

    async with listen.sink() as sink:
        await stack.subscribe(sink.url, ["job.ready"])
        async with listen.streams(stack) as (stream,), _Viewer(stack.url, stream) as viewer:
            load = await open_loop(plan.rate, plan.jobs, submit, in_flight=SUBMIT_POOL)
            await stream.wait_for("job.ready", plan.jobs, DRAIN_S)
            await sink.wait_for(plan.jobs, DRAIN_S)
            await viewer.wait_for(plan.jobs, DRAIN_S)
        tasks = await stack.emulator.tasks()
        stats = await stack.emulator.stats()
    finished = {task_id: task["finished_at"] for task_id, task in tasks.items()}
    expected = len(load.sent) - load.failures
    sse = listen.delays(listen.ready_by_task(stream), finished)
    callbacks = [(arrival, body["data"]["bfl_id"]) for arrival, body in sink.callbacks()]
    callback = listen.delays(callbacks, finished)
    pixels = listen.delays(viewer.held, finished)
    return {
        **latency_ms(sse, "sse", expected - len(sse)),
        **latency_ms(callback, "callback", expected - len(callback)),
        **latency_ms(pixels, "pixels", expected - len(pixels)),
        "image_kb": round(viewer.size / max(len(viewer.held), 1) / 1000, 1),
        "downloads_per_job": round(stats["deliveries"] / max(expected, 1), 2),
        "load": load.summary(),
    }


class _Viewer:
    """The app behind the SSE client: on each `job.ready` it fetches the image link."""

    def __init__(self, url: str, stream: wire.EventStream) -> None:
        self.pool = wire.Pool(url, READERS)
        self.stream = stream
        self.held: list[tuple[float, str]] = []  # (whole image in hand, BFL task id)
        self.size = 0
        self._seen = 0
        self._fetches: set[asyncio.Task] = set()
        self._changed = asyncio.Event()

    async def __aenter__(self) -> "_Viewer":
        self._watch = asyncio.create_task(self._watching())
        return self

    async def __aexit__(self, *_exc) -> None:
        self._watch.cancel()
        for task in self._fetches:
            task.cancel()
        await asyncio.gather(self._watch, *self._fetches, return_exceptions=True)
        self.pool.close()

    async def _watching(self) -> None:
        while True:
            self.stream.changed.clear()
            for _arrival, kind, body in self.stream.events(self._seen):
                self._seen += 1
                if kind == "job.ready":
                    task = asyncio.create_task(self._fetch(body["data"]))
                    self._fetches.add(task)
                    task.add_done_callback(self._fetches.discard)
            await self.stream.changed.wait()

    async def _fetch(self, job: dict) -> None:
        response = await self.pool.request("GET", request_target(job["result"]["sample"]))
        if response.status == 200:
            self.held.append((time.time(), job["bfl_id"]))
            self.size += len(response.body)
            self._changed.set()

    async def wait_for(self, count: int, timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while len(self.held) < count:
                self._changed.clear()
                await self._changed.wait()
