"""Opening a TCP connection that a cancellation cannot leak: `connected_socket`.

asyncio's `create_connection` races a host's addresses (RFC 8305, "happy eyeballs") with
`staggered_race`, which keeps the winning socket in a local until the losing attempts have
wound down; a cancellation in those turns of the loop (a connect timeout, a request given up)
drops the connected socket unclosed, for the garbage collector. Here every socket an attempt
opens is either returned or closed: on success, failure and cancellation alike.

An IP address is dialled directly; a host name is resolved first, and its addresses (families
interleaved, the first family first) are raced: the next attempt starts when the one before
fails or `delay` seconds pass without an answer, and the first to connect wins.
"""

import asyncio
import ipaddress
import itertools
import socket
from collections.abc import Awaitable, Callable

Address = tuple[int, tuple]  # (family, sockaddr)
Dial = Callable[[Address, str | None], Awaitable[socket.socket]]


async def connected_socket(
    host: str, port: int, *, delay: float, local_host: str | None = None
) -> socket.socket:
    """A non-blocking socket connected to `host`:`port` (OSError if no address answers)."""
    addresses = await _addresses(host, port)
    if len(addresses) == 1:
        return await _attempt(addresses[0], local_host)
    return await first_to_connect(addresses, delay, local_host)


async def _addresses(host: str, port: int) -> list[Address]:
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        if not infos:
            raise OSError(f"{host} has no address") from None
        return _interleaved([(info[0], info[4]) for info in infos])
    family = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
    return [(family, (host, port))]


def _interleaved(addresses: list[Address]) -> list[Address]:
    """One of each family in turn, the first address's family first (RFC 8305, 4)."""
    unique = list(dict.fromkeys(addresses))
    first = [address for address in unique if address[0] == unique[0][0]]
    others = [address for address in unique if address[0] != unique[0][0]]
    turns = itertools.chain.from_iterable(itertools.zip_longest(first, others))
    return [address for address in turns if address is not None]


async def _attempt(address: Address, local_host: str | None) -> socket.socket:
    family, sockaddr = address
    # IPPROTO_TCP named, or asyncio's transport leaves Nagle's algorithm on (`_set_nodelay`).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setblocking(False)
        if local_host is not None:
            sock.bind((local_host, 0))
        await asyncio.get_running_loop().sock_connect(sock, sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


async def first_to_connect(
    addresses: list[Address], delay: float, local_host: str | None = None, *, dial: Dial = _attempt
) -> socket.socket:
    """The first of `addresses` to connect: each attempt after the first starts when the one
    before it fails or `delay` seconds pass; the losers are cancelled and their sockets closed.
    `dial(address, local_host)` makes one attempt (tests give their own)."""
    attempts: list[asyncio.Task] = []
    winner = None
    try:
        for address in addresses:
            attempts.append(asyncio.create_task(dial(address, local_host)))
            if (winner := await _first_success(attempts, within=delay)) is not None:
                return winner
        if (winner := await _first_success(attempts, within=None)) is not None:
            return winner
        raise _failure(attempts)
    finally:
        for attempt in attempts:
            _let_go(attempt, keep=winner)


async def _first_success(attempts: list[asyncio.Task], within: float | None):
    """The first connected socket among `attempts`; None once the newest has failed, or
    `within` seconds have passed (None: once every attempt has failed)."""
    loop = asyncio.get_running_loop()
    deadline = None if within is None else loop.time() + within
    while True:
        for attempt in attempts:
            if attempt.done() and not attempt.cancelled() and attempt.exception() is None:
                return attempt.result()
        pending = [attempt for attempt in attempts if not attempt.done()]
        newest_failed = within is not None and attempts[-1].done()
        if not pending or newest_failed:
            return None
        timeout = None if deadline is None else max(deadline - loop.time(), 0)
        done, _ = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        if not done:
            return None


def _let_go(attempt: asyncio.Task, keep: socket.socket | None) -> None:
    """Cancel an attempt; whatever socket it connected, unless it is `keep`, is closed."""

    def close_unless_kept(task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is None and task.result() is not keep:
            task.result().close()

    if attempt.done():
        close_unless_kept(attempt)
    else:
        attempt.cancel()
        attempt.add_done_callback(close_unless_kept)


def _failure(attempts: list[asyncio.Task]) -> BaseException:
    """One error for a race every attempt lost (as `create_connection` words it); an error
    that is not the network's (a bug) comes out as it is."""
    errors = [attempt.exception() for attempt in attempts if not attempt.cancelled()]
    if not errors:
        return OSError("no address to connect to")
    if bug := next((error for error in errors if not isinstance(error, OSError)), None):
        return bug
    messages = list(dict.fromkeys(str(error) for error in errors))
    if len(messages) == 1:
        return errors[0]
    return OSError(f"Multiple exceptions: {', '.join(messages)}")
