"""Subscriptions follow Stripe: its current period, cancellation, trials; webhook events.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 20:00:00

Both billing subjects (``user_subscriptions`` and ``organizations``) keep what
Stripe says of their subscription: the current period (a trial's is not a
month), whether it ends at the period's end, and the trial's end. Every
Stripe status is allowed now (``unpaid``, ``incomplete``,
``incomplete_expired``; the longest needs 18 characters). ``stripe_events``
keeps each webhook event delivered, so that each is handled once.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

OLD_STATUSES = "'active', 'trialing', 'past_due', 'canceled', 'paused'"
NEW_STATUSES = OLD_STATUSES + ", 'unpaid', 'incomplete', 'incomplete_expired'"
SUBJECTS = [('organizations', 'subscription_status'), ('user_subscriptions', 'status')]


def upgrade():
    for table, status in SUBJECTS:
        op.add_column(table, sa.Column('current_period_start', sa.DateTime(timezone=True)))
        op.add_column(table, sa.Column('current_period_end', sa.DateTime(timezone=True)))
        op.add_column(
            table,
            sa.Column(
                'cancel_at_period_end', sa.Boolean(), server_default=sa.false(), nullable=False
            ),
        )
        op.add_column(table, sa.Column('trial_end', sa.DateTime(timezone=True)))
        op.alter_column(
            table, status, type_=sa.String(length=32), existing_type=sa.String(length=16)
        )
        op.drop_constraint(op.f(f'ck_{table}_status'), table, type_='check')
        op.create_check_constraint(
            op.f(f'ck_{table}_status'), table, f"{status} IN ({NEW_STATUSES})"
        )
    op.create_table(
        'stripe_events',
        sa.Column('id', sa.String(length=255), nullable=False),
        sa.Column('type', sa.String(length=100), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('received_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('processed_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('outcome', sa.String(length=16), nullable=False),
        sa.Column('stripe_customer_id', sa.String(length=255), nullable=True),
        sa.Column('stripe_subscription_id', sa.String(length=255), nullable=True),
        sa.Column('message', sa.Text(), nullable=True),
        sa.CheckConstraint(
            "outcome IN ('pending', 'applied', 'ignored', 'unmatched', 'failed')",
            name=op.f('ck_stripe_events_outcome'),
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_stripe_events')),
    )
    op.create_index('ix_stripe_events_received_at', 'stripe_events', ['received_at'])


def downgrade():
    op.drop_index('ix_stripe_events_received_at', table_name='stripe_events')
    op.drop_table('stripe_events')
    for table, status in SUBJECTS:
        op.execute(
            f"UPDATE {table} SET {status} = 'canceled' "
            "WHERE " + status + " IN ('unpaid', 'incomplete', 'incomplete_expired')"
        )
        op.drop_constraint(op.f(f'ck_{table}_status'), table, type_='check')
        op.create_check_constraint(
            op.f(f'ck_{table}_status'), table, f"{status} IN ({OLD_STATUSES})"
        )
        op.alter_column(
            table, status, type_=sa.String(length=16), existing_type=sa.String(length=32)
        )
        for column in ('trial_end', 'cancel_at_period_end', 'current_period_end',
                       'current_period_start'):
            op.drop_column(table, column)
