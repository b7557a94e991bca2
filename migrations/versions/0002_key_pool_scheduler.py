"""key pool scheduler: leases for calls in flight, daily usage day, credit and probe facts

Revision ID: 0002
Revises: 0001
"""
from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("daily_usage_date", sa.Date(), nullable=True))
        batch_op.add_column(sa.Column("credits_reset_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("tier", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("last_checked_at", sa.DateTime(timezone=True), nullable=True))

    op.create_table(
        "key_leases",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("api_key_id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("holder", sa.String(length=128), nullable=True),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], name=op.f("fk_key_leases_api_key_id_api_keys"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_key_leases")),
    )
    with op.batch_alter_table("key_leases", schema=None) as batch_op:
        batch_op.create_index("idx_key_leases_key_expires", ["api_key_id", "expires_at"], unique=False)


def downgrade():
    with op.batch_alter_table("key_leases", schema=None) as batch_op:
        batch_op.drop_index("idx_key_leases_key_expires")
    op.drop_table("key_leases")
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("last_checked_at")
        batch_op.drop_column("tier")
        batch_op.drop_column("credits_reset_at")
        batch_op.drop_column("daily_usage_date")
