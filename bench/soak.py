"""Measurement 8: what storage costs, and what retention gives back.

The same load twice on SQLite, once with `IMAGE_STORE=db` and once with `IMAGE_STORE=s3://…`
(moto's S3 server on loopback): `jobs` jobs of BFL's default size (1024×768 JPEG) until every
`job.ready` arrived. Then fluxhook stops and `fluxhook prune --older-than 0s` runs, as an
operator would. Sizes: the database file (with its WAL) when empty, after the load and after
the prune; the bucket after the load and after the prune.

With S3 it also times serving one image (`SERVE_SAMPLES` sequential GETs of fluxhook's link):
streamed through fluxhook (what it does), against what a 302 to a presigned URL would cost a
client: fluxhook's answer without the bytes (the same lookup and signature check, timed as a
304) plus a GET of the presigned URL from the bucket itself.
"""

import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import httpx
import obstore

from bench import listen
from bench.loadgen import open_loop
from bench.processes import child_env, run
from bench.stack import SUBMIT_POOL, Databases, running_stack
from service.stores import Buckets

SOAK_BODY = {"prompt": "a lighthouse at dawn", "seed": 7}  # BFL's default 1024×768 JPEG
DRAIN_S = 60.0
SERVE_SAMPLES = 50


@dataclass(frozen=True)
class Plan:
    jobs: int
    rate: float = 100.0


FULL = Plan(jobs=2000)
SMOKE = Plan(jobs=20)


def _file_mb(database_url: str) -> float:
    path = Path(database_url.removeprefix("sqlite:///"))
    files = [path, Path(f"{path}-wal")]
    return round(sum(f.stat().st_size for f in files if f.exists()) / 1e6, 2)


async def measure(plan: Plan, databases: Databases, workdir: Path) -> dict:
    from tests.support.s3 import start_s3_server

    server, s3 = start_s3_server()
    try:
        figures = {}
        for store in ("db", "s3"):
            figures |= await _one_store(plan, databases, workdir, store, s3)
        return figures
    finally:
        server.stop()


async def _one_store(plan: Plan, databases: Databases, workdir: Path, store: str, s3) -> dict:
    bucket = s3.new_bucket() if store == "s3" else None
    env = _store_env(store, s3, bucket)
    with databases.fresh("sqlite") as database_url:
        async with running_stack(workdir, database_url, env=env) as stack, listen.sink() as sink:
            empty = _file_mb(database_url)
            await stack.subscribe(sink.url, ["job.ready"])

            async def submit(_index: int) -> dict:
                path = "/v1/flux-dev"
                response = await stack.submits.post_json(path, SOAK_BODY, stack.auth)
                if response.status != 200:
                    raise RuntimeError(f"submit answered {response.status}")
                return response.json()

            load = await open_loop(plan.rate, plan.jobs, submit, in_flight=SUBMIT_POOL)
            ready = len(load.sent) - load.failures
            await sink.wait_for(ready, DRAIN_S)
            serving = await _serving(sink, s3, bucket) if bucket else {}
        loaded, bucket_loaded = _file_mb(database_url), _bucket_mb(s3, bucket)
        _prune_now(database_url, env, workdir)
        return {
            f"{store}_jobs": len(sink.callbacks()),
            f"{store}_empty_mb": empty,
            f"{store}_loaded_mb": loaded,
            f"{store}_pruned_mb": _file_mb(database_url),
            f"{store}_bucket_loaded_mb": bucket_loaded,
            f"{store}_bucket_pruned_mb": _bucket_mb(s3, bucket),
            **serving,
        }


async def _serving(sink, s3, bucket: str) -> dict:
    """Median ms to get one image: streamed by fluxhook, or as a 302 + presigned GET would."""
    links = [body["data"]["result"]["sample"] for _, body in sink.callbacks()][:SERVE_SAMPLES]
    client = Buckets(s3.access()).client(bucket)
    keys = [f"images/{body['data']['id'].replace('-', '')}" for _, body in sink.callbacks()]
    presigned = [obstore.sign(client, "GET", key, timedelta(minutes=5)) for key in keys]
    async with httpx.AsyncClient() as http:
        etag = (await http.get(links[0])).headers["etag"]
        streamed = [await _timed(http, link) for link in links]
        answered = [await _timed(http, link, {"if-none-match": etag}) for link in links]
        direct = [await _timed(http, url) for url in presigned[: len(links)]]
    redirect = [a + d for a, d in zip(answered, direct, strict=True)]
    return {"serve_stream_ms": median(streamed), "serve_redirect_ms": median(redirect)}


async def _timed(http: httpx.AsyncClient, url: str, headers: dict | None = None) -> float:
    started = time.perf_counter()
    response = await http.get(url, headers=headers)
    assert response.status_code in (200, 304), response.status_code
    return (time.perf_counter() - started) * 1000


def median(values: list[float]) -> float:
    return round(sorted(values)[len(values) // 2], 2)


def _store_env(store: str, s3, bucket: str | None) -> dict[str, str]:
    if store == "db":
        return {"IMAGE_STORE": "db"}
    access = s3.access()
    return {
        "IMAGE_STORE": f"s3://{bucket}/images",
        "AWS_ACCESS_KEY_ID": access.access_key_id,
        "AWS_SECRET_ACCESS_KEY": access.secret_access_key,
        "AWS_REGION": access.region,
        "AWS_ENDPOINT_URL": access.endpoint_url,
    }


def _bucket_mb(s3, bucket: str | None) -> float:
    return round(sum(s3.objects(bucket).values()) / 1e6, 2) if bucket else 0.0


def _prune_now(database_url: str, env: dict[str, str], workdir: Path) -> None:
    prune_env = child_env(DATABASE_URL=database_url, LOG_FORMAT="text", **env)
    args = [sys.executable, "-m", "service", "prune", "--older-than", "0s"]
    run(args, prune_env, workdir / "prune.log")
