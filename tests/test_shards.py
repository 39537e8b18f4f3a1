"""Small connection pools behind one transport: requests spread by how many each has open."""

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from service.shards import ShardedTransport, sharded
from tests.support.servers import running_server


async def _echo(request):
    return PlainTextResponse(request.url.path)


ECHO = Starlette(routes=[Route("/{name}", _echo)])


async def test_requests_go_to_the_least_busy_pool_until_their_responses_close():
    four = httpx.Limits(max_connections=4, max_keepalive_connections=4)
    transport = sharded(lambda limits: httpx.AsyncHTTPTransport(limits=limits), four, shards=2)
    async with running_server(ECHO) as url, httpx.AsyncClient(transport=transport) as client:
        held = [await client.send(client.build_request("GET", f"{url}/{n}"), stream=True)
                for n in range(3)]  # fmt: skip
        assert sorted(transport.open_requests) == [1, 2]
        for response in held:
            assert (await response.aread()).decode().startswith("/")
            await response.aclose()
        assert transport.open_requests == [0, 0]
        assert (await client.get(f"{url}/again")).text == "/again"
        assert transport.open_requests == [0, 0]


async def test_a_failed_request_does_not_stay_open():
    def refuse(request):
        raise httpx.ConnectError("refused", request=request)

    transport = ShardedTransport([httpx.MockTransport(refuse), httpx.MockTransport(refuse)])
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(3):
            with pytest.raises(httpx.ConnectError):
                await client.get("http://upstream.test/")
    assert transport.open_requests == [0, 0]


def test_the_pools_together_hold_the_limits():
    made = []
    sharded(made.append, httpx.Limits(max_connections=80, max_keepalive_connections=64), 8)
    assert [(m.max_connections, m.max_keepalive_connections) for m in made] == [(10, 8)] * 8
    with pytest.raises(ValueError, match="at least one shard"):
        ShardedTransport([])
