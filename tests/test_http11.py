"""fluxhook's HTTP/1.1 transport (`service.http11`) against scripted servers on loopback: the
pool's keep-alive and limits, what a server can do wrong, and what the transport writes."""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import httpcore
import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.http11 import Http11Transport
from tests.support.waiting import wait_for

OK = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
Script = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


class Scripted:
    """A loopback server that runs `script(reader, writer, request_number)` for each request
    it reads the head of; it records each connection's first read and counts connections."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections = 0
        self.first_reads: list[bytes] = []
        self.requests = 0
        self.port = 0

    def url(self, path: str = "/") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            first = await reader.read(65536)
            self.first_reads.append(first)
            buffered = first
            while buffered:
                head, _, rest = buffered.partition(b"\r\n\r\n")
                length = _content_length(head)
                while len(rest) < length:
                    rest += await reader.read(65536)
                self.requests += 1
                await self.script(reader, writer, self.requests)
                if writer.is_closing():
                    return
                buffered = rest[length:] or await reader.read(65536)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


@contextlib.asynccontextmanager
async def scripted(script: Script):
    server = Scripted(script)
    tasks: set[asyncio.Task] = set()

    async def handle(reader, writer):
        tasks.add(asyncio.current_task())
        await server.handle(reader, writer)

    listener = await asyncio.start_server(handle, "127.0.0.1", 0)
    server.port = listener.sockets[0].getsockname()[1]
    try:
        yield server
    finally:
        listener.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await listener.wait_closed()


async def answer(_reader, writer, _number) -> None:
    writer.write(OK)


def answer_when(release: asyncio.Event) -> Script:
    async def held(_reader, writer, _number) -> None:
        await release.wait()
        writer.write(OK)

    return held


def client(limits: httpx.Limits | None = None, timeout: float = 5.0):
    transport = Http11Transport(limits or httpx.Limits())
    return transport, httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False)


async def test_a_request_is_written_at_once_and_its_connection_kept():
    transport, http = client()
    async with scripted(answer) as server, http:
        for _ in range(3):
            response = await http.post(server.url("/hook"), content=b'{"a": 1}')
            assert (response.status_code, response.content) == (200, b"ok")
        assert server.connections == 1
        first = server.first_reads[0]
        assert first.startswith(b"POST /hook HTTP/1.1\r\n")
        assert first.endswith(b'\r\n\r\n{"a": 1}')  # head and body: one write
        assert transport.connections == (1, 1)
    assert transport.connections == (0, 0)


async def test_a_response_left_unread_closes_its_connection():
    async def big(_reader, writer, _number):
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000\r\n\r\n" + b"x" * 1000)

    transport, http = client()
    async with scripted(big) as server, http:
        for _ in range(2):
            async with http.stream("GET", server.url()) as response:
                assert response.status_code == 200
        assert server.connections == 2
        assert transport.connections == (0, 0)


async def test_connection_close_and_close_delimited_bodies():
    async def closing(_reader, writer, number):
        if number % 2:
            writer.write(b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 3\r\n\r\none")
        else:
            writer.write(b"HTTP/1.0 200 OK\r\n\r\nto the end")
        await writer.drain()
        writer.close()

    transport, http = client()
    async with scripted(closing) as server, http:
        assert (await http.get(server.url())).content == b"one"
        assert (await http.get(server.url())).content == b"to the end"
        assert server.connections == 2
        assert transport.connections == (0, 0)


async def test_a_chunked_response_after_an_informational_one():
    async def chunked(_reader, writer, _number):
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")

    _, http = client()
    async with scripted(chunked) as server, http:
        for _ in range(2):
            assert (await http.get(server.url())).content == b"hello world"
        assert server.connections == 1


async def test_a_server_that_hangs_up_unanswered_is_a_protocol_error():
    async def hang_up(_reader, writer, _number):
        writer.close()

    transport, http = client()
    async with scripted(hang_up) as server, http:
        with pytest.raises(httpx.RemoteProtocolError):
            await http.get(server.url())
        assert transport.connections == (0, 0)


async def test_requests_beyond_the_limit_wait_for_a_connection_then_time_out():
    release = asyncio.Event()
    held = answer_when(release)
    limits = httpx.Limits(max_connections=1)
    _, http = client(limits)
    async with scripted(held) as server, http:
        first = asyncio.create_task(http.get(server.url("/first")))
        await wait_for(lambda: _true(server.requests == 1), within_s=5)
        with pytest.raises(httpx.PoolTimeout):
            await http.get(server.url("/late"), timeout=httpx.Timeout(5.0, pool=0.05))
        second = asyncio.create_task(http.get(server.url("/second")))
        release.set()
        assert [r.status_code for r in await asyncio.gather(first, second)] == [200, 200]
        assert server.connections == 1


async def test_at_the_limit_an_idle_connection_to_another_host_makes_room():
    limits = httpx.Limits(max_connections=1)
    transport, http = client(limits)
    async with scripted(answer) as one, scripted(answer) as other, http:
        assert (await http.get(one.url())).status_code == 200
        assert (await http.get(other.url())).status_code == 200
        assert transport.connections == (1, 1)


async def test_idle_connections_beyond_the_keep_alive_limit_are_closed():
    release = asyncio.Event()
    held = answer_when(release)
    transport, http = client(httpx.Limits(max_keepalive_connections=1))
    async with scripted(held) as server, http:
        requests = [asyncio.create_task(http.get(server.url())) for _ in range(3)]
        await wait_for(lambda: _true(server.requests == 3), within_s=5)
        release.set()
        await asyncio.gather(*requests)
        assert transport.connections == (1, 1)


async def test_an_expired_idle_connection_is_not_reused():
    _, http = client(httpx.Limits(keepalive_expiry=0))
    async with scripted(answer) as server, http:
        for _ in range(2):
            assert (await http.get(server.url())).status_code == 200
        assert server.connections == 2


async def test_expired_idle_connections_to_other_hosts_are_swept():
    transport = Http11Transport(httpx.Limits(keepalive_expiry=0), sweep_every_s=0)
    async with scripted(answer) as one, scripted(answer) as other, transport:
        http = httpx.AsyncClient(transport=transport, trust_env=False)
        assert (await http.get(one.url())).status_code == 200
        assert transport.connections == (1, 1)
        assert (await http.get(other.url())).status_code == 200
        assert transport.connections == (1, 1)  # the first host's is gone


async def test_a_cancelled_request_gives_its_connection_back():
    async def never(_reader, _writer, _number):
        await asyncio.Event().wait()

    transport, http = client(httpx.Limits(max_connections=1))
    async with scripted(never) as server, http:
        task = asyncio.create_task(http.get(server.url()))
        await wait_for(lambda: _true(server.requests == 1), within_s=5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert transport.connections == (0, 0)


async def test_trace_events_of_a_new_connection_in_order():
    seen = []

    async def trace(name, _info):
        seen.append(name)

    _, http = client()
    async with scripted(answer) as server, http:
        request = http.build_request(
            "POST", server.url(), content=b"x", extensions={"trace": trace}
        )
        await (await http.send(request)).aread()
    assert seen == [
        "connection.connect_tcp.started",
        "connection.connect_tcp.complete",
        "http11.send_request_headers.started",
        "http11.send_request_headers.complete",
        "http11.send_request_body.complete",
        "http11.receive_response_headers.started",
        "http11.receive_response_headers.complete",
        "http11.response_closed.complete",
    ]


async def test_a_closed_transport_takes_no_request():
    transport, http = client()
    async with scripted(answer) as server:
        assert (await http.get(server.url())).status_code == 200
        await http.aclose()
        assert transport.connections == (0, 0)
        with pytest.raises(RuntimeError):
            await transport.handle_async_request(httpx.Request("GET", server.url()))


@settings(
    max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(reply=st.one_of(
    st.binary(max_size=300),
    st.builds(lambda status, rest: b"HTTP/1.1 " + status + rest,
              st.sampled_from([b"200 OK\r\n", b"999 X\r\n", b"20", b"200 OK\r\ncontent-length: 9"]),
              st.binary(max_size=120)),
))  # fmt: skip
async def test_whatever_a_server_answers_is_a_response_or_an_httpx_error(reply):
    async def hostile(_reader, writer, _number):
        writer.write(reply)
        await writer.drain()
        writer.close()

    transport, http = client(timeout=2.0)
    async with scripted(hostile) as server, http:
        with contextlib.suppress(httpx.RequestError):
            await http.get(server.url())
        assert transport.connections[0] == transport.connections[1]  # none left in use


async def _true(value: bool) -> bool:
    return value


async def test_a_waiter_woken_then_cancelled_passes_its_turn_on():
    transport = Http11Transport(httpx.Limits(max_connections=1))
    first = asyncio.create_task(transport._wait_for_room(None))
    second = asyncio.create_task(transport._wait_for_room(None))
    await wait_for(lambda: _true(len(transport._waiters) == 2), within_s=5)
    transport._make_room()  # a connection went idle: `first` is woken…
    first.cancel()  # …and cancelled before it ran
    with pytest.raises(asyncio.CancelledError):
        await first
    async with asyncio.timeout(5):
        await second  # the turn went on


class ScriptedStream(httpcore.AsyncNetworkStream):
    """A connection that answers reads from `replies`, one chunk per read (then EOF), and
    raises `write_error` on writes if given."""

    def __init__(self, replies: list[bytes], write_error: Exception | None = None) -> None:
        self.replies = list(replies)
        self.write_error = write_error
        self.written = b""
        self.closed = False

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self.replies.pop(0) if self.replies else b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if self.write_error is not None:
            raise self.write_error
        self.written += buffer

    async def aclose(self) -> None:
        self.closed = True

    def get_extra_info(self, info: str):
        return False if info == "is_readable" else None


class ScriptedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, *streams: ScriptedStream) -> None:
        self.streams = list(streams)

    async def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):
        return self.streams.pop(0)


def scripted_client(*streams: ScriptedStream):
    transport = Http11Transport(httpx.Limits(), ScriptedBackend(*streams))
    return transport, httpx.AsyncClient(transport=transport, trust_env=False)


async def test_bytes_after_a_response_are_never_the_next_ones():
    extra = ScriptedStream([OK + b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nstale"])
    fresh = ScriptedStream([b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfresh"])
    _, http = scripted_client(extra, fresh)
    async with http:
        assert (await http.get("http://upstream.test/a")).content == b"ok"
        assert extra.closed  # not kept: it holds bytes nobody asked for
        assert (await http.get("http://upstream.test/b")).content == b"fresh"


async def test_a_big_response_head_arriving_in_pieces():
    head = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-big: " + b"a" * 40_000 + b"\r\n\r\nok"
    _, http = scripted_client(ScriptedStream([head[:20_000], head[20_000:]]))
    async with http:
        response = await http.get("http://upstream.test/")
        assert (response.status_code, len(response.headers["x-big"])) == (200, 40_000)


async def test_an_answer_sent_before_the_whole_body_was_read_is_the_response():
    early = b"HTTP/1.1 413 Payload Too Large\r\ncontent-length: 3\r\nconnection: close\r\n\r\nbig"
    stream = ScriptedStream([early], write_error=httpcore.WriteError("connection lost"))
    transport, http = scripted_client(stream)
    async with http:
        response = await http.post("http://upstream.test/", content=b"x" * 1000)
        assert (response.status_code, response.content) == (413, b"big")
        assert transport.connections == (0, 0)


async def test_switching_protocols_ends_the_exchange():
    switched = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: other\r\nconnection: upgrade\r\n\r\n"
    stream = ScriptedStream([switched])
    transport, http = scripted_client(stream)
    async with http:
        upgrade = {"upgrade": "other", "connection": "upgrade"}
        response = await http.get("http://upstream.test/", headers=upgrade)
        assert (response.status_code, response.content) == (101, b"")
        assert stream.closed and transport.connections == (0, 0)


async def test_a_trace_that_fails_after_connecting_closes_the_connection():
    stream = ScriptedStream([OK])

    async def trace(name, _info):
        if name == "connection.connect_tcp.complete":
            raise RuntimeError("the trace broke")

    transport, http = scripted_client(stream)
    async with http:
        request = http.build_request("GET", "http://upstream.test/", extensions={"trace": trace})
        with pytest.raises(RuntimeError, match="the trace broke"):
            await http.send(request)
        assert stream.closed and transport.connections == (0, 0)
