"""key formats: output formats a key's upstream tier refused, and why its last probe could not read it

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.add_column(sa.Column("refused_formats", sa.String(length=255), nullable=True))
        batch_op.add_column(sa.Column("probe_error", sa.String(length=64), nullable=True))


def downgrade():
    with op.batch_alter_table("api_keys", schema=None) as batch_op:
        batch_op.drop_column("probe_error")
        batch_op.drop_column("refused_formats")
