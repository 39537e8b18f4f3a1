"""httpcore's network backend on plain asyncio: the transport under every outbound request.

httpcore's own async backend goes through anyio, which costs a cancel scope, a sniffio
look-up and a checkpoint per read and per write; on a loopback round trip that is most of
the CPU an httpx request takes. This backend speaks to asyncio directly: the event loop
reads the socket into a `_Protocol`'s buffer as data arrives, `read` takes from that buffer
and waits (with a timer only if it has to wait and a timeout was given) when it is empty,
and `write` hands the bytes to the transport and waits only when the transport's buffer is
full (flow control). TLS is the loop's own (`loop.start_tls`).

Errors are httpcore's, as its anyio backend raises them (ConnectError/ConnectTimeout,
ReadError/ReadTimeout, WriteError/WriteTimeout); cancellation propagates untouched.
"""

import asyncio
import collections
import select
import ssl
from collections.abc import Iterable
from typing import Any

import httpcore
from httpcore import AsyncNetworkBackend, AsyncNetworkStream

from service.dialing import connected_socket

# Reading stops while this much received data waits to be read, and resumes below LOW_WATER.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# As anyio connects (RFC 8305); only used when a host name resolves to several addresses
# (`service.dialing`).
HAPPY_EYEBALLS_DELAY = 0.25


def _socket_readable(sock: Any) -> bool:
    """Whether a recv() on the socket would return at once (data or EOF), without reading."""
    fd = -1 if sock is None else sock.fileno()
    if fd < 0:
        return True  # gone: the next read returns b""
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _Protocol(asyncio.Protocol):
    """What the event loop delivers for one connection, kept until the stream asks for it."""

    __slots__ = (
        "chunks",
        "drain_waiter",
        "eof",
        "exc",
        "lost",
        "read_waiter",
        "reading_paused",
        "size",
        "transport",
        "writing_paused",
    )

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.chunks: collections.deque[bytes] = collections.deque()
        self.size = 0
        self.eof = False
        self.lost = False
        self.exc: BaseException | None = None
        self.reading_paused = False
        self.writing_paused = False
        self.read_waiter: asyncio.Future | None = None
        self.drain_waiter: asyncio.Future | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.chunks.append(data)
        self.size += len(data)
        if self.size > HIGH_WATER and not self.reading_paused:
            self.reading_paused = True
            self.transport.pause_reading()
        waiter = self.read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def eof_received(self) -> None:
        # Returning None lets the transport close itself: an HTTP peer that stopped sending
        # is done with the connection.
        self.eof = True
        waiter = self.read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True
        self.exc = exc
        for waiter in (self.read_waiter, self.drain_waiter):
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    def pause_writing(self) -> None:
        self.writing_paused = True

    def resume_writing(self) -> None:
        self.writing_paused = False
        waiter = self.drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


async def wait_within(waiter: asyncio.Future, timeout: float | None, timed_out: type) -> None:
    """Until `waiter` is done; after `timeout` seconds (None: no timer), `timed_out`."""
    try:
        if timeout is None:
            await waiter
        else:
            async with asyncio.timeout(timeout):
                await waiter
    except TimeoutError as exc:
        raise timed_out(str(exc)) from exc


def _lost_reason(protocol: _Protocol) -> str:
    return str(protocol.exc or "the connection was closed")


