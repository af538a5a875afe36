"""Verified xorbs and shards beside the blob store, the global-dedup chunk index, and files rebuilt into blobs.

    <xet>/xorbs/<h2>/<hash>.data     a xorb's chunks decompressed, back to back, kept only once every chunk
                                     hashed to the xorb's name (so a file is rebuilt by plain copies)
    <xet>/xorbs/<h2>/<hash>.idx      its chunk table (hash, offset in .data, length, size per chunk)
    <xet>/xorbs/<h2>/<hash>.by       the registry token ids that uploaded it (they may build files on it)
    <xet>/xorbs/<h2>/<hash>.files    the accepted files holding its chunks: "sha256 first-chunk end-chunk offset"
    <xet>/chunks/<h2>/<hash>         the xorbs a query for this chunk is answered with (the global dedup index:
                                     a file's first chunk and dedup-eligible chunks -> the xorbs of its files)
    <xet>/files/<h2>/<hash>          the sha256 a file's Xet hash was verified to rebuild to
    <xet>/shards/<sha256>.shard      accepted shards
    <xet>/tmp/                       bodies in transit

`<xet>` is `xet/` under a local blob store's root (one filesystem with the blobs), else under the home.
A file named by an accepted shard has been rebuilt from its xorbs' data, checked against its Xet hash (from
the stored chunk hashes) and its verification entries, and streamed into the blob store checked against its
sha256, so a hub commit that names the sha256 finds a verified blob, exactly as after an LFS upload.
`sweep` (Registry.gc) removes what no revision's blob needs once older than the grace period.
"""
from __future__ import annotations

import hashlib
import os
import secrets
import time
from pathlib import Path
from typing import Callable, Iterator

from ..atomic import write_file
from ..errors import XetError, XetMissingError
from ..store.base import BlobInfo, BlobStore
from . import hashing, root_beside, shard, xorb


COPY_PIECE = 8 << 20  # bytes read at a time from a xorb's data


