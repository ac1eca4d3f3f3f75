"""Reporting usage to Stripe: report runs, the report-batch outbox, event report state.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 20:10:00

Usage already marked ``stripe_reported_at`` before this revision is left
alone (skipped as already reported); everything else enters the reporter's
backlog.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('usage_report_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('worker', sa.String(length=255), nullable=False),
    sa.Column('outcome', sa.String(length=16), nullable=False),
    sa.Column('claimed', sa.Integer(), server_default='0', nullable=False),
    sa.Column('batches_sent', sa.Integer(), server_default='0', nullable=False),
    sa.Column('events_reported', sa.Integer(), server_default='0', nullable=False),
    sa.Column('skipped', sa.Integer(), server_default='0', nullable=False),
    sa.Column('failed', sa.Integer(), server_default='0', nullable=False),
    sa.Column('retried', sa.Integer(), server_default='0', nullable=False),
    sa.Column('pending', sa.Integer(), server_default='0', nullable=False),
    sa.Column('message', sa.Text(), nullable=True),
    sa.CheckConstraint("outcome IN ('running', 'ok', 'incomplete', 'failed', 'error')", name=op.f('ck_usage_report_runs_outcome')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_report_runs'))
    )
    with op.batch_alter_table('usage_report_runs', schema=None) as batch_op:
        batch_op.create_index('ix_usage_report_runs_outcome_started_at', ['outcome', 'started_at'], unique=False)

    op.create_table('usage_report_batches',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('identifier', sa.String(length=100), nullable=False),
    sa.Column('stripe_customer_id', sa.String(length=255), nullable=False),
    sa.Column('event_name', sa.String(length=100), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('period_end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.Column('event_count', sa.Integer(), nullable=False),
    sa.Column('meter_timestamp', sa.DateTime(timezone=True), nullable=False),
    sa.Column('status', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('queued_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_attempt_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('sent_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('failed_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('last_http_status', sa.Integer(), nullable=True),
    sa.Column('stripe_request_id', sa.String(length=255), nullable=True),
    sa.Column('created_run_id', sa.Integer(), nullable=True),
    sa.Column('last_run_id', sa.Integer(), nullable=True),
    sa.CheckConstraint("status IN ('pending', 'sent', 'failed')", name=op.f('ck_usage_report_batches_status')),
    sa.CheckConstraint('event_count > 0', name=op.f('ck_usage_report_batches_event_count_positive')),
    sa.CheckConstraint('value > 0', name=op.f('ck_usage_report_batches_value_positive')),
    sa.ForeignKeyConstraint(['created_run_id'], ['usage_report_runs.id'], name=op.f('fk_usage_report_batches_created_run_id_usage_report_runs')),
    sa.ForeignKeyConstraint(['last_run_id'], ['usage_report_runs.id'], name=op.f('fk_usage_report_batches_last_run_id_usage_report_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_report_batches')),
    sa.UniqueConstraint('identifier', name=op.f('uq_usage_report_batches_identifier'))
    )
    with op.batch_alter_table('usage_report_batches', schema=None) as batch_op:
        batch_op.create_index('ix_usage_report_batches_open', ['status', 'id'], unique=False, sqlite_where=sa.text("status <> 'sent'"), postgresql_where=sa.text("status <> 'sent'"))

    with op.batch_alter_table('usage_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('report_status', sa.String(length=16), server_default='pending', nullable=False))
        batch_op.add_column(sa.Column('report_batch_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('report_skip_reason', sa.String(length=32), nullable=True))
        batch_op.create_check_constraint('report_status', "report_status IN ('pending', 'batched', 'skipped')")
        batch_op.create_foreign_key(batch_op.f('fk_usage_events_report_batch_id_usage_report_batches'), 'usage_report_batches', ['report_batch_id'], ['id'])

    # Before the partial index exists, so it is built once, over the backlog only.
    op.execute(
        "UPDATE usage_events SET report_status = 'skipped', report_skip_reason = 'already_reported' "
        "WHERE stripe_reported_at IS NOT NULL"
    )

    with op.batch_alter_table('usage_events', schema=None) as batch_op:
        batch_op.create_index('ix_usage_events_report_backlog', ['organization_id', 'user_id', 'period_start'], unique=False, sqlite_where=sa.text("report_status = 'pending'"), postgresql_where=sa.text("report_status = 'pending'"))
        batch_op.create_index('ix_usage_events_report_batch_id', ['report_batch_id'], unique=False, sqlite_where=sa.text('report_batch_id IS NOT NULL'), postgresql_where=sa.text('report_batch_id IS NOT NULL'))
        batch_op.create_index('ix_usage_events_unbilled_no_customer', ['occurred_at'], unique=False, sqlite_where=sa.text("report_skip_reason = 'no_customer'"), postgresql_where=sa.text("report_skip_reason = 'no_customer'"))


def downgrade():
    with op.batch_alter_table('usage_events', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_events_unbilled_no_customer', sqlite_where=sa.text("report_skip_reason = 'no_customer'"), postgresql_where=sa.text("report_skip_reason = 'no_customer'"))
        batch_op.drop_index('ix_usage_events_report_batch_id', sqlite_where=sa.text('report_batch_id IS NOT NULL'), postgresql_where=sa.text('report_batch_id IS NOT NULL'))
        batch_op.drop_index('ix_usage_events_report_backlog', sqlite_where=sa.text("report_status = 'pending'"), postgresql_where=sa.text("report_status = 'pending'"))
        batch_op.drop_constraint(batch_op.f('fk_usage_events_report_batch_id_usage_report_batches'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('ck_usage_events_report_status'), type_='check')
        batch_op.drop_column('report_skip_reason')
        batch_op.drop_column('report_batch_id')
        batch_op.drop_column('report_status')

    with op.batch_alter_table('usage_report_batches', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_report_batches_open', sqlite_where=sa.text("status <> 'sent'"), postgresql_where=sa.text("status <> 'sent'"))

    op.drop_table('usage_report_batches')
    with op.batch_alter_table('usage_report_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_report_runs_outcome_started_at')

    op.drop_table('usage_report_runs')
