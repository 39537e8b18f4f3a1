"""API keys an operator can manage: `fluxhook keys create | list | revoke`, revocation that
every process honours at once, and `last_used_at` written at most once a minute."""

import uuid
from dataclasses import dataclass
from datetime import timedelta

import anyio
import httpx
import psycopg
import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory

from service import migrations
from service.api.auth import CheckedKey, KeyCache
from service.cli import main
from service.clock import FakeClock
from service.db import Database, create_engine
from service.models import ApiKey, Tenant, UTCDateTime
from service.settings import Settings
from service.signing import hash_api_key
from tests.support import postgres
from tests.support.processes import fluxhook_env, fluxhook_process, free_port
from tests.support.stack import running_emulator, running_stack

INVALID = {"detail": "Not authenticated - Invalid Authentication"}
NAMES_REVISION = "d92b35891839"  # adds last_used_at and makes key names unique


@dataclass
class Done:
    code: int
    out: str
    err: str


@pytest.fixture
def fluxhook(database_url, monkeypatch, capsys):
    """Runs a `fluxhook` verb in this process (as its console script would) on the test's
    database; async tests call it in a thread, since the verb runs its own event loop."""
    monkeypatch.setenv("DATABASE_URL", database_url)

    def run(*args: str) -> Done:
        code = main(list(args))
        return Done(code, *capsys.readouterr())

    return run


def create(fluxhook, name: str) -> str:
    done = fluxhook("keys", "create", name)
    assert done.code == 0, done.err
    return done.out.splitlines()[-1]


def listed(fluxhook) -> dict[str, list[str]]:
    """`keys list` rows by name: [id, created, last used, revoked]."""
    done = fluxhook("keys", "list")
    assert done.code == 0, done.err
    header, *rows = done.out.splitlines()
    assert header.split() == ["ID", "CREATED", "LAST_USED", "REVOKED", "NAME"]
    return {row.split(maxsplit=4)[4]: row.split(maxsplit=4)[:4] for row in rows}


async def key_rows(database_url: str) -> list[tuple]:
    db = Database(create_engine(Settings.from_env({"DATABASE_URL": database_url})))
    try:
        async with db.read() as session:
            query = sa.select(ApiKey.name, ApiKey.revoked_at, ApiKey.last_used_at)
            return sorted((await session.exec(query.order_by(ApiKey.name))).all())
    finally:
        await db.dispose()


def test_list_shows_every_key_but_never_the_key_or_its_hash(fluxhook):
    keys = [create(fluxhook, "billing app"), create(fluxhook, "renderer")]
    done = fluxhook("keys", "list")
    rows = listed(fluxhook)
    assert set(rows) == {"billing app", "renderer"}
    key_id, created, last_used, revoked = rows["renderer"]
    assert uuid.UUID(key_id) and created.endswith("Z")
    assert (last_used, revoked) == ("never", "-")
    for key in keys:
        assert key not in done.out and key[:8] not in done.out
        assert hash_api_key(key) not in done.out


@pytest.mark.parametrize("name", ["", "   ", "tab\there", "x" * 201])
def test_create_refuses_a_bad_name_and_changes_nothing(fluxhook, database_url, name):
    done = fluxhook("keys", "create", name)
    assert done.code == 2 and done.out == ""
    assert done.err.startswith("fluxhook: a key n")
    assert anyio.run(key_rows, database_url) == []


def test_create_refuses_a_name_already_used(fluxhook, database_url):
    create(fluxhook, "billing")
    before = anyio.run(key_rows, database_url)
    for same in ("billing", "  billing "):
        done = fluxhook("keys", "create", same)
        assert done.code == 2 and "fh_" not in done.out
        assert "a key named 'billing' already exists (names are unique)" in done.err
    assert anyio.run(key_rows, database_url) == before


def test_revoke_refuses_what_is_not_a_key(fluxhook, database_url):
    create(fluxhook, "billing")
    before = anyio.run(key_rows, database_url)
    not_an_id = fluxhook("keys", "revoke", "billing")
    assert not_an_id.code == 2 and "not a key id: 'billing'" in not_an_id.err
    unknown = str(uuid.uuid4())
    missing = fluxhook("keys", "revoke", unknown)
    assert missing.code == 2 and f"no key has the id {unknown}" in missing.err
    assert anyio.run(key_rows, database_url) == before


def test_key_verbs_refuse_an_unmigrated_database(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'new.db'}")
    assert main(["keys", "list"]) == 2
    assert "run `fluxhook migrate` first" in capsys.readouterr().err


