"""Heroku, played on this machine: the Python buildpack's install, then the Procfile.

A fresh venv gets `pip install -r requirements.txt` run in a copy of the checkout, so fluxhook
is installed as a package (not editable), as the buildpack does. Then the Procfile's `release`
and `web` commands run exactly as written, with Heroku's `postgres://` DATABASE_URL and $PORT,
in emulator mode (no BFL_API_KEY), until /readyz is 200 and a job completes.
"""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
import uuid
from pathlib import Path

import anyio
import httpx
import psycopg
import pytest

from tests.support import postgres
from tests.support.processes import free_port
from tests.support.waiting import wait_for

ROOT = Path(__file__).resolve().parent.parent
# What `git push` would not carry (.gitignore), and what a local build leaves behind.
NOT_PUSHED = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", "*.egg-info", ".*_cache", ".hypothesis", ".schemathesis",
    "build", "*.db", "*.db-wal", "*.db-shm",
)  # fmt: skip
INSTALL_TIMEOUT_S = 240  # ~40 s with a warm pip cache on a 2-core machine


def procfile(path: Path) -> dict[str, str]:
    """Process type → command, as Heroku reads a Procfile."""
    processes = {}
    for line in path.read_text().splitlines():
        name, colon, command = line.partition(":")
        if colon and not line.lstrip().startswith("#"):
            processes[name.strip()] = command.strip()
    return processes


def test_the_release_phase_alone_migrates():
    assert procfile(ROOT / "Procfile")["release"] == "fluxhook migrate"
    scripts = json.loads((ROOT / "app.json").read_text()).get("scripts", {})
    assert not [script for script in scripts.values() if "migrate" in script], (
        "app.json must not migrate again after the release phase"
    )


def test_the_wheel_lists_every_package_directory():
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    mapped = set(setuptools["package-dir"])  # service._alembic ← alembic/
    directories = [path for path in (ROOT / "service").rglob("*") if path.is_dir()]
    on_disk = {"service"} | {
        ".".join(path.relative_to(ROOT).parts) for path in directories if path.name != "__pycache__"
    }
    on_disk |= {
        ".".join(("service._alembic", *path.relative_to(ROOT / "alembic").parts))
        for path in (ROOT / "alembic").rglob("*")
        if path.is_dir() and path.name != "__pycache__"
    }
    assert set(setuptools["packages"]) == on_disk | mapped


@pytest.fixture(scope="module")
def slug(tmp_path_factory) -> tuple[Path, Path]:
    """The build: a copy of the checkout (the app) and a venv with what requirements.txt
    installs (its bin directory)."""
    build = tmp_path_factory.mktemp("heroku")
    app, venv = build / "app", build / "python"
    shutil.copytree(ROOT, app, ignore=NOT_PUSHED)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    # --no-compile: the buildpack compiles to bytecode too, but that changes nothing here
    # and costs a third of the install on a 2-core machine.
    install = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-compile",
               "-r", "requirements.txt"]  # fmt: skip
    done = subprocess.run(install, cwd=app, capture_output=True, text=True,
                          timeout=INSTALL_TIMEOUT_S, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return app, venv / "bin"


@pytest.fixture
def heroku_database_url(postgres_cluster):
    """An empty database (the release phase creates the tables), as Heroku spells its URL."""
    name = f"heroku_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_cluster.admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield "postgres://" + postgres_cluster.url(name).split("://", 1)[1]
    postgres.drop_database(postgres_cluster, name)


def dyno_env(bin_dir: Path, **config: str) -> dict[str, str]:
    """A dyno's environment: the app's Python first on PATH, the config vars, nothing of ours."""
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    return {"PATH": path, "HOME": os.environ.get("HOME", "/"), "LANG": "C.UTF-8", **config}


@pytest.mark.timeout(INSTALL_TIMEOUT_S + 120)  # the first to use the slug pays for the build
async def test_installed_fluxhook_is_the_package_not_the_checkout(slug):
    app, bin_dir = slug
    where = ("import service, service.migrations as m; s = m.script_location(); "
             "print(service.__file__, s, (s / 'env.py').is_file())")  # fmt: skip
    done = await anyio.run_process([str(bin_dir / "python"), "-c", where], cwd="/")
    package, scripts, has_env = done.stdout.decode().split()
    assert "site-packages" in package and not package.startswith(str(app))
    assert Path(scripts) == Path(package).parent / "_alembic" and has_env == "True"


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.timeout(INSTALL_TIMEOUT_S + 120)
async def test_release_then_web_serve_a_job_on_postgres(slug, heroku_database_url, tmp_path):
    app, bin_dir = slug
    port = free_port()
    env = dyno_env(bin_dir, DATABASE_URL=heroku_database_url, PORT=str(port), DYNO="web.1",
                   HOST="127.0.0.1", SECRET_KEY="heroku-generated-secret")  # fmt: skip
    processes = procfile(app / "Procfile")
    release = await anyio.run_process(_shell(processes["release"]), cwd=app, env=env, check=False)
    assert release.returncode == 0, release.stderr.decode()[-3000:]
    create = [str(bin_dir / "fluxhook"), "keys", "create", "heroku"]
    key = (await anyio.run_process(create, cwd=app, env=env)).stdout.decode().splitlines()[-1]
    log = tmp_path / "web.log"
    with log.open("wb") as output, _dyno(processes["web"], app, env, output) as web:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            await wait_for(lambda: _ready(http, web, log), within_s=60, every_s=0.1)
            inputs = {"prompt": "a harbour", "width": 256, "height": 256}
            job = await http.post("/v1/flux-dev", headers={"x-key": key}, json=inputs)
            assert job.status_code == 200, job.text
            result = await wait_for(lambda: _settled(http, key, job.json()["id"]), within_s=60)
            assert result["status"] == "Ready", result
            image = await http.get(result["result"]["sample"])
            assert image.status_code == 200 and image.content.startswith(b"\xff\xd8")
        os.killpg(web.pid, signal.SIGTERM)  # Heroku signals every process of the dyno
        assert await anyio.to_thread.run_sync(web.wait, 30) == 0, _tail(log)


def _shell(command: str) -> list[str]:
    """A Procfile line as Heroku runs it: through bash, which execs a lone command (so the
    exit status and the signals are fluxhook's own)."""
    return ["bash", "-c", command]


@contextlib.contextmanager
def _dyno(command: str, cwd: Path, env: dict, output):
    """The command in its own process group, killed if the test ends without stopping it."""
    process = subprocess.Popen(_shell(command), cwd=cwd, env=env, stdout=output,
                               stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(10)


def _tail(log: Path) -> str:
    return log.read_text()[-3000:]


async def _ready(http: httpx.AsyncClient, web: subprocess.Popen, log: Path) -> bool:
    assert web.poll() is None, _tail(log)
    try:
        return (await http.get("/readyz")).status_code == 200
    except httpx.TransportError:
        return False  # not listening yet


async def _settled(http: httpx.AsyncClient, key: str, job_id: str) -> dict | None:
    """get_result once the job is terminal (each call long-polls up to 20 s)."""
    response = await http.get(f"/v1/get_result?id={job_id}&wait=20", headers={"x-key": key})
    result = response.json()
    return result if result["status"] not in ("Pending", "Queued") else None
