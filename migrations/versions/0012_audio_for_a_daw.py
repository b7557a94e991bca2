"""audio for a DAW: requested audio options, measurements of the stored file, waveform and original keys

`output_format` gains `flac`. On PostgreSQL that is `ALTER TYPE ... ADD VALUE`, which cannot be undone
without rebuilding the type: the downgrade leaves the value in the type, and refuses to run while FLAC
jobs exist (their stored objects are FLAC; no older schema can describe them). SQLite stores the enum as
text with no CHECK constraint.

Revision ID: 0012
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_MEASURED = (
    ("audio_duration_seconds", sa.Float()),
    ("audio_sample_rate", sa.Integer()),
    ("audio_channels", sa.Integer()),
    ("audio_bit_depth", sa.Integer()),
    ("audio_loudness_lufs", sa.Float()),
    ("audio_true_peak_dbtp", sa.Float()),
)


def upgrade():
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        op.execute("ALTER TYPE output_format ADD VALUE IF NOT EXISTS 'flac'")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        if not postgresql:  # the enum is a VARCHAR as long as its longest value
            batch_op.alter_column("output_format", existing_type=sa.Enum("mp3", "wav", name="output_format"),
                                  type_=sa.Enum("mp3", "wav", "flac", name="output_format"), existing_nullable=False)
        batch_op.add_column(sa.Column("sample_rate", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("bit_depth", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("loudness_lufs", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("trim_silence", sa.Boolean(), nullable=False, server_default=sa.false()))
        for name, type_ in _MEASURED:
            batch_op.add_column(sa.Column(name, type_, nullable=True))
        batch_op.add_column(sa.Column("peaks_key", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("original_key", sa.String(length=512), nullable=True))


def downgrade():
    flac = op.get_bind().execute(sa.text("SELECT count(*) FROM jobs WHERE output_format = 'flac'")).scalar()
    if flac:
        raise RuntimeError(f"{flac} FLAC jobs exist; the schema before 0012 cannot describe them")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        if op.get_bind().dialect.name != "postgresql":
            batch_op.alter_column("output_format", existing_type=sa.Enum("mp3", "wav", "flac", name="output_format"),
                                  type_=sa.Enum("mp3", "wav", name="output_format"), existing_nullable=False)
        for name in ("original_key", "peaks_key", *reversed([n for n, _ in _MEASURED]), "trim_silence",
                     "loudness_lufs", "bit_depth", "sample_rate"):
            batch_op.drop_column(name)
