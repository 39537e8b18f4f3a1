"""Group commit: callers share transactions, each answered once its own change commits."""

import asyncio

import anyio
import pytest
from sqlmodel import select

from service.batching import GATHER_TURNS, QUIET_TURNS, GroupCommit
from service.db import Database, create_engine, on_commit
from service.models import AppSecret
from service.settings import Settings
from tests.support.waiting import turns


@pytest.fixture
async def db(database_url):
    database = Database(create_engine(Settings.from_env({"DATABASE_URL": database_url})))
    yield database
    await database.dispose()


async def _names(db: Database) -> set[str]:
    async with db.read() as session:
        return set((await session.exec(select(AppSecret.name))).all())


async def test_a_bad_item_fails_alone_and_the_rest_of_its_batch_commits(db):
    arrived = anyio.Event()

    async def apply(session, names):
        if names == ["first"]:
            await arrived.wait()  # "good" and "bad" queue meanwhile: they share the next batch
        if "bad" in names:
            raise ValueError("bad item")
        for name in names:
            session.add(AppSecret(name=name, value=name))
        return names

    commits = GroupCommit(db, apply)
    results = {}

    async def submit(name):
        try:
            results[name] = await commits.submit(name)
        except ValueError as exc:
            results[name] = exc

    async with anyio.create_task_group() as tg:
        tg.start_soon(submit, "first")
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(submit, "good")
        tg.start_soon(submit, "bad")
        await anyio.wait_all_tasks_blocked()
        arrived.set()
    assert results["first"] == "first" and results["good"] == "good"
    assert isinstance(results["bad"], ValueError)
    assert await _names(db) == {"first", "good"}


async def test_the_leader_is_answered_before_the_batches_that_queued_behind_it(db):
    order = []
    b_queued = anyio.Event()

    async def apply(session, names):
        if names == ["a"]:
            tg.start_soon(submit, "b")
            await b_queued.wait()
        order.append(f"applied {names}")
        return names

    commits = GroupCommit(db, apply)

    async def submit(name):
        if name == "b":
            b_queued.set()  # nothing awaits between this and b joining the queue
        await commits.submit(name)
        order.append(f"{name} answered")

    async with anyio.create_task_group() as tg:
        tg.start_soon(submit, "a")
    assert order == ["applied ['a']", "a answered", "applied ['b']", "b answered"]


async def test_a_caller_cancelled_while_waiting_makes_no_change(db):
    release = anyio.Event()

    async def apply(session, names):
        if names == ["leader"]:
            await release.wait()
        for name in names:
            session.add(AppSecret(name=name, value=name))
        return names

    commits = GroupCommit(db, apply)
    async with anyio.create_task_group() as tg:
        tg.start_soon(commits.submit, "leader")
        await anyio.wait_all_tasks_blocked()
        with anyio.CancelScope() as waiting:
            tg.start_soon(_cancel_soon, waiting)
            await commits.submit("gone")
        release.set()
    assert await _names(db) == {"leader"}


async def _cancel_soon(scope: anyio.CancelScope) -> None:
    await anyio.wait_all_tasks_blocked()
    scope.cancel()


async def test_an_urgent_writer_goes_before_ordinary_writers_already_waiting(sqlite_url):
    """SQLite: while one writer holds the turn, an ordinary writer queues, then an urgent
    one (a webhook's transaction): the urgent one writes next."""
    db = Database(create_engine(Settings.from_env({"DATABASE_URL": sqlite_url})))
    order, release = [], anyio.Event()

    async def write(name: str, urgent: bool = False, hold: bool = False) -> None:
        async with db.write(urgent=urgent) as session:
            order.append(name)
            session.add(AppSecret(name=name, value=name))
            if hold:
                await release.wait()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(write, "holder", False, True)
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(write, "ordinary")
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(write, "urgent", True)
            await anyio.wait_all_tasks_blocked()
            release.set()
        assert order == ["holder", "urgent", "ordinary"]
        assert await _names(db) == {"holder", "ordinary", "urgent"}
    finally:
        await db.dispose()


