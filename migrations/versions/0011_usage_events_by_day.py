"""Usage events found by subject and period, for the daily chart, built without locking writes.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 07:30:00

The daily chart of the current period sums a subject's events of one
period per UTC day. Until now nothing indexed events by subject: each read
would scan the whole table. Two partial indexes, one for pools (and a
member of one: ``organization_id, period_start, user_id``) and one for
individuals (``user_id, period_start``); every event is in exactly one of
them. Keys only: a subject's period is one key, which PostgreSQL stores
once (deduplication), so each index stays small (about 7 MB per million
events, against 86 MB with the chart's columns included, which would buy
index-only scans the newest events seldom get before a vacuum marks them
all-visible).

``usage_events`` is the largest table and takes writes all the time, so the
indexes are built ``CONCURRENTLY`` (outside a transaction), which does not
block recording. A concurrent build that fails leaves an invalid index
behind: ``IF NOT EXISTS`` would keep it, so each is dropped first, which
makes running the upgrade again the repair.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

INDEXES = {
    'ix_usage_events_pool_day': (
        ['organization_id', 'period_start', 'user_id'], 'organization_id IS NOT NULL'
    ),
    'ix_usage_events_user_day': (['user_id', 'period_start'], 'organization_id IS NULL'),
}


def upgrade():
    with op.get_context().autocommit_block():
        for name, (columns, where) in INDEXES.items():
            op.drop_index(name, table_name='usage_events', postgresql_concurrently=True, if_exists=True)
            op.create_index(
                name, 'usage_events', columns,
                postgresql_where=sa.text(where),
                postgresql_concurrently=True,
            )


def downgrade():
    with op.get_context().autocommit_block():
        for name in INDEXES:
            op.drop_index(name, table_name='usage_events', postgresql_concurrently=True, if_exists=True)