class XetStore:
    """The Xet half of the store: see the module docstring for its layout."""

    def __init__(self, blobs: BlobStore, root: Path) -> None:
        self.blobs, self.root = blobs, root
        for sub in ("xorbs", "chunks", "files", "shards", "tmp"):
            (root / sub).mkdir(parents=True, exist_ok=True)

    @classmethod
    def beside(cls, store: BlobStore, home: Path) -> XetStore:
        return cls(store, root_beside(store, home))

    # ----- paths ----------------------------------------------------------------------------------------

    def _keyed(self, kind: str, h: bytes, suffix: str = "") -> Path:
        hx = hashing.to_hex(h)
        return self.root / kind / hx[:2] / f"{hx}{suffix}"

    def temp_path(self) -> Path:
        """A fresh path for a body in transit (same filesystem: a verified xorb is renamed into place)."""
        return self.root / "tmp" / f"in-{secrets.token_hex(12)}"

    @staticmethod
    def _write_atomic(path: Path, data: bytes) -> None:
        """Records whole or not at all (registry/atomic.py; not flushed: a record lost to a crash is a xorb or a
        file uploaded again, and a stale one can never put wrong bytes in a blob: every rebuild is hashed)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        write_file(path, data)

    @staticmethod
    def _append_line(path: Path, line: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if line in path.read_text().splitlines():
                return
        except FileNotFoundError:
            pass
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)

    # ----- xorbs ----------------------------------------------------------------------------------------

    def has_xorb(self, h: bytes) -> bool:
        return self._keyed("xorbs", h, ".data").exists() and self._keyed("xorbs", h, ".idx").exists()

    def put_xorb(self, h: bytes, body: Path, uploader: int) -> bool:
        """Verify the xorb in file `body` against its name `h` and keep it (the file is consumed either way);
        record that registry token `uploader` sent all of it (it may build files on it: `uploaders`).

        True when stored now, False when it was stored before (verified all the same: a token that knows
        a xorb's name but not its bytes must not become its uploader). XetError when a chunk does not
        parse or decompress or the chunks do not hash to `h`: nothing is kept or recorded."""
        data = body.with_name(body.name + ".data")
        try:
            with open(body, "rb") as f, open(data, "wb") as out:
                chunks = xorb.verify(f, body.stat().st_size, h, out)
            if self.has_xorb(h):
                self.touch(h)
                inserted = False
            else:
                stored, offset = [], 0
                for c in chunks:
                    stored.append(xorb.Chunk(c.hash, offset, c.size, c.size))
                    offset += c.size
                self._write_atomic(self._keyed("xorbs", h, ".idx"), xorb.pack_index(stored))
                os.replace(data, self._keyed("xorbs", h, ".data"))
                inserted = True
            self._append_line(self._keyed("xorbs", h, ".by"), str(uploader))
            return inserted
        finally:
            body.unlink(missing_ok=True)
            data.unlink(missing_ok=True)

    def uploaders(self, h: bytes) -> set[int]:
        """The registry token ids that uploaded xorb `h`."""
        try:
            return {int(line) for line in self._keyed("xorbs", h, ".by").read_text().split()}
        except FileNotFoundError:
            return set()

    def touch(self, h: bytes) -> None:
        """Mark a xorb used now (gc spares xorbs used within its grace period)."""
        try:
            os.utime(self._keyed("xorbs", h, ".data"))
        except FileNotFoundError:
            pass

    def chunks(self, h: bytes) -> list[xorb.Chunk]:
        try:
            return xorb.unpack_index(self._keyed("xorbs", h, ".idx").read_bytes())
        except FileNotFoundError:
            raise XetMissingError(f"xorb {hashing.to_hex(h)} was never uploaded") from None

    def xorb_bytes(self, h: bytes) -> int:
        return self._keyed("xorbs", h, ".data").stat().st_size

    def files_of(self, h: bytes) -> set[str]:
        """The sha256 digests of the accepted files whose reconstruction uses xorb `h`."""
        return {use[0] for use in self._uses(h)}

    def _uses(self, h: bytes) -> list[tuple[str, int, int, int]]:
        """Where accepted files hold chunks of xorb `h`: (sha256, first chunk, end chunk, offset in the file)."""
        try:
            lines = self._keyed("xorbs", h, ".files").read_text().splitlines()
        except FileNotFoundError:
            return []
        out: list[tuple[str, int, int, int]] = []
        for line in lines:
            fields = line.split()
            if len(fields) == 4:
                out.append((fields[0], int(fields[1]), int(fields[2]), int(fields[3])))
        return out

    def xorbs_with_chunk(self, chunk: bytes) -> list[bytes]:
        """The stored xorbs holding dedup-eligible chunk `chunk` (the global dedup query's index)."""
        try:
            lines = self._keyed("chunks", chunk).read_text().split()
        except FileNotFoundError:
            return []
        return [x for x in (hashing.from_hex(line) for line in lines) if self.has_xorb(x)]

    # ----- shards ---------------------------------------------------------------------------------------

    def accept_shard(self, data: bytes, may_use: Callable[[bytes], bool]) -> list[shard.FileInfo]:
        """Verify every file of an uploaded shard, rebuild each into the blob store, record the shard.

        `may_use(xorb hash)`: whether the uploader may build files from that stored xorb (its own upload,
        or one its namespaces' blobs use). Refused (nothing recorded; blobs already rebuilt stay unreferenced
        for gc): a shard that does not parse, a xorb never uploaded or not the uploader's (XetMissingError),
        a chunk range past a xorb's end, a segment size, verification entry or Xet file hash that the stored
        chunks contradict, a file without sha256, and bytes that do not hash to it (BlobDigestMismatch).
        """
        parsed = shard.parse(data)
        tables: dict[bytes, list[xorb.Chunk]] = {}

        def table(h: bytes) -> list[xorb.Chunk]:
            if h not in tables:
                if not self.has_xorb(h) or not may_use(h):
                    raise XetMissingError(f"the shard names xorb {hashing.to_hex(h)}, which was never uploaded")
                tables[h] = self.chunks(h)
                self.touch(h)
            return tables[h]

        for info in parsed.xorbs:
            stored = table(info.hash)
            if [(c.hash, c.size) for c in info.chunks] != [(c.hash, c.size) for c in stored]:
                raise XetError(f"the shard's chunk list of xorb {hashing.to_hex(info.hash)} is not the xorb's")
        for f in parsed.files:
            self._check_file(f, table)
        for f in parsed.files:
            self._rebuild(f, tables)
        # The dedup index: a file's first chunk, and each dedup-eligible chunk of the new xorbs, lead to every
        # xorb of the files built on it, so one query hands a client back the whole of a file's earlier version.
        family: dict[bytes, list[bytes]] = {}
        for f in parsed.files:
            assert f.sha256 is not None
            offset = 0
            for seg in f.segments:
                self._append_line(self._keyed("xorbs", seg.xorb, ".files"),
                                  f"{f.sha256} {seg.start} {seg.end} {offset}")
                offset += seg.size
            xorbs = list(dict.fromkeys(seg.xorb for seg in f.segments))
            for x in xorbs:
                family.setdefault(x, [x])
                family[x] += [y for y in xorbs if y not in family[x]]
            if f.segments:
                first = tables[f.segments[0].xorb][f.segments[0].start].hash
                self._index(first, xorbs)
        for info in parsed.xorbs:
            for c in info.chunks:
                if c.flags & shard.GLOBAL_DEDUP_FLAG or hashing.dedup_eligible(c.hash):
                    self._index(c.hash, family.get(info.hash, [info.hash]))
        self._write_atomic(self.root / "shards" / f"{hashlib.sha256(data).hexdigest()}.shard", data)
        return parsed.files

    def _index(self, chunk: bytes, xorbs: list[bytes]) -> None:
        for x in xorbs:
            self._append_line(self._keyed("chunks", chunk), hashing.to_hex(x))

    def _check_file(self, f: shard.FileInfo, table: Callable[[bytes], list[xorb.Chunk]]) -> None:
        """Everything the stored chunk hashes can say about a file before its bytes are rebuilt."""
        name = hashing.to_hex(f.hash)
        if f.sha256 is None:
            raise XetError(f"file {name}: the shard gives no sha256 (metadata extension) for it")
        if f.verification and len(f.verification) != len(f.segments):
            raise XetError(f"file {name}: {len(f.verification)} verification entries for {len(f.segments)} segments")
        nodes: list[hashing.Node] = []
        for i, seg in enumerate(f.segments):
            chunks = table(seg.xorb)
            if seg.end > len(chunks):
                raise XetMissingError(f"file {name}: chunks [{seg.start}, {seg.end}) of xorb "
                                      f"{hashing.to_hex(seg.xorb)}, which holds {len(chunks)}")
            run = chunks[seg.start:seg.end]
            if sum(c.size for c in run) != seg.size:
                raise XetError(f"file {name}: segment {i} says {seg.size} bytes, its chunks hold "
                               f"{sum(c.size for c in run)}")
            if f.verification and hashing.range_hash([c.hash for c in run]) != f.verification[i]:
                raise XetError(f"file {name}: segment {i}'s verification hash does not match its chunks")
            nodes.extend((c.hash, c.size) for c in run)
        got = hashing.file_hash(nodes)
        if got != f.hash:
            raise XetError(f"file {name}: its chunks hash to {hashing.to_hex(got)}, not to its Xet hash")

    def _rebuild(self, f: shard.FileInfo, tables: dict[bytes, list[xorb.Chunk]]) -> BlobInfo:
        """Stream the file's bytes into the blob store, checked against its sha256 (skipped when this Xet hash
        was verified to rebuild to that sha256 before and the blob is still stored)."""
        assert f.sha256 is not None
        known = self._keyed("files", f.hash)
        try:
            if known.read_text().strip() == f.sha256 and self.blobs.exists(f.sha256):
                self.blobs.touch(f.sha256)
                return BlobInfo(f.sha256, f.size, created=False)
        except FileNotFoundError:
            pass
        info = self.blobs.put_stream(self._bytes_of(f, tables), expected=f.sha256)
        self._write_atomic(known, f.sha256.encode())
        return info

    def _bytes_of(self, f: shard.FileInfo, tables: dict[bytes, list[xorb.Chunk]]) -> Iterator[bytes]:
        """The file's bytes: each segment one contiguous range of its xorb's data, read in pieces."""
        for seg in f.segments:
            offset, length = tables[seg.xorb][seg.start].offset, seg.size
            with open(self._keyed("xorbs", seg.xorb, ".data"), "rb") as fh:
                fh.seek(offset)
                while length > 0:
                    piece = fh.read(min(length, COPY_PIECE))
                    if not piece:
                        raise XetError(f"the data of xorb {hashing.to_hex(seg.xorb)} ends early")
                    length -= len(piece)
                    yield piece

    def dedup_answer(self, chunk: bytes, may_use: Callable[[bytes], bool]) -> bytes | None:
        """The global dedup query's answer for `chunk`: a shard of the usable stored xorbs holding it, or None."""
        found = [x for x in self.xorbs_with_chunk(chunk) if may_use(x)]
        if not found:
            return None
        for x in found:
            self.touch(x)
        return shard.dedup_answer([(x, [(c.hash, c.size) for c in self.chunks(x)], self.xorb_bytes(x))
                                   for x in found])

    # ----- gc -------------------------------------------------------------------------------------------

    def sweep(self, referenced: set[str], grace_seconds: float, dry_run: bool = False) -> tuple[int, int]:
        """Remove the xorbs and shards no referenced blob (`referenced`: sha256 digests revisions name) needs,
        once unused for `grace_seconds`; prune the indexes. Returns (files removed, their bytes)."""
        cutoff = time.time() - grace_seconds
        needed: set[bytes] = set()
        removed = freed = 0
        for path in (self.root / "shards").glob("*.shard"):
            try:
                parsed = shard.parse(path.read_bytes())
            except (OSError, XetError):
                continue
            used = [f for f in parsed.files if f.sha256 in referenced]
            for f in used:
                needed.update(seg.xorb for seg in f.segments)
            if not used and path.stat().st_mtime < cutoff:
                removed, freed = removed + 1, freed + path.stat().st_size
                if not dry_run:
                    path.unlink(missing_ok=True)
        gone: set[bytes] = set()
        for path in (self.root / "xorbs").glob("*/*.data"):
            h = hashing.from_hex(path.name[:-len(".data")])
            if h in needed or self.files_of(h) & referenced or path.stat().st_mtime >= cutoff:
                continue
            removed, freed = removed + 1, freed + path.stat().st_size
            gone.add(h)
            if not dry_run:
                for suffix in (".idx", ".files", ".by", ".data"):
                    self._keyed("xorbs", h, suffix).unlink(missing_ok=True)
        if not dry_run:
            self._prune_index(gone, cutoff)
        return removed, freed

    def _prune_index(self, gone: set[bytes], cutoff: float) -> None:
        names = {hashing.to_hex(h) for h in gone}
        for path in (self.root / "chunks").glob("*/*"):
            lines = path.read_text().split()
            keep = [line for line in lines if line not in names]
            if not keep:
                path.unlink(missing_ok=True)
            elif len(keep) != len(lines):
                self._write_atomic(path, "".join(line + "\n" for line in keep).encode())
        for path in (self.root / "files").glob("*/*"):
            if not self.blobs.exists(path.read_text().strip()):
                path.unlink(missing_ok=True)
        for path in (self.root / "tmp").glob("*"):
            if path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
