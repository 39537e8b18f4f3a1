"""fluxhook's outbound HTTP/1.1 transport: httpx's API, h11's protocol, `service.netstream`'s
connections, and a keep-alive pool of its own.

Every request fluxhook makes (BFL's submits and polls, image downloads, callbacks) is HTTP/1.1
to an absolute URL, one at a time per connection. httpcore's pool serves those at about
460 µs of CPU per loopback POST (bench/README.md, "eighth pass"): it rescans its connections as
each request starts and ends, takes three locks and an event that each yield to the event
loop, and writes a request's headers and its body in two system calls. Here a request takes
an idle connection of its origin (or opens one), is written in one call, and its response is
read as it arrives; h11 does the protocol (framing, keep-alive, what is valid), as under
httpcore.

What it keeps from httpcore: httpx's errors (`ConnectError`, `ReadTimeout`, `PoolTimeout`…,
with the network error as their cause), per-phase timeouts from the request's `timeout`
extension, the `trace` extension's event names (`connection.connect_tcp.started`,
`http11.send_request_body.complete`, …), `httpx.Limits` (connections in all, idle ones kept,
their expiry), the check that an idle connection is still open before it is reused, a
response head of up to 100 KiB, and a server's answer read even when it came (a 413) before
the whole request was written. A connection holding bytes beyond its response is not reused.
Request bodies are sent from memory (every body fluxhook sends is).
"""

import asyncio
import collections
import contextlib
import ssl
import time
from collections.abc import AsyncIterator

import h11
import httpcore
import httpx
from httpcore import AsyncNetworkBackend, AsyncNetworkStream

from service.netstream import AsyncioBackend, wait_within
from service.outbound import Trace

READ_SIZE = 64 * 1024
# How often idle connections past their expiry (or closed by the server) are closed.
SWEEP_EVERY_S = 1.0
Origin = tuple[str, str, int]  # scheme, host, port
DEFAULT_PORTS = {"http": 80, "https": 443}  # also `service.guard`'s
# httpcore's errors, as the network backends raise them, and what httpx calls them.
ERRORS: tuple[tuple[type[Exception], type[httpx.TransportError]], ...] = (
    (httpcore.ConnectTimeout, httpx.ConnectTimeout),
    (httpcore.ReadTimeout, httpx.ReadTimeout),
    (httpcore.WriteTimeout, httpx.WriteTimeout),
    (httpcore.PoolTimeout, httpx.PoolTimeout),
    (httpcore.ConnectError, httpx.ConnectError),
    (httpcore.ReadError, httpx.ReadError),
    (httpcore.WriteError, httpx.WriteError),
    (httpcore.RemoteProtocolError, httpx.RemoteProtocolError),
    (h11.RemoteProtocolError, httpx.RemoteProtocolError),
    (httpcore.LocalProtocolError, httpx.LocalProtocolError),
    (h11.LocalProtocolError, httpx.LocalProtocolError),
)


@contextlib.contextmanager
def _as_httpx_errors(request: httpx.Request):
    try:
        yield
    except Exception as exc:
        for theirs, ours in ERRORS:
            if isinstance(exc, theirs):
                raise ours(str(exc) or type(exc).__name__, request=request) from exc
        raise


async def _traced(trace: Trace | None, name: str, info: dict) -> None:
    if trace is not None:
        await trace(name, info)


class Http11Transport(httpx.AsyncBaseTransport):
    def __init__(
        self,
        limits: httpx.Limits,
        backend: AsyncNetworkBackend | None = None,
        ssl_context: ssl.SSLContext | None = None,
        sweep_every_s: float = SWEEP_EVERY_S,
    ) -> None:
        self._backend = backend or AsyncioBackend()
        self._sweep_every_s = sweep_every_s
        self._ssl_context = ssl_context
        self._max_connections = limits.max_connections
        self._max_idle = limits.max_keepalive_connections
        self._expiry = limits.keepalive_expiry
        self._idle: dict[Origin, collections.deque[_Connection]] = {}
        self._idle_count = 0
        self._open = 0  # connections: idle, in use, or being opened
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self._closed = False
        self._swept_at = time.monotonic()

    @property
    def connections(self) -> tuple[int, int]:
        """(open, of them idle)."""
        return self._open, self._idle_count

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        timeouts = request.extensions.get("timeout", {})
        trace = request.extensions.get("trace")
        origin = _origin(request.url)
        body = b"".join([chunk async for chunk in request.stream])
        with _as_httpx_errors(request):
            connection = await self._connection_for(origin, timeouts, trace)
            try:
                status, headers, reason = await connection.exchange(request, body, timeouts, trace)
            except BaseException:
                await self._discard(connection)
                raise
        return httpx.Response(
            status,
            headers=headers,
            stream=_Body(self, connection, request, timeouts.get("read"), trace),
            extensions={
                "http_version": b"HTTP/1.1",
                "reason_phrase": reason,
                "network_stream": connection.stream,
            },
        )

    async def aclose(self) -> None:
        self._closed = True
        idle = [connection for queue in self._idle.values() for connection in queue]
        self._idle.clear()
        self._idle_count = 0
        for connection in idle:
            await self._discard(connection)
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    # ---- the pool ---------------------------------------------------------------------

    async def _connection_for(self, origin: Origin, timeouts: dict, trace) -> "_Connection":
        deadline = _deadline(timeouts.get("pool"))
        while True:
            if self._closed:  # while it waited
                raise RuntimeError("the transport is closed")
            connection = await self._reusable(origin)
            if connection is not None:
                return connection
            if self._max_connections is None or self._open < self._max_connections:
                return await self._opened(origin, timeouts, trace)
            if self._idle_count:  # at the limit, idle to other hosts: make room
                await self._close_oldest_idle()
                continue
            await self._wait_for_room(deadline)

    async def _reusable(self, origin: Origin) -> "_Connection | None":
        await self._sweep()
        queue = self._idle.get(origin)
        while queue:
            connection = self._take_idle(queue, queue.pop())
            if connection.still_open(self._expiry):
                return connection
            await self._discard(connection)
        return None

    def _take_idle(self, queue: collections.deque, connection: "_Connection") -> "_Connection":
        self._idle_count -= 1
        if not queue:
            del self._idle[connection.origin]
        return connection

    async def _sweep(self) -> None:
        now = time.monotonic()
        if now - self._swept_at < self._sweep_every_s:
            return
        self._swept_at = now
        stale = []
        for queue in list(self._idle.values()):
            for connection in [c for c in queue if not c.still_open(self._expiry)]:
                queue.remove(connection)
                stale.append(self._take_idle(queue, connection))
        self._open -= len(stale)
        if stale:
            self._make_room()
        for connection in stale:
            await connection.close()

    async def _opened(self, origin: Origin, timeouts: dict, trace) -> "_Connection":
        self._open += 1
        try:
            stream = await self._connect(origin, timeouts.get("connect"), trace)
        except BaseException:
            self._open -= 1
            self._make_room()
            raise
        return _Connection(origin, stream)

    async def _connect(self, origin: Origin, connect_s, trace) -> AsyncNetworkStream:
        scheme, host, port = origin
        info = {"host": host, "port": port}
        await _traced(trace, "connection.connect_tcp.started", info)
        stream = await self._backend.connect_tcp(host, port, timeout=connect_s)
        try:
            await _traced(trace, "connection.connect_tcp.complete", {"return_value": stream})
            if scheme == "https":
                await _traced(trace, "connection.start_tls.started", info)
                context = self._ssl_context or httpx.create_ssl_context()
                stream = await stream.start_tls(context, server_hostname=host, timeout=connect_s)
                await _traced(trace, "connection.start_tls.complete", {"return_value": stream})
        except BaseException:
            await stream.aclose()
            raise
        return stream

    async def _close_oldest_idle(self) -> None:
        oldest = min(
            (queue[0] for queue in self._idle.values() if queue), key=lambda c: c.idle_since
        )
        queue = self._idle[oldest.origin]
        await self._discard(self._take_idle(queue, queue.popleft()))

    async def _wait_for_room(self, deadline: float | None) -> None:
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await wait_within(waiter, _remaining(deadline), httpcore.PoolTimeout)
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self._make_room()  # woken, but going away: the next in line goes instead
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _make_room(self) -> None:
        """A connection closed or went idle: the first request waiting for one may go."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _release(self, connection: "_Connection") -> None:
        """A response read to its end: the connection is kept for the next request to its
        origin if it may be, or closed."""
        if self._closed or not connection.ready_for_next() or self._max_idle == 0:
            await self._discard(connection)
            return
        if self._max_idle is not None and self._idle_count >= self._max_idle:
            await self._close_oldest_idle()
        connection.idle_since = time.monotonic()
        self._idle.setdefault(connection.origin, collections.deque()).append(connection)
        self._idle_count += 1
        self._make_room()

    async def _discard(self, connection: "_Connection") -> None:
        self._open -= 1
        self._make_room()
        await connection.close()


def _origin(url: httpx.URL) -> Origin:
    scheme = url.scheme
    if scheme not in DEFAULT_PORTS:
        raise httpx.UnsupportedProtocol(f"the URL's scheme must be http or https: {url}")
    host = url.raw_host.decode("ascii")
    if not host:
        raise httpx.UnsupportedProtocol(f"the URL has no host: {url}")
    return scheme, host, url.port or DEFAULT_PORTS[scheme]


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else asyncio.get_running_loop().time() + timeout


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - asyncio.get_running_loop().time())


class _Connection:
    __slots__ = ("h11", "idle_since", "origin", "stream")

    def __init__(self, origin: Origin, stream: AsyncNetworkStream) -> None:
        self.origin = origin
        self.stream = stream
        self.h11 = h11.Connection(our_role=h11.CLIENT, max_incomplete_event_size=100 * 1024)
        self.idle_since = 0.0

    def still_open(self, expiry: float | None) -> bool:
        if expiry is not None and time.monotonic() - self.idle_since > expiry:
            return False
        # Data or an EOF on an idle connection: the server closed (or broke) it.
        return not self.stream.get_extra_info("is_readable")

    def ready_for_next(self) -> bool:
        if self.h11.our_state is not h11.DONE or self.h11.their_state is not h11.DONE:
            return False
        if self.h11.trailing_data[0]:  # bytes after the response: nothing we asked for
            return False
        self.h11.start_next_cycle()
        return True

    async def exchange(
        self, request: httpx.Request, body: bytes, timeouts: dict, trace
    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Send the request; its response's head."""
        await self._send(request, body, timeouts.get("write"), trace)
        await _traced(trace, "http11.receive_response_headers.started", {"request": request})
        head = await self._final_head(timeouts.get("read"))
        info = {"status": head.status_code, "headers": head.headers}
        await _traced(trace, "http11.receive_response_headers.complete", info)
        return head.status_code, head.headers.raw_items(), head.reason

    async def _send(self, request: httpx.Request, body: bytes, write_s, trace) -> None:
        """Headers and body in one write."""
        conn = self.h11
        head = h11.Request(method=request.method, target=request.url.raw_path,
                           headers=request.headers.raw)  # fmt: skip
        data = conn.send(head)
        if body:
            data += conn.send(h11.Data(data=body))
        data += conn.send(h11.EndOfMessage())
        await _traced(trace, "http11.send_request_headers.started", {"request": request})
        try:
            await self.stream.write(data, timeout=write_s)
        except httpcore.WriteError:
            # As httpcore: a server may answer (413…) and close before reading the whole
            # body; its response is read, or the read fails.
            return
        await _traced(trace, "http11.send_request_headers.complete", {})
        await _traced(trace, "http11.send_request_body.complete", {})

    async def _final_head(self, read_s: float | None) -> h11.Response | h11.InformationalResponse:
        """The response's head: informational (1xx) ones are skipped, but a 101 (Switching
        Protocols) ends the exchange."""
        while True:
            event = await self.next_event(read_s)
            if isinstance(event, h11.Response):
                return event
            if not isinstance(event, h11.InformationalResponse):
                raise httpcore.RemoteProtocolError(f"unexpected {type(event).__name__}")
            if event.status_code == 101:
                return event

    async def next_event(self, read_s: float | None):
        conn = self.h11
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            data = await self.stream.read(READ_SIZE, timeout=read_s)
            if not data and conn.their_state is h11.SEND_RESPONSE:
                raise httpcore.RemoteProtocolError("the server closed the connection unanswered")
            conn.receive_data(data)

    async def close(self) -> None:
        await self.stream.aclose()


class _Body(httpx.AsyncByteStream):
    """A response's body as it arrives; closing it gives the connection back (or closes it,
    if the body was not read to its end)."""

    def __init__(self, pool: Http11Transport, connection: _Connection, request, read_s, trace):
        self._pool = pool
        self._connection: _Connection | None = connection
        self._request = request
        self._read_s = read_s
        self._trace = trace
        self._complete = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        connection = self._connection
        if connection is None:
            raise httpx.StreamClosed()
        with _as_httpx_errors(self._request):
            while True:
                event = await connection.next_event(self._read_s)
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                    self._complete = True
                    return
                else:  # ConnectionClosed before the end: h11 would have said so
                    raise httpcore.RemoteProtocolError(f"unexpected {type(event).__name__}")

    async def aclose(self) -> None:
        connection, self._connection = self._connection, None
        if connection is None:
            return
        if self._complete:
            await self._pool._release(connection)
        else:
            await self._pool._discard(connection)
        await _traced(self._trace, "http11.response_closed.complete", {})
