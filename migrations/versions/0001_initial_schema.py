"""Initial schema: base models, adapters, immutable revisions, refs, derived conversions, tokens, jobs,
validation runs.

Revision ID: 0001
Revises: 

"""
from typing import Sequence, Union

from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision: str = '0001'
down_revision: Union[str, Sequence[str], None] = None
branch_labels: Union[str, Sequence[str], None] = None
depends_on: Union[str, Sequence[str], None] = None


#: Revision rows are history: refuse UPDATE and DELETE at the database itself.
SQLITE_TRIGGERS = [
    "CREATE TRIGGER revisions_no_update BEFORE UPDATE ON revisions "
    "BEGIN SELECT RAISE(ABORT, 'revisions are immutable'); END",
    "CREATE TRIGGER revisions_no_delete BEFORE DELETE ON revisions "
    "BEGIN SELECT RAISE(ABORT, 'revisions are immutable'); END",
]
POSTGRES_TRIGGERS = [
    "CREATE FUNCTION swiftreg_revisions_immutable() RETURNS trigger LANGUAGE plpgsql AS "
    "$$ BEGIN RAISE EXCEPTION 'revisions are immutable'; END $$",
    "CREATE TRIGGER revisions_immutable BEFORE UPDATE OR DELETE ON revisions "
    "FOR EACH ROW EXECUTE FUNCTION swiftreg_revisions_immutable()",
]


def _create_triggers() -> None:
    dialect = op.get_bind().dialect.name
    for statement in SQLITE_TRIGGERS if dialect == "sqlite" else POSTGRES_TRIGGERS if dialect == "postgresql" else []:
        op.execute(statement)


def _drop_triggers() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        op.execute("DROP TRIGGER IF EXISTS revisions_no_update")
        op.execute("DROP TRIGGER IF EXISTS revisions_no_delete")
    elif dialect == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS revisions_immutable ON revisions")
        op.execute("DROP FUNCTION IF EXISTS swiftreg_revisions_immutable()")


