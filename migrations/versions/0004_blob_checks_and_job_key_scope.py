"""Issue 14: blob checks (when each stored blob was last verified, by which file fingerprint, and
whether it was found corrupt and quarantined), and job idempotency keys unique per namespace instead
of globally (`idempotency_scope`: the job's namespace, "" for jobs without one).

Revision ID: 0004
Revises: 0003

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0004'
down_revision: Union[str, Sequence[str], None] = '0003'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('blob_checks',
    sa.Column('digest', sa.String(length=71), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('fingerprint', sa.String(length=200), nullable=False),
    sa.Column('checked_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('actual', sa.String(length=71), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('digest', name=op.f('pk_blob_checks'))
    )
    op.create_index(op.f('ix_blob_checks_state'), 'blob_checks', ['state'], unique=False)
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('idempotency_scope', sa.String(length=96), nullable=False, server_default=''))
        batch.drop_constraint('uq_jobs_idempotency_key', type_='unique')
        batch.create_unique_constraint(op.f('uq_jobs_idempotency_scope_idempotency_key'), ['idempotency_scope', 'idempotency_key'])
    op.execute("UPDATE jobs SET idempotency_scope = COALESCE(namespace, '')")


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('jobs') as batch:
        batch.drop_constraint(op.f('uq_jobs_idempotency_scope_idempotency_key'), type_='unique')
        batch.create_unique_constraint('uq_jobs_idempotency_key', ['idempotency_key'])
        batch.drop_column('idempotency_scope')
    op.drop_index(op.f('ix_blob_checks_state'), table_name='blob_checks')
    op.drop_table('blob_checks')
