"""The asyncio network backend under the guarded transport, on real loopback sockets."""

import asyncio
import contextlib
import hashlib
import shutil
import socket
import ssl
import subprocess

import httpcore
import httpx
import pytest

from service.guard import GuardedBackend, GuardedTransport
from service.netstream import AsyncioBackend
from tests.support.waiting import wait_for

BIG = bytes(range(256)) * (24 * 1024)  # 6 MiB


class Server:
    """A small HTTP/1.1 keep-alive server on 127.0.0.1 that counts its connections."""

    def __init__(self) -> None:
        self.connections = 0
        self.requests: list[tuple[str, bytes]] = []
        self.writers: list[asyncio.StreamWriter] = []
        self.release = asyncio.Event()  # what /hang waits for
        self.port = 0
        self.scheme = "http"
        self.host = "127.0.0.1"

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}:{self.port}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                path = lines[0].split(" ")[1]
                length = 0
                for line in lines[1:]:
                    name, _, value = line.partition(":")
                    if name.strip().lower() == "content-length":
                        length = int(value)
                body = await reader.readexactly(length)
                self.requests.append((path, body))
                if path == "/hang":
                    await self.release.wait()
                    return
                payload = BIG if path == "/big" else hashlib.sha256(body).hexdigest().encode()
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % len(payload))
                writer.write(payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()

    async def drop_connections(self) -> None:
        for writer in self.writers:
            writer.close()
        for writer in self.writers:
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def running_server(ssl_context: ssl.SSLContext | None = None):
    server = Server()
    tasks: set[asyncio.Task] = set()

    async def handle(reader, writer):
        task = asyncio.current_task()
        tasks.add(task)
        try:
            await server.handle(reader, writer)
        finally:
            tasks.discard(task)

    listener = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_context)
    server.port = listener.sockets[0].getsockname()[1]
    if ssl_context is not None:
        server.scheme = "https"
    try:
        yield server
    finally:
        server.release.set()
        listener.close()
        await server.drop_connections()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await listener.wait_closed()


async def loopback(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]


def guarded_client(
    ssl_context: ssl.SSLContext | None = None, timeout: float = 10.0
) -> httpx.AsyncClient:
    backend = GuardedBackend(loopback, allow_private=True)
    transport = GuardedTransport(backend, httpx.Limits(), ssl_context)
    return httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False)


async def test_a_request_and_its_response_through_the_guarded_transport():
    async with running_server() as server, guarded_client() as client:
        response = await client.post(server.url("/hook"), content=b'{"a": 1}')
        assert response.status_code == 200
        assert response.content == hashlib.sha256(b'{"a": 1}').hexdigest().encode()
        assert server.requests == [("/hook", b'{"a": 1}')]
        stream = response.extensions["network_stream"]
        sock = stream.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert stream.get_extra_info("server_addr") == ("127.0.0.1", server.port)
        assert stream.get_extra_info("client_addr")[0] == "127.0.0.1"
        assert stream.get_extra_info("ssl_object") is None


async def test_keep_alive_reuses_one_connection():
    async with running_server() as server, guarded_client() as client:
        for body in (b"one", b"two"):
            response = await client.post(server.url("/hook"), content=body)
            assert response.content == hashlib.sha256(body).hexdigest().encode()
        assert server.connections == 1


async def test_a_keep_alive_connection_the_server_closed_is_not_reused():
    async with running_server() as server, guarded_client() as client:
        assert (await client.get(server.url("/first"))).status_code == 200
        await server.drop_connections()
        response = await client.get(server.url("/second"))
        assert response.status_code == 200
        assert server.connections == 2
        assert [path for path, _ in server.requests] == ["/first", "/second"]


