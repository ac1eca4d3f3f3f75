"""A backlog queue for reporting, so reporting never writes usage events.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 10:00:00

Until now every reported usage event was updated once (``report_status``,
``report_batch_id``, ``stripe_reported_at``): in a wide table with large
indexes each such update rewrites the row and an entry in every index, and it
was most of a report run's time. Now:

* ``usage_report_backlog`` holds one small row per usage event not yet
  claimed, written by the statement that records the event and deleted by
  the claim that takes it;
* a report batch lists its events in ``event_ids`` for good (it did only
  while pending), and its ``sent_at`` is when they were reported;
* ``usage_report_skips`` lists the events a run took without sending them,
  with the reason.

The upgrade carries every event's state over: pending ones not listed by a
pending batch go into the backlog, settled batches get their events' ids, and
skipped events become skips (one per reason); then the event columns go. The
downgrade writes the columns back from the same three places.
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def _json_ids(dialect, alias='e'):
    # The ids of a group of events as a JSON array, in each engine's own words.
    if dialect == 'postgresql':
        return f"json_agg(CAST({alias}.id AS text) ORDER BY {alias}.id)"
    return f"json_group_array({alias}.id)"


def _listed(dialect, table, condition):
    # (listed event id, owning row id) for every row of ``table`` matching ``condition``.
    if dialect == 'postgresql':
        return (
            f"SELECT CAST(j.value AS uuid) AS event_id, t.id AS owner FROM {table} AS t, "
            f"json_array_elements_text(t.event_ids) AS j WHERE {condition}"
        )
    return (
        f"SELECT j.value AS event_id, t.id AS owner FROM {table} AS t, json_each(t.event_ids) AS j "
        f"WHERE {condition}"
    )


def upgrade():
    bind = op.get_bind()
    dialect = bind.dialect.name
    op.create_table('usage_report_backlog',
    sa.Column('event_id', sa.Uuid(), nullable=False),
    sa.Column('organization_id', sa.Integer(), nullable=True),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('period_start', sa.DateTime(timezone=True), nullable=False)
    )
    op.create_table('usage_report_skips',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('run_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('event_count', sa.Integer(), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.Column('oldest_occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('latest_occurred_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('requeued_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('event_ids', sa.JSON(), nullable=False),
    sa.CheckConstraint("reason IN ('not_billable', 'free_plan', 'no_customer', 'already_reported')", name=op.f('ck_usage_report_skips_reason')),
    sa.CheckConstraint('event_count > 0', name=op.f('ck_usage_report_skips_event_count_positive')),
    sa.ForeignKeyConstraint(['run_id'], ['usage_report_runs.id'], name=op.f('fk_usage_report_skips_run_id_usage_report_runs')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_usage_report_skips'))
    )

    # The backlog: pending events that no pending batch lists (those are
    # claimed), unless something else reported them (stripe_reported_at): the
    # 0004 reporter skipped those as already reported when it came to them.
    unlisted = (
        "id NOT IN (SELECT event_id FROM ("
        + _listed(dialect, 'usage_report_batches', "t.status = 'pending' AND CAST(t.event_ids AS text) <> 'null'")
        + ") AS listed)"
    )
    op.execute(
        "INSERT INTO usage_report_backlog (event_id, organization_id, user_id, period_start) "
        "SELECT id, organization_id, user_id, period_start FROM usage_events "
        f"WHERE report_status = 'pending' AND stripe_reported_at IS NULL AND {unlisted}"
    )
    # Settled batches name their events, which pointed at them until now.
    op.execute(
        f"UPDATE usage_report_batches SET event_ids = (SELECT {_json_ids(dialect)} "
        "FROM usage_events AS e WHERE e.report_batch_id = usage_report_batches.id) "
        # Revision 0004 wrote SQL NULL; a JSON null would mean the same.
        "WHERE event_ids IS NULL OR CAST(event_ids AS text) = 'null'"
    )
    # Skipped events, and pending ones reported by other means: one skip per
    # reason. (Such events keep the fact, not the moment: the skip's time.)
    now = "CURRENT_TIMESTAMP"
    reason = (
        "CASE WHEN e.report_status = 'skipped' THEN e.report_skip_reason "
        "ELSE 'already_reported' END"
    )
    op.execute(
        "INSERT INTO usage_report_skips (reason, created_at, event_count, value, "
        "oldest_occurred_at, latest_occurred_at, event_ids) "
        f"SELECT {reason}, {now}, COUNT(*), SUM(e.quantity), MIN(e.occurred_at), "
        f"MAX(e.occurred_at), {_json_ids(dialect)} FROM usage_events AS e "
        "WHERE e.report_status = 'skipped' OR (e.report_status = 'pending' "
        f"AND e.stripe_reported_at IS NOT NULL AND e.{unlisted}) GROUP BY {reason}"
    )

    with op.batch_alter_table('usage_report_backlog', schema=None) as batch_op:
        batch_op.create_index('ix_usage_report_backlog_claim_order', ['organization_id', 'user_id', 'period_start'], unique=False)
    with op.batch_alter_table('usage_report_skips', schema=None) as batch_op:
        batch_op.create_index('ix_usage_report_skips_unbilled', ['created_at'], unique=False, sqlite_where=sa.text("reason = 'no_customer' AND requeued_at IS NULL"), postgresql_where=sa.text("reason = 'no_customer' AND requeued_at IS NULL"))

    with op.batch_alter_table('usage_events', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_events_unbilled_no_customer', sqlite_where=sa.text("report_skip_reason = 'no_customer'"), postgresql_where=sa.text("report_skip_reason = 'no_customer'"))
        batch_op.drop_index('ix_usage_events_report_batch_id', sqlite_where=sa.text('report_batch_id IS NOT NULL'), postgresql_where=sa.text('report_batch_id IS NOT NULL'))
        batch_op.drop_index('ix_usage_events_report_backlog', sqlite_where=sa.text("report_status = 'pending'"), postgresql_where=sa.text("report_status = 'pending'"))
        batch_op.drop_constraint(batch_op.f('fk_usage_events_report_batch_id_usage_report_batches'), type_='foreignkey')
        batch_op.drop_constraint(batch_op.f('ck_usage_events_report_status'), type_='check')
        batch_op.drop_column('report_skip_reason')
        batch_op.drop_column('report_batch_id')
        batch_op.drop_column('report_status')
        batch_op.drop_column('stripe_reported_at')

    with op.batch_alter_table('usage_report_batches', schema=None) as batch_op:
        batch_op.alter_column('event_ids', existing_type=sa.JSON(), nullable=False)


def downgrade():
    bind = op.get_bind()
    dialect = bind.dialect.name
    with op.batch_alter_table('usage_report_batches', schema=None) as batch_op:
        batch_op.alter_column('event_ids', existing_type=sa.JSON(), nullable=True)

    with op.batch_alter_table('usage_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stripe_reported_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('report_status', sa.String(length=16), server_default='pending', nullable=False))
        batch_op.add_column(sa.Column('report_batch_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('report_skip_reason', sa.String(length=32), nullable=True))
        batch_op.create_check_constraint('report_status', "report_status IN ('pending', 'batched', 'skipped')")
        batch_op.create_foreign_key(batch_op.f('fk_usage_events_report_batch_id_usage_report_batches'), 'usage_report_batches', ['report_batch_id'], ['id'])

    # Revision 0004's state: events of settled batches point at them (reported
    # when sent) and those batches list none; pending batches keep their list.
    # One pass over the listed ids each (UPDATE … FROM; SQLite 3.33+).
    settled = _listed(dialect, 'usage_report_batches', "t.status <> 'pending'")
    op.execute(
        "UPDATE usage_events SET report_status = 'batched', report_batch_id = l.owner, "
        "stripe_reported_at = b.sent_at "
        f"FROM ({settled}) AS l JOIN usage_report_batches AS b ON b.id = l.owner "
        "WHERE usage_events.id = l.event_id"
    )
    op.execute("UPDATE usage_report_batches SET event_ids = NULL WHERE status <> 'pending'")
    # Skips whose events were put back in the backlog no longer hold them.
    skipped = _listed(dialect, 'usage_report_skips', 't.requeued_at IS NULL')
    op.execute(
        "UPDATE usage_events SET report_status = 'skipped', report_skip_reason = s.reason, "
        "stripe_reported_at = CASE WHEN s.reason = 'already_reported' THEN s.created_at END "
        f"FROM ({skipped}) AS l JOIN usage_report_skips AS s ON s.id = l.owner "
        "WHERE usage_events.id = l.event_id"
    )
    # Events still in the backlog stay 'pending', the column's default.

    with op.batch_alter_table('usage_events', schema=None) as batch_op:
        batch_op.create_index('ix_usage_events_report_backlog', ['organization_id', 'user_id', 'period_start'], unique=False, sqlite_where=sa.text("report_status = 'pending'"), postgresql_where=sa.text("report_status = 'pending'"))
        batch_op.create_index('ix_usage_events_report_batch_id', ['report_batch_id'], unique=False, sqlite_where=sa.text('report_batch_id IS NOT NULL'), postgresql_where=sa.text('report_batch_id IS NOT NULL'))
        batch_op.create_index('ix_usage_events_unbilled_no_customer', ['occurred_at'], unique=False, sqlite_where=sa.text("report_skip_reason = 'no_customer'"), postgresql_where=sa.text("report_skip_reason = 'no_customer'"))

    with op.batch_alter_table('usage_report_skips', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_report_skips_unbilled', sqlite_where=sa.text("reason = 'no_customer' AND requeued_at IS NULL"), postgresql_where=sa.text("reason = 'no_customer' AND requeued_at IS NULL"))
    op.drop_table('usage_report_skips')
    with op.batch_alter_table('usage_report_backlog', schema=None) as batch_op:
        batch_op.drop_index('ix_usage_report_backlog_claim_order')
    op.drop_table('usage_report_backlog')
