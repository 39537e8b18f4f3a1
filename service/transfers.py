"""Image downloads in progress, shared: one upstream download per image, many readers.

`job.ready` goes out the moment BFL's webhook commits, with fluxhook's image link; the image
fetcher starts the one download from BFL at the same time. Until the bytes are stored, a
request for the link reads the `Transfer`: what has arrived so far, then the rest as it
comes, while the fetcher keeps the whole for the store. Nobody downloads a second time.

A transfer lives in the process that downloads it (the one that received the webhook, or
whichever claimed the fetch after a crash). A reader elsewhere, or before the download has
begun, waits for it to begin here or for the image to be stored (`Transfers.wait`).
"""

import uuid
from collections.abc import AsyncIterator

import anyio

from service.images import sniff_content_type

SNIFF_BYTES = 12  # enough for the JPEG, PNG and WebP signatures


class TransferFailed(Exception):
    """The download broke; a reader's response ends without its last bytes (a clean error
    for any HTTP client, since the length or the final chunk is missing)."""


class Transfer:
    def __init__(self, job_id: uuid.UUID) -> None:
        self.job_id = job_id
        self.chunks: list[bytes] = []
        self.size = 0
        self.length: int | None = None  # Content-Length from BFL, when it sent one
        self.done = False
        self.error: str | None = None
        self._changed = anyio.Event()

    def add(self, chunk: bytes) -> None:
        self.chunks.append(chunk)
        self.size += len(chunk)
        self._wake()

    def finish(self) -> None:
        self.done = True
        self._wake()

    def fail(self, reason: str) -> None:
        if not self.done and self.error is None:
            self.error = reason
            self._wake()

    def data(self) -> bytes:
        return b"".join(self.chunks)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def content_type(self) -> str | None:
        """The image type, once the first bytes are in (None: not an image we serve)."""
        while self.size < SNIFF_BYTES and not self.done:
            await self._next()
        return sniff_content_type(b"".join(self.chunks)[:SNIFF_BYTES])

    async def read(self) -> AsyncIterator[bytes]:
        """Every byte, from the first: what has arrived, then the rest as it arrives."""
        index = 0
        while True:
            while index < len(self.chunks):
                index += 1
                yield self.chunks[index - 1]
            if self.done:
                return
            await self._next()

    async def _next(self) -> None:
        if self.error is not None:
            raise TransferFailed(self.error)
        await self._changed.wait()
        if self.error is not None:
            raise TransferFailed(self.error)


class Transfers:
    """This process's downloads in progress, by job."""

    def __init__(self) -> None:
        self._by_job: dict[uuid.UUID, Transfer] = {}
        self._changed = anyio.Event()

    def begin(self, job_id: uuid.UUID) -> Transfer:
        transfer = self._by_job[job_id] = Transfer(job_id)
        self._wake()
        return transfer

    def end(self, transfer: Transfer) -> None:
        """The bytes are stored (or the attempt is over): readers go to the store now."""
        if self._by_job.get(transfer.job_id) is transfer:
            del self._by_job[transfer.job_id]
        self._wake()

    def get(self, job_id: uuid.UUID) -> Transfer | None:
        return self._by_job.get(job_id)

    async def changed(self, within_s: float) -> None:
        """Until a download begins or ends here, or `within_s` passes."""
        with anyio.move_on_after(within_s):
            await self._changed.wait()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()
