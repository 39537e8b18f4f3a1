import os
import shutil

import pytest

from service import migrations
from tests.support import postgres


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def postgres_cluster():
    cluster = postgres.start_cluster()
    if cluster is None:
        if os.environ.get("FLUXHOOK_REQUIRE_POSTGRES"):
            pytest.fail("FLUXHOOK_REQUIRE_POSTGRES is set but no PostgreSQL server was found")
        pytest.skip("no PostgreSQL server binaries on this machine")
    postgres.create_template(cluster, migrations.upgrade)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrations.upgrade(f"sqlite+aiosqlite:///{path}")
    return str(path)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path, sqlite_template):
    """A fresh, migrated database per test, on each engine."""
    if request.param == "sqlite":
        path = tmp_path / "fluxhook.db"
        shutil.copy(sqlite_template, path)
        yield f"sqlite+aiosqlite:///{path}"
        return
    cluster = request.getfixturevalue("postgres_cluster")
    name = postgres.create_database(cluster)
    yield cluster.url(name)
    postgres.drop_database(cluster, name)


@pytest.fixture
def postgres_url(postgres_cluster):
    """A fresh, migrated PostgreSQL database per test."""
    name = postgres.create_database(postgres_cluster)
    yield postgres_cluster.url(name)
    postgres.drop_database(postgres_cluster, name)


@pytest.fixture
async def postgres_db(postgres_url):
    """fluxhook's `Database` on a fresh PostgreSQL database."""
    from service.db import Database, create_engine
    from service.settings import Settings

    database = Database(create_engine(Settings.from_env({"DATABASE_URL": postgres_url})))
    yield database
    await database.dispose()


@pytest.fixture
def sqlite_url(tmp_path, sqlite_template) -> str:
    path = tmp_path / "fluxhook.db"
    shutil.copy(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on loopback, shared by the session (each test makes its own bucket)."""
    from tests.support.s3 import start_s3_server

    server, s3 = start_s3_server()
    yield s3
    server.stop()
