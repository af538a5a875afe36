"""`swiftreg store copy`: every blob of one store into another (a local store to object storage, typically).

Each blob is streamed from the source and stored in the target through the target's own `put_stream`
with its digest as the expected one, so every object is hashed on the way and one that does not match
its name is not stored (it is reported, named, and the copy goes on). Blobs the target holds already are
skipped, which makes the copy resumable: run it again after an interruption and it continues where it
stopped (`verify_existing` rehashes those too). Nothing is deleted from the source.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from .base import BlobStore, read_chunks
from .errors import BlobDigestMismatch, BlobNotFound


@dataclass
class CopyReport:
    copied: int = 0
    copied_bytes: int = 0
    present: int = 0
    corrupt: list[str] = field(default_factory=list)   #: source bytes that do not hash to their name: not copied
    vanished: list[str] = field(default_factory=list)  #: deleted from the source (gc) while the copy ran

    def to_dict(self) -> dict[str, Any]:
        return {"copied": self.copied, "copied_bytes": self.copied_bytes, "present": self.present,
                "corrupt": self.corrupt, "vanished": self.vanished}


def copy_store(source: BlobStore, target: BlobStore, *, verify_existing: bool = False,
               on_blob: Callable[[str, str], None] | None = None) -> CopyReport:
    """Copy every blob of `source` that `target` lacks, verified; `on_blob(digest, outcome)` per blob."""
    report = CopyReport()
    for digest in list(source.iter_digests()):
        if target.exists(digest) and (not verify_existing or target.verify(digest)):
            report.present += 1
            outcome = "present"
        else:
            try:
                with source.open(digest) as f:
                    info = target.put_stream(read_chunks(f), expected=digest)
            except BlobNotFound:
                report.vanished.append(digest)
                outcome = "vanished"
            except BlobDigestMismatch as exc:
                report.corrupt.append(digest)
                outcome = f"corrupt in the source (hashes to {exc.actual}): not copied"
            else:
                report.copied += 1
                report.copied_bytes += info.size
                outcome = "copied"
        if on_blob is not None:
            on_blob(digest, outcome)
    return report
