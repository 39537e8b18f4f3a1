"""Operator verbs on the database: `fluxhook prune [--older-than DURATION]` and
`fluxhook images copy --to STORE`. Both use DATABASE_URL and the AWS variables as `serve` does."""

import argparse
import contextlib
import re
import sys
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, timedelta

import anyio

from service.settings import Settings, SettingsError

UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def duration(text: str) -> timedelta:
    """`0s`, `90m`, `12h`, `30d` (argparse type)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd])", text.strip())
    if not match:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration like 0s, 90m, 12h or 30d")
    return timedelta(**{UNITS[match[2]]: float(match[1])})


def add_maintenance_verbs(verbs) -> None:
    prune = verbs.add_parser(
        "prune", help="delete finished jobs older than RETENTION_DAYS (or --older-than) now"
    )
    prune.add_argument(
        "--older-than",
        type=duration,
        metavar="DURATION",
        help="age of the finished jobs to delete, like 0s, 12h or 30d (default: RETENTION_DAYS)",
    )
    usage = verbs.add_parser("usage", help="jobs and BFL cost per tenant, day, model, status")
    usage.add_argument("--tenant", metavar="NAME", help="only this tenant (default: all)")
    usage.add_argument(
        "--from",
        dest="start",
        type=_date,
        metavar="DATE",
        help="first day, like 2026-12-01 (default: 29 days before --to)",
    )
    usage.add_argument(
        "--to",
        dest="end",
        type=_date,
        metavar="DATE",
        help="last day, inclusive (default: today, UTC)",
    )
    images = verbs.add_parser("images", help="stored images")
    image_verbs = images.add_subparsers(dest="images_verb", required=True)
    copy = image_verbs.add_parser("copy", help="copy every stored image into another store")
    copy.add_argument("--to", required=True, metavar="STORE", help="db, fs:PATH or s3://BUCKET")


@contextlib.asynccontextmanager
async def _database(settings: Settings) -> AsyncIterator:
    from service.db import Database, create_engine

    db = Database(create_engine(settings))
    try:
        yield db
    finally:
        await db.dispose()


def run_prune(args) -> int:
    from service.clock import SystemClock
    from service.images import ImageStore
    from service.retention import prune

    settings = Settings.from_env()
    older_than = args.older_than
    if older_than is None:
        if settings.retention_days <= 0:
            raise SettingsError("RETENTION_DAYS is 0 (keep everything); give --older-than")
        older_than = timedelta(days=settings.retention_days)

    async def one_pass():
        async with _database(settings) as db:
            store = ImageStore(settings.image_store, settings.s3)
            return await prune(db, store, SystemClock().now() - older_than)

    print(f"deleted {anyio.run(one_pass).summary()}", flush=True)
    return 0


def run_images(args) -> int:
    from service.copying import copy_images
    from service.images import ImageStore
    from service.settings import parse_image_store

    settings = Settings.from_env()
    target = ImageStore(parse_image_store(args.to), settings.s3)

    async def copy():
        if problem := await target.problem():
            raise SettingsError(problem)
        async with _database(settings) as db:
            return await copy_images(db, target, report=lambda line: print(line, flush=True))

    copied = anyio.run(copy)
    if copied.failed:
        print(f"fluxhook: {copied.failed} images were not copied (see above)", file=sys.stderr)
        return 1
    return 0


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-12-02") from None


def run_usage(args) -> int:
    from service.usage import usage

    settings = Settings.from_env()
    end = args.end or datetime.now(UTC).date()
    start = args.start or end - timedelta(days=29)

    async def read():
        async with _database(settings) as db, db.read() as session:
            return await usage(session, start, end)

    rows = [row for row in anyio.run(read) if args.tenant in (None, row.tenant)]
    if not rows:
        print(f"no finished jobs from {start} to {end}", file=sys.stderr)
        return 0
    print(f"{'day':<10}  {'tenant':<20}  {'model':<24}  {'status':<18}  {'jobs':>6}  {'cost':>10}")
    for row in rows:
        print(
            f"{row.day}  {row.tenant[:20]:<20}  {row.model:<24}  {row.status:<18}  "
            f"{row.jobs:>6}  {row.cost:>10.3f}"
        )
    return 0


MAINTENANCE_VERBS = {"prune": run_prune, "images": run_images, "usage": run_usage}
