"""One httpx transport made of several small connection pools.

httpcore's pool rescans all of its connections, some checks quadratically, each time a
request starts or ends; with 64 connections that was the biggest single cost of an upstream
call under load (profile in the README). Several pools of a few connections each hold as
many connections at a fraction of the scanning. Each request goes to the pool with the
fewest requests open (a request is open until its response is closed).
"""

from collections.abc import AsyncIterator, Callable, Sequence

import httpx


class ShardedTransport(httpx.AsyncBaseTransport):
    def __init__(self, shards: Sequence[httpx.AsyncBaseTransport]) -> None:
        if not shards:
            raise ValueError("a sharded transport needs at least one shard")
        self._shards = list(shards)
        self._open = [0] * len(self._shards)

    @property
    def open_requests(self) -> list[int]:
        return list(self._open)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        index = min(range(len(self._shards)), key=self._open.__getitem__)
        self._open[index] += 1
        try:
            response = await self._shards[index].handle_async_request(request)
        except BaseException:
            self._open[index] -= 1
            raise
        response.stream = _ClosingStream(response.stream, lambda: self._closed(index))
        return response

    def _closed(self, index: int) -> None:
        self._open[index] -= 1

    async def aclose(self) -> None:
        for shard in self._shards:
            await shard.aclose()


class _ClosingStream(httpx.AsyncByteStream):
    """A response stream that reports, once, when it is closed."""

    def __init__(self, inner, on_close: Callable[[], None]) -> None:
        self._inner = inner
        self._on_close: Callable[[], None] | None = on_close

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            if self._on_close is not None:
                on_close, self._on_close = self._on_close, None
                on_close()


def sharded(make_shard: Callable[[httpx.Limits], httpx.AsyncBaseTransport], limits: httpx.Limits,
            shards: int) -> ShardedTransport:  # fmt: skip
    """`shards` pools that together hold `limits` connections."""
    per_shard = httpx.Limits(
        max_connections=-(-limits.max_connections // shards),
        max_keepalive_connections=-(-limits.max_keepalive_connections // shards),
        keepalive_expiry=limits.keepalive_expiry,
    )
    return ShardedTransport([make_shard(per_shard) for _ in range(shards)])