async def test_a_revoked_key_is_refused_at_once_by_every_process(fluxhook, database_url, tmp_path):
    doomed = await anyio.to_thread.run_sync(create, fluxhook, "doomed")
    kept = await anyio.to_thread.run_sync(create, fluxhook, "kept")
    async with running_emulator(manual=True) as emulator:
        envs = [fluxhook_env(database_url, emulator.url, free_port(), RUN_WORKERS="false")
                for _ in "ab"]  # fmt: skip
        async with (
            fluxhook_process(envs[0], tmp_path / "a.log") as a,
            fluxhook_process(envs[1], tmp_path / "b.log") as b,
            httpx.AsyncClient(timeout=30) as http,
        ):

            async def status(process, key: str) -> tuple[int, dict]:
                response = await http.get(f"{process.url}/v1/jobs", headers={"x-key": key})
                return response.status_code, response.json()

            for process in (a, b):  # each process has checked (and cached) both keys
                assert (await status(process, doomed))[0] == (await status(process, kept))[0] == 200
            doomed_id = (await anyio.to_thread.run_sync(listed, fluxhook))["doomed"][0]
            done = await anyio.to_thread.run_sync(fluxhook, "keys", "revoke", doomed_id)
            assert done.code == 0 and "every fluxhook process refuses it now" in done.out
            for process in (a, b):
                assert await status(process, doomed) == (403, INVALID)
                bearer = {"authorization": f"Bearer {doomed}"}
                refused = await http.get(f"{process.url}/v1/jobs", headers=bearer)
                assert (refused.status_code, refused.json()) == (403, INVALID)
                assert (await status(process, kept))[0] == 200
    rows = await anyio.to_thread.run_sync(listed, fluxhook)
    assert rows["doomed"][3].endswith("Z") and rows["kept"][3] == "-"
    assert rows["doomed"][2].endswith("Z"), "its use was recorded"
    again = await anyio.to_thread.run_sync(fluxhook, "keys", "revoke", doomed_id)
    assert again.code == 0 and "already revoked" in again.out
    assert await anyio.to_thread.run_sync(listed, fluxhook) == rows


async def test_last_used_is_written_at_most_once_a_minute(database_url):
    clock = FakeClock()
    async with (
        running_emulator(manual=True) as emulator,
        running_stack(database_url, emulator, runtime={"clock": clock}) as stack,
    ):

        async def last_used():
            async with stack.services.db.read() as session:
                query = sa.select(ApiKey.last_used_at).where(
                    ApiKey.key_hash == hash_api_key(stack.key)
                )
                return (await session.exec(query)).one()[0]

        assert await last_used() is None
        first_use = clock.now()
        assert (await stack.client.get("/v1/jobs")).status_code == 200
        assert await last_used() == first_use
        clock.advance(59)
        for _ in range(3):
            assert (await stack.client.get("/v1/jobs")).status_code == 200
        assert await last_used() == first_use
        clock.advance(2)
        assert (await stack.client.get("/v1/jobs")).status_code == 200
        assert await last_used() == first_use + timedelta(seconds=61)


def test_use_is_due_once_a_minute_per_key_in_a_process():
    cache, clock = KeyCache(), FakeClock()
    fresh = CheckedKey(uuid.uuid4(), uuid.uuid4(), last_used_at=None)
    other = CheckedKey(uuid.uuid4(), uuid.uuid4(), last_used_at=clock.now())
    assert cache.use_is_due(fresh, clock.now())
    assert not cache.use_is_due(fresh, clock.now()), "this process claimed the minute"
    assert not cache.use_is_due(other, clock.now()), "the database says it was just used"
    clock.advance(60)
    assert cache.use_is_due(fresh, clock.now()) and cache.use_is_due(other, clock.now())


@pytest.fixture(params=["sqlite", "postgres"])
def empty_database_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
        return
    cluster = request.getfixturevalue("postgres_cluster")
    name = f"empty_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield cluster.url(name)
    postgres.drop_database(cluster, name)


async def test_the_migration_renames_keys_that_share_a_name(empty_database_url):
    scripts = ScriptDirectory.from_config(migrations.alembic_config(""))
    before = scripts.get_revision(NAMES_REVISION).down_revision
    # In a thread: alembic's env.py runs its own event loop.
    await anyio.to_thread.run_sync(migrations.upgrade, empty_database_url, before)
    clock = FakeClock()
    tenant = uuid.uuid4()
    keys = sa.table(
        "api_keys", *(sa.column(name) for name in ("name", "prefix", "key_hash")),
        sa.column("id", sa.Uuid()), sa.column("tenant_id", sa.Uuid()),
        sa.column("created_at", UTCDateTime()),
    )  # fmt: skip
    db = Database(create_engine(Settings.from_env({"DATABASE_URL": empty_database_url})))
    try:
        async with db.write() as session:
            await session.exec(
                sa.insert(Tenant.__table__).values(id=tenant, name="t", created_at=clock.now())
            )
            for age, name in enumerate(["app", "app", "other"]):
                created = clock.now() + timedelta(days=age)
                row = {"id": uuid.uuid4(), "tenant_id": tenant, "name": name, "prefix": "fh_",
                       "key_hash": uuid.uuid4().hex, "created_at": created}  # fmt: skip
                await session.exec(sa.insert(keys).values(**row))
    finally:
        await db.dispose()
    await anyio.to_thread.run_sync(migrations.upgrade, empty_database_url)
    names = [name for name, _, _ in await key_rows(empty_database_url)]
    assert names[0] == "app" and names[2] == "other"
    assert names[1].startswith("app (") and uuid.UUID(names[1][5:-1])
