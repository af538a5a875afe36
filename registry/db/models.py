"""The registry's tables as SQLAlchemy 2 typed models (DESIGN.md section 3).

The schema is created only by the Alembic migrations in `migrations/`; a test proves the two agree
on SQLite and PostgreSQL. Revision rows are immutable: the migrations install triggers that refuse
UPDATE and DELETE on `revisions`, so not even a bug can rewrite history.
"""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, Optional

from sqlalchemy import (
    JSON, BigInteger, Boolean, CheckConstraint, DateTime, ForeignKey, Index, Integer, MetaData, String, Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
DIGEST = String(71)  # "sha256:" + 64 hex
NAME = String(96)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON, datetime: DateTime(timezone=True)}


class _Repository:
    """The columns every repository table has: its `namespace/name` and its revision counter."""

    @declared_attr.directive
    def __table_args__(cls) -> tuple[Any, ...]:
        return (UniqueConstraint("namespace", "name"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    namespace: Mapped[str] = mapped_column(NAME)
    name: Mapped[str] = mapped_column(NAME)
    revision_count: Mapped[int] = mapped_column(Integer, default=0)  # bumped under a row lock: gap-free numbers
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class _OfRepository:
    """The owner columns of a revision or ref: exactly one of an adapter and a base model."""

    adapter_id: Mapped[Optional[int]] = mapped_column(ForeignKey("adapters.id"))
    base_model_id: Mapped[Optional[int]] = mapped_column(ForeignKey("base_models.id"))


def _unique_per_repository(column: str) -> tuple[UniqueConstraint, UniqueConstraint]:
    """`column` unique within each adapter and within each base model."""
    return UniqueConstraint("adapter_id", column), UniqueConstraint("base_model_id", column)


class BaseModelRecord(_Repository, Base):
    """A base model (transformers folder) the registry stores and validates adapters against."""

    __tablename__ = "base_models"

    architecture: Mapped[Optional[str]] = mapped_column(String(200))
    config: Mapped[Optional[dict[str, Any]]]
    fingerprint: Mapped[Optional[str]] = mapped_column(DIGEST)  # sha256 of the sorted (name, dtype, shape) list
    source: Mapped[str] = mapped_column(String(300), default="local")


class AdapterRecord(_Repository, Base):
    """An adapter repository: its revisions share a tuner type and, once pushed with one, a base model."""

    __tablename__ = "adapters"

    base_model_id: Mapped[Optional[int]] = mapped_column(ForeignKey("base_models.id"))
    tuner_type: Mapped[Optional[str]] = mapped_column(String(32))
    description: Mapped[Optional[str]] = mapped_column(Text)

    base_model: Mapped[Optional[BaseModelRecord]] = relationship()


class RevisionRecord(_OfRepository, Base):
    """One immutable, content-addressed state of an adapter or a base model."""

    __tablename__ = "revisions"
    __table_args__ = (
        *_unique_per_repository("number"),
        CheckConstraint("(adapter_id IS NULL) <> (base_model_id IS NULL)", name="one_repository"),
        Index("ix_revisions_digest", "digest"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(DIGEST)            # sha256 of the canonical manifest
    format: Mapped[str] = mapped_column(String(16))        # swift, peft, transformers
    manifest: Mapped[dict[str, Any]]                       # {"files": [{"path", "size", "sha256"}]}
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)  # r, alpha, targets, dtype, ...
    parents: Mapped[list[Any]] = mapped_column(JSON, default=list)  # lineage of merges and combinations
    base_revision_id: Mapped[Optional[int]] = mapped_column(ForeignKey("revisions.id"))
    message: Mapped[Optional[str]] = mapped_column(Text)
    author: Mapped[Optional[str]] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RefRecord(_OfRepository, Base):
    """A mutable name for a revision: branches (`main`) move on push, tags stay unless forced."""

    __tablename__ = "refs"
    __table_args__ = (
        *_unique_per_repository("name"),
        CheckConstraint("kind IN ('branch', 'tag')", name="kind"),
        Index("ix_refs_revision_id", "revision_id"),  # a revision's tags and branches, for every row `log` shows
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    kind: Mapped[str] = mapped_column(String(16))
    revision_id: Mapped[int] = mapped_column(ForeignKey("revisions.id"))
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    revision: Mapped[RevisionRecord] = relationship()


class RefClockRecord(Base):
    """One row whose `version` moves in the transaction of every change to `refs` (a trigger, migration 0007):
    a process's cached tag and branch answers stay valid while the version it last read is unchanged."""

    __tablename__ = "ref_clock"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)


class DerivedRecord(Base):
    """A conversion done once: (revision, target format, converter version) -> manifest of the output."""

    __tablename__ = "derived"
    __table_args__ = (UniqueConstraint("revision_id", "target_format", "converter_version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    revision_id: Mapped[int] = mapped_column(ForeignKey("revisions.id"))
    target_format: Mapped[str] = mapped_column(String(16))
    converter_version: Mapped[str] = mapped_column(String(32))
    digest: Mapped[str] = mapped_column(DIGEST)
    manifest: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TokenRecord(Base):
    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    secret_hash: Mapped[str] = mapped_column(String(128), unique=True)
    owner: Mapped[str] = mapped_column(String(200))
    scopes: Mapped[list[Any]]
    namespaces: Mapped[Optional[list[Any]]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[Optional[datetime]]
    revoked_at: Mapped[Optional[datetime]]


class JobRecord(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status", "status"), UniqueConstraint("idempotency_scope", "idempotency_key"))

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    params: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[Optional[str]] = mapped_column(String(200))
    heartbeat_at: Mapped[Optional[datetime]]
    result: Mapped[Optional[dict[str, Any]]]
    log: Mapped[Optional[str]] = mapped_column(Text)
    idempotency_key: Mapped[Optional[str]] = mapped_column(String(200))
    #: where an idempotency key is unique: the job's namespace ("" for none), so namespaces cannot squat keys
    idempotency_scope: Mapped[str] = mapped_column(NAME, default="", server_default="")
    namespace: Mapped[Optional[str]] = mapped_column(NAME, index=True)  # whose job it is (auth on the server)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[Optional[datetime]]
    finished_at: Mapped[Optional[datetime]]
    #: the kind of device the job needs ("cuda"), or None for any worker; set at submission (migration 0008)
    device: Mapped[Optional[str]] = mapped_column(String(16))


class WorkerRecord(Base):
    """A running `swiftreg worker` and the devices it declared (migration 0008): a job that needs "cuda" is
    claimed only by a worker whose devices include one, and `jobs ls` says when none is running."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(200), primary_key=True)
    devices: Mapped[list[Any]]
    kinds: Mapped[Optional[list[Any]]]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    seen_at: Mapped[datetime] = mapped_column(default=utcnow)


class ValidationRunRecord(Base):
    __tablename__ = "validation_runs"
    #: a revision's previous result for a check is the top of one range of this index (migration 0009)
    __table_args__ = (Index("ix_validation_runs_revision_check", "revision_id", "check_kind", "id"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    revision_id: Mapped[int] = mapped_column(ForeignKey("revisions.id"))
    check_kind: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]]
    passed: Mapped[bool] = mapped_column(Boolean)
    library_versions: Mapped[dict[str, Any]]
    started_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[Optional[datetime]]
    run_id: Mapped[Optional[str]] = mapped_column(String(64), index=True)  # one `validate-all` invocation
    job_id: Mapped[Optional[int]] = mapped_column(Integer)                  # the job that ran the check


class ProvenanceRecord(Base):
    """Where an imported revision came from (`swiftreg import`): hub, repo, requested revision, the
    commit id the hub answered, and when. A revision may have several (the same bytes imported from
    two places); importing the same hub commit into the same repository again is recognised by it."""

    __tablename__ = "provenance"
    __table_args__ = (UniqueConstraint("revision_id", "hub", "source_repo", "source_commit", "subfolder"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    revision_id: Mapped[int] = mapped_column(ForeignKey("revisions.id"), index=True)
    hub: Mapped[str] = mapped_column(String(16))                   # "hf" or "ms"
    endpoint: Mapped[str] = mapped_column(String(300))             # the hub's URL as the client used it
    source_repo: Mapped[str] = mapped_column(String(200))          # owner/name on the hub
    requested_revision: Mapped[Optional[str]] = mapped_column(String(200))  # as asked (None: the default)
    source_commit: Mapped[str] = mapped_column(String(128))        # what the hub answered
    subfolder: Mapped[str] = mapped_column(String(300), default="")
    imported_at: Mapped[datetime] = mapped_column(default=utcnow)


class BlobCheckRecord(Base):
    """The last verification of a stored blob: `state` "verified" (its bytes hashed to its name when the
    file had `fingerprint`: inode, size and mtime) or "corrupt" (quarantined; `actual` is what its
    bytes hashed to). A read of a blob whose file still has the verified fingerprint need not rehash it."""

    __tablename__ = "blob_checks"

    digest: Mapped[str] = mapped_column(DIGEST, primary_key=True)
    state: Mapped[str] = mapped_column(String(16), index=True)
    fingerprint: Mapped[str] = mapped_column(String(200))
    checked_at: Mapped[datetime] = mapped_column(default=utcnow)
    actual: Mapped[Optional[str]] = mapped_column(DIGEST)
    detail: Mapped[Optional[str]] = mapped_column(Text)


class RevisionDeletionRecord(Base):
    """A deleted revision, on the record: what it was, when, by whom and why (`rm --revision`, or the
    repository's retention policy). Its row is also the permit the immutability trigger checks: a revision
    row can be deleted only in the transaction that writes this one (migration 0005)."""

    __tablename__ = "revision_deletions"

    id: Mapped[int] = mapped_column(primary_key=True)
    revision_id: Mapped[int] = mapped_column(Integer, unique=True)  # no foreign key: the row it names is gone
    kind: Mapped[str] = mapped_column(String(8))
    repo: Mapped[str] = mapped_column(String(200), index=True)
    number: Mapped[int] = mapped_column(Integer)
    digest: Mapped[str] = mapped_column(DIGEST)
    reason: Mapped[str] = mapped_column(String(200))
    deleted_by: Mapped[Optional[str]] = mapped_column(String(200))
    deleted_at: Mapped[datetime] = mapped_column(default=utcnow)


class RetentionPolicyRecord(_OfRepository, Base):
    """A repository's retention rule: keep its newest `keep_last` revisions (and, with `keep_tagged`, every
    tagged one); `gc` deletes the others that nothing needs."""

    __tablename__ = "retention_policies"
    __table_args__ = (UniqueConstraint("adapter_id"), UniqueConstraint("base_model_id"))

    id: Mapped[int] = mapped_column(primary_key=True)
    keep_last: Mapped[int] = mapped_column(Integer)
    keep_tagged: Mapped[bool] = mapped_column(Boolean, default=True)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class EventStreamRecord(Base):
    """The last sequence number of one event stream (a repository's `ns/name`, or `jobs:<ns>`). Bumped under
    this row's lock in the transaction that writes the event, so a stream's numbers are gap-free and in
    commit order: a dispatcher never sees event N+1 of a stream before event N (registry/webhooks/outbox.py)."""

    __tablename__ = "event_streams"

    stream: Mapped[str] = mapped_column(String(200), primary_key=True)
    last_seq: Mapped[int] = mapped_column(Integer, default=0)


class EventRecord(Base):
    """One event of the outbox, written in the same transaction as the change it describes."""

    __tablename__ = "events"
    __table_args__ = (UniqueConstraint("stream", "seq"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))                 # revision.created, tag.moved, ...
    namespace: Mapped[str] = mapped_column(NAME, index=True)      # whose webhooks may see it
    stream: Mapped[str] = mapped_column(String(200))              # delivered in order within a stream
    seq: Mapped[int] = mapped_column(Integer)
    data: Mapped[dict[str, Any]]                                  # swiftreg's fields (webhooks/payloads.py)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookRecord(Base):
    """A receiver of one namespace's events; its secret is stored encrypted (webhooks/secrets.py), never plain."""

    __tablename__ = "webhooks"

    id: Mapped[int] = mapped_column(primary_key=True)
    namespace: Mapped[str] = mapped_column(NAME, index=True)
    url: Mapped[str] = mapped_column(String(2000))
    events: Mapped[Optional[list[Any]]]                           # kinds it wants; None: every kind
    secret: Mapped[str] = mapped_column(Text)                     # Fernet token of the shared secret
    description: Mapped[Optional[str]] = mapped_column(String(200))
    created_by: Mapped[Optional[str]] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeliveryRecord(Base):
    """One event to one webhook: pending -> sending -> succeeded | failed (retried with backoff until the
    retry window closes). `uuid` is the X-Swiftreg-Delivery id, the same on every attempt of this delivery."""

    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_order", "webhook_id", "stream", "seq"),
                      Index("ix_deliveries_due", "status", "next_attempt_at"))

    id: Mapped[int] = mapped_column(primary_key=True)
    uuid: Mapped[str] = mapped_column(String(36), unique=True)
    webhook_id: Mapped[int] = mapped_column(ForeignKey("webhooks.id", ondelete="CASCADE"))
    event_id: Mapped[int] = mapped_column(ForeignKey("events.id"), index=True)
    stream: Mapped[str] = mapped_column(String(200))
    seq: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(default=utcnow)
    lease_until: Mapped[Optional[datetime]]                       # a claim expires: a killed sender's delivery
    worker: Mapped[Optional[str]] = mapped_column(String(200))
    response_status: Mapped[Optional[int]] = mapped_column(Integer)
    response_body: Mapped[Optional[str]] = mapped_column(Text)    # the first bytes of the last answer
    error: Mapped[Optional[str]] = mapped_column(Text)
    duration_ms: Mapped[Optional[int]] = mapped_column(Integer)
    history: Mapped[list[Any]] = mapped_column(JSON, default=list)  # the last attempts: when, status, error
    redelivery_of: Mapped[Optional[int]] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[Optional[datetime]]
