"""The `fluxhook` command (also `python -m service`).

Server verbs: serve, worker, migrate, emulator, keys create/list/revoke. Client verbs talk to
a running fluxhook (`--url`/`--key`, else FLUXHOOK_URL and FLUXHOOK_KEY): submit, jobs,
deliveries, redeliver. Errors go to stderr with a non-zero exit code.
"""

import argparse
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator

import anyio

from service.cli_maintenance import MAINTENANCE_VERBS, add_maintenance_verbs
from service.settings import Settings, SettingsError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluxhook", description="Push, not polling, for BFL.")
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    verbs.add_parser("serve", help="run the web app (and the loops unless RUN_WORKERS=false)")
    verbs.add_parser("worker", help="run only the background loops")
    verbs.add_parser("migrate", help="upgrade the database schema to the latest migration")
    emulator = verbs.add_parser("emulator", help="run the local BFL emulator")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=9100)
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


async def _until_signal() -> None:
    with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
        async for _ in received:
            return


def run_serve(_args) -> int:
    from service import logs
    from service.app import create_app
    from service.server import listening_socket, serve

    settings = Settings.from_env()
    logs.configure(settings.log_format, settings.log_level)
    dev_key = anyio.run(_dev_key, settings) if settings.emulator_mode else None
    app = create_app(settings)
    sock = listening_socket(os.environ.get("HOST", "0.0.0.0"), settings.port)  # noqa: S104 - a PaaS routes to $PORT
    print(f"fluxhook on {settings.public_url}", flush=True)
    if dev_key:
        print(f"emulator mode (no BFL_API_KEY): BFL is emulated at {settings.bfl_api_url}")
        print(f"dev API key: {dev_key}", flush=True)

    async def shutdown_trigger() -> None:
        await _until_signal()
        services = getattr(app.state, "services", None)
        if services is not None:
            services.begin_shutdown()

    anyio.run(serve, app, sock, shutdown_trigger)
    return 0


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

    settings = Settings.from_env()
    logs.configure(settings.log_format, settings.log_level)

    async def work() -> None:
        async with running(settings, run_workers=True):
            print("fluxhook worker running", flush=True)
            await _until_signal()

    anyio.run(work)
    return 0


def run_migrate(_args) -> int:
    from service.migrations import upgrade

    upgrade(Settings.from_env().database_url)
    print("database is at the latest migration", flush=True)
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
async def _open_database(settings: Settings) -> AsyncIterator:
    """The database, once its schema is the one this fluxhook expects (else a clear error)."""
    from service.api.auth import KeyRequestError
    from service.db import Database, create_engine
    from service.migrations import current_revision, head_revision

    db = Database(create_engine(settings))
    try:
        if (revision := await current_revision(db)) != head_revision():
            expected = f"this fluxhook expects {head_revision()}: run `fluxhook migrate` first"
            raise KeyRequestError(f"the database is at migration {revision}; {expected}")
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
    from service.server import listening_socket, serve

    sock = listening_socket(args.host, args.port)
    print(f"BFL emulator on http://{args.host}:{args.port}", flush=True)
    anyio.run(serve, create_emulator_app(), sock, _until_signal)
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

    try:
        if args.verb in CLIENT_VERBS:
            return CLIENT_VERBS[args.verb](args)
        return SERVER_VERBS[args.verb](args)
    except (SettingsError, ClientError) as exc:
        print(f"fluxhook: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
