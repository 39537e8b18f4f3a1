"""The baseline: the loop of BFL's docs, straight against the emulator, no webhook.

Each client submits, then sleeps 0.5 s and asks `polling_url` until the status is `Ready`,
as the docs' `while True: time.sleep(0.5); result = requests.get(polling_url, …)` does. It
notes when it first saw `Ready`; the emulator's task list says when the task finished.
"""

import asyncio
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from bench import wire
from bench.loadgen import Load, open_loop
from bench.stack import BFL_KEY, JOB_BODY, MODEL, EmulatorControl

DOCS_INTERVAL_S = 0.5
POOL = 128
TERMINAL = {"Ready", "Error", "Request Moderated", "Content Moderated", "Task not found"}


@dataclass
class Polled:
    task_id: str
    seen_ready: float  # epoch seconds


async def _client(pool: wire.Pool, interval_s: float, body: dict, download: bool) -> Polled:
    """`download`: once `Ready`, fetch the image from BFL's URL too (time to pixels)."""
    auth = {"x-key": BFL_KEY}
    submitted = await pool.post_json(f"/v1/{MODEL}", body, auth)
    if submitted.status != 200:
        raise RuntimeError(f"emulator submit answered {submitted.status}")
    url = urlsplit(submitted.json()["polling_url"])
    target = f"{url.path}?{url.query}"
    while True:
        await asyncio.sleep(interval_s)
        result = (await pool.request("GET", target, headers=auth)).json()
        if result["status"] in TERMINAL:
            if result["status"] != "Ready":
                raise RuntimeError(f"task ended {result['status']}")
            if download:
                image = await pool.request("GET", request_target(result["result"]["sample"]))
                if image.status != 200:
                    raise RuntimeError(f"image download answered {image.status}")
            return Polled(result["id"], time.time())


def request_target(url: str) -> str:
    """The request target (path and query) of an absolute URL."""
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


async def polling_clients(
    emulator: EmulatorControl,
    rate: float,
    jobs: int,
    interval_s: float = DOCS_INTERVAL_S,
    body: dict = JOB_BODY,
    download: bool = False,
) -> tuple[Load, list[float]]:
    """`jobs` polling clients started at `rate`; the load, and each job's seconds from the
    emulator's terminal event to its client seeing `Ready` (and, with `download`, holding
    the image)."""
    pool = wire.Pool(emulator.url, POOL)
    try:
        load = await open_loop(rate, jobs, lambda _i: _client(pool, interval_s, body, download))
    finally:
        pool.close()
    finished = await emulator.finished_at()
    delays = [s.result.seen_ready - finished[s.result.task_id] for s in load.sent if s.ok]
    return load, delays
