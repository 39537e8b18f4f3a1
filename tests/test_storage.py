"""IMAGE_STORE=s3://… against a real S3-compatible server (moto, on loopback): images land in
the bucket, the signed link serves them, prune removes them, and `images copy` moves a `db`
deployment's images with nothing lost."""

import hashlib
import logging
import uuid
from datetime import timedelta

import httpx
from sqlmodel import select

from service.copying import copy_images
from service.images import ImageStore
from service.models import Image, Job
from service.retention import prune
from tests.support.stack import running_emulator, running_stack
from tests.support.waiting import wait_for

SMALL = {"width": 256, "height": 256}
FAST = {"time_scale": 0.01}


def _s3(s3_server, bucket: str, prefix: str = "img") -> dict:
    return {"image_store": f"s3://{bucket}/{prefix}", "s3": s3_server.access()}


async def _images(stack) -> list[Image]:
    async with stack.services.db.read() as session:
        return list((await session.exec(select(Image).order_by(Image.job_id))).all())


async def test_images_land_in_the_bucket_and_the_link_serves_them(database_url, s3_server):
    bucket = s3_server.new_bucket()
    async with (
        running_emulator(**FAST) as emulator,
        running_stack(database_url, emulator, **_s3(s3_server, bucket)) as stack,
        httpx.AsyncClient() as http,
    ):
        assert (await stack.client.get("/readyz")).status_code == 200
        job = await stack.submit("flux-dev", **SMALL)
        result = await stack.settled(job["id"])
        assert result["status"] == "Ready"
        await stack.stored(job["id"])
        key = f"img/{uuid.UUID(job['id']).hex}"
        assert list(s3_server.objects(bucket)) == [key]
        (image,) = await _images(stack)
        assert (image.data, image.path) == (None, f"s3://{bucket}/{key}")

        served = await http.get(result["result"]["sample"])
        assert served.status_code == 200
        assert served.content == s3_server.object(bucket, key)
        assert hashlib.sha256(served.content).hexdigest() == image.sha256
        assert served.headers["content-type"] == "image/jpeg"
        assert served.headers["access-control-allow-origin"] == "*"
        cached = await http.get(
            result["result"]["sample"], headers={"if-none-match": served.headers["etag"]}
        )
        assert cached.status_code == 304

        await prune(stack.services.db, stack.services.images, _later(stack))
        assert s3_server.objects(bucket) == {}
        gone = await stack.client.get("/v1/get_result", params={"id": job["id"]})
        assert (gone.status_code, gone.json()["status"]) == (404, "Task not found")
        assert (await http.get(result["result"]["sample"])).status_code == 404


def _later(stack):
    return stack.services.clock.now() + timedelta(seconds=1)


async def test_a_missing_bucket_is_not_ready_and_fails_the_image_step(
    sqlite_url, s3_server, caplog
):
    caplog.set_level(logging.WARNING)
    async with (
        running_emulator(**FAST) as emulator,
        running_stack(sqlite_url, emulator, **_s3(s3_server, "no-such-bucket")) as stack,
    ):
        ready = await stack.client.get("/readyz")
        assert ready.status_code == 503
        assert "no-such-bucket" in ready.json()["reason"]
        job = await stack.submit("flux-dev", **SMALL)
        await wait_for(lambda: _fetch_attempted(stack, job["id"]))
        shown = await stack.client.get(f"/v1/jobs/{job['id']}")
        assert (shown.status_code, shown.json()["image_stored"]) == (200, False)
        assert "IMAGE_STORE refused it" in caplog.text


async def _fetch_attempted(stack, job_id: str) -> bool:
    async with stack.services.db.read() as session:
        return (await session.get(Job, uuid.UUID(job_id))).fetch_attempts > 0


async def test_images_copy_moves_a_db_deployment_to_s3(database_url, s3_server):
    bucket = s3_server.new_bucket()
    db_store_with_s3_access = {"image_store": "db", "s3": s3_server.access()}
    async with (
        running_emulator(**FAST) as emulator,
        running_stack(database_url, emulator, **db_store_with_s3_access) as stack,
        httpx.AsyncClient() as http,
    ):
        jobs = [await stack.submit("flux-dev", prompt=f"job {i}", **SMALL) for i in range(3)]
        links = [(await stack.settled(job["id"]))["result"]["sample"] for job in jobs]
        for job in jobs:
            await stack.stored(job["id"])
        before = [(await http.get(link)).content for link in links]
        target = ImageStore(f"s3://{bucket}/moved", s3_server.access())
        lines: list[str] = []

        copied = await copy_images(stack.services.db, target, report=lines.append)
        assert (copied.copied, copied.already_there, copied.failed) == (3, 0, 0)
        assert lines[-1].startswith("3/3 images: 3 copied")
        objects = s3_server.objects(bucket)
        assert len(objects) == 3
        for image in await _images(stack):
            assert image.data is None and image.path.startswith(f"s3://{bucket}/moved/")
            stored = s3_server.object(bucket, image.path.split("/", 3)[3])
            assert hashlib.sha256(stored).hexdigest() == image.sha256
        assert [(await http.get(link)).content for link in links] == before

        again = await copy_images(stack.services.db, target, report=lines.append)
        assert (again.copied, again.already_there) == (0, 3), "idempotent: a rerun copies nothing"
