"""usage per tenant, day, model and final status (kept after retention prunes the jobs)

Revision ID: 7c3f2e1a9d40
Revises: d92b35891839
Create Date: 2026-12-02
"""

import sqlalchemy as sa
import sqlmodel

from alembic import op

revision = "7c3f2e1a9d40"
down_revision = "d92b35891839"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_days",
        sa.Column("tenant_id", sa.Uuid(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("model", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("status", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("jobs", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["tenant_id"], ["tenants.id"], name=op.f("fk_usage_days_tenant_id_tenants")
        ),
        sa.PrimaryKeyConstraint("tenant_id", "day", "model", "status", name=op.f("pk_usage_days")),
    )


def downgrade() -> None:
    op.drop_table("usage_days")
