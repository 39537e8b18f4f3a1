"""SSRF protection for subscriber URLs (DESIGN §5).

A URL is checked when it is registered (scheme, host, literal addresses) and, what matters,
again **at connect time**: the outbound transport resolves the host itself, refuses private,
loopback, link-local, multicast, reserved and metadata addresses, and connects to the address
it checked, so a DNS answer cannot change between the check and the connection.
Redirects are never followed (the dispatcher's client is built with follow_redirects=False).
"""

import ipaddress
import socket
import ssl
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import anyio
import httpcore
import httpx
from httpcore import AsyncNetworkBackend, AsyncNetworkStream

Resolver = Callable[[str, int], Awaitable[list[str]]]

# Cloud metadata endpoints that are not already private or link-local.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("100.100.100.200", "fd00:ec2::254", "192.0.0.192")
)
SHARED_ADDRESS_SPACE = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT
MAX_URL_LENGTH = 2083


class TargetRefused(httpcore.ConnectError):
    """The subscriber's address is one fluxhook may not call."""


def forbidden_address(address: str) -> str | None:
    """Why fluxhook may not connect to `address`, or None if it may."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    checks = (
        (ip in METADATA_ADDRESSES, "a cloud metadata address"),
        (ip.is_loopback, "a loopback address"),
        (ip.is_link_local, "a link-local address"),
        (ip.is_multicast, "a multicast address"),
        (ip.is_private, "a private address"),
        (ip.is_reserved or ip.is_unspecified, "a reserved address"),
        (ip.version == 4 and ip in SHARED_ADDRESS_SPACE, "a shared (CGNAT) address"),
    )
    return next((reason for hit, reason in checks if hit), None)


def check_target_url(url: str, allow_private: bool) -> str | None:
    """Why `url` cannot be a subscriber URL, or None. Hostnames are checked at connect time."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        return f"url must be a string of 1 to {MAX_URL_LENGTH} characters"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "url must be an absolute http(s) URL"
    if parts.username or parts.password:
        return "url must not carry credentials"
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return "url has an invalid port"
    try:
        literal = ipaddress.ip_address(parts.hostname)
    except ValueError:
        return None  # a hostname: its addresses are checked at connect time
    reason = None if allow_private else forbidden_address(str(literal))
    return f"url points at {reason}" if reason else None


async def system_resolver(host: str, port: int) -> list[str]:
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(info[4][0] for info in infos))


class GuardedBackend(AsyncNetworkBackend):
    """httpcore network backend that vets every address it connects to."""

    def __init__(self, resolver: Resolver = system_resolver, allow_private: bool = False):
        self._resolver = resolver
        self._allow_private = allow_private
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self, host: str, port: int, timeout=None, local_address=None, socket_options=None
    ) -> AsyncNetworkStream:
        try:
            addresses = await self._resolver(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"cannot resolve {host}: {exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"{host} has no address")
        if not self._allow_private:
            for address in addresses:
                reason = forbidden_address(address)
                if reason:
                    raise TargetRefused(f"refused: {host} resolves to {reason} ({address})")
        return await self._inner.connect_tcp(
            addresses[0],
            port,
            timeout=timeout,
            local_address=local_address,
            socket_options=socket_options,
        )

    async def connect_unix_socket(self, path, timeout=None, socket_options=None):
        raise TargetRefused("refused: unix sockets are not subscriber targets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with the guarded backend (no proxies from the environment)."""

    def __init__(
        self,
        backend: GuardedBackend,
        limits: httpx.Limits,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        ssl_context = ssl_context or httpx.create_ssl_context()
        super().__init__(verify=ssl_context, limits=limits, trust_env=False)
        # httpx does not take a network backend; swap the pool for one built with ours.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )
