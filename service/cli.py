"""The `fluxhook` command (also `python -m service`).

Server verbs: serve, worker, migrate, emulator, keys create. Client verbs talk to a running
fluxhook (`--url`/`--key`, else FLUXHOOK_URL and FLUXHOOK_KEY): submit, jobs, deliveries,
redeliver. Errors go to stderr with a non-zero exit code.
"""

import argparse
import os
import signal
import sys

import anyio

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
    keys = verbs.add_parser("keys", help="API keys").add_subparsers(dest="keys_verb", required=True)
    create = keys.add_parser("create", help="create a tenant and its key (printed last, alone)")
    create.add_argument("name")
    from service.client_cli import add_client_verbs

    add_client_verbs(verbs)
    return parser


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
    async def create() -> str:
        from service.api.auth import create_key
        from service.clock import SystemClock
        from service.db import Database, create_engine

        db = Database(create_engine(Settings.from_env()))
        try:
            async with db.write() as session:
                return await create_key(session, args.name, SystemClock().now())
        finally:
            await db.dispose()

    key = anyio.run(create)
    print(f"created a tenant and API key named {args.name!r}; the key is shown only once:")
    print(key)
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
