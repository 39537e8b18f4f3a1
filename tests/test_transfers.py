"""Time to pixels (issue 13): `job.ready` goes out at the webhook, and the image link streams
the one download from BFL while it arrives; the store and every reader share it."""

import contextlib
import hashlib
import uuid

import anyio
import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from service.models import Job
from tests.support.servers import running_server
from tests.support.stack import running_emulator, running_stack
from tests.support.waiting import wait_for

FAST = {"time_scale": 0.01}
# A default 1024×768 JPEG (~200 KB) takes about a second to arrive at this rate.
SLOW_DELIVERY = {"delivery_ttfb_s": 0.2, "delivery_bytes_per_s": 200_000}


async def _read_link(url: str) -> bytes:
    async with httpx.AsyncClient(timeout=30) as http:
        response = await http.get(url)
        assert response.status_code == 200, response.text
        return response.content


async def _ready_link(stack, job_id: str) -> str:
    result = await stack.settled(job_id)
    assert result["status"] == "Ready", result
    return result["result"]["sample"]


async def _task_id(stack, job_id: str) -> str:
    async with stack.services.db.read() as session:
        return (await session.get(Job, uuid.UUID(job_id))).bfl_id


async def test_readers_and_the_store_share_one_download(database_url):
    async with (
        running_emulator(**FAST, **SLOW_DELIVERY) as emulator,
        running_stack(database_url, emulator) as stack,
    ):
        job = await stack.submit("flux-dev")
        link = await _ready_link(stack, job["id"])
        assert stack.services.transfers.get(uuid.UUID(job["id"])), "the download is under way"
        results: list[bytes] = []
        async with anyio.create_task_group() as tg:
            for _ in range(2):
                tg.start_soon(lambda: _append(results, _read_link(link)))
        shown = await stack.stored(job["id"])
        stored = (await stack.client.get(f"/v1/jobs/{job['id']}/image")).content
        assert results == [stored, stored]
        assert shown["image_stored"]
        stats = await emulator.stats()
        assert stats["deliveries_by_task"] == {await _task_id(stack, job["id"]): 1}


async def _append(items: list, awaitable) -> None:
    items.append(await awaitable)


async def test_a_reader_that_starts_mid_transfer_gets_identical_bytes(sqlite_url):
    async with (
        running_emulator(**FAST, **SLOW_DELIVERY) as emulator,
        running_stack(sqlite_url, emulator) as stack,
        httpx.AsyncClient(timeout=30) as http,
    ):
        job = await stack.submit("flux-dev")
        link = await _ready_link(stack, job["id"])
        async with http.stream("GET", link) as first:
            chunks = first.aiter_bytes()
            head = await anext(chunks)
            transfer = stack.services.transfers.get(uuid.UUID(job["id"]))
            assert transfer is not None and not transfer.done, "joined mid-transfer"
            late = await _read_link(link)
            whole = head + b"".join([chunk async for chunk in chunks])
        assert late == whole
        assert int(first.headers["content-length"]) == len(whole)
        await stack.stored(job["id"])
        stored = (await stack.client.get(f"/v1/jobs/{job['id']}/image")).content
        assert stored == whole
        assert (await emulator.stats())["deliveries"] == 1


class Breaking:
    """A delivery host whose first download breaks half-way; later ones are whole."""

    def __init__(self, image: bytes) -> None:
        self.image, self.downloads = image, 0
        self.started = anyio.Event()
        self.cut = anyio.Event()  # the test says when the first download breaks

    async def serve(self, _request: Request) -> Response:
        self.downloads += 1
        headers = {"content-length": str(len(self.image))}
        body = self._broken() if self.downloads == 1 else self._whole()
        return StreamingResponse(body, media_type="image/jpeg", headers=headers)

    async def _whole(self):
        yield self.image

    async def _broken(self):
        yield self.image[: len(self.image) // 2]
        self.started.set()
        await self.cut.wait()
        raise ConnectionResetError("the delivery host went away")


@contextlib.asynccontextmanager
async def running_delivery_host(image: bytes):
    host = Breaking(image)
    app = Starlette(routes=[Route("/sample.jpeg", host.serve)])
    async with running_server(app) as url:
        yield host, f"{url}/sample.jpeg"


async def test_a_download_that_breaks_is_retried_and_readers_get_all_or_an_error(sqlite_url):
    image = b"\xff\xd8\xff" + bytes(range(256)) * 400
    async with (
        running_delivery_host(image) as (host, sample),
        running_emulator(manual=True) as emulator,
        # The delivery host is trusted as a BFL host (the guard refuses loopback otherwise).
        running_stack(sqlite_url, emulator, bfl_poll_hosts=(sample.rsplit("/", 1)[0],)) as st,
        httpx.AsyncClient(timeout=30) as http,
    ):
        job = await st.submit("flux-dev")
        task = await wait_for(lambda: _task_id(st, job["id"]))
        ready = {"id": task, "status": "Ready", "result": {"sample": sample}}
        assert (await st.post_webhook(job["id"], ready)).status_code == 200
        link = (await st.settled(job["id"]))["result"]["sample"]
        await host.started.wait()
        async with http.stream("GET", link) as reader:
            chunks = reader.aiter_bytes()
            got = [await anext(chunks)]
            host.cut.set()
            try:
                got += [chunk async for chunk in chunks]
                broke = False
            except httpx.HTTPError:
                broke = True
        assert broke, "a reader of a broken download gets an error, not a short image"
        assert b"".join(got) != image
        shown = await st.stored(job["id"])
        assert shown["status"] == "Ready" and host.downloads == 2
        assert await _read_link(link) == image
        stored = (await st.client.get(f"/v1/jobs/{job['id']}/image")).headers["etag"]
        assert stored.strip('"') == hashlib.sha256(image).hexdigest()


async def test_a_fetch_cut_short_resumes_after_a_restart(sqlite_url):
    async with running_emulator(**FAST, delivery_bytes_per_s=50_000) as emulator:
        async with running_stack(sqlite_url, emulator) as first:
            job = await first.submit("flux-dev")
            link = await _ready_link(first, job["id"])
            transfer = first.services.transfers.get(uuid.UUID(job["id"]))
            await wait_for(lambda: _has_bytes(transfer))
        # Stopped mid-download: the lease went back; the next process fetches again.
        await emulator.configure(delivery_bytes_per_s=None)
        async with running_stack(sqlite_url, emulator) as second:
            second.client.headers["x-key"] = first.key  # the job's tenant
            image = await _read_link(link.replace(first.url, second.url))
            shown = await second.stored(job["id"])
            assert shown["image_stored"]
            stored = (await second.client.get(f"/v1/jobs/{job['id']}/image")).content
            assert image == stored
            result = await second.client.get("/v1/get_result", params={"id": job["id"]})
            assert result.json()["status"] == "Ready"


async def _has_bytes(transfer) -> bool:
    return transfer.size > 0
