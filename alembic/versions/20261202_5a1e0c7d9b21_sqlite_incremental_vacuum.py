"""SQLite gives pruned space back: auto_vacuum=INCREMENTAL (retention runs incremental_vacuum).

Revision ID: 5a1e0c7d9b21
Revises: c650589890bb
Create Date: 2026-12-02

auto_vacuum only changes on an empty database or through a VACUUM, and VACUUM cannot run in
a transaction: it runs in alembic's autocommit block. PostgreSQL reuses freed space itself
(autovacuum), so nothing changes there.
"""

from alembic import op

revision = "5a1e0c7d9b21"
down_revision = "c650589890bb"
branch_labels = None
depends_on = None


def _set_auto_vacuum(mode: str) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.get_context().autocommit_block():
        op.execute(f"PRAGMA auto_vacuum = {mode}")
        op.execute("VACUUM")


def upgrade() -> None:
    _set_auto_vacuum("INCREMENTAL")


def downgrade() -> None:
    _set_auto_vacuum("NONE")
