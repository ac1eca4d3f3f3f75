"""Thresholds are announced once per allowance, and found through a small index.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 22:30:00

A plan changed within a billing period (an upgrade in Stripe, seats bought)
keeps the period's running total but changes its allowance: its 80, 95 and
100 % are new thresholds, announced anew. So an alert is unique per total,
plan, allowance and threshold. ``ix_usage_records_alertable`` holds only the
totals at or past 80 %, by period end: ``flask send-notifications`` reads
those of running periods each minute, one range that does not grow with the
history (the index itself does, by the totals that reached 80 %).
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

ALERTABLE = "included > 0 AND used * 100 >= included * 80"


def upgrade():
    op.drop_constraint(
        op.f('uq_usage_alerts_usage_record_id_threshold'), 'usage_alerts', type_='unique'
    )
    op.create_unique_constraint(
        op.f('uq_usage_alerts_usage_record_id_plan_id_included_threshold'),
        'usage_alerts',
        ['usage_record_id', 'plan_id', 'included', 'threshold'],
    )
    op.create_index(
        'ix_usage_records_alertable', 'usage_records', ['period_end'],
        postgresql_include=['period_start', 'used', 'included', 'plan_id'],
        postgresql_where=sa.text(ALERTABLE),
    )


def downgrade():
    op.drop_index('ix_usage_records_alertable', table_name='usage_records')
    op.drop_constraint(
        op.f('uq_usage_alerts_usage_record_id_plan_id_included_threshold'),
        'usage_alerts',
        type_='unique',
    )
    # Keep the highest alert of each total and threshold, as the older key allows.
    op.execute(
        "DELETE FROM usage_alerts a USING usage_alerts b "
        "WHERE a.usage_record_id = b.usage_record_id AND a.threshold = b.threshold "
        "AND a.id < b.id"
    )
    op.create_unique_constraint(
        op.f('uq_usage_alerts_usage_record_id_threshold'),
        'usage_alerts',
        ['usage_record_id', 'threshold'],
    )
