"""The dispatcher: deliveries claimed from the database, POSTed to their webhooks, their answers recorded.

At least once, in order: a webhook gets a stream's events strictly by sequence number, because only the
head of each (webhook, stream) queue, its oldest unfinished delivery, is ever claimed. A delivery that
fails (an error, a timeout, anything but 2xx; redirects are not followed) is retried with exponential
backoff (SWIFTREG_WEBHOOK_BACKOFF doubling, at most 15 minutes apart) until SWIFTREG_WEBHOOK_RETRY_SECONDS
after it was created, then marked failed, and the stream's next event goes.

Claims are safe across processes: on PostgreSQL `FOR UPDATE SKIP LOCKED` hands each head to one claimer,
on SQLite the claim is a `BEGIN IMMEDIATE` transaction (one writer at a time); the claim itself is a
compare-and-set that sets a lease, so a dispatcher killed while sending leaves a delivery that another
claims again once the lease ends: the receiver may see it twice (same X-Swiftreg-Delivery), never zero
times. Outbound requests have connect and read timeouts and a cap on the answer read (64 KiB, of which
the first 2,000 characters are kept), and every address the host resolves to is checked, the
connection made to a checked one (urls.py).
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING, Any, Callable, Iterable

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.orm import aliased

from .. import constants
from ..db.models import DeliveryRecord, EventRecord, WebhookRecord
from ..errors import RegistryError
from . import crypto, payloads, signing, urls

if TYPE_CHECKING:
    from pathlib import Path

    import httpx

    from ..db import Database

log = logging.getLogger("swiftreg.webhooks")

MAX_BACKOFF = 900.0          # seconds between two attempts, at most
READ_CAP = 64 << 10          # bytes of an answer read before the connection is dropped
KEEP_BODY = 2000             # characters of the answer kept with the delivery
KEEP_HISTORY = 20            # attempts remembered per delivery
UNFINISHED = ("pending", "sending")


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def aware(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


@dataclass
class Outcome:
    ok: bool
    status: int | None
    body: str | None
    error: str | None
    ms: int


class Dispatcher:
    """Sends the registry's due deliveries. `run_once` is one pass; `run` loops until `stop()`."""

    def __init__(self, db: "Database", home: "Path", *, worker_id: str | None = None, batch: int = 32,
                 threads: int = 8, on_event: Callable[[str], None] | None = None,
                 transport: "httpx.BaseTransport | None" = None) -> None:
        import os
        import socket

        self.db, self.home = db, home
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}:webhooks"
        self.batch, self.threads = batch, threads
        self.on_event = on_event or (lambda line: log.info("%s", line))
        self.stopping = threading.Event()
        self.sent = self.succeeded = self.failed = 0
        self._transport = transport
        self._client: httpx.Client | None = None
        self._next_prune = 0.0

    # ----- the loop --------------------------------------------------------------------------------------

    def stop(self) -> None:
        self.stopping.set()

    def run(self, *, poll: float = 1.0, exit_when_idle: bool = False) -> None:
        """Deliver until stopped (or, with exit_when_idle, until nothing is pending)."""
        while not self.stopping.is_set():
            try:
                sent = self.run_once()
            except Exception as exc:  # noqa: BLE001 - the database blinked: log, wait, go on
                if isinstance(exc, RegistryError):
                    self.on_event(f"webhooks: {exc}")
                else:
                    log.exception("webhook dispatch pass failed")
                sent = 0
            if sent:
                continue
            if exit_when_idle and not self.pending():
                break
            self.stopping.wait(poll)
        self.close()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def run_once(self, ids: Iterable[int] | None = None) -> int:
        """Claim what is due (among `ids`), send it, record the answers; how many were sent."""
        if time.monotonic() >= self._next_prune:
            self.prune()
            self._next_prune = time.monotonic() + 60
        claimed = self.claim(self.batch, ids=ids)
        if not claimed:
            return 0
        if len(claimed) == 1 or self.threads <= 1:
            for delivery_id in claimed:
                self._send_and_record(delivery_id)
        else:
            with ThreadPoolExecutor(max_workers=min(self.threads, len(claimed))) as pool:
                list(pool.map(self._send_and_record, claimed))
        return len(claimed)

    def pending(self) -> int:
        """Deliveries not finished yet (due or waiting for a retry)."""
        with self.db.read() as session:
            return len(session.scalars(select(DeliveryRecord.id).where(
                DeliveryRecord.status.in_(UNFINISHED)).limit(1000)).all())

    # ----- claiming --------------------------------------------------------------------------------------

    def claim(self, limit: int, *, ids: Iterable[int] | None = None) -> list[int]:
        """Take up to `limit` due heads of their (webhook, stream) queues; their ids."""
        d, e = DeliveryRecord, aliased(DeliveryRecord)
        now = utcnow()
        earlier = select(e.id).where(e.webhook_id == d.webhook_id, e.stream == d.stream, e.status.in_(UNFINISHED),
                                     or_(e.seq < d.seq, and_(e.seq == d.seq, e.id < d.id))).exists()
        due = or_(and_(d.status == "pending", d.next_attempt_at <= now),
                  and_(d.status == "sending", d.lease_until < now))
        query = select(d.id, d.status).where(d.status.in_(UNFINISHED), due, ~earlier).order_by(d.id).limit(limit)
        if ids is not None:
            query = query.where(d.id.in_(list(ids)))
        with self.db.read() as session:  # nothing due (the usual answer): no write transaction at all
            if not session.execute(query.limit(1)).first():
                return []
        if self.db.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True, of=d)
        lease = timedelta(seconds=2 * constants.webhook_timeout() + 5)
        claimed = []
        with self.db.write() as session:
            for delivery_id, status in session.execute(query).all():
                changed = session.execute(
                    update(DeliveryRecord).where(DeliveryRecord.id == delivery_id, DeliveryRecord.status == status)
                    .values(status="sending", worker=self.worker_id, lease_until=now + lease,
                            attempts=DeliveryRecord.attempts + 1))
                if changed.rowcount == 1:  # type: ignore[attr-defined]
                    claimed.append(delivery_id)
        return claimed

    # ----- sending ---------------------------------------------------------------------------------------

    def _http(self) -> "httpx.Client":
        import httpx

        if self._client is None:
            timeout = constants.webhook_timeout()
            self._client = httpx.Client(timeout=httpx.Timeout(timeout, connect=min(5.0, timeout)),
                                        follow_redirects=False, transport=self._transport,
                                        limits=httpx.Limits(max_connections=max(4, self.threads)))
        return self._client

    def _send_and_record(self, delivery_id: int) -> None:
        try:
            with self.db.read() as session:
                delivery = session.get_one(DeliveryRecord, delivery_id)
                hook = session.get_one(WebhookRecord, delivery.webhook_id)
                event = session.get_one(EventRecord, delivery.event_id)
                url, kind, uuid = hook.url, event.kind, delivery.uuid
                body = payloads.encode(payloads.build(event, hook.id))
                secret_token = hook.secret
            outcome = self.send(url, crypto.decrypt(self.home, secret_token), body, uuid, kind)
        except RegistryError as exc:
            outcome = Outcome(False, None, None, str(exc), 0)
        except Exception as exc:  # noqa: BLE001 - a row vanished (webhook removed): record what we can
            log.exception("delivery %s could not be prepared", delivery_id)
            outcome = Outcome(False, None, None, f"{type(exc).__name__}: {exc}", 0)
        self.record(delivery_id, outcome)

    def send(self, url: str, secret: str, body: bytes, delivery: str, kind: str) -> Outcome:
        """One POST; its outcome (never raises for the receiver's failures)."""
        import httpx

        started = time.monotonic()
        try:
            target = urls.pinned(url)
            headers = signing.headers(secret, body, delivery=delivery, kind=kind)
            if target.host_header:
                headers["Host"] = target.host_header
            extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else None
            with self._http().stream("POST", target.url, content=body, headers=headers,
                                     extensions=extensions) as answer:
                read = bytearray()
                for chunk in answer.iter_bytes():
                    read += chunk
                    if len(read) >= READ_CAP or time.monotonic() - started > constants.webhook_timeout():
                        break  # enough: a receiver that trickles its answer cannot hold the claim past its lease
                text = bytes(read[:READ_CAP]).decode("utf-8", "replace")[:KEEP_BODY]
                ms = int((time.monotonic() - started) * 1000)
                ok = 200 <= answer.status_code < 300
                error = None if ok else (f"redirect to {answer.headers.get('location')!r} not followed"
                                         if 300 <= answer.status_code < 400 else f"HTTP {answer.status_code}")
                return Outcome(ok, answer.status_code, text, error, ms)
        except RegistryError as exc:
            return Outcome(False, None, None, str(exc), int((time.monotonic() - started) * 1000))
        except httpx.HTTPError as exc:
            what = type(exc).__name__
            return Outcome(False, None, None, f"{what}: {exc}" if str(exc) else what,
                           int((time.monotonic() - started) * 1000))

    def record(self, delivery_id: int, outcome: Outcome) -> str:
        """Write the attempt's outcome (only while the claim is still ours); the delivery's new status."""
        now = utcnow()
        with self.db.write() as session:
            row = session.get(DeliveryRecord, delivery_id)
            if row is None or row.status != "sending" or row.worker != self.worker_id:
                return row.status if row is not None else "gone"
            attempt = {"at": now.isoformat(), "status": outcome.status, "error": outcome.error, "ms": outcome.ms}
            values: dict[str, Any] = dict(response_status=outcome.status, response_body=outcome.body,
                                          error=outcome.error, duration_ms=outcome.ms, lease_until=None,
                                          history=(list(row.history or []) + [attempt])[-KEEP_HISTORY:])
            created = aware(row.created_at) or now
            if outcome.ok:
                values.update(status="succeeded", finished_at=now)
            elif (now - created).total_seconds() >= constants.webhook_retry_seconds():
                values.update(status="failed", finished_at=now,
                              error=f"{outcome.error}; gave up after {row.attempts} attempts")
            else:
                wait = min(constants.webhook_backoff() * 2 ** max(0, row.attempts - 1), MAX_BACKOFF)
                values.update(status="pending", next_attempt_at=now + timedelta(seconds=wait))
            session.execute(update(DeliveryRecord).where(DeliveryRecord.id == delivery_id,
                                                         DeliveryRecord.status == "sending",
                                                         DeliveryRecord.worker == self.worker_id).values(**values))
        self.sent += 1
        if values["status"] == "succeeded":
            self.succeeded += 1
        elif values["status"] == "failed":
            self.failed += 1
            self.on_event(f"webhook delivery {delivery_id} failed for good: {values['error']}")
        return str(values["status"])

    # ----- keeping the tables small ------------------------------------------------------------------------

    def prune(self) -> None:
        """Keep the newest SWIFTREG_WEBHOOK_KEEP finished deliveries per webhook, and drop old events that no
        delivery needs any more."""
        keep = constants.webhook_keep()
        with self.db.read() as session:
            if session.execute(select(EventRecord.id).limit(1)).first() is None:
                return
        with self.db.write() as session:
            for hook_id in session.scalars(select(WebhookRecord.id)).all():
                old = session.scalars(select(DeliveryRecord.id).where(
                    DeliveryRecord.webhook_id == hook_id, DeliveryRecord.status.not_in(UNFINISHED))
                    .order_by(DeliveryRecord.id.desc()).offset(keep)).all()
                if old:
                    session.execute(delete(DeliveryRecord).where(DeliveryRecord.id.in_(old)))
            cutoff = utcnow() - timedelta(seconds=constants.webhook_retry_seconds() + 86400)
            needed = select(DeliveryRecord.id).where(DeliveryRecord.event_id == EventRecord.id).exists()
            session.execute(delete(EventRecord).where(EventRecord.created_at < cutoff, ~needed))
