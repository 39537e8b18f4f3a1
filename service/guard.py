"""The connect-time guard on every request fluxhook makes (DESIGN §4 "Outbound policy").

Checking a URL when it is registered is not enough: a hostname can resolve anywhere, and can
resolve differently later. So the HTTP clients' network backend resolves each host itself,
refuses the connection if any address it resolves to is forbidden (`targets.forbidden_address`),
and connects to the address it checked, so the DNS answer cannot change in between. The one
exception is the configured upstream (BFL_API_URL and BFL_POLL_HOSTS origins: that is how the
emulator on loopback serves as BFL), plus ALLOW_PRIVATE_TARGETS on the subscriber client.
Redirects are never followed (requests go on the transport, `service.outbound`, which
follows none). The transport is `service.http11`'s; its connections are `service.netstream`'s
asyncio streams.
"""

import socket
import ssl
from collections.abc import Awaitable, Callable, Iterable

import anyio
import httpcore
import httpx
from httpcore import AsyncNetworkBackend, AsyncNetworkStream

from service.http11 import DEFAULT_PORTS, Http11Transport
from service.netstream import AsyncioBackend
from service.targets import forbidden_address

Resolver = Callable[[str, int], Awaitable[list[str]]]
Origin = tuple[str, int]


class TargetRefused(httpcore.ConnectError):
    """The address is one fluxhook may not call."""


def origin(url: str | httpx.URL) -> Origin:
    """(host, port) of an absolute http(s) URL (or one httpx has parsed), as the network
    backend is asked for it."""
    parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    return parsed.raw_host.decode("ascii").lower(), parsed.port or DEFAULT_PORTS[parsed.scheme]


def refusal(exc: BaseException) -> TargetRefused | None:
    """The guard's refusal behind an httpx error, if that is what it was."""
    while exc is not None and not isinstance(exc, TargetRefused):
        exc = exc.__cause__ or exc.__context__
    return exc


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class GuardedBackend(AsyncNetworkBackend):
    """httpcore network backend that vets every address it connects to."""

    def __init__(
        self,
        resolver: Resolver = system_resolver,
        allow_private: bool = False,
        trusted: Iterable[Origin] = (),
    ) -> None:
        self._resolver = resolver
        self._allow_private = allow_private
        self._trusted = frozenset((host.lower(), port) for host, port in trusted)
        self._inner = AsyncioBackend()

    async def connect_tcp(
        self, host: str, port: int, timeout=None, local_address=None, socket_options=None
    ) -> AsyncNetworkStream:
        address = host
        if (host.lower(), port) not in self._trusted:
            address = await self._vetted_address(host, port)
        return await self._inner.connect_tcp(
            address,
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def _vetted_address(self, host: str, port: int) -> str:
        try:
            addresses = await self._resolver(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"{host} has no address")
        if not self._allow_private:
            for address in addresses:
                if reason := forbidden_address(address):
                    raise TargetRefused(f"refused: {host} resolves to {reason} ({address})")
        return addresses[0]

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise TargetRefused("refused: fluxhook does not connect to unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(Http11Transport):
    """fluxhook's transport (`service.http11`) on the guarded backend."""

    def __init__(
        self,
        backend: GuardedBackend,
        limits: httpx.Limits,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        super().__init__(limits, backend, ssl_context)
