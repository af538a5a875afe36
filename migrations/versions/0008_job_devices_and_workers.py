"""Issue 19: GPU jobs go to GPU workers. `jobs.device` is the kind of device a job needs ("cuda", or NULL for
any worker), set at submission from its `device` parameter, so the claim query can leave a CUDA job to a worker
that has CUDA; `workers` is one row per running `swiftreg worker` (its devices and when it was last seen), so
`jobs ls` can say that a CUDA job is waiting for a CUDA worker rather than merely queued.

Revision ID: 0008
Revises: 0007

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0008'
down_revision: Union[str, Sequence[str], None] = '0007'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('device', sa.String(length=16), nullable=True))
    op.create_table('workers',
    sa.Column('id', sa.String(length=200), nullable=False),
    sa.Column('devices', sa.JSON(), nullable=False),
    sa.Column('kinds', sa.JSON(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_workers'))
    )


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_table('workers')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('device')
