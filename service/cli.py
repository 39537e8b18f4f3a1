"""The `fluxhook` command (also `python -m service`)."""

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fluxhook", description=__doc__)
    verbs = parser.add_subparsers(dest="verb", required=True)
    emulator = verbs.add_parser("emulator", help="run the local BFL emulator")
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=9100)
    return parser


def run_emulator(args: argparse.Namespace) -> int:
    import anyio

    from service.emulator import create_emulator_app
    from service.server import listening_socket, serve

    sock = listening_socket(args.host, args.port)
    print(f"BFL emulator on http://{args.host}:{args.port}", flush=True)

    async def forever() -> None:
        await anyio.sleep_forever()

    anyio.run(serve, create_emulator_app(), sock, forever)
    return 0


VERBS = {"emulator": run_emulator}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return VERBS[args.verb](args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
