"""Events and webhooks on the embedded registry: the events the service records, and webhook management.

The service writes every event itself, in the transaction of the change (registry/webhooks/outbox.py):
push and import (repo.created, revision.created, tag.created/moved, import.completed), refs (tag.created,
tag.moved, tag.deleted: tags, and branches moved by `branch` or removed by `rm`; `main` moving on a
push is in revision.created's `updatedRefs`), the job queue (job.succeeded, job.failed) and the revision
checks (validation.failed, validation.regressed). Surfaces never write events.

Webhooks belong to a namespace and get its events only. `add_webhook` checks the URL (webhooks/urls.py)
and stores the secret encrypted (webhooks/crypto.py); deliveries are sent by the dispatcher
(webhooks/delivery.py) that `swiftreg worker` runs, or `swiftreg webhook dispatch` alone.
"""
from __future__ import annotations

from datetime import datetime
from typing import Any, Iterable

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from ..api import DeliveryInfo, Kind, RevisionInfo, WebhookInfo
from ..db.models import DeliveryRecord, EventRecord, WebhookRecord
from ..errors import WebhookError, WebhookNotFoundError
from ..ids import check_name
from ..webhooks import crypto, outbox, payloads, urls
from .core import RegistryCore, aware

MAX_SECRET = 200


def repo_event(session: Session, kind: str, repo_kind: Kind, repo: Any, data: dict[str, Any]) -> None:
    """Record an event about a repository row (an adapter or a base model) in the caller's transaction."""
    name = f"{repo.namespace}/{repo.name}"
    outbox.record(session, kind, namespace=repo.namespace, stream=name,
                  data={"repo": name, "repo_id": f"{repo_kind}:{repo.id}", "repo_kind": repo_kind, **data})


def revision_fields(info: RevisionInfo) -> dict[str, Any]:
    """The payload fields of a revision (number, digest, format, tuner type, ...)."""
    fields = payloads.revision_data(info, repo_id="")
    fields.pop("repo", None)
    fields.pop("repo_id", None)
    return fields


def ref_fields(name: str, ref_kind: str, old: Any, new: Any) -> dict[str, Any]:
    """The `ref` and `updatedRefs` fields of a ref change (`old`/`new`: revision rows or None)."""
    def side(rev: Any) -> dict[str, Any] | None:
        return None if rev is None else {"number": rev.number, "digest": rev.digest}

    return {"ref": {"name": name, "kind": ref_kind, "old": side(old), "new": side(new)},
            "updated_refs": [{"ref": payloads.git_ref(name, ref_kind), "old": old.digest if old else None,
                              "new": new.digest if new else None}]}


def _webhook_info(session: Session, row: WebhookRecord, secret: str | None = None) -> WebhookInfo:
    pending = session.scalar(select(func.count()).select_from(DeliveryRecord).where(
        DeliveryRecord.webhook_id == row.id, DeliveryRecord.status.in_(("pending", "sending")))) or 0
    last = session.scalars(select(DeliveryRecord.status).where(
        DeliveryRecord.webhook_id == row.id, DeliveryRecord.status.in_(("succeeded", "failed")))
        .order_by(DeliveryRecord.finished_at.desc(), DeliveryRecord.id.desc()).limit(1)).first()
    return WebhookInfo(id=row.id, namespace=row.namespace, url=row.url, events=row.events,
                       description=row.description, created_at=aware(row.created_at), created_by=row.created_by,
                       pending=int(pending), last_status=last, secret=secret)


def _delivery_info(row: DeliveryRecord, event_kind: str) -> DeliveryInfo:
    def when(value: datetime | None) -> datetime | None:
        return aware(value) if value is not None else None

    return DeliveryInfo(id=row.id, uuid=row.uuid, webhook_id=row.webhook_id, event_id=row.event_id,
                        event=event_kind, stream=row.stream, sequence=row.seq, status=row.status,
                        attempts=row.attempts, created_at=aware(row.created_at),
                        next_attempt_at=when(row.next_attempt_at) if row.status == "pending" else None,
                        finished_at=when(row.finished_at), response_status=row.response_status,
                        response_body=row.response_body, error=row.error, duration_ms=row.duration_ms,
                        redelivery_of=row.redelivery_of, history=list(row.history or []))


