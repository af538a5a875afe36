"""Issue 16: revisions that can be deleted, on the record. `revision_deletions` keeps one row per deleted
revision (what, when, by whom, why); it is also the permit the immutability trigger asks for, so a revision
row can be deleted only in the transaction that records its deletion, and never updated. `retention_policies`
keeps a repository's rule (keep the last N revisions, keep tagged ones), which `swiftreg gc` applies.

Revision ID: 0005
Revises: 0004

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0005'
down_revision: Union[str, Sequence[str], None] = '0004'
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None

IMMUTABLE = "revisions are immutable: one is deleted only by swiftreg rm --revision or a retention policy"
SQLITE_PERMITTED_DELETE = (
    "CREATE TRIGGER revisions_no_delete BEFORE DELETE ON revisions "
    "WHEN NOT EXISTS (SELECT 1 FROM revision_deletions WHERE revision_id = OLD.id) "
    f"BEGIN SELECT RAISE(ABORT, '{IMMUTABLE}'); END")
SQLITE_ANY_DELETE = ("CREATE TRIGGER revisions_no_delete BEFORE DELETE ON revisions "
                     "BEGIN SELECT RAISE(ABORT, 'revisions are immutable'); END")
POSTGRES_PERMITTED_DELETE = (
    "CREATE OR REPLACE FUNCTION swiftreg_revisions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
    "IF TG_OP = 'DELETE' AND EXISTS (SELECT 1 FROM revision_deletions WHERE revision_id = OLD.id) THEN "
    f"RETURN OLD; END IF; RAISE EXCEPTION '{IMMUTABLE}'; END $$")
POSTGRES_ANY_DELETE = (
    "CREATE OR REPLACE FUNCTION swiftreg_revisions_immutable() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'revisions are immutable'; END $$")


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('revision_deletions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('revision_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('repo', sa.String(length=200), nullable=False),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('digest', sa.String(length=71), nullable=False),
    sa.Column('reason', sa.String(length=200), nullable=False),
    sa.Column('deleted_by', sa.String(length=200), nullable=True),
    sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_revision_deletions')),
    sa.UniqueConstraint('revision_id', name=op.f('uq_revision_deletions_revision_id'))
    )
    op.create_index(op.f('ix_revision_deletions_repo'), 'revision_deletions', ['repo'], unique=False)
    op.create_table('retention_policies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('adapter_id', sa.Integer(), nullable=True),
    sa.Column('base_model_id', sa.Integer(), nullable=True),
    sa.Column('keep_last', sa.Integer(), nullable=False),
    sa.Column('keep_tagged', sa.Boolean(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['adapter_id'], ['adapters.id'], name=op.f('fk_retention_policies_adapter_id_adapters')),
    sa.ForeignKeyConstraint(['base_model_id'], ['base_models.id'],
                            name=op.f('fk_retention_policies_base_model_id_base_models')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_retention_policies')),
    sa.UniqueConstraint('adapter_id', name=op.f('uq_retention_policies_adapter_id')),
    sa.UniqueConstraint('base_model_id', name=op.f('uq_retention_policies_base_model_id'))
    )
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS revisions_no_delete")
        op.execute(SQLITE_PERMITTED_DELETE)
    elif dialect == "postgresql":
        op.execute(POSTGRES_PERMITTED_DELETE)


def downgrade() -> None:
    """Downgrade schema."""
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS revisions_no_delete")
        op.execute(SQLITE_ANY_DELETE)
    elif dialect == "postgresql":
        op.execute(POSTGRES_ANY_DELETE)
    op.drop_table('retention_policies')
    op.drop_index(op.f('ix_revision_deletions_repo'), table_name='revision_deletions')
    op.drop_table('revision_deletions')
