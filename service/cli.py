"""The `fluxhook` command (also `python -m service`).

Server verbs: serve, worker, migrate, emulator, keys create/list/revoke. Client verbs talk to
a running fluxhook (`--url`/`--key`, else FLUXHOOK_URL and FLUXHOOK_KEY): submit, jobs,
deliveries, redeliver. Errors go to stderr with a non-zero exit code.
"""

import argparse
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator

import anyio

from service.cli_maintenance import MAINTENANCE_VERBS, add_maintenance_verbs
from service.settings import Settings, SettingsError

log = logging.getLogger("fluxhook")


class NotMigrated(Exception):
    """The database's schema is not the one this fluxhook expects (exit 2)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluxhook", description="Push, not polling, for BFL.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    serve = verbs.add_parser(
        "serve",
        help="run the web app (and the loops unless RUN_WORKERS=false); "
        "WEB_CONCURRENCY processes on PostgreSQL",
    )
    # Given by `serve` itself to its children when WEB_CONCURRENCY > 1 (service.supervisor).
    serve.add_argument("--listen-fd", type=int, help=argparse.SUPPRESS)
    serve.add_argument("--parent-fd", type=int, help=argparse.SUPPRESS)
    verbs.add_parser("worker", help="run only the background loops")
    verbs.add_parser("migrate", help="upgrade the database schema to the latest migration")
    emulator = verbs.add_parser("emulator", help="run the local BFL emulator")
    emulator.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    emulator.add_argument(
        "--port", type=_port, default=9100, help="port to listen on (default: %(default)s)"
    )
    add_key_verbs(verbs)
    from service.client_cli import add_client_verbs

    add_maintenance_verbs(verbs)
    add_client_verbs(verbs)
    return parser


def add_key_verbs(verbs) -> None:
    keys = verbs.add_parser("keys", help="API keys").add_subparsers(dest="keys_verb", required=True)
    create = keys.add_parser("create", help="create a tenant and its key (printed last, alone)")
    create.add_argument("name", help="unique; how `keys list` shows the key")
    keys.add_parser("list", help="every key: id, created, last used, revoked, name (never the key)")
    revoke = keys.add_parser("revoke", help="refuse a key from now on, in every process")
    revoke.add_argument("id", help="the key's id, as `keys list` shows it")


def _port(value: str) -> int:
    """argparse type: a TCP port one can listen on."""
    if not value.isdigit() or not 1 <= int(value) <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port between 1 and 65535, not {value!r}")
    return int(value)


def _listen(host: str, port: int, host_name: str = "HOST", port_name: str = "PORT"):
    """A listening socket, or a one-line error naming the setting at fault."""
    from service.server import listening_socket

    try:
        return listening_socket(host, port)
    except socket.gaierror as exc:
        raise SettingsError(f"{host_name}: cannot listen on {host!r} ({exc.strerror})") from None
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise SettingsError(f"{port_name}: port {port} is already in use") from None
        if exc.errno == errno.EACCES:
            raise SettingsError(f"{port_name}: not allowed to listen on port {port}") from None
        where = f"{host_name}/{port_name}: cannot listen on {host}:{port}"
        raise SettingsError(f"{where} ({exc.strerror})") from None


def _require_schema(settings: Settings) -> None:
    """Refuse to start on a database `fluxhook migrate` has not brought to this version."""

    async def check() -> None:
        async with _open_database(settings, NotMigrated):
            pass

    anyio.run(check)


def _announce(settings: Settings, message: str, **fields) -> None:
    """A line for whoever started fluxhook: plain in a terminal, a JSON object like every
    other stdout line when LOG_FORMAT=json."""
    if settings.log_format == "json":
        log.info(message, extra={"fields": fields})
    else:
        print(message, flush=True)


async def _until_signal() -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
        async for _ in received:
            return


def run_serve(args) -> int:
    from service import logs

    settings = Settings.from_env()
    logs.configure(settings.log_format, settings.log_level)
    if args.listen_fd is not None:
        return _serve_supervised(settings, args.listen_fd, args.parent_fd)
    _require_schema(settings)
    sock = _listen(settings.host, settings.port)
    if settings.web_concurrency > 1:
        from service.supervisor import supervise

        count = settings.web_concurrency
        banner = f"fluxhook on {settings.public_url} ({count} serve processes)"
        _announce(settings, banner, url=settings.public_url, processes=count)
        return supervise(sock, count)
    return _serve_one(settings, sock)


def _serve_one(settings: Settings, sock: socket.socket) -> int:
    """WEB_CONCURRENCY=1: this process serves."""
    from service.app import create_app
    from service.server import serve

    dev_key = anyio.run(_dev_key, settings) if settings.emulator_mode else None
    app = create_app(settings, freeze_after_startup=True)
    _announce(settings, f"fluxhook on {settings.public_url}", url=settings.public_url)
    if dev_key:
        emulated = f"emulator mode (no BFL_API_KEY): BFL is emulated at {settings.bfl_api_url}"
        _announce(settings, emulated, bfl_api_url=settings.bfl_api_url)
        _announce(settings, f"dev API key: {dev_key}", dev_api_key=dev_key)
    drained = Drained()

    async def shutdown_trigger() -> None:
        await _until_signal()
        drained.begin(getattr(app.state, "services", None))

    anyio.run(serve, app, sock, shutdown_trigger)
    drained.report()
    return 0


def _serve_supervised(settings: Settings, listen_fd: int, parent_fd: int) -> int:
    """One of WEB_CONCURRENCY serve processes, on the socket its supervisor bound."""
    from service.app import create_app
    from service.supervisor import serve_child

    app = create_app(settings, freeze_after_startup=True)
    drained = Drained()
    sock, parent = socket.socket(fileno=listen_fd), socket.socket(fileno=parent_fd)

    def on_stop() -> None:
        drained.begin(getattr(app.state, "services", None))

    with parent:
        anyio.run(serve_child, app, sock, parent, on_stop)
    drained.report()
    return 0


class Drained:
    """What a signal-triggered shutdown drained and how long it took, for one log line."""

    def __init__(self) -> None:
        self.started: float | None = None
        self.streams = self.loops = 0

    def begin(self, services) -> None:
        self.started = time.monotonic()
        if services is not None:
            self.streams, self.loops = services.hub.listener_count, len(services.loops)
            services.begin_shutdown()

    def report(self) -> None:
        if self.started is None:
            return
        took_s = round(time.monotonic() - self.started, 2)
        log.info(
            "shut down in %.2f s: closed %d live stream%s, stopped %d loops "
            "(in-flight work finished or its leases released)",
            took_s,
            self.streams,
            "" if self.streams == 1 else "s",
            self.loops,
            extra={"fields": {"took_s": took_s, "streams": self.streams, "loops": self.loops}},
        )


async def _dev_key(settings: Settings) -> str:
    from service.clock import SystemClock
    from service.db import Database, create_engine
    from service.runtime import ensure_dev_key

    db = Database(create_engine(settings))
    try:
        return await ensure_dev_key(db, SystemClock().now())
    finally:
        await db.dispose()


def run_worker(_args) -> int:
    from service import logs
    from service.runtime import running
    from service.startup import freeze_what_startup_built

    settings = Settings.from_env()
    logs.configure(settings.log_format, settings.log_level)
    _require_schema(settings)

    async def work() -> None:
        async with running(settings, run_workers=True):
            freeze_what_startup_built()
            _announce(settings, "fluxhook worker running")
            await _until_signal()

    anyio.run(work)
    return 0


def run_migrate(_args) -> int:
    from service import logs
    from service.migrations import upgrade

    settings = Settings.from_env()
    logs.configure(settings.log_format, settings.log_level)
    upgrade(settings.database_url)
    _announce(settings, "database is at the latest migration")
    return 0


def run_keys(args) -> int:
    from service.api.auth import KeyRequestError

    verb = {"create": _create_key, "list": _list_keys, "revoke": _revoke_key}[args.keys_verb]
    try:
        return anyio.run(verb, args, Settings.from_env())
    except KeyRequestError as exc:
        print(f"fluxhook: {exc}", file=sys.stderr)
        return 2


@contextlib.asynccontextmanager
async def _open_database(settings: Settings, error: type[Exception] | None = None) -> AsyncIterator:
    """The database, once its schema is the one this fluxhook expects (else a clear `error`)."""
    from sqlalchemy.exc import OperationalError

    from service.api.auth import KeyRequestError
    from service.db import Database, create_engine
    from service.migrations import current_revision, head_revision

    error = error or KeyRequestError
    db = Database(create_engine(settings))
    try:
        try:
            revision = await current_revision(db)
        except OperationalError as exc:
            raise SettingsError(f"DATABASE_URL: cannot open the database ({exc.orig})") from None
        if revision is None:
            raise error("the database has no schema yet: run `fluxhook migrate` first")
        if revision != head_revision():
            expected = f"this fluxhook expects {head_revision()}: run `fluxhook migrate` first"
            raise error(f"the database is at migration {revision}; {expected}")
        yield db
    finally:
        await db.dispose()


async def _create_key(args, settings: Settings) -> int:
    from sqlalchemy.exc import IntegrityError

    from service.api.auth import KeyRequestError, create_key, valid_key_name
    from service.clock import SystemClock

    name = valid_key_name(args.name)
    async with _open_database(settings) as db:
        try:
            async with db.write() as session:
                key = await create_key(session, name, SystemClock().now())
        except IntegrityError:
            # Another `keys create` took the name between the check and the commit.
            taken = f"a key named {name!r} already exists (names are unique)"
            raise KeyRequestError(taken) from None
    print(f"created a tenant and API key named {name!r}; the key is shown only once:")
    print(key)
    return 0


async def _list_keys(_args, settings: Settings) -> int:
    from service.api.auth import list_keys

    async with _open_database(settings) as db, db.read() as session:
        keys = await list_keys(session)
    rows = [("ID", "CREATED", "LAST_USED", "REVOKED", "NAME")]
    for key in keys:
        times = (_when(key.created_at), _when(key.last_used_at, "never"), _when(key.revoked_at))
        rows.append((str(key.id), *times, key.name))
    # Aligned columns, the name last: it is the one cell that may hold spaces.
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for *cells, name in rows:
        aligned = (cell.ljust(width) for cell, width in zip(cells, widths, strict=True))
        print("  ".join([*aligned, name]))
    return 0


def _when(moment, absent: str = "-") -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else absent


async def _revoke_key(args, settings: Settings) -> int:
    from service.api.auth import CACHE_TTL_S, revoke_key
    from service.clock import SystemClock

    async with _open_database(settings) as db:
        async with db.write() as session:
            key, revoked = await revoke_key(session, args.id, SystemClock().now())
        committed = time.monotonic()
    if not revoked:
        print(f"key {key.id} ({key.name!r}) was already revoked at {_when(key.revoked_at)}")
        return 0
    # A process that checked the key just before the commit trusts it CACHE_TTL_S more.
    await anyio.sleep(max(0.0, committed + CACHE_TTL_S - time.monotonic()))
    print(f"revoked key {key.id} ({key.name!r}): every fluxhook process refuses it now")
    return 0


def run_emulator(args: argparse.Namespace) -> int:
    from service.emulator import create_emulator_app
    from service.server import serve
    from service.startup import freeze_what_startup_built

    sock = _listen(args.host, args.port, "--host", "--port")
    app = create_emulator_app()
    freeze_what_startup_built()
    print(f"BFL emulator on http://{args.host}:{args.port}", flush=True)
    anyio.run(serve, app, sock, _until_signal)
    return 0


SERVER_VERBS = {
    "serve": run_serve,
    "worker": run_worker,
    "migrate": run_migrate,
    "keys": run_keys,
    "emulator": run_emulator,
}
SERVER_VERBS.update(MAINTENANCE_VERBS)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from service.client_cli import CLIENT_VERBS, ClientError

    verb = CLIENT_VERBS.get(args.verb) or SERVER_VERBS[args.verb]
    try:
        code = verb(args)
        sys.stdout.flush()  # so a closed pipe raises here, not in Python's exit
        return code
    except (SettingsError, ClientError, NotMigrated) as exc:
        print(f"fluxhook: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return _reader_went_away()


def _reader_went_away() -> int:
    """`fluxhook deliveries | head`: the reader closed the pipe; stop quietly, as Unix tools do."""
    # Python flushes stdout once more at exit, which would raise again: point it at devnull.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