class AsyncioStream(AsyncNetworkStream):
    """One connection, plain or TLS, as httpcore reads and writes it."""

    __slots__ = ("_closed", "_loop", "_protocol", "_socket", "_tls", "_transport")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.Transport,
        protocol: _Protocol,
        tls: bool = False,
    ) -> None:
        self._loop = loop
        self._transport = transport
        self._protocol = protocol
        self._socket = transport.get_extra_info("socket")
        self._tls = tls
        self._closed = False

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        if self._closed:
            raise httpcore.ReadError("the stream is closed")
        protocol = self._protocol
        while not protocol.chunks:
            if protocol.eof or protocol.lost:
                if protocol.exc is not None:
                    raise httpcore.ReadError(_lost_reason(protocol)) from protocol.exc
                return b""
            protocol.read_waiter = self._loop.create_future()
            try:
                await wait_within(protocol.read_waiter, timeout, httpcore.ReadTimeout)
            finally:
                protocol.read_waiter = None
            if self._closed:
                raise httpcore.ReadError("the stream is closed")
        chunk = protocol.chunks.popleft()
        if len(chunk) > max_bytes:
            protocol.chunks.appendleft(chunk[max_bytes:])
            chunk = chunk[:max_bytes]
        protocol.size -= len(chunk)
        if protocol.reading_paused and protocol.size <= LOW_WATER:
            protocol.reading_paused = False
            self._transport.resume_reading()
        return chunk

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        if not buffer:
            return
        protocol = self._protocol
        transport = self._transport
        if self._closed or transport.is_closing():
            raise httpcore.WriteError(_lost_reason(protocol)) from protocol.exc
        transport.write(buffer)
        if not protocol.writing_paused:
            return
        protocol.drain_waiter = self._loop.create_future()
        try:
            await wait_within(protocol.drain_waiter, timeout, httpcore.WriteTimeout)
        finally:
            protocol.drain_waiter = None
        if protocol.lost:
            # Lost with bytes still in the transport's buffer: they were never sent.
            raise httpcore.WriteError(_lost_reason(protocol)) from protocol.exc

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        transport = self._transport
        # As httpcore's anyio backend: TLS ends without close_notify (no wait for the peer),
        # and bytes the peer is not reading are dropped rather than waited for.
        if self._tls or transport.get_write_buffer_size():
            transport.abort()
        else:
            transport.close()
        waiter = self._protocol.read_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,
    ) -> AsyncNetworkStream:
        protocol = self._protocol
        if protocol.eof or protocol.lost or self._closed or self._transport.is_closing():
            # The peer already hung up: the loop's handshake would only write into a closed
            # transport and wait for its own timeout (60 s), with nothing left to answer it.
            await self.aclose()
            raise httpcore.ConnectError(_lost_reason(protocol)) from protocol.exc
        try:
            if timeout is None:
                transport = await self._loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
            else:
                async with asyncio.timeout(timeout):
                    transport = await self._loop.start_tls(
                        self._transport,
                        self._protocol,
                        ssl_context,
                        server_hostname=server_hostname,
                    )
        except BaseException as exc:
            await self.aclose()
            if isinstance(exc, TimeoutError):
                raise httpcore.ConnectTimeout(str(exc)) from exc
            if isinstance(exc, OSError):  # ssl.SSLError included; a peer gone mid-handshake
                raise httpcore.ConnectError(str(exc)) from exc
            raise
        self._protocol.transport = transport
        return AsyncioStream(self._loop, transport, self._protocol, tls=True)

    def get_extra_info(self, info: str) -> Any:
        if info == "is_readable":
            # Asked of idle keep-alive connections: received data or an EOF means the server
            # has closed (or broken) it. The loop may not have read the socket yet, so it is
            # polled too; nothing is consumed.
            protocol = self._protocol
            return (
                bool(protocol.chunks)
                or protocol.eof
                or protocol.lost
                or self._closed
                or _socket_readable(self._socket)
            )
        if info == "ssl_object":
            return self._transport.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._transport.get_extra_info("sockname")
        if info == "server_addr":
            return self._transport.get_extra_info("peername")
        if info == "socket":
            return self._socket
        return None


class AsyncioBackend(AsyncNetworkBackend):
    """httpcore network backend on asyncio transports (TCP only)."""

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[tuple] | None = None,
    ) -> AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                sock = await connected_socket(
                    host, port, delay=HAPPY_EYEBALLS_DELAY, local_host=local_address
                )
                try:
                    transport, protocol = await loop.create_connection(_Protocol, sock=sock)
                except BaseException:
                    sock.close()
                    raise
        except TimeoutError as exc:  # before OSError, of which it is a subclass
            raise httpcore.ConnectTimeout(str(exc)) from exc
        except OSError as exc:
            raise httpcore.ConnectError(str(exc)) from exc
        # asyncio's TCP transports set TCP_NODELAY themselves (as anyio relies on).
        if socket_options:
            sock = transport.get_extra_info("socket")
            try:
                for option in socket_options:
                    sock.setsockopt(*option)
            except OSError as exc:
                transport.abort()
                raise httpcore.ConnectError(str(exc)) from exc
        return AsyncioStream(loop, transport, protocol)

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise httpcore.ConnectError("unix sockets are not supported")

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
