"""jobs: drop ix_jobs_status, which ix_jobs_queue already covers

Revision ID: b3fd5abea95e
Revises: 3b9e6f2a1c47
Create Date: 2026-12-07

ix_jobs_queue (status, holds_slot, created_at) leads with status, so every lookup by status
can use it; ix_jobs_status only added an index entry to rewrite at each of a job's four or
five status changes.
"""

from alembic import op

revision = "b3fd5abea95e"
down_revision = "3b9e6f2a1c47"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_jobs_status", table_name="jobs")


def downgrade() -> None:
    op.create_index("ix_jobs_status", "jobs", ["status"])
