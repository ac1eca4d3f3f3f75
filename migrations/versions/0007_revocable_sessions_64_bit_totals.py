"""Sign-in sessions the server can end, and 64-bit usage totals.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04 19:00:00

``user_sessions`` holds one row per signed-in browser (the SHA-256 of the
token its cookie carries): signing out, ``flask sign-out-user``, disabling
a user, a password change and the idle and absolute timeouts end a session
by deleting or ignoring its row. Sessions signed in before this revision
carry a user id instead of a token and are signed out.

Running totals and members' shares were 32-bit: a total near 2**31 refused
the next event with a server error. They are 64-bit now, like report values.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

WIDENED = [
    ('usage_records', 'used'),
    ('usage_records', 'included'),
    ('member_usage', 'used'),
]


def upgrade():
    op.create_table(
        'user_sessions',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('token_hash', sa.String(length=64), nullable=False),
        sa.Column('user_id', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_seen_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ['user_id'], ['users.id'],
            name=op.f('fk_user_sessions_user_id_users'), ondelete='CASCADE',
        ),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_user_sessions')),
        sa.UniqueConstraint('token_hash', name=op.f('uq_user_sessions_token_hash')),
    )
    op.create_index(op.f('ix_user_sessions_user_id'), 'user_sessions', ['user_id'])
    for table, column in WIDENED:
        op.alter_column(table, column, type_=sa.BigInteger(), existing_nullable=False)


def downgrade():
    for table, column in WIDENED:
        op.alter_column(table, column, type_=sa.Integer(), existing_nullable=False)
    op.drop_index(op.f('ix_user_sessions_user_id'), table_name='user_sessions')
    op.drop_table('user_sessions')
