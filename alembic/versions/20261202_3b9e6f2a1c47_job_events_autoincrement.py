"""job_events: SQLite never reuses a sequence number (AUTOINCREMENT)

Revision ID: 3b9e6f2a1c47
Revises: 7c3f2e1a9d40
Create Date: 2026-12-02

Without AUTOINCREMENT, SQLite hands out max(seq) + 1: once retention prunes the newest
event, its number comes again, and a client resuming after it would miss the new event. The
table is rebuilt with the keyword (its rows keep their numbers; SQLite then counts on from the
largest). PostgreSQL's sequences never reuse a number: nothing to do there.
"""

from alembic import op

revision = "3b9e6f2a1c47"
down_revision = "7c3f2e1a9d40"
branch_labels = None
depends_on = None


def _rebuild(autoincrement: bool) -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    table_kwargs = {"sqlite_autoincrement": autoincrement}
    with op.batch_alter_table("job_events", recreate="always", table_kwargs=table_kwargs):
        pass


def upgrade() -> None:
    _rebuild(True)


def downgrade() -> None:
    _rebuild(False)
