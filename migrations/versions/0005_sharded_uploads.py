"""Sharded dataset uploads: an upload's files (one multipart upload each) when it is a folder of shards,
and when a completion or an abort claimed an upload.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 20:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None

JSON_DOC = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    with op.batch_alter_table('dataset_uploads', schema=None) as batch_op:
        batch_op.add_column(sa.Column('files', JSON_DOC, nullable=True))
        batch_op.add_column(sa.Column('claimed_at', sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.execute("DELETE FROM dataset_uploads WHERE files IS NOT NULL")
    with op.batch_alter_table('dataset_uploads', schema=None) as batch_op:
        batch_op.drop_column('claimed_at')
        batch_op.drop_column('files')
