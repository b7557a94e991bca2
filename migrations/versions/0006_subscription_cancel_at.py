"""subscriptions.cancel_at: when a scheduled cancellation ends the subscription

Stripe schedules a cancellation with `cancel_at_period_end` or with a `cancel_at` timestamp; the
mirror keeps the instant either way.

Revision ID: 0006
Revises: 0005
"""
from alembic import op
import sqlalchemy as sa

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cancel_at", sa.DateTime(timezone=True), nullable=True))


def downgrade():
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_column("cancel_at")
