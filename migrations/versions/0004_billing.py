"""billing: Stripe customers, webhook events stored once, overage charges, subscription billing state

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade():
    op.create_table(
        "billing_customers",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("stripe_customer_id", sa.String(length=255), nullable=True),
        sa.Column("overage_cap_cents", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_billing_customers_user_id_users"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_customers")),
        sa.UniqueConstraint("user_id", name=op.f("uq_billing_customers_user_id")),
        sa.UniqueConstraint("stripe_customer_id", name=op.f("uq_billing_customers_stripe_customer_id")),
    )

    op.create_table(
        "stripe_events",
        sa.Column("id", sa.String(length=255), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("livemode", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("stripe_created", sa.DateTime(timezone=True), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="received", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.String(length=255), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("applied_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stripe_events")),
    )
    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.create_index("idx_stripe_events_status_received", ["status", "received_at"], unique=False)

    op.create_table(
        "overage_charges",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("job_id", sa.Uuid(), nullable=True),
        sa.Column("user_id", sa.Uuid(), nullable=True),
        sa.Column("stripe_customer_id", sa.String(length=255), nullable=True),
        sa.Column("period", sa.Date(), nullable=False),
        sa.Column("plan", sa.String(length=16), nullable=False),
        sa.Column("price_cents", sa.Integer(), nullable=False),
        sa.Column("identifier", sa.String(length=100), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column("last_error", sa.String(length=255), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_overage_charges_job_id_jobs"),
                                ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_overage_charges_user_id_users"),
                                ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_overage_charges")),
        sa.UniqueConstraint("job_id", name=op.f("uq_overage_charges_job_id")),
        sa.UniqueConstraint("identifier", name=op.f("uq_overage_charges_identifier")),
    )
    with op.batch_alter_table("overage_charges", schema=None) as batch_op:
        batch_op.create_index("idx_overage_charges_status_created", ["status", "created_at"], unique=False)

    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("scheduled_plan", sa.String(length=16), nullable=True))
        batch_op.add_column(sa.Column("stripe_price_id", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("overage_allowed", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch_op.add_column(sa.Column("overage_price_cents", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("past_due_since", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("grace_until", sa.DateTime(timezone=True), nullable=True))


def downgrade():
    with op.batch_alter_table("subscriptions", schema=None) as batch_op:
        batch_op.drop_column("grace_until")
        batch_op.drop_column("past_due_since")
        batch_op.drop_column("overage_price_cents")
        batch_op.drop_column("overage_allowed")
        batch_op.drop_column("stripe_price_id")
        batch_op.drop_column("scheduled_plan")

    with op.batch_alter_table("overage_charges", schema=None) as batch_op:
        batch_op.drop_index("idx_overage_charges_status_created")
    op.drop_table("overage_charges")

    with op.batch_alter_table("stripe_events", schema=None) as batch_op:
        batch_op.drop_index("idx_stripe_events_status_received")
    op.drop_table("stripe_events")

    op.drop_table("billing_customers")
