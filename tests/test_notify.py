"""PostgreSQL: a transaction's events reach every LISTEN connection intact and in order (the
hub of each serve process builds its streams' messages from these payloads)."""

import functools
import json
from datetime import UTC, datetime

import anyio
import psycopg
import pytest
import sqlalchemy as sa

from service import direct
from service.events import EVENTS_CHANNEL, NOTIFY_PAYLOAD_LIMIT, record_event
from service.hub import RESYNC, Hub, PostgresFollower
from service.signals import WAKE_ALL, WAKE_CHANNEL, Signals
from tests.support.rows import new_note, new_tenant
from tests.support.waiting import wait_for

NOW = datetime(2026, 12, 7, 6, 30, 0, 123456, tzinfo=UTC)
TERMINATE_LISTENERS = sa.text(
    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
    " WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()"
)
# What a prompt can carry into an event's data, and what a text array literal must escape.
HOSTILE = [
    "plain",
    'a "quoted" prompt',
    'back\\slash \\" and \\\\ both',
    '{"json": ["inside", 1]}',
    "new\nline\ttab\r",
    "ünïcödé ✓ 🦊",
    "'single' quotes, commas, {braces} and NULL",
    "",
]


@pytest.fixture
def db(postgres_db):
    return postgres_db


async def test_a_transactions_events_reach_a_listener_intact_and_in_order(db):
    tenant_id = await new_tenant(db, NOW)
    datas = [{"prompt": text, "i": i} for i, text in enumerate(HOSTILE)]
    too_big = {"prompt": "x" * NOTIFY_PAYLOAD_LIMIT}  # goes by sequence number only
    conninfo = db.engine.url.set(drivername="postgresql").render_as_string(False)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as listener:
        await listener.execute(f"LISTEN {EVENTS_CHANNEL}")
        async with db.write_direct() as transaction:
            for data in [*datas, too_big]:
                await record_event(
                    transaction, Signals(postgres=True), tenant_id=tenant_id, job_id=None,
                    type="job.progress", data=data, now=NOW,
                )  # fmt: skip
        notes = listener.notifies(timeout=10.0, stop_after=len(datas) + 1)
        received = [json.loads(note.payload) async for note in notes]
    assert [row["data"] for row in received[:-1]] == datas
    assert {row["tenant_id"] for row in received[:-1]} == {str(tenant_id)}
    assert datetime.fromisoformat(received[0]["created_at"]) == NOW
    assert list(received[-1]) == ["seq"]
    seqs = [row["seq"] for row in received]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


async def test_a_wake_notify_wakes_the_other_processes_and_not_the_one_that_sent_it(db):
    """The sender's loop was woken at its commit; hearing its own NOTIFY again made a second
    claim that found nothing. A bare name (a process from before the origin) wakes all."""
    sender, other = Signals(postgres=True), Signals(postgres=True)
    conninfo = db.engine.url.set(drivername="postgresql").render_as_string(False)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as listener:
        await listener.execute(f"LISTEN {WAKE_CHANNEL}")
        async with db.write_direct() as transaction:
            await sender.after_commit(transaction, "admission")
        assert await sender.wait("admission", 0.0), "woken at its own commit"
        notes = listener.notifies(timeout=10.0, stop_after=1)
        payloads = [note.payload async for note in notes]
    for heard in (sender, other):
        heard.woken_from_elsewhere(payloads[0])
    assert not await sender.wait("admission", 0.0)
    assert await other.wait("admission", 0.0)
    sender.woken_from_elsewhere("admission")
    assert await sender.wait("admission", 0.0)


async def test_work_a_loop_here_takes_at_once_wakes_no_other_process(db):
    """Admission running here with room claims what a commit here gives it: other processes
    are not woken for it (each would make a claim that finds nothing). Without room, or
    without the loop here, they are."""
    signals, room = Signals(postgres=True), [True]
    conninfo = db.engine.url.set(drivername="postgresql").render_as_string(False)
    async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as listener:
        await listener.execute(f"LISTEN {WAKE_CHANNEL}")
        signals.taken_here["admission"] = lambda: room[0]
        for step in ("room here", "no room here", "no loop here"):
            room[0] = step == "room here"
            if step == "no loop here":
                del signals.taken_here["admission"]
            async with db.write_direct() as transaction:
                await signals.after_commit(transaction, "admission")
            assert await signals.wait("admission", 0.0), f"woken here ({step})"
        async with db.write_direct() as transaction:  # the end of what there is to hear
            await direct.execute(transaction, WAKE_ALL, {"name": "end"})
        payloads = []
        async for note in listener.notifies(timeout=10.0):
            if note.payload == "end":
                break
            payloads.append(note.payload)
    assert payloads == [f"admission@{signals.origin}"] * 2