async def test_a_writer_cancelled_while_waiting_gives_up_its_turn(sqlite_url):
    db = Database(create_engine(Settings.from_env({"DATABASE_URL": sqlite_url})))
    release = anyio.Event()

    async def holder() -> None:
        async with db.write():
            await release.wait()

    async def waiter(name: str) -> None:
        async with db.write() as session:
            session.add(AppSecret(name=name, value=name))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(holder)
            await anyio.wait_all_tasks_blocked()
            with anyio.CancelScope() as doomed:
                async with anyio.create_task_group() as inner:
                    inner.start_soon(waiter, "cancelled")
                    await anyio.wait_all_tasks_blocked()
                    doomed.cancel()
            tg.start_soon(waiter, "after")
            await anyio.wait_all_tasks_blocked()
            release.set()
        assert await _names(db) == {"after"}
    finally:
        await db.dispose()


async def test_a_callback_that_fails_after_the_commit_does_not_make_the_batch_again(db, caplog):
    applied = []

    async def apply(session, names):
        applied.append(names)
        for name in names:
            session.add(AppSecret(name=name, value=name))
        on_commit(session, _fail_after_commit)
        return names

    commits = GroupCommit(db, apply)
    results = {}

    async def submit(name):
        results[name] = await commits.submit(name)

    async with anyio.create_task_group() as tg:
        for name in ("first", "second", "third"):
            tg.start_soon(submit, name)
    assert results == {"first": "first", "second": "second", "third": "third"}
    assert sorted(name for names in applied for name in names) == ["first", "second", "third"]
    assert await _names(db) == {"first", "second", "third"}
    assert "an after-commit callback failed" in caplog.text


def _fail_after_commit() -> None:
    raise RuntimeError("a hook broke")


async def _recorded_batches(db: Database, arrivals: dict[str, int]) -> list[list[str]]:
    """The batches of callers that each submit after waiting `arrivals[name]` turns of the loop."""
    batches = []

    async def apply(session, names):
        batches.append(list(names))
        return names

    commits = GroupCommit(db, apply)

    async def submit_after(count: int, name: str) -> None:
        await turns(count)
        await commits.submit(name)

    async with anyio.create_task_group() as tg:
        for name, count in arrivals.items():
            tg.start_soon(submit_after, count, name)
    return batches


async def test_callers_still_on_their_way_join_the_leaders_batch(db):
    """A leader lets the loop turn while callers keep arriving, as the requests that came in
    together reach the group commit a few turns apart."""
    assert await _recorded_batches(db, {"a": 0, "b": 1, "c": 2, "d": 3}) == [["a", "b", "c", "d"]]


async def test_a_leader_alone_waits_a_few_quiet_turns_not_more(db):
    batches = await _recorded_batches(db, {"a": 0, "late": QUIET_TURNS + 2})
    assert batches == [["a"], ["late"]]


async def test_a_leader_stops_gathering_after_so_many_turns(db):
    """Callers that keep coming, one a turn, do not hold the batch back for ever."""
    arrivals = {f"c{turn}": turn for turn in range(GATHER_TURNS + 6)}
    batches = await _recorded_batches(db, arrivals)
    assert len(batches[0]) <= GATHER_TURNS + 1
    assert [name for batch in batches for name in batch] == list(arrivals)


async def test_a_leader_cancelled_while_it_gathers_leaves_the_others_to_commit(db):
    """A plain asyncio cancellation (a server dropping a request's task) reaches the leader
    through its shield while it waits for company: the next caller leads instead."""
    batches = []

    async def apply(session, names):
        batches.append(list(names))
        return names

    commits = GroupCommit(db, apply)
    leader = asyncio.create_task(commits.submit("leader"))
    await turns(1)  # the leader is gathering
    follower = asyncio.create_task(commits.submit("follower"))
    await turns(1)  # the follower has queued behind it
    leader.cancel()
    async with asyncio.timeout(10):  # a leader that left `_leading` set strands it for ever
        assert await follower == "follower"
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert batches == [["follower"]]


async def test_a_leader_cancelled_mid_commit_still_commits_the_batch_it_took(db):
    """The batch's other callers are answered by its commit alone: it runs to its end."""
    applying, release = asyncio.Event(), asyncio.Event()
    batches = []

    async def apply(session, names):
        batches.append(list(names))
        applying.set()
        await release.wait()
        return names

    commits = GroupCommit(db, apply)
    leader = asyncio.create_task(commits.submit("leader"))
    await turns(1)  # the leader is gathering
    follower = asyncio.create_task(commits.submit("follower"))
    await applying.wait()
    leader.cancel()
    await turns(1)  # the cancellation reaches the leader
    release.set()
    async with asyncio.timeout(10):
        assert await follower == "follower"
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert batches == [["leader", "follower"]]
