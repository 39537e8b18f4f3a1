"""The delivery hop: BFL's images cross the internet from Azure blob storage to the client.

Two config keys shape a `/delivery/...` download, both in real time (`time_scale` does not scale
them; it scales BFL's clock, and this is the network):

- `delivery_ttfb_s`: time to first byte. The wait comes before the status line and headers, not
  between the headers and the first body byte: an HTTP client (httpx, a browser's TTFB) sees the
  response when its first bytes, the status line, arrive, and a blob host's latency (round trip,
  lookup) is paid before it answers at all. Refusals (403, 404) and 304s pay it too.
- `delivery_bytes_per_s`: the transfer rate of the body. Each chunk leaves when the link would
  have carried all of it, by the clock from the first body byte, so sleeps do not accumulate
  drift and the body takes len / rate seconds in all.
"""

from collections.abc import AsyncIterator, Mapping

import anyio
from starlette.responses import Response, StreamingResponse

# Bytes per body message: 1.6 ms of a 20 MB/s link; ~7 per 210 KB JPEG, ~42 per 1.4 MB PNG.
# Measured on loopback: 16, 32 and 64 KiB all land within ~5 ms of ttfb + size / rate;
# 32 KiB keeps streaming clients fed smoothly at half the event-loop wake-ups of 16 KiB.
CHUNK = 32 * 1024


async def sleep_until(deadline: float) -> None:
    """Sleep until `deadline` on anyio's monotonic clock (seconds); at once if it has passed."""
    await anyio.sleep(max(0.0, deadline - anyio.current_time()))


def image_response(
    content: bytes, media_type: str, headers: Mapping[str, str], bytes_per_s: float | None
) -> Response:
    """`content` with its Content-Length, streamed at `bytes_per_s` (None: all at once)."""
    if bytes_per_s is None:
        return Response(content, media_type=media_type, headers=dict(headers))
    sized = {**headers, "Content-Length": str(len(content))}  # not chunked, like a blob host
    return StreamingResponse(paced(content, bytes_per_s), media_type=media_type, headers=sized)


async def paced(content: bytes, bytes_per_s: float) -> AsyncIterator[bytes]:
    """`content` in CHUNK-byte pieces; the piece ending at byte `end` leaves at
    start + end / bytes_per_s, `start` being when the body begins (after the headers)."""
    start = anyio.current_time()
    view = memoryview(content)
    for begin in range(0, len(content), CHUNK):
        end = min(begin + CHUNK, len(content))
        await sleep_until(start + end / bytes_per_s)
        yield bytes(view[begin:end])
