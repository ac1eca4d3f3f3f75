"""Report batches name their events until they are settled: one write per usage event.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:00:00

A claim writes the events' ids into their report batch (``event_ids``, a JSON
array) instead of updating every usage event; the events are written once,
when their batch is settled (sent or failed), and ``event_ids`` is cleared
then. Existing batches keep ``event_ids`` null: their events already point
at them through ``report_batch_id``.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('usage_report_batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('event_ids', sa.JSON(), nullable=True))


def downgrade():
    # Events of batches still pending hold no link to them yet: write it, as
    # revision 0003's reporter did at claim time, before the ids are dropped.
    bind = op.get_bind()
    if bind.dialect.name == 'postgresql':
        op.execute(
            "UPDATE usage_events AS e SET report_status = 'batched', report_batch_id = b.id "
            "FROM usage_report_batches AS b, json_array_elements_text(b.event_ids) AS j "
            "WHERE b.event_ids IS NOT NULL AND e.id = CAST(j.value AS uuid)"
        )
    else:
        op.execute(
            "UPDATE usage_events SET report_status = 'batched', report_batch_id = ("
            "SELECT b.id FROM usage_report_batches AS b, json_each(b.event_ids) AS j "
            "WHERE b.event_ids IS NOT NULL AND j.value = usage_events.id) "
            "WHERE id IN (SELECT j.value FROM usage_report_batches AS b, json_each(b.event_ids) AS j "
            "WHERE b.event_ids IS NOT NULL)"
        )
    if bind.dialect.name == 'sqlite':
        # Natively (SQLite 3.35+): batch mode would copy and drop the table,
        # which the events' foreign key to it forbids while they point at it.
        op.execute('ALTER TABLE usage_report_batches DROP COLUMN event_ids')
    else:
        op.drop_column('usage_report_batches', 'event_ids')
