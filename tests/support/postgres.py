"""A throwaway PostgreSQL cluster for the test session, and a fresh database per test.

Uses FLUXHOOK_TEST_POSTGRES_URL (a superuser URL) if set; otherwise starts a cluster with the
server binaries found on the machine (Debian's postgresql-15), as the `postgres` user when
running as root (initdb refuses root). Each test gets `CREATE DATABASE … TEMPLATE` of a
database migrated once per session.
"""

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from contextlib import closing
from dataclasses import dataclass

import psycopg

TEMPLATE = "fluxhook_template"


def _free_port() -> int:
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bin_dir() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if found:
        return os.path.dirname(found[-1])
    initdb = shutil.which("initdb")
    return os.path.dirname(initdb) if initdb else None


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class Cluster:
    admin_url: str  # postgresql://user@host:port/postgres
    directory: str | None = None
    bin_dir: str | None = None

    def url(self, database: str) -> str:
        return self.admin_url.rsplit("/", 1)[0] + "/" + database

    def stop(self) -> None:
        if self.directory:
            pg_ctl = os.path.join(self.bin_dir, "pg_ctl")
            subprocess.run(
                _as_postgres([pg_ctl, "-D", self.directory, "-m", "immediate", "stop"]),
                check=False,
                capture_output=True,
            )
            shutil.rmtree(self.directory, ignore_errors=True)


def start_cluster() -> Cluster | None:
    """A running cluster, or None if this machine has no PostgreSQL server binaries."""
    if url := os.environ.get("FLUXHOOK_TEST_POSTGRES_URL"):
        return Cluster(admin_url=url)
    bin_dir = _bin_dir()
    if bin_dir is None:
        return None
    directory = tempfile.mkdtemp(prefix="fluxhook-pg-")
    if os.geteuid() == 0:
        shutil.chown(directory, "postgres", "postgres")
    data = os.path.join(directory, "data")
    subprocess.run(
        _as_postgres(
            [
                os.path.join(bin_dir, "initdb"),
                "-D",
                data,
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
    )
    port = _free_port()
    options = (
        f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off "
        "-c synchronous_commit=off -c full_page_writes=off -c max_connections=400"
    )
    subprocess.run(
        _as_postgres(
            [
                os.path.join(bin_dir, "pg_ctl"),
                "-D",
                data,
                "-o",
                options,
                "-l",
                os.path.join(directory, "log"),
                "-w",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    return Cluster(f"postgresql://postgres@127.0.0.1:{port}/postgres", data, bin_dir)


def create_template(cluster: Cluster, migrate) -> None:
    with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    migrate(cluster.url(TEMPLATE))


def create_database(cluster: Cluster) -> str:
    name = "test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {TEMPLATE}")
    return name


def drop_database(cluster: Cluster, name: str) -> None:
    with psycopg.connect(cluster.admin_url, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
