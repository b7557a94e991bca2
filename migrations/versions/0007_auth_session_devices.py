"""auth_sessions per device: client name, last use, and what atomic refresh rotation needs

`client_name` and `last_used_at` let a user see and end each session. `access_jti`, `issued_at` and
`previous_refresh_jti` let a just-rotated refresh token, presented again within the reuse grace, get
the same new pair back (rebuilt, not stored: no live token sits in the database).

Revision ID: 0007
Revises: 0006
"""
from alembic import op
import sqlalchemy as sa

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("auth_sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("client_name", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("access_jti", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("previous_refresh_jti", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("issued_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    # Sessions from before this revision were last seen, as far as anyone knows, when they began.
    op.execute("UPDATE auth_sessions SET last_used_at = created_at")
    with op.batch_alter_table("auth_sessions", schema=None) as batch_op:
        batch_op.alter_column("last_used_at", existing_type=sa.DateTime(timezone=True), nullable=False)


def downgrade():
    with op.batch_alter_table("auth_sessions", schema=None) as batch_op:
        batch_op.drop_column("last_used_at")
        batch_op.drop_column("issued_at")
        batch_op.drop_column("previous_refresh_jti")
        batch_op.drop_column("access_jti")
        batch_op.drop_column("client_name")
