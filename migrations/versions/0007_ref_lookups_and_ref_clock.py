"""Issue 18: listings and tags at team scale. `ix_refs_revision_id` lets a revision's tags and branches be
found without scanning every ref (each revision `log` shows needed it); `ref_clock` is one row whose
`version` moves in the transaction of every change to `refs` (a trigger, so no write path can forget it; on
PostgreSQL deferred to commit),
which lets a process trust its cached tag and branch answers on PostgreSQL while the version it last read
is unchanged (registry/service/core.py: `_stamp`).

Revision ID: 0007
Revises: 0006

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0007'
down_revision: Union[str, Sequence[str], None] = '0006'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

POSTGRES_TICK = """
CREATE FUNCTION ref_clock_tick() RETURNS trigger AS $$
BEGIN
    UPDATE ref_clock SET version = version + 1 WHERE id = 1;
    RETURN NULL;
END $$ LANGUAGE plpgsql;
CREATE CONSTRAINT TRIGGER refs_tick AFTER INSERT OR UPDATE OR DELETE ON refs
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ref_clock_tick();
"""
# Deferred to commit: the clock's row lock is taken as the transaction commits and held only until it ends, so
# writers to different repositories wait for each other only that long, and never in a cycle (a transaction
# that touches several repositories' refs takes the clock last, when it needs no other lock).
SQLITE_TICKS = [
    f"CREATE TRIGGER refs_tick_{event.lower()} AFTER {event} ON refs "
    "BEGIN UPDATE ref_clock SET version = version + 1 WHERE id = 1; END"
    for event in ("INSERT", "UPDATE", "DELETE")
]


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('refs', schema=None) as batch_op:
        batch_op.create_index('ix_refs_revision_id', ['revision_id'], unique=False)
    op.create_table('ref_clock',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ref_clock'))
    )
    op.execute("INSERT INTO ref_clock (id, version) VALUES (1, 0)")
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute(POSTGRES_TICK)
    elif dialect == "sqlite":
        for statement in SQLITE_TICKS:
            op.execute(statement)


def downgrade() -> None:
    """Downgrade schema."""
    dialect = op.get_bind().dialect.name
    if dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS refs_tick ON refs")
        op.execute("DROP FUNCTION IF EXISTS ref_clock_tick()")
    elif dialect == "sqlite":
        for event in ("insert", "update", "delete"):
            op.execute(f"DROP TRIGGER IF EXISTS refs_tick_{event}")
    op.drop_table('ref_clock')
    with op.batch_alter_table('refs', schema=None) as batch_op:
        batch_op.drop_index('ix_refs_revision_id')
