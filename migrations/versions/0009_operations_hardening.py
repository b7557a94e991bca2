"""operations hardening: the scheduler's heartbeat, Stripe event backoff, the attempt log's upstream
message, and who changed the key pool from where

- service_heartbeats: one row per periodic process (beat), its last sign of life.
- stripe_events.next_attempt_at: the sweeper leaves an event alone until then (backoff by attempts).
- job_attempts.upstream_message: the upstream's own words about a failed call, for operators only.
- admin_audit_log.actor_name and client_address: an actor that is not a user (`cli:<os user>`), and
  the address an API request came from.

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "service_heartbeats",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=True),
        sa.PrimaryKeyConstraint("name"),
    )
    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.add_column(sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("job_attempts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("upstream_message", sa.Text(), nullable=True))
    with op.batch_alter_table("admin_audit_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("actor_name", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("client_address", sa.String(length=64), nullable=True))


def downgrade():
    with op.batch_alter_table("admin_audit_log", schema=None) as batch_op:
        batch_op.drop_column("client_address")
        batch_op.drop_column("actor_name")
    with op.batch_alter_table("job_attempts", schema=None) as batch_op:
        batch_op.drop_column("upstream_message")
    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.drop_column("next_attempt_at")
    op.drop_table("service_heartbeats")
