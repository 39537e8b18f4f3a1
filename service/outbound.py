"""fluxhook's own requests (to BFL, to its image hosts, to subscribers), sent on an httpx
transport without `httpx.AsyncClient` in between.

Every one of them goes to an absolute URL with the headers it names, follows no redirect and
keeps no cookie. The client's per-request layers do nothing for them and cost ≈ 110 µs of
CPU per request (measured on loopback, bench/README.md "sixth pass"), a job makes three: it
extracts cookies from every response (building a urllib request to do it), runs the auth
and redirect machinery, merges base URL, default headers and cookies. The transport is the
same one the client would use: the guarded, sharded connection pools of `service.runtime`,
or a test's `httpx.MockTransport`. Errors are httpx's own (`httpx.ConnectError`,
`httpx.ReadTimeout`, …), as through the client.
"""

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import httpx

USER_AGENT = "fluxhook/1"
# httpx's `trace` request extension: awaited with each phase's name (`http11.send_request_body.
# complete`, `connection.connect_tcp.started`, …) and its details.
Trace = Callable[[str, dict], Awaitable[None]]


@functools.lru_cache(maxsize=1024)
def parsed_url(url: str) -> httpx.URL:
    """A URL parsed once (httpx's parser is ≈ 60 µs a URL; most recur: BFL's endpoints, each
    subscriber's). httpx.URL is immutable."""
    return httpx.URL(url)


def _request(
    method: str,
    url: str,
    headers: Mapping[str, str] | None,
    timeouts: httpx.Timeout | float,
    content: bytes | None = None,
    json: Any = None,
    trace: Trace | None = None,
) -> httpx.Request:
    timeout = timeouts if isinstance(timeouts, httpx.Timeout) else httpx.Timeout(timeouts)
    extensions: dict[str, Any] = {"timeout": timeout.as_dict()}
    if trace is not None:
        extensions["trace"] = trace
    request = httpx.Request(
        method, parsed_url(url), headers=headers, content=content, json=json, extensions=extensions
    )
    request.headers.setdefault("user-agent", USER_AGENT)
    return request


async def request(
    transport: httpx.AsyncBaseTransport, method: str, url: str, **options: Any
) -> httpx.Response:
    """One request and its whole response body (`response.content`, `.json()`); `options`
    are `stream`'s."""
    async with stream(transport, method, url, **options) as response:
        await response.aread()
    return response


@contextlib.asynccontextmanager
async def stream(
    transport: httpx.AsyncBaseTransport,
    method: str,
    url: str,
    *,
    timeouts: httpx.Timeout | float,
    headers: Mapping[str, str] | None = None,
    content: bytes | None = None,
    json: Any = None,
    trace: Trace | None = None,
) -> AsyncIterator[httpx.Response]:
    """One request whose response body is read as it arrives (`response.aiter_bytes()`);
    the connection goes back to its pool (or is closed, if the body was left unread) on exit.
    `timeouts` are httpx's, per phase (connect, each read and write, waiting for a pooled
    connection), not a bound on the whole request. `trace` is told of each phase as it
    starts and ends."""
    sent = _request(method, url, headers, timeouts, content, json, trace)
    response = await transport.handle_async_request(sent)
    response.request = sent
    try:
        yield response
    finally:
        await response.aclose()
