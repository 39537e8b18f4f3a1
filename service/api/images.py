"""Serving a job's image: `GET /images/{token}` (signed, no key) and `/v1/jobs/{id}/image`.

The link works from the moment `job.ready` goes out. Stored: the bytes from the store, with
an `ETag` (304 on `If-None-Match`). Not yet stored: the download from BFL in progress in this
process is streamed as it arrives (`service.transfers`); if it runs in another process, or
has not begun, the request waits for it to begin here or for the image to be stored, up to
`WAIT_FOR_IMAGE_S`.
"""

import logging
import uuid

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from service import jobs
from service.api.http import error, services
from service.models import Image, Job
from service.stores import StoreError
from service.transfers import Transfer, TransferFailed

log = logging.getLogger(__name__)
WAIT_FOR_IMAGE_S = 25.0  # under the PaaS router's 30 s without a response byte
RECHECK_S = 0.25  # a download in another process shows up only in the table


async def serve_image(request: Request, job_id: uuid.UUID, headers: dict) -> Response:
    svc = services(request)
    if (deliveries := svc.signals.deliveries) is not None:
        # Callbacks just handed over are written first: the client asking for this image
        # has heard of it already; the subscribers not yet (service.loops.dispatcher).
        await deliveries.handoffs_on_the_wire()
    deadline = anyio.current_time() + WAIT_FOR_IMAGE_S
    while True:
        image, status = await _image_and_status(svc.db, job_id)
        if image is not None:
            return await _stored(request, svc, image, headers)
        if status != jobs.READY:
            raise error(404, "this job has no image")
        if transfer := svc.transfers.get(job_id):
            return await _streamed(transfer, headers)
        remaining = deadline - anyio.current_time()
        if remaining <= 0:
            detail = "the image is still on its way from BFL; try again in a moment"
            raise error(503, detail, headers={"retry-after": "1"})
        await svc.transfers.changed(min(remaining, RECHECK_S))


async def _image_and_status(db, job_id: uuid.UUID) -> tuple[Image | None, str | None]:
    async with db.read() as session:
        image = await session.get(Image, job_id)
        job = None if image is not None else await session.get(Job, job_id)
    return image, (job.status if job is not None else None)


async def _stored(request: Request, svc, image: Image, headers: dict) -> Response:
    etag = f'"{image.sha256}"'
    headers = {**headers, "etag": etag}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    try:
        body = await svc.images.body(image)
    except StoreError as exc:
        log.warning("image of job %s could not be read: %s", image.job_id, exc)
        raise error(503, "the image store is not answering; try again shortly") from None
    if isinstance(body, bytes):
        return Response(body, media_type=image.content_type, headers=headers)
    headers["content-length"] = str(image.size)
    return StreamingResponse(body, media_type=image.content_type, headers=headers)


async def _streamed(transfer: Transfer, headers: dict) -> Response:
    """The download as it arrives. If it breaks, the response ends short of its length (or
    of its last chunk): a clean error for the client, never a truncated image taken whole."""
    try:
        content_type = await transfer.content_type()
    except TransferFailed as exc:
        raise error(502, f"the image download from BFL failed: {exc}") from None
    if content_type is None:
        raise error(502, "BFL's image URL did not return a JPEG, PNG or WebP image")
    if transfer.length is not None:
        headers = {**headers, "content-length": str(transfer.length)}
    return StreamingResponse(transfer.read(), media_type=content_type, headers=headers)
