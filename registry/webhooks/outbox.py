"""The outbox: every event is a row written by the service layer in the transaction of the change it
describes, so an event exists exactly when its change was committed (a rolled-back push leaves none).

Each event belongs to a stream (a repository's `ns/name`; a job without a repository: `jobs:<ns>`) and
gets the stream's next sequence number under the lock of the stream's row (`event_streams`): within a
stream, numbers are gap-free and in commit order, on PostgreSQL as on SQLite. In the same transaction the
event is fanned out to the namespace's webhooks that want its kind, as `deliveries` rows: the dispatcher
(delivery.py) sends each webhook a stream's events strictly in sequence. Writing an event costs a few
small statements in the writer's transaction and never waits on a receiver.
"""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from ..db.engine import insert_ignore
from ..db.models import DeliveryRecord, EventRecord, EventStreamRecord, WebhookRecord

#: Every kind of event, in the order the README documents them.
EVENT_KINDS: tuple[str, ...] = (
    "repo.created", "revision.created", "tag.created", "tag.moved", "tag.deleted",
    "validation.failed", "validation.regressed", "job.succeeded", "job.failed", "import.completed",
)
#: The kind of the event `swiftreg webhook test` sends (to that one webhook only).
TEST_KIND = "webhook.test"


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def next_seq(session: Session, stream: str) -> int:
    """The stream's next sequence number, taken under its row's lock (held until the caller commits): one
    UPDATE ... RETURNING once the stream exists (a round trip on PostgreSQL, where every event pays it), the
    row inserted first when it does not."""
    bump = (update(EventStreamRecord).where(EventStreamRecord.stream == stream)
            .values(last_seq=EventStreamRecord.last_seq + 1).returning(EventStreamRecord.last_seq))
    seq = session.execute(bump).scalar()  # the UPDATE takes the row lock
    if seq is None:
        insert_ignore(session, EventStreamRecord, stream=stream, last_seq=0)
        seq = session.execute(bump).scalar_one()
    return int(seq)


def record(session: Session, kind: str, *, namespace: str, stream: str, data: dict[str, Any]) -> EventRecord:
    """Write one event (and its deliveries) in the caller's transaction; the row.

    `data` is swiftreg's part of the payload (payloads.py): JSON values only.
    """
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    now = utcnow()
    event = EventRecord(kind=kind, namespace=namespace, stream=stream, seq=next_seq(session, stream),
                        data=data, created_at=now)
    session.add(event)
    session.flush()
    hooks = session.scalars(select(WebhookRecord).where(WebhookRecord.namespace == namespace)
                            .order_by(WebhookRecord.id)).all()
    for hook in hooks:
        if hook.events is None or kind in hook.events:
            session.add(new_delivery(hook.id, event, now))
    return event


def new_delivery(webhook_id: int, event: EventRecord, now: datetime, *, stream: str | None = None,
                 redelivery_of: int | None = None) -> DeliveryRecord:
    """A pending delivery of `event` to a webhook (due now), with a fresh delivery id."""
    return DeliveryRecord(uuid=str(uuid.uuid4()), webhook_id=webhook_id, event_id=event.id,
                          stream=stream or event.stream, seq=event.seq, status="pending", attempts=0,
                          next_attempt_at=now, history=[], redelivery_of=redelivery_of, created_at=now)