class EventsMixin(RegistryCore):
    """add_webhook, webhooks, webhook, remove_webhook, test_webhook, webhook_deliveries, delivery, redeliver,
    dispatcher."""

    def add_webhook(self, url: str, namespace: str, *, events: list[str] | None = None, secret: str | None = None,
                    description: str | None = None, created_by: str | None = None) -> WebhookInfo:
        """Send `namespace`'s events (only `events` kinds, when given) to `url`, signed with `secret` (generated
        and returned once when not given)."""
        check_name(namespace, "namespace")
        url = urls.check(url)
        wanted = None
        if events:
            unknown = sorted(set(events) - set(outbox.EVENT_KINDS))
            if unknown:
                raise WebhookError(f"unknown event kind(s) {', '.join(unknown)}; kinds: "
                                   f"{', '.join(outbox.EVENT_KINDS)}")
            wanted = [k for k in outbox.EVENT_KINDS if k in set(events)]
        if secret is not None and not (0 < len(secret) <= MAX_SECRET) or (secret and not secret.isprintable()):
            raise WebhookError(f"a webhook secret must have 1 to {MAX_SECRET} printable characters")
        if description is not None and (len(description) > 200 or not description.isprintable()):
            raise WebhookError("a webhook description must have at most 200 printable characters")
        generated = secret is None
        secret = secret if secret is not None else crypto.generate()
        stored = crypto.encrypt(self.home, secret)
        with self.db.write() as session:
            row = WebhookRecord(namespace=namespace, url=url, events=wanted, secret=stored, description=description,
                                created_by=created_by, created_at=outbox.utcnow())
            session.add(row)
            session.flush()
            return _webhook_info(session, row, secret if generated else None)

    def webhook(self, webhook_id: int) -> WebhookInfo:
        with self.db.read() as session:
            return _webhook_info(session, self._hook(session, webhook_id))

    def webhooks(self, namespace: str | None = None, *, namespaces: Iterable[str] | None = None) -> list[WebhookInfo]:
        """Webhooks, oldest first (of `namespace`; of `namespaces`, for a namespace admin on the server)."""
        query = select(WebhookRecord).order_by(WebhookRecord.id)
        if namespace is not None:
            query = query.where(WebhookRecord.namespace == check_name(namespace, "namespace"))
        if namespaces is not None:
            query = query.where(WebhookRecord.namespace.in_(list(namespaces)))
        with self.db.read() as session:
            return [_webhook_info(session, row) for row in session.scalars(query).all()]

    def remove_webhook(self, webhook_id: int) -> None:
        with self.db.write() as session:
            row = self._hook(session, webhook_id)
            session.execute(delete(DeliveryRecord).where(DeliveryRecord.webhook_id == row.id))
            session.delete(row)

    def test_webhook(self, webhook_id: int) -> DeliveryInfo:
        """Send a `webhook.test` event to this webhook alone, now; the delivery with the receiver's answer.
        A test is sent once (no retries): it is about whether the receiver answers now."""
        with self.db.write() as session:
            hook = self._hook(session, webhook_id)
            stream = f"test:{hook.id}"
            event = EventRecord(kind=outbox.TEST_KIND, namespace=hook.namespace, stream=stream,
                                seq=outbox.next_seq(session, stream), created_at=outbox.utcnow(),
                                data={"message": "a test delivery from `swiftreg webhook test`"})
            session.add(event)
            session.flush()
            delivery = outbox.new_delivery(hook.id, event, outbox.utcnow())
            session.add(delivery)
            session.flush()
            delivery_id = delivery.id
        dispatcher = self.dispatcher(threads=1)
        try:
            dispatcher.run_once(ids=[delivery_id])
        finally:
            dispatcher.close()
        with self.db.write() as session:
            row = session.get_one(DeliveryRecord, delivery_id)
            if row.status in ("pending", "sending"):
                row.status, row.finished_at = "failed", outbox.utcnow()
            return _delivery_info(row, outbox.TEST_KIND)

    def webhook_deliveries(self, webhook_id: int, *, limit: int = 50) -> list[DeliveryInfo]:
        with self.db.read() as session:
            self._hook(session, webhook_id)
            rows = session.execute(select(DeliveryRecord, EventRecord.kind)
                                   .join(EventRecord, EventRecord.id == DeliveryRecord.event_id)
                                   .where(DeliveryRecord.webhook_id == webhook_id)
                                   .order_by(DeliveryRecord.id.desc()).limit(limit)).all()
            return [_delivery_info(row, kind) for row, kind in rows]

    def delivery(self, delivery_id: int) -> DeliveryInfo:
        with self.db.read() as session:
            row = self._delivery(session, delivery_id)
            return _delivery_info(row, session.get_one(EventRecord, row.event_id).kind)

    def redeliver(self, delivery_id: int) -> DeliveryInfo:
        """Queue delivery `delivery_id`'s event again for its webhook, as a new delivery (a new delivery id);
        the dispatcher sends it in its stream's order."""
        with self.db.write() as session:
            old = self._delivery(session, delivery_id)
            event = session.get_one(EventRecord, old.event_id)
            row = outbox.new_delivery(old.webhook_id, event, outbox.utcnow(), stream=old.stream,
                                      redelivery_of=old.id)
            session.add(row)
            session.flush()
            return _delivery_info(row, event.kind)

    def dispatcher(self, **options: Any) -> Any:
        """A webhooks.delivery.Dispatcher over this registry's database (what `swiftreg worker` runs)."""
        from ..webhooks.delivery import Dispatcher

        return Dispatcher(self.db, self.home, **options)

    # ----- lookups -----------------------------------------------------------------------------------------

    @staticmethod
    def _hook(session: Session, webhook_id: int) -> WebhookRecord:
        row = session.get(WebhookRecord, webhook_id) if 0 < webhook_id < 2**31 else None
        if row is None:
            raise WebhookNotFoundError(f"no webhook {webhook_id} in this registry (swiftreg webhook ls lists them)")
        return row

    @staticmethod
    def _delivery(session: Session, delivery_id: int) -> DeliveryRecord:
        row = session.get(DeliveryRecord, delivery_id) if 0 < delivery_id < 2**31 else None
        if row is None:
            raise WebhookNotFoundError(f"no webhook delivery {delivery_id} in this registry (swiftreg webhook "
                                       "deliveries WEBHOOK_ID lists them)")
        return row
