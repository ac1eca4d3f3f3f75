"""Users can be disabled; the never-used meter id of running totals goes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 18:00:00

``users.disabled_at`` is set by ``flask disable-user``: the user's sessions
end at their next request and nothing more is recorded for them, while the
usage they already have stays counted. ``usage_records.stripe_meter_id`` was
never written or read.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column('users', sa.Column('disabled_at', sa.DateTime(timezone=True), nullable=True))
    op.drop_column('usage_records', 'stripe_meter_id')


def downgrade():
    op.add_column(
        'usage_records', sa.Column('stripe_meter_id', sa.String(length=255), nullable=True)
    )
    op.drop_column('users', 'disabled_at')