async def test_is_readable_sees_pending_data_and_eof_without_consuming_them():
    async with running_server() as server:
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", server.port, timeout=5)
        try:
            assert not stream.get_extra_info("is_readable")
            await stream.write(b"GET /x HTTP/1.1\r\nhost: x\r\n\r\n", timeout=5)

            async def readable():
                return stream.get_extra_info("is_readable")

            await wait_for(readable, within_s=5)
            data = b""
            while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < 64:
                data += await stream.read(65536, timeout=5)
            assert data.startswith(b"HTTP/1.1 200 OK")
            assert not stream.get_extra_info("is_readable")
            await server.drop_connections()
            await wait_for(readable, within_s=5)
            assert await stream.read(65536, timeout=5) == b""
        finally:
            await stream.aclose()


async def test_a_silent_server_is_a_read_timeout():
    async with running_server() as server, guarded_client(timeout=0.2) as client:
        with pytest.raises(httpx.ReadTimeout):
            await client.get(server.url("/hang"))


async def test_a_refused_connection_is_a_connect_error():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port = unused.getsockname()[1]
        async with guarded_client() as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(f"http://127.0.0.1:{port}/")


async def test_cancellation_propagates():
    async with running_server() as server, guarded_client() as client:
        task = asyncio.create_task(client.get(server.url("/hang")))

        async def arrived():
            return server.requests

        await wait_for(arrived, within_s=5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_a_write_the_peer_does_not_read_is_a_write_timeout():
    async with running_server() as server:
        server.release.clear()
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", server.port, timeout=5)
        try:
            # The server waits on /hang without reading more; the kernel buffers fill up.
            await stream.write(b"POST /hang HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
            with pytest.raises(httpcore.WriteTimeout):
                await stream.write(b"x" * (64 * 1024 * 1024), timeout=0.2)
        finally:
            await stream.aclose()


async def test_a_big_response_is_streamed_intact():
    async with running_server() as server, guarded_client() as client:
        digest = hashlib.sha256()
        size = 0
        async with client.stream("GET", server.url("/big")) as response:
            async for chunk in response.aiter_raw():
                digest.update(chunk)
                size += len(chunk)
        assert size == len(BIG)
        assert digest.digest() == hashlib.sha256(BIG).digest()


async def test_a_big_request_body_is_sent_intact():
    async with running_server() as server, guarded_client() as client:
        response = await client.post(server.url("/upload"), content=BIG)
        assert response.content == hashlib.sha256(BIG).hexdigest().encode()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate for localhost and 127.0.0.1: (cert.pem, key.pem)."""
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command on this machine")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_https_through_start_tls(certificate):
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    async with running_server(server_context) as server, guarded_client(client_context) as client:
        server.host = "localhost"  # the name is checked against the certificate
        for body in (b"secret", b"again"):
            response = await client.post(server.url("/tls"), content=body)
            assert response.content == hashlib.sha256(body).hexdigest().encode()
        assert server.connections == 1
        stream = response.extensions["network_stream"]
        assert stream.get_extra_info("ssl_object") is not None
        assert stream.get_extra_info("server_addr") == ("127.0.0.1", server.port)

        async with client.stream("GET", server.url("/big")) as response:
            assert await response.aread() == BIG


async def test_an_untrusted_certificate_is_a_connect_error(certificate):
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    async with running_server(server_context) as server, guarded_client() as client:
        server.host = "localhost"
        with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
            await client.get(server.url("/tls"))


async def test_start_tls_on_a_connection_the_server_already_closed_is_a_connect_error():
    """The server hung up before the handshake began: a ConnectError at once, not a wait for
    the loop's own 60 s handshake timeout (nothing would ever answer the ClientHello)."""

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    listener = await asyncio.start_server(hang_up, "127.0.0.1", 0)
    try:
        port = listener.sockets[0].getsockname()[1]
        stream = await AsyncioBackend().connect_tcp("127.0.0.1", port, timeout=5)

        async def hung_up():
            return stream.get_extra_info("is_readable") and stream._protocol.lost

        await wait_for(hung_up, within_s=5)
        with pytest.raises(httpcore.ConnectError):
            async with asyncio.timeout(5):
                await stream.start_tls(ssl.create_default_context(), "localhost")
    finally:
        listener.close()
        await listener.wait_closed()
