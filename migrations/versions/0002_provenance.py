"""Provenance of imported revisions: hub, repo, requested revision, the hub's commit id, time.

Revision ID: 0002
Revises: 0001

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0002'
down_revision: Union[str, Sequence[str], None] = '0001'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('provenance',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('revision_id', sa.Integer(), nullable=False),
    sa.Column('hub', sa.String(length=16), nullable=False),
    sa.Column('endpoint', sa.String(length=300), nullable=False),
    sa.Column('source_repo', sa.String(length=200), nullable=False),
    sa.Column('requested_revision', sa.String(length=200), nullable=True),
    sa.Column('source_commit', sa.String(length=128), nullable=False),
    sa.Column('subfolder', sa.String(length=300), nullable=False),
    sa.Column('imported_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['revision_id'], ['revisions.id'], name=op.f('fk_provenance_revision_id_revisions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_provenance')),
    sa.UniqueConstraint('revision_id', 'hub', 'source_repo', 'source_commit', 'subfolder',
                        name=op.f('uq_provenance_revision_id_hub_source_repo_source_commit_subfolder'))
    )
    op.create_index(op.f('ix_provenance_revision_id'), 'provenance', ['revision_id'], unique=False)


def downgrade() -> None:
    """Downgrade schema."""
    op.drop_index(op.f('ix_provenance_revision_id'), table_name='provenance')
    op.drop_table('provenance')
