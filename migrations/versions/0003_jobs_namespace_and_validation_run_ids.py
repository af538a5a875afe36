"""Jobs and validation runs for issue 6: a job's namespace (who may see or cancel it), a job's
idempotency key is already unique; a validation run's `run_id` groups the rows one `validate-all`
wrote (its report and regression detection read them back by it) and its `job_id` names the job.

Revision ID: 0003
Revises: 0002

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0003'
down_revision: Union[str, Sequence[str], None] = '0002'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('jobs') as batch:
        batch.add_column(sa.Column('namespace', sa.String(length=96), nullable=True))
        batch.create_index(op.f('ix_jobs_namespace'), ['namespace'], unique=False)
    with op.batch_alter_table('validation_runs') as batch:
        batch.add_column(sa.Column('run_id', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('job_id', sa.Integer(), nullable=True))
        batch.create_index(op.f('ix_validation_runs_run_id'), ['run_id'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    with op.batch_alter_table('validation_runs') as batch:
        batch.drop_index(op.f('ix_validation_runs_run_id'))
        batch.drop_column('job_id')
        batch.drop_column('run_id')
    with op.batch_alter_table('jobs') as batch:
        batch.drop_index(op.f('ix_jobs_namespace'))
        batch.drop_column('namespace')
