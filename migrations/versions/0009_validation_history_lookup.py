"""Issue 18: a revision's previous result for a check in one index probe. validate-all's report (and a
failure's regression test) asks, for every row of a run, the newest earlier row of the same revision and check:
`max(id) WHERE revision_id = ? AND check_kind = ? AND id < ?`. With only `ix_validation_runs_revision_id`,
PostgreSQL intersected it with a range scan of the primary key, 0.4 ms a row once the table held 12,000 rows
(816 ms for a 1,000-revision run's report); on (revision_id, check_kind, id) the answer is the top of one index
range (8 ms). The composite index leads with revision_id, so it also serves what the old one did, which goes.

Revision ID: 0009
Revises: 0008

"""
from typing import Sequence, Union

from alembic import op


# revision identifiers, used by Alembic.
revision: str = '0009'
down_revision: Union[str, Sequence[str], None] = '0008'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('validation_runs', schema=None) as batch_op:
        batch_op.create_index('ix_validation_runs_revision_check', ['revision_id', 'check_kind', 'id'], unique=False)
        batch_op.drop_index('ix_validation_runs_revision_id')


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('validation_runs', schema=None) as batch_op:
        batch_op.create_index('ix_validation_runs_revision_id', ['revision_id'], unique=False)
        batch_op.drop_index('ix_validation_runs_revision_check')
