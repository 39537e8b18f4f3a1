"""`python -m bench.outbound`: CPU per outbound request, fluxhook's transport against httpx's.

One POST at a time, a callback's size (≈ 1 KB of JSON, Standard Webhooks headers), through
`service.outbound.request` to a loopback server in its own process that answers each at once
(`python -m bench.outbound --serve`). Measured: this process's CPU time per request after a
warm-up, on httpx's own transport (httpcore's pool on anyio) and on fluxhook's (the guarded
`service.http11` transport on `service.netstream`, as `fluxhook serve` builds it), alternated
`--runs` times in one run; medians, and fluxhook's share of httpx's.
"""

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.processes import child_env, free_port, start
from bench.wire import Sink
from service import outbound
from service.guard import GuardedBackend, GuardedTransport

REQUESTS, WARM_UP = 3000, 200
LIMITS = httpx.Limits(max_connections=64, max_keepalive_connections=64)
BODY = b'{"type":"job.ready","timestamp":"2026-12-07T00:00:00.000000Z","data":{}}'.ljust(1024)
HEADERS = {
    "content-type": "application/json",
    "webhook-id": "msg_0f0e0d0c0b0a09080706050403020100",
    "webhook-timestamp": "1796601600",
    "webhook-signature": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
    "user-agent": "fluxhook-webhooks/1",
}
TRANSPORTS = {
    "httpx (httpcore, anyio)": lambda: httpx.AsyncHTTPTransport(limits=LIMITS),
    "fluxhook (http11, netstream)": lambda: GuardedTransport(
        GuardedBackend(allow_private=True), LIMITS
    ),
}


async def cpu_per_request_us(make, url: str, requests: int) -> float:
    async with make() as transport:

        async def post() -> None:
            options = {"content": BODY, "headers": HEADERS, "timeouts": 5.0}
            await outbound.request(transport, "POST", url, **options)

        for _ in range(WARM_UP):
            await post()
        started = time.process_time()
        for _ in range(requests):
            await post()
        return 1e6 * (time.process_time() - started) / requests


async def main(runs: int, requests: int) -> None:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="fluxhook-outbound-") as workdir:
        args = ["-m", "bench.outbound", "--serve", "--port", str(port)]
        server = await start("sink", args, child_env(), Path(workdir), port, "/healthz")
        try:
            url = f"http://127.0.0.1:{port}/hook"
            costs: dict[str, list[float]] = {name: [] for name in TRANSPORTS}
            for _ in range(runs):
                for name, make in TRANSPORTS.items():
                    costs[name].append(await cpu_per_request_us(make, url, requests))
        finally:
            await server.stop()
    print(f"CPU per POST on loopback, {requests} requests, median of {runs} runs")
    for name, values in costs.items():
        spread = f"[{min(values):.0f}–{max(values):.0f}]"
        print(f"  {name:<30} {statistics.median(values):6.0f} µs  {spread}")
    httpx_us, ours_us = (statistics.median(v) for v in costs.values())
    print(f"  fluxhook / httpx               {100 * ours_us / httpx_us:6.0f} %")


async def serve(port: int) -> None:
    sink = await Sink().start(port)
    try:
        await asyncio.Event().wait()
    finally:
        await sink.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.outbound")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--requests", type=int, default=REQUESTS, help="per run and transport")
    parser.add_argument("--serve", action="store_true", help="be the loopback server")
    parser.add_argument("--port", type=int, default=0)
    options = parser.parse_args()
    asyncio.run(serve(options.port) if options.serve else main(options.runs, options.requests))
