"""Usage notifications: crossings of 80, 95 and 100 %, their outbox, and preferences.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 21:30:00

``usage_alerts`` holds each threshold a running total crossed, once (its
unique key); ``notifications`` is the outbox of messages about them, one per
alert, recipient and channel, with the event id each message carries.
``notification_preferences`` keeps what a user turned off (no row: the
defaults), and ``organizations.pool_alerts`` whether an organization's pool
is announced at all.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    op.add_column(
        'organizations',
        sa.Column('pool_alerts', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    )
    op.create_table(
        'usage_alerts',
        sa.Column('id', sa.BigInteger(), nullable=False),
        sa.Column('usage_record_id', sa.Integer(), nullable=False),
        sa.Column('threshold', sa.Integer(), nullable=False),
        sa.Column('plan_id', sa.String(length=32), nullable=False),
        sa.Column('used', sa.BigInteger(), nullable=False),
        sa.Column('included', sa.BigInteger(), nullable=False),
        sa.Column('period_start', sa.DateTime(timezone=True), nullable=False),
        sa.Column('period_end', sa.DateTime(timezone=True), nullable=False),
        sa.Column('detected_at', sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint('threshold IN (80, 95, 100)', name=op.f('ck_usage_alerts_threshold')),
        sa.ForeignKeyConstraint(
            ['usage_record_id'], ['usage_records.id'],
            name=op.f('fk_usage_alerts_usage_record_id_usage_records'), ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_alerts')),
        sa.UniqueConstraint(
            'usage_record_id', 'threshold', name=op.f('uq_usage_alerts_usage_record_id_threshold')
        ),
    )
    op.create_table(
        'notifications',
        sa.Column('id', sa.Uuid(), nullable=False),
        sa.Column('alert_id', sa.BigInteger(), nullable=False),
        sa.Column('recipient_id', sa.Integer(), nullable=False),
        sa.Column('channel', sa.String(length=16), nullable=False),
        sa.Column('status', sa.String(length=16), server_default='pending', nullable=False),
        sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.CheckConstraint(
            "channel IN ('email', 'webhook')", name=op.f('ck_notifications_channel')
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'sending', 'handed_over', 'sent', 'failed', 'cancelled')",
            name=op.f('ck_notifications_status'),
        ),
        sa.ForeignKeyConstraint(
            ['alert_id'], ['usage_alerts.id'],
            name=op.f('fk_notifications_alert_id_usage_alerts'), ondelete='CASCADE',
        ),
        sa.ForeignKeyConstraint(
            ['recipient_id'], ['users.id'],
            name=op.f('fk_notifications_recipient_id_users'), ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_notifications')),
        sa.UniqueConstraint(
            'alert_id', 'recipient_id', 'channel',
            name=op.f('uq_notifications_alert_id_recipient_id_channel'),
        ),
    )
    op.create_index(
        'ix_notifications_due', 'notifications', ['next_attempt_at'],
        postgresql_where=sa.text("status IN ('pending', 'sending')"),
    )
    op.create_index(
        op.f('ix_notifications_recipient_id'), 'notifications', ['recipient_id']
    )
    op.create_table(
        'notification_preferences',
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('email', sa.Boolean(), server_default=sa.text('true'), nullable=False),
        sa.Column('webhook', sa.Boolean(), server_default=sa.text('true'), nullable=False),
        sa.Column('pool_alerts', sa.Boolean(), server_default=sa.text('false'), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ['user_id'], ['users.id'],
            name=op.f('fk_notification_preferences_user_id_users'), ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('user_id', name=op.f('pk_notification_preferences')),
    )


def downgrade():
    op.drop_table('notification_preferences')
    op.drop_index(op.f('ix_notifications_recipient_id'), table_name='notifications')
    op.drop_index('ix_notifications_due', table_name='notifications')
    op.drop_table('notifications')
    op.drop_table('usage_alerts')
    op.drop_column('organizations', 'pool_alerts')
