"""Blob integrity: when each stored blob was last verified, the quarantine rule, and the scrub.

A blob is *verified* when its bytes hashed to its name while its file had a given fingerprint
(store/base.py `file_fingerprint`: inode, size, mtime). The record (table `blob_checks`) lets a
read of a blob whose file still has that fingerprint skip the hash: only the first read of a blob pays
for it (the server hashes while it streams, registry/server/responses.py). Bit rot on the medium does
not change a fingerprint, so `scrub` rehashes blobs whose verification is older than a given age.

A blob found corrupt (by a read, a range check, the scrub, a materialisation or a revision check) is
*quarantined*: the store moves it out (store/local.py `root/quarantine/`), so it is no longer served or
counted as present and a re-push of the right bytes stores it again; the record says `corrupt` with
what the bytes hashed to; one log line names the blob and every revision that needs it; `stats`
reports it (`integrity_report`). A blob a revision names that is simply gone is recorded `missing`
and reported the same way.

Recording is best effort: the bytes decide what is served, the records only save work and report, so
a database that cannot be written costs a rehash later, never a wrong byte.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Iterator

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from ..db.models import AdapterRecord, BaseModelRecord, BlobCheckRecord, DerivedRecord, RevisionRecord
from ..errors import NotSupportedError, RegistryError
from ..store.base import file_fingerprint
from ..store.digests import format_digest, new_hasher, validate_digest
from ..store.errors import BlobNotFound
from .core import RegistryCore, aware

log = logging.getLogger("swiftreg.integrity")

#: Blobs up to this size that are not yet verified are read and hashed whole before their first byte
#: is sent, so a corrupt one is answered with an error status rather than a cut connection.
SMALL_BLOB = 4 << 20
#: How many verified fingerprints a process remembers (saves the record's query on repeated reads).
_MEMO_SIZE = 65536

VERIFIED, CORRUPT, MISSING = "verified", "corrupt", "missing"


@dataclass(frozen=True)
class ServableBlob:
    """A blob about to be served: its file, that file's stat, and what is known of its bytes.

    `verified`: the fingerprint the bytes were verified at, when it is the file's current one (serve
    without hashing, but stop if the file changes meanwhile); None: hash while serving. `data`: a small
    blob read and verified just now; these very bytes are what is served.
    """

    digest: str
    path: Path
    stat: os.stat_result
    verified: str | None = None
    data: bytes | None = None


@dataclass
class ScrubResult:
    """What one scrub pass did."""

    checked: int = 0
    bytes: int = 0
    skipped: int = 0                                  # verified recently enough
    corrupt: list[str] = field(default_factory=list)  # quarantined by this pass
    missing: list[str] = field(default_factory=list)  # named by a revision, absent from the store
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"checked": self.checked, "bytes": self.bytes, "skipped": self.skipped, "corrupt": self.corrupt,
                "missing": self.missing, "seconds": round(self.seconds, 3)}


class IntegrityMixin(RegistryCore):
    """Verification records, quarantine, scrub and the integrity report."""

    _integrity_lock = threading.Lock()

    # ----- counters and memo (per process) -------------------------------------------------------

    @property
    def integrity_counters(self) -> dict[str, int]:
        """Full verifications this process did: `blobs_hashed`, `bytes_hashed` (a repeated read of a
        verified, unmodified blob adds nothing), and `blobs_quarantined`."""
        counters: dict[str, int] | None = self.__dict__.get("_integrity_counters")
        if counters is None:
            counters = self.__dict__.setdefault("_integrity_counters",
                                                {"blobs_hashed": 0, "bytes_hashed": 0, "blobs_quarantined": 0})
        return counters

    @contextmanager
    def _verifying(self, digest: str) -> Iterator[None]:
        """Held while this process verifies `digest` whole."""
        locks: dict[str, threading.Lock] = self.__dict__.setdefault("_integrity_locks", {})
        with self._integrity_lock:
            lock = locks.setdefault(digest, threading.Lock())
        try:
            with lock:
                yield
        finally:
            with self._integrity_lock:
                if not lock.locked():
                    locks.pop(digest, None)

    def _verified_memo(self) -> dict[str, str]:
        memo: dict[str, str] = self.__dict__.setdefault("_integrity_memo", {})
        return memo

    # ----- serving --------------------------------------------------------------------------------

    def servable_blob(self, digest: str, size: int | None = None, *, whole: bool = False,
                      head: bool = False, referenced: bool = True) -> ServableBlob:
        """Where blob `digest` is and what is known of its bytes, for a server about to send them.

        `size`: what the manifest says; a file of another size is verified now (it cannot match, so it is
        quarantined). `whole`: the caller will send part of it (a Range), so an unverified blob is verified
        whole first. `head`: only headers will be sent, nothing is checked beyond the size. A small
        unverified blob is read and verified now (`.data`). Raises `BlobNotFound` (saying so when it was
        quarantined, now or before); `referenced`: a revision names the blob, so its absence is recorded.
        """
        digest = validate_digest(digest)
        try:
            path = self.store.path(digest)
            if path is None:
                raise NotSupportedError("this blob store cannot serve files over HTTP yet")
            st = os.stat(path)
        except (BlobNotFound, FileNotFoundError):
            raise self._absent(digest, referenced) from None
        fingerprint = file_fingerprint(st)
        if size is not None and st.st_size != size:
            self.check_blob(digest)  # quarantines it unless its name really is these bytes
            return self.servable_blob(digest, None, whole=whole, head=head, referenced=referenced)
        if head:
            return ServableBlob(digest, path, st)
        if self._verified_at(digest) == fingerprint:
            return ServableBlob(digest, path, st, verified=fingerprint)
        if st.st_size <= SMALL_BLOB:  # a range of it is served from the file, now verified
            small = self._read_small(digest, path, referenced)
            return replace(small, data=None) if whole else small
        if whole:
            with self._verifying(digest):  # parallel ranges of one blob (modelscope's) wait for one verification
                if self._verified_at(digest) != fingerprint and self.check_blob(digest) != VERIFIED:
                    raise self._absent(digest, referenced)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise self._absent(digest, referenced) from None
            return ServableBlob(digest, path, st, verified=self._verified_at(digest))
        return ServableBlob(digest, path, st)

    def blob_location(self, digest: str, size: int | None = None, *, referenced: bool = True,
                      filename: str | None = None, content_type: str | None = None,
                      expires: int | None = None) -> str:
        """A short-lived presigned URL of blob `digest` in an object store (store/s3.py), handed out only
        while the object is the one verified: its fingerprint (ETag, size, LastModified) is the one recorded
        when its bytes last hashed to its name, else it is rehashed now (a corrupt one is quarantined and
        `BlobNotFound` names it). `size`: what the manifest says (another size cannot match)."""
        from .. import constants

        digest = validate_digest(digest)
        store: Any = self.store
        for _ in range(2):
            try:
                actual, fingerprint = store.stat(digest)
            except BlobNotFound:
                raise self._absent(digest, referenced) from None
            if self._verified_at(digest) == fingerprint and (size is None or actual == size):
                break
            with self._verifying(digest):
                if self._verified_at(digest) != fingerprint and self.check_blob(digest) != VERIFIED:
                    raise self._absent(digest, referenced)
            if size is not None and actual != size:
                raise self._absent(digest, referenced)
        else:
            raise self._absent(digest, referenced)
        url: str = store.presign_get(digest, expires if expires is not None else constants.presign_seconds(),
                                     filename=filename, content_type=content_type)
        return url

    def _read_small(self, digest: str, path: Path, referenced: bool) -> ServableBlob:
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:
            raise self._absent(digest, referenced) from None
        hasher = new_hasher()
        hasher.update(data)
        actual = format_digest(hasher.hexdigest())
        fingerprint = file_fingerprint(st)
        if actual != digest:
            self.blob_corrupt(digest, actual, fingerprint, len(data), "while serving it")
            raise self._absent(digest, referenced)
        self.blob_verified(digest, fingerprint, len(data))
        return ServableBlob(digest, path, st, verified=fingerprint, data=data)

    def _absent(self, digest: str, referenced: bool) -> BlobNotFound:
        quarantined = self.store.is_quarantined(digest)
        if referenced and not quarantined:
            self.blob_missing(digest)
        return BlobNotFound(digest, quarantined=quarantined)

    # ----- records --------------------------------------------------------------------------------

    def _verified_at(self, digest: str) -> str | None:
        """The fingerprint `digest` was last verified at, if its last check found it sound."""
        memo = self._verified_memo()
        if digest in memo:
            return memo[digest]
        try:
            with self.db.read() as session:
                record = session.get(BlobCheckRecord, digest)
                found = record.fingerprint if record is not None and record.state == VERIFIED else None
        except SQLAlchemyError:
            return None  # unknown: hash it
        if found is not None:
            self._remember(digest, found)
        return found

    def _remember(self, digest: str, fingerprint: str | None) -> None:
        memo = self._verified_memo()
        with self._integrity_lock:
            if fingerprint is None:
                memo.pop(digest, None)
                return
            if len(memo) >= _MEMO_SIZE:
                memo.clear()
            memo[digest] = fingerprint

    def _record(self, digest: str, state: str, fingerprint: str, actual: str | None = None,
                detail: str | None = None) -> str | None:
        """Write the blob's check; the state it had before (None: no record). Database errors are
        logged, not raised: the record saves work, it never decides what is served."""
        values = dict(state=state, fingerprint=fingerprint, actual=actual, detail=detail,
                      checked_at=datetime.now(timezone.utc))
        try:
            with self.db.write() as session:
                record = session.get(BlobCheckRecord, digest)
                if record is None:
                    if self.db.insert_ignore(session, BlobCheckRecord, digest=digest, **values):
                        return None
                    record = session.get(BlobCheckRecord, digest)  # a concurrent check wrote it first
                    assert record is not None
                before = record.state
                for key, value in values.items():
                    setattr(record, key, value)
                return before
        except (SQLAlchemyError, RegistryError) as exc:
            log.warning("could not record the %s check of blob %s: %s", state, digest, exc)
            return "unknown"

    def blob_verified(self, digest: str, fingerprint: str, size: int) -> None:
        """The blob's bytes (`size` of them, just hashed) matched its name while its file had `fingerprint`."""
        with self._integrity_lock:
            self.integrity_counters["blobs_hashed"] += 1
            self.integrity_counters["bytes_hashed"] += size
        self._record(digest, VERIFIED, fingerprint)
        self._remember(digest, fingerprint)

    def blob_corrupt(self, digest: str, actual: str, fingerprint: str, size: int, how: str) -> bool:
        """The quarantine rule: the blob's bytes hash to `actual`, not its name. Move it out of the store,
        record it, and log one line naming the revisions that need it (only the call that moved it logs).
        True if this call quarantined it."""
        with self._integrity_lock:
            self.integrity_counters["blobs_hashed"] += 1
            self.integrity_counters["bytes_hashed"] += size
        self._remember(digest, None)
        moved = self.store.quarantine(digest)
        detail = f"{size} bytes hashing to {actual}, found {how}"
        self._record(digest, CORRUPT, fingerprint, actual, detail)
        if moved:
            with self._integrity_lock:
                self.integrity_counters["blobs_quarantined"] += 1
            needed = self.revisions_naming([digest]).get(digest, [])
            log.error("blob %s is corrupt (%s) and was quarantined; revisions that need it: %s; push the file "
                      "again to restore it", digest, detail, ", ".join(needed) or "none")
        return moved

    def blob_missing(self, digest: str) -> None:
        """A blob a revision names is not in the store (nor in quarantine): record and log it once."""
        self._remember(digest, None)
        try:
            with self.db.read() as session:
                record = session.get(BlobCheckRecord, digest)
                if record is not None and record.state == MISSING:
                    return  # known (and logged) already: no write per request for it
        except SQLAlchemyError:
            pass
        before = self._record(digest, MISSING, "")
        if before != MISSING:
            needed = self.revisions_naming([digest]).get(digest, [])
            log.error("blob %s is missing from the store; revisions that need it: %s; push the file again to "
                      "restore it", digest, ", ".join(needed) or "none")

    def check_blob(self, digest: str) -> str:
        """Rehash a stored blob now: `verified`, `corrupt` (quarantined) or `missing`."""
        digest = validate_digest(digest)
        for attempt in range(3):  # again if the file changed while it was read; the third time, as it is
            try:
                before = self.store.fingerprint(digest)
                actual, size = self.store.rehash(digest)
                after = self.store.fingerprint(digest)
            except BlobNotFound:
                return MISSING
            if before != after and attempt < 2:
                continue
            if actual == digest:
                if after is not None and before == after:
                    self.blob_verified(digest, after, size)
                return VERIFIED
            self.blob_corrupt(digest, actual, after or "", size, "by a check")
            return CORRUPT
        raise AssertionError("unreachable")

    # ----- scrub ------------------------------------------------------------------------------------

    def scrub(self, max_age: float = 7 * 86400.0, *, limit: int | None = None) -> ScrubResult:
        """Rehash every stored blob not verified within `max_age` seconds (or whose file changed since),
        quarantining corrupt ones; record blobs a revision names that are absent. `limit`: at most this
        many rehashes in this pass (the rest wait for the next)."""
        started = time.monotonic()
        result = ScrubResult()
        cutoff = datetime.now(timezone.utc).timestamp() - max_age
        records: dict[str, tuple[str, str, float]] = {}
        with self.db.read() as session:
            for record in session.scalars(select(BlobCheckRecord)):
                records[record.digest] = (record.state, record.fingerprint, aware(record.checked_at).timestamp())
        for digest in list(self.store.iter_digests()):
            state, fingerprint, checked = records.get(digest, ("", "", 0.0))
            try:
                current = self.store.fingerprint(digest)
            except BlobNotFound:
                continue  # deleted meanwhile (gc)
            if state == VERIFIED and fingerprint == current and checked >= cutoff:
                result.skipped += 1
                continue
            if limit is not None and result.checked >= limit:
                break
            try:
                size = self.store.size(digest)
            except BlobNotFound:
                continue
            outcome = self.check_blob(digest)
            result.checked += 1
            result.bytes += size
            if outcome == CORRUPT:
                result.corrupt.append(digest)
        for digest in self._referenced() - set(self.store.iter_digests()):
            if not self.store.is_quarantined(digest):
                self.blob_missing(digest)
                result.missing.append(digest)
        result.missing.sort()
        result.seconds = time.monotonic() - started
        return result

    def _referenced(self) -> set[str]:
        with self.db.read() as session:
            manifests = [*session.scalars(select(RevisionRecord.manifest)),
                         *session.scalars(select(DerivedRecord.manifest))]
        return {f["sha256"] for m in manifests for f in m.get("files", [])}

    # ----- reporting --------------------------------------------------------------------------------

    def revisions_naming(self, digests: Iterable[str]) -> dict[str, list[str]]:
        """For each digest, the revisions whose files include it: `ns/name@N`, and `ns/name@N (peft form)`
        for a derived conversion. One pass over the manifests; meant for the rare blob at fault."""
        wanted = set(digests)
        found: dict[str, list[str]] = {d: [] for d in wanted}
        if not wanted:
            return found
        with self.db.read() as session:
            rows: list[tuple[Any, ...]] = []
            for model, column in ((AdapterRecord, RevisionRecord.adapter_id),
                                  (BaseModelRecord, RevisionRecord.base_model_id)):
                rows += [(ns, name, number, manifest, None) for ns, name, number, manifest in session.execute(
                    select(model.namespace, model.name, RevisionRecord.number, RevisionRecord.manifest)
                    .join(RevisionRecord, column == model.id))]
                rows += [(ns, name, number, manifest, fmt) for ns, name, number, manifest, fmt in session.execute(
                    select(model.namespace, model.name, RevisionRecord.number, DerivedRecord.manifest,
                           DerivedRecord.target_format)
                    .join(RevisionRecord, column == model.id)
                    .join(DerivedRecord, DerivedRecord.revision_id == RevisionRecord.id))]
        for ns, name, number, manifest, fmt in rows:
            label = f"{ns}/{name}@{number}" + (f" ({fmt} form)" if fmt else "")
            for entry in (manifest or {}).get("files", []):
                if entry.get("sha256") in wanted and label not in found[entry["sha256"]]:
                    found[entry["sha256"]].append(label)
        return {d: sorted(labels) for d, labels in found.items()}

    def integrity_report(self, namespaces: Iterable[str] | None = None) -> dict[str, Any]:
        """The blobs at fault now: quarantined (corrupt, not restored by a push since) and missing, each
        with the revisions that need it. With `namespaces`, only blobs a revision of those names, and only
        those revisions."""
        with self.db.read() as session:
            records = {r.digest: r for r in session.scalars(
                select(BlobCheckRecord).where(BlobCheckRecord.state.in_([CORRUPT, MISSING])))}
            details = {d: (r.state, r.actual, r.detail, aware(r.checked_at).isoformat()) for d, r in records.items()}
        quarantined = set(self.store.iter_quarantined()) | {d for d, v in details.items() if v[0] == CORRUPT}
        quarantined = {d for d in quarantined if not self.store.exists(d)}
        missing = {d for d, v in details.items() if v[0] == MISSING and not self.store.exists(d)} - quarantined
        needed = self.revisions_naming(quarantined | missing)
        allowed = set(namespaces) if namespaces is not None else None

        def entries(digests: set[str]) -> list[dict[str, Any]]:
            out = []
            for digest in sorted(digests):
                revisions = needed.get(digest, [])
                if allowed is not None:
                    revisions = [r for r in revisions if r.split("/", 1)[0] in allowed]
                    if not revisions:
                        continue
                state, actual, detail, when = details.get(digest, (CORRUPT, None, None, None))
                out.append({"digest": digest, "actual": actual, "detail": detail, "found_at": when,
                            "revisions": revisions})
            return out

        corrupt, absent = entries(quarantined), entries(missing)
        return {"blobs_quarantined": len(corrupt), "quarantined": corrupt,
                "blobs_missing": len(absent), "missing": absent}