async def test_a_hub_listens_to_events_only_while_a_stream_is_here(db):
    """Every NOTIFY reaches every connection LISTENing to its channel, and most processes
    have no stream. The hub's connection LISTENs to wake-ups always, to events from a first
    stream's arrival (which then resyncs from the table: nothing committed meanwhile is
    missed) until `linger_s` after the last stream left."""
    tenant_id = await new_tenant(db, NOW)
    signals, other = Signals(postgres=True), Signals(postgres=True)
    hub = Hub(db, signals)
    follower = PostgresFollower(hub, db, signals, linger_s=0.0)

    heard = functools.partial(_heard, db, other, signals)
    event = functools.partial(new_note, db, other, tenant_id, created_at=NOW)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(follower.run)
        await wait_for(lambda: heard("up"))
        await event("nobody streams here")
        assert await heard("after it")
        assert not follower.listening_to_events
        with hub.listen(tenant_id) as listener:
            assert await listener.next(10.0) is RESYNC, "from the table: what came before"
            assert follower.listening_to_events
            seq = await event("streamed")
            streamed = await listener.next(10.0)
            assert (streamed.seq, json.loads(streamed.body)["data"]) == (seq, {"note": "streamed"})
        await event("after the stream left")  # heard; then, no stream for linger_s: UNLISTEN
        await wait_for(lambda: _async(not follower.listening_to_events))
        with hub.listen(tenant_id) as listener:  # and LISTEN again for the next one
            assert await listener.next(10.0) is RESYNC
            assert follower.listening_to_events
        tasks.cancel_scope.cancel()


async def test_a_hub_keeps_listening_to_events_while_streams_come_and_go(db):
    """Within `linger_s` of the last stream, the next one finds events LISTENed to already
    (no LISTEN, no resync): clients that reconnect cost no churn."""
    tenant_id = await new_tenant(db, NOW)
    signals, other = Signals(postgres=True), Signals(postgres=True)
    hub = Hub(db, signals)
    follower = PostgresFollower(hub, db, signals)

    heard = functools.partial(_heard, db, other, signals)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(follower.run)
        await wait_for(lambda: heard("up"))
        with hub.listen(tenant_id) as listener:
            assert await listener.next(10.0) is RESYNC
        for step in ("first", "second"):  # the second is dispatched after a pass that saw none
            assert await heard(step)
        assert follower.listening_to_events
        with hub.listen(tenant_id) as listener:
            assert await heard("after it came")
            assert await listener.next(0.0) is None, "no resync: nothing was missed"
        tasks.cancel_scope.cancel()


async def test_a_hub_that_lost_its_connection_listens_again_and_its_streams_resync(db):
    tenant_id = await new_tenant(db, NOW)
    signals, other = Signals(postgres=True), Signals(postgres=True)
    hub = Hub(db, signals)

    event = functools.partial(new_note, db, other, tenant_id, created_at=NOW)

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(PostgresFollower(hub, db, signals).run)
        with hub.listen(tenant_id) as listener:
            assert await listener.next(10.0) is RESYNC
            async with db.write() as session:
                ended = await session.exec(TERMINATE_LISTENERS)
                assert len(ended.all()) == 1
            await event("while it was away")
            while (item := await listener.next(10.0)) is not RESYNC:  # heard before it died
                assert item is not None, "no resync after the connection was lost"
            seq = await event("after it came back")
            assert (await listener.next(10.0)).seq == seq
        tasks.cancel_scope.cancel()


async def _heard(db, sender: Signals, signals: Signals, name: str) -> bool:
    """`sender` commits a wake-up; whether the follower passed it on to `signals`. A follower
    hears its notifications in order, so all sent before this one have been dispatched."""
    async with db.write_direct() as transaction:
        await sender.after_commit(transaction, name)
    return await signals.wait(name, 0.1)


async def _async(value):
    return value
