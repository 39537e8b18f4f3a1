"""api keys: last use, unique names

Revision ID: d92b35891839
Revises: 5a1e0c7d9b21
Create Date: 2026-12-02 04:41:27.392881+00:00

`fluxhook keys list` shows when each key was last used, and `keys create` refuses a name that
is taken. Keys created before this revision may share a name: all but the oldest of each name
get their id appended, so that the unique constraint can be created and the release phase
does not fail on an existing database.
"""

from collections.abc import Sequence

import sqlalchemy as sa

import service.models
from alembic import op

revision: str = "d92b35891839"
down_revision: str | None = "5a1e0c7d9b21"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYS = sa.table(
    "api_keys",
    sa.column("id", sa.Uuid()),
    sa.column("name", sa.String()),
    sa.column("created_at", service.models.UTCDateTime()),
)


def _rename_duplicate_names() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(KEYS.c.id, KEYS.c.name).order_by(KEYS.c.name, KEYS.c.created_at, KEYS.c.id)
    ).all()
    seen = set()
    for key_id, name in rows:
        if name in seen:
            # 160 + " (" + 36 + ")" stays within the column's 200 characters.
            renamed = f"{name[:160]} ({key_id})"
            bind.execute(sa.update(KEYS).where(KEYS.c.id == key_id).values(name=renamed))
        seen.add(name)


def upgrade() -> None:
    _rename_duplicate_names()
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("last_used_at", service.models.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.create_unique_constraint(batch_op.f("uq_api_keys_name"), ["name"])


def downgrade() -> None:
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("uq_api_keys_name"), type_="unique")
        batch_op.drop_column("last_used_at")
