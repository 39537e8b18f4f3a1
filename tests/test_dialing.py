"""Opening connections (`service.dialing`): the address race, and no socket left to the
garbage collector whenever the connect is cancelled. Real loopback sockets only."""

import asyncio
import contextlib
import gc
import socket
import warnings

import httpcore
import pytest

from service.dialing import _interleaved, connected_socket, first_to_connect
from service.netstream import AsyncioBackend
from tests.support.waiting import turns

V4, V6 = socket.AF_INET, socket.AF_INET6
MAX_TURNS = 200  # a loopback connect is over long before


@pytest.fixture
async def asyncio_errors():
    """What the loop reports to its exception handler ("Task exception was never retrieved"
    is logged, not warned: `filterwarnings = error` would not see it)."""
    seen: list[str] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: seen.append(context["message"]))
    yield seen
    loop.set_exception_handler(None)


@contextlib.contextmanager
def unclosed_sockets():
    """Collects the ResourceWarnings of sockets the garbage collector had to close."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found: list[str] = []
        yield found
        gc.collect()
    found.extend(str(w.message) for w in caught if issubclass(w.category, ResourceWarning))


@contextlib.contextmanager
def listening(backlog: int = 16):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(backlog)
        yield server


@contextlib.contextmanager
def refusing():
    """An address nothing listens on: bound, not listening, so connections are refused."""
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        yield unused.getsockname()


@contextlib.contextmanager
def hanging():
    """An address whose connects never complete: a listener whose queue (of one) is full,
    so the kernel drops further SYNs."""
    with listening(backlog=0) as server, socket.create_connection(server.getsockname()):
        yield server.getsockname()


async def test_an_ip_address_is_dialled_directly():
    with listening() as server:
        sock = await connected_socket("127.0.0.1", server.getsockname()[1], delay=0.25)
        with sock:
            assert sock.getpeername() == server.getsockname()
            assert sock.proto == socket.IPPROTO_TCP


async def test_a_host_name_is_resolved_then_dialled():
    with listening() as server:
        sock = await connected_socket("localhost", server.getsockname()[1], delay=0.25)
        with sock:
            assert sock.getpeername() == server.getsockname()


async def test_a_refused_address_lets_the_next_one_try_at_once():
    with unclosed_sockets() as leaked, listening() as server, refusing() as refused:
        addresses = [(V4, refused), (V4, server.getsockname())]
        sock = await first_to_connect(addresses, delay=3600)  # no waiting for the delay
        with sock:
            assert sock.getpeername() == server.getsockname()
    assert leaked == []


async def test_an_address_that_does_not_answer_gives_way_after_the_delay():
    with unclosed_sockets() as leaked, listening() as server, hanging() as silent:
        sock = await first_to_connect([(V4, silent), (V4, server.getsockname())], delay=0.05)
        with sock:
            assert sock.getpeername() == server.getsockname()
        await turns(3)  # the cancelled attempt closes its socket as it ends
    assert leaked == []


async def test_when_every_address_refuses_the_error_says_so():
    with (
        refusing() as first,
        refusing() as second,
        pytest.raises(OSError, match="Multiple exceptions") as refusal,
    ):
        await first_to_connect([(V4, first), (V4, second)], delay=3600)
    assert str(first[1]) in str(refusal.value) and str(second[1]) in str(refusal.value)


async def test_families_take_turns_the_first_family_first():
    a, b, c = ("::1", 1, 0, 0), ("::2", 1, 0, 0), ("::3", 1, 0, 0)
    x, y = ("10.0.0.1", 1), ("10.0.0.2", 1)  # never dialled: only ordered
    ordered = _interleaved([(V6, a), (V6, b), (V6, a), (V6, c), (V4, x), (V4, y)])
    assert ordered == [(V6, a), (V4, x), (V6, b), (V4, y), (V6, c)]


async def test_a_race_cancelled_at_any_turn_leaves_no_socket_open(asyncio_errors):
    """Two addresses that both connect, the race cancelled after 0, 1, 2… turns of the loop
    until it wins first: whoever won or was cancelled, no socket is dropped unclosed (asyncio's
    own race leaked the winner when cancelled as the losers wound down)."""
    with listening() as first, listening() as second:
        addresses = [(V4, first.getsockname()), (V4, second.getsockname())]

        async def race():
            return await first_to_connect(addresses, delay=0)

        async def close(sock: socket.socket) -> None:
            sock.close()

        await _cancelled_at_every_turn(race, close)
    assert asyncio_errors == []


async def test_a_connect_cancelled_at_any_turn_leaves_no_socket_open(asyncio_errors):
    backend = AsyncioBackend()
    with listening() as server:

        async def connect():
            return await backend.connect_tcp(*server.getsockname())

        await _cancelled_at_every_turn(connect, close=lambda stream: stream.aclose())
    assert asyncio_errors == []


async def _cancelled_at_every_turn(connect, close) -> None:
    cancelled = 0
    for at_turn in range(MAX_TURNS):
        with unclosed_sockets() as leaked:
            task = asyncio.create_task(connect())
            await turns(at_turn)
            task.cancel()
            try:
                await close(await task)
            except asyncio.CancelledError:
                cancelled += 1
            await turns(3)
        assert leaked == [], f"cancelled at turn {at_turn}"
        if not task.cancelled():
            assert cancelled > 0, "never cancelled before it connected"
            return
    raise AssertionError(f"still connecting after {MAX_TURNS} turns")


async def test_a_loser_failing_in_the_winners_turn_is_still_accounted_for(asyncio_errors):
    """The winner is listed first, so the race returns without looking at the loser: its error
    is still read (no "Task exception was never retrieved") and nothing leaks."""
    answer = asyncio.Event()

    async def dial(address, _local_host) -> socket.socket:
        await answer.wait()
        if address[1] == "refuses":
            raise ConnectionRefusedError(111, "refused")
        return socket.socket()

    with unclosed_sockets() as leaked:
        race = asyncio.create_task(
            first_to_connect([(V4, "answers"), (V4, "refuses")], delay=0, dial=dial)
        )
        await turns(3)  # both attempts wait
        answer.set()  # both finish in the same turn
        (await race).close()
        await turns(3)
    assert leaked == [] and asyncio_errors == []


async def test_an_error_that_is_not_the_networks_comes_out_as_it_is():
    async def dial(_address, _local_host) -> socket.socket:
        raise TypeError("a bug")

    with pytest.raises(TypeError, match="a bug"):
        await first_to_connect([(V4, "a"), (V4, "b")], delay=0, dial=dial)
    with pytest.raises(OSError, match="no address"):
        await first_to_connect([], delay=0)


async def test_a_connect_that_does_not_answer_in_time_is_a_connect_timeout():
    with hanging() as silent, pytest.raises(httpcore.ConnectTimeout):
        await AsyncioBackend().connect_tcp(*silent, timeout=0.05)


async def test_the_local_address_is_bound():
    with listening() as server:
        stream = await AsyncioBackend().connect_tcp(
            *server.getsockname(), local_address="127.0.0.1"
        )
        try:
            assert stream.get_extra_info("client_addr")[0] == "127.0.0.1"
        finally:
            await stream.aclose()
