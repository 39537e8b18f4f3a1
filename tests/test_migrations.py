"""The migrations build exactly the tables the models declare (`alembic check`), on both engines."""

from alembic import command
from service import migrations


def test_models_and_migrations_agree(database_url):
    command.check(migrations.alembic_config(database_url))


def test_head_is_what_readyz_expects():
    assert migrations.head_revision()