def upgrade() -> None:
    """Upgrade schema."""
    op.create_table('base_models',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('namespace', sa.String(length=96), nullable=False),
    sa.Column('name', sa.String(length=96), nullable=False),
    sa.Column('architecture', sa.String(length=200), nullable=True),
    sa.Column('config', sa.JSON(), nullable=True),
    sa.Column('fingerprint', sa.String(length=71), nullable=True),
    sa.Column('source', sa.String(length=300), nullable=False),
    sa.Column('revision_count', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_base_models')),
    sa.UniqueConstraint('namespace', 'name', name=op.f('uq_base_models_namespace_name'))
    )
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=200), nullable=True),
    sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('log', sa.Text(), nullable=True),
    sa.Column('idempotency_key', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs')),
    sa.UniqueConstraint('idempotency_key', name=op.f('uq_jobs_idempotency_key'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index('ix_jobs_status', ['status'], unique=False)

    op.create_table('tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('secret_hash', sa.String(length=128), nullable=False),
    sa.Column('owner', sa.String(length=200), nullable=False),
    sa.Column('scopes', sa.JSON(), nullable=False),
    sa.Column('namespaces', sa.JSON(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('last_used_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_tokens')),
    sa.UniqueConstraint('secret_hash', name=op.f('uq_tokens_secret_hash'))
    )
    op.create_table('adapters',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('namespace', sa.String(length=96), nullable=False),
    sa.Column('name', sa.String(length=96), nullable=False),
    sa.Column('base_model_id', sa.Integer(), nullable=True),
    sa.Column('tuner_type', sa.String(length=32), nullable=True),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('revision_count', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['base_model_id'], ['base_models.id'], name=op.f('fk_adapters_base_model_id_base_models')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_adapters')),
    sa.UniqueConstraint('namespace', 'name', name=op.f('uq_adapters_namespace_name'))
    )
    op.create_table('revisions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('adapter_id', sa.Integer(), nullable=True),
    sa.Column('base_model_id', sa.Integer(), nullable=True),
    sa.Column('number', sa.Integer(), nullable=False),
    sa.Column('digest', sa.String(length=71), nullable=False),
    sa.Column('format', sa.String(length=16), nullable=False),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.Column('metadata', sa.JSON(), nullable=False),
    sa.Column('parents', sa.JSON(), nullable=False),
    sa.Column('base_revision_id', sa.Integer(), nullable=True),
    sa.Column('message', sa.Text(), nullable=True),
    sa.Column('author', sa.String(length=200), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint('(adapter_id IS NULL) <> (base_model_id IS NULL)', name=op.f('ck_revisions_one_repository')),
    sa.ForeignKeyConstraint(['adapter_id'], ['adapters.id'], name=op.f('fk_revisions_adapter_id_adapters')),
    sa.ForeignKeyConstraint(['base_model_id'], ['base_models.id'], name=op.f('fk_revisions_base_model_id_base_models')),
    sa.ForeignKeyConstraint(['base_revision_id'], ['revisions.id'], name=op.f('fk_revisions_base_revision_id_revisions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_revisions')),
    sa.UniqueConstraint('adapter_id', 'number', name=op.f('uq_revisions_adapter_id_number')),
    sa.UniqueConstraint('base_model_id', 'number', name=op.f('uq_revisions_base_model_id_number'))
    )
    with op.batch_alter_table('revisions', schema=None) as batch_op:
        batch_op.create_index('ix_revisions_digest', ['digest'], unique=False)

    op.create_table('derived',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('revision_id', sa.Integer(), nullable=False),
    sa.Column('target_format', sa.String(length=16), nullable=False),
    sa.Column('converter_version', sa.String(length=32), nullable=False),
    sa.Column('digest', sa.String(length=71), nullable=False),
    sa.Column('manifest', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['revision_id'], ['revisions.id'], name=op.f('fk_derived_revision_id_revisions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_derived')),
    sa.UniqueConstraint('revision_id', 'target_format', 'converter_version', name=op.f('uq_derived_revision_id_target_format_converter_version'))
    )
    op.create_table('refs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('adapter_id', sa.Integer(), nullable=True),
    sa.Column('base_model_id', sa.Integer(), nullable=True),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('revision_id', sa.Integer(), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("kind IN ('branch', 'tag')", name=op.f('ck_refs_kind')),
    sa.ForeignKeyConstraint(['adapter_id'], ['adapters.id'], name=op.f('fk_refs_adapter_id_adapters')),
    sa.ForeignKeyConstraint(['base_model_id'], ['base_models.id'], name=op.f('fk_refs_base_model_id_base_models')),
    sa.ForeignKeyConstraint(['revision_id'], ['revisions.id'], name=op.f('fk_refs_revision_id_revisions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_refs')),
    sa.UniqueConstraint('adapter_id', 'name', name=op.f('uq_refs_adapter_id_name')),
    sa.UniqueConstraint('base_model_id', 'name', name=op.f('uq_refs_base_model_id_name'))
    )
    op.create_table('validation_runs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('revision_id', sa.Integer(), nullable=False),
    sa.Column('check_kind', sa.String(length=64), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('passed', sa.Boolean(), nullable=False),
    sa.Column('library_versions', sa.JSON(), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['revision_id'], ['revisions.id'], name=op.f('fk_validation_runs_revision_id_revisions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_validation_runs'))
    )
    with op.batch_alter_table('validation_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_validation_runs_revision_id'), ['revision_id'], unique=False)
    _create_triggers()


def downgrade() -> None:
    """Downgrade schema."""
    _drop_triggers()
    with op.batch_alter_table('validation_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_validation_runs_revision_id'))

    op.drop_table('validation_runs')
    op.drop_table('refs')
    op.drop_table('derived')
    with op.batch_alter_table('revisions', schema=None) as batch_op:
        batch_op.drop_index('ix_revisions_digest')

    op.drop_table('revisions')
    op.drop_table('adapters')
    op.drop_table('tokens')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_jobs_status')

    op.drop_table('jobs')
    op.drop_table('base_models')
