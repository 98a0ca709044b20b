"""Studies: the studies table, a job's study and trial, and the job status ``pruned``.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 11:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None

JOB_STATUSES = "'queued', 'running', 'cancelling', 'succeeded', 'failed', 'cancelled'"
JSON_DOC = sa.JSON().with_variant(sa.dialects.postgresql.JSONB(astext_type=sa.Text()), 'postgresql')


def upgrade() -> None:
    op.create_table('studies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('owner_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('spec', JSON_DOC, nullable=False),
    sa.Column('spec_hash', sa.String(length=64), nullable=False),
    sa.Column('optuna_name', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('status_reason', sa.Text(), nullable=True),
    sa.Column('result', JSON_DOC, nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('request_hash', sa.String(length=64), nullable=True),
    sa.CheckConstraint("status IN ('running', 'succeeded', 'failed', 'cancelled')", name=op.f('ck_studies_status')),
    sa.ForeignKeyConstraint(['owner_id'], ['owners.id'], name=op.f('fk_studies_owner_id_owners'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_studies')),
    sa.UniqueConstraint('optuna_name', name=op.f('uq_studies_optuna_name')),
    sa.UniqueConstraint('owner_id', 'idempotency_key', name=op.f('uq_studies_owner_id_idempotency_key'))
    )
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.create_index('ix_studies_owner_id_id', ['owner_id', 'id'], unique=False)
        batch_op.create_index('ix_studies_status', ['status'], unique=False)

    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('study_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('trial_number', sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            batch_op.f('fk_jobs_study_id_studies'), 'studies', ['study_id'], ['id'], ondelete='CASCADE'
        )
        batch_op.create_index('ix_jobs_study_id_trial_number', ['study_id', 'trial_number'], unique=False)
        batch_op.create_index('uq_jobs_study_trial_seed', ['study_id', 'trial_number', 'seed'], unique=True)
        batch_op.create_index(
            'uq_jobs_study_finalist_seed', ['study_id', 'seed'], unique=True,
            postgresql_where=sa.text('trial_number IS NULL AND study_id IS NOT NULL'),
            sqlite_where=sa.text('trial_number IS NULL AND study_id IS NOT NULL'),
        )
        batch_op.drop_constraint(batch_op.f('ck_jobs_status'), type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_jobs_status'), f"status IN ({JOB_STATUSES}, 'pruned')")


def downgrade() -> None:
    op.execute("UPDATE jobs SET status = 'cancelled' WHERE status = 'pruned'")
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('ck_jobs_status'), type_='check')
        batch_op.create_check_constraint(batch_op.f('ck_jobs_status'), f"status IN ({JOB_STATUSES})")
        batch_op.drop_index('uq_jobs_study_finalist_seed')
        batch_op.drop_index('uq_jobs_study_trial_seed')
        batch_op.drop_index('ix_jobs_study_id_trial_number')
        batch_op.drop_constraint(batch_op.f('fk_jobs_study_id_studies'), type_='foreignkey')
        batch_op.drop_column('trial_number')
        batch_op.drop_column('study_id')

    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_index('ix_studies_status')
        batch_op.drop_index('ix_studies_owner_id_id')

    op.drop_table('studies')
