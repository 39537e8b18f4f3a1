"""Alembic, run from code: `fluxhook migrate` (the release phase) and `/readyz`.

The scripts' source is the top-level `alembic/` (with `alembic.ini`, for `alembic revision`).
A wheel carries them inside the package as `service/_alembic` (see pyproject.toml), because an
installed fluxhook (Heroku's buildpack installs it non-editable) has no checkout beside it.
"""

import functools
from pathlib import Path

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from alembic import command
from service.db import Database

PACKAGED_SCRIPTS = Path(__file__).resolve().parent / "_alembic"  # an installed wheel
CHECKOUT_SCRIPTS = Path(__file__).resolve().parent.parent / "alembic"  # a checkout


def script_location() -> Path:
    return PACKAGED_SCRIPTS if PACKAGED_SCRIPTS.is_dir() else CHECKOUT_SCRIPTS


def alembic_config(database_url: str) -> Config:
    """Built in code, not read from alembic.ini, which an installed package does not have."""
    config = Config()
    config.set_main_option("script_location", str(script_location()))
    config.attributes["database_url"] = database_url
    return config


def upgrade(database_url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(database_url), revision)


@functools.cache
def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


async def current_revision(db: Database) -> str | None:
    async with db.engine.connect() as conn:
        return await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )
