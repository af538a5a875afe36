"""Hub commits as revisions: a hub client's commit applied to a branch head's files and pushed as one revision.

The Hugging Face, ModelScope and Xet dialects (registry/server/hf_upload.py, modelscope_upload.py, xet.py)
translate their wire format into `CommitOperation`s and call `Registry.commit`; nothing else of a commit
is theirs. The result goes through the same path as `swiftreg push` (rules.prepare_adapter: validation,
`.bin` weights stored as safetensors, pickles left out; blobs verified; one transaction numbering the
revision gap-free), so one commit is one revision, or nothing and the push's own refusal.

The files a commit starts from are the branch head's files **as stored** (a Swift revision's Swift
files, a PEFT revision's PEFT files). Files the commit adds by digest (LFS, Xet, ModelScope LFS) are
blobs already in the store: the checkpoint is materialised by hard links (no byte is copied) and only
the small inline files are written.

A repository made by `create_repo` exists with no revision (an adapter row, `revision_count` 0): `log`
lists nothing, `show`/reads of `main` say it has no branch `main`, and its first commit creates revision 1.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

import converters
from converters.layout import is_pickle_file

from .. import failpoints, rules
from ..api import RevisionInfo
from ..db.models import AdapterRecord, RefRecord, RevisionRecord
from ..errors import BlobsMissingError, InvalidCheckpointError, NotFoundError, RegistryError, StaleParentError
from ..ids import DEFAULT_REF, RepoId, check_tag, parse_id
from ..manifest import Manifest, check_relpath
from ..store.digests import validate_digest
from .push import PushMixin, adapter_meta

Op = Literal["add", "delete", "delete_folder", "copy"]


@dataclass(frozen=True)
class CommitOperation:
    """One operation of a hub commit, in the registry's terms (each dialect translates its wire format).

    - `add`: the file `path` with bytes `content` (a small inline file), or the blob `sha256`
      ("sha256:<hex>", already in the store: uploaded through LFS, Xet or ModelScope LFS) of `size`
      bytes (None: whatever the blob holds). Exactly one of `content` / `sha256`.
    - `delete`: the file `path` (a missing file is an error naming it, as on the Hub).
    - `delete_folder`: every file under folder `path` (none there is an error).
    - `copy`: the file `src_path` of the branch head (or of revision `src_revision`) to `path`.
    """

    op: Op
    path: str
    content: bytes | None = None
    sha256: str | None = None
    size: int | None = None
    src_path: str | None = None
    src_revision: str | None = None


@dataclass(frozen=True)
class CommitResult:
    """What a commit did: the revision the branch now points at, whether this commit created it,
    the pickle files it left out, and the push's notices (validation warnings, conversions)."""

    revision: RevisionInfo
    created: bool
    left_out: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)


class CommitsMixin(PushMixin):
    """commit, create_repo."""

    def create_repo(self, repo_id: str) -> bool:
        """Create adapter repository `repo_id` with no revision; False when it (or a base model so named) exists.

        The repository exists from now on (a hub client's `create_repo` then `upload_folder`): it lists with
        0 revisions and its first commit is revision 1.
        """
        rid = parse_id(repo_id, allow_ref=False)
        with self.db.read() as session:
            if self._find_repo(session, "adapter", rid) is not None or \
                    self._find_repo(session, "base", rid) is not None:
                return False
        with self.db.write() as session:  # race-free: of two concurrent creators, one inserts the row
            return bool(self.db.insert_ignore(session, AdapterRecord, namespace=rid.namespace, name=rid.name,
                                              revision_count=0, created_at=datetime.now().astimezone()))

    def commit(self, repo_id: str, operations: Sequence[CommitOperation], *, branch: str = DEFAULT_REF,
               parent: int | None = None, message: str | None = None, author: str | None = None) -> CommitResult:
        """Apply `operations` to the files of `branch`'s head and push the result as one revision on `branch`.

        `repo_id`: `namespace/name` of an adapter repository that exists (a revision, or `create_repo`);
        `branch` must exist, except `main` of a repository with no revision yet. `parent`: the revision
        number the client based the commit on (the dialect maps the hub's parent commit id to it); when
        the branch head is another revision the commit is refused with `StaleParentError` (412) and
        nothing is stored. The check is repeated inside the transaction that numbers the revision.

        The result is validated as `swiftreg push` validates a folder; an invalid one raises
        `InvalidCheckpointError` with the push's words, naming what is missing. Pickle files
        (`training_args.bin`, `optimizer.pt`, ...) are left out and recorded in the revision's metadata
        (`meta["left_out"]`). A commit whose result is the head's content creates nothing and returns
        the head (`created=False`); one whose result is an older revision's content moves `branch` to it.
        Blobs named by digest must be in the store (`BlobsMissingError` otherwise); whether the caller
        may name them is the dialect's check (the dedup rule: its token's namespaces or its own uploads).
        """
        rid = rules.push_target(repo_id, None)
        check_tag(branch)  # a branch name follows the tag grammar
        for attempt in range(_RETRIES):
            try:
                return self._commit_once(rid, operations, branch, parent, message, author)
            except _HeadMoved:
                if attempt == _RETRIES - 1:
                    raise StaleParentError(f"{rid.repo}@{branch} kept moving while this commit was applied; "
                                           "commit again") from None
        raise AssertionError("unreachable")

    # ----- the steps -------------------------------------------------------------------------------------

    def _head(self, rid: RepoId, branch: str) -> RevisionInfo | None:
        """The revision `branch` points at; None for `main` of a repository with no revision yet."""
        with self.db.read() as session:
            repo = self._find_repo(session, "adapter", rid)
            if repo is None:
                if self._find_repo(session, "base", rid) is not None:
                    raise RegistryError(f"{rid.repo} is a base model: hub commits store adapters only "
                                        f"(push a base model with `swiftreg push --base {rid.repo}`)")
                raise NotFoundError(f"no adapter {rid.repo} in this registry")
            found = session.scalars(select(RefRecord).where(
                self._ref_filter("adapter", repo.id), RefRecord.name == branch)).one_or_none()
            if found is None:
                if branch == DEFAULT_REF and repo.revision_count == 0:
                    return None
                raise NotFoundError(f"{rid.repo} has no branch {branch!r}")
            if found.kind != "branch":
                raise RegistryError(f"{rid.repo}@{branch} is a tag: commits go to a branch")
            rev = session.get(RevisionRecord, found.revision_id)
            assert rev is not None  # a foreign key
            return self._info(session, "adapter", repo, rev)

    def _commit_once(self, rid: RepoId, operations: Sequence[CommitOperation], branch: str, parent: int | None,
                     message: str | None, author: str | None) -> CommitResult:
        head = self._head(rid, branch)
        head_number = head.number if head is not None else None
        if parent is not None and parent != head_number:
            now = f"revision {head_number}" if head_number is not None else "no revision"
            raise StaleParentError(f"{rid.repo}@{branch} is at {now}, not at revision {parent} this commit was "
                                   "based on: pull, then commit again")
        files = _apply(self, rid, head, operations)
        left_out = sorted(p for p in files if is_pickle_file(p, weights_allowed=True))
        kept = {p: f for p, f in files.items() if p not in left_out}
        if not kept:
            raise InvalidCheckpointError(
                f"{rid.repo} is not a valid adapter checkpoint: the commit leaves no file but pickles"
                if left_out else f"{rid.repo} is not a valid adapter checkpoint: the commit leaves no file")
        missing = self.store.missing(f.sha256 for f in kept.values() if f.sha256 is not None)
        if missing:
            raise BlobsMissingError(f"{len(missing)} files of this commit name blobs not uploaded yet: "
                                    + ", ".join(p for p, f in kept.items() if f.sha256 in missing)[:300], missing)
        with tempfile.TemporaryDirectory(prefix="swiftreg-commit-", dir=self.home) as tmp:
            root = Path(tmp) / "checkpoint"
            known = self._materialise_commit(kept, root)
            try:
                checkpoint = converters.detect(root)
                prepared = rules.prepare_adapter(checkpoint, Path(tmp) / "staging",
                                                 hash_file=lambda path: known.get(_key(path)) or _hash(path))
            except InvalidCheckpointError as exc:  # the push's words, naming the repository, not a temp folder
                raise InvalidCheckpointError(str(exc).replace(str(root), rid.repo), exc.problems) from None
            except converters.FormatError as exc:
                listed = ", ".join(sorted(kept)[:5]) + (f" and {len(kept) - 5} more" if len(kept) > 5 else "")
                raise InvalidCheckpointError(
                    f"{rid.repo} would not be a valid adapter checkpoint after this commit (files: {listed}): "
                    + str(exc).replace(f"{root}: ", "").replace(str(root), rid.repo), [str(exc)]) from None
            manifest = prepared.manifest
            notices = [n for n in prepared.notices if not n.startswith("left out pickle files")]
            if left_out:
                notices.append("left out pickle files (never stored): " + ", ".join(left_out))
            if head is not None and head.digest == manifest.digest:
                return CommitResult(head, False, left_out, notices)
            same = self._find_revision("adapter", rid, manifest.digest)
            if same is not None and same.digest == manifest.digest:
                moved = self.branch(f"{rid.repo}@{same.number}", branch)
                return CommitResult(moved, False, left_out,
                                    notices + [f"{branch} moved to {rid.repo}@{same.number}, which holds this content"])
            meta = adapter_meta(converters.inspect(prepared.root).to_dict(), checkpoint)
            if left_out:
                meta["left_out"] = left_out
            self._store_files(prepared.files, manifest, None)
        failpoints.hit("commit:after-blobs")

        def expect_head(session: Session, repo: Any) -> None:
            ref = session.scalars(select(RefRecord).where(
                self._ref_filter("adapter", repo.id), RefRecord.name == branch)).one_or_none()
            now = None if ref is None else session.get(RevisionRecord, ref.revision_id)
            if (now.number if now is not None else None) != head_number:
                raise _HeadMoved()

        info, created = self._commit_revision(
            "adapter", rid, manifest, checkpoint.format, meta, tag=None, force=False, message=message,
            author=author, base_rev_id=None, repo_values={"tuner_type": meta.get("tuner_type")}, branch=branch,
            expect_head=expect_head)
        self._refs_changed()
        return CommitResult(info, created, left_out, notices)

    def _materialise_commit(self, files: dict[str, _File], root: Path) -> dict[tuple[int, int], tuple[str, int]]:
        """Write the commit's files under `root`: blobs hard-linked (copied only where links cannot be made),
        inline bytes written. Returns (device, inode) -> (digest, size) of the linked blobs, so the manifest
        pass need not hash again what the store verified when it took the blob."""
        known: dict[tuple[int, int], tuple[str, int]] = {}
        for rel, f in files.items():
            dst = root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if f.content is not None:
                dst.write_bytes(f.content)
                continue
            assert f.sha256 is not None
            size = self.store.size(f.sha256)
            if f.size is not None and f.size != size:
                raise InvalidCheckpointError(f"{rel}: the commit says {f.size} bytes, blob {f.sha256} holds {size}")
            source = self.store.path(f.sha256)
            linked = False
            if source is not None:
                try:
                    os.link(source, dst)
                    linked = True
                except OSError:
                    pass
            if not linked:
                self._copy_blob(f.sha256, dst, rel)  # verified while copied
            st = dst.stat()
            known[(st.st_dev, st.st_ino)] = (f.sha256, size)
        return known


@dataclass(frozen=True)
class _File:
    """A file of a commit's result: a stored blob (sha256, size or None) or inline bytes."""

    sha256: str | None = None
    size: int | None = None
    content: bytes | None = None


class _HeadMoved(Exception):
    """The branch moved between reading its head and numbering the commit's revision (retried)."""


#: How often a commit with no parent is re-applied when its branch moves under it.
_RETRIES = 5


def _apply(registry: CommitsMixin, rid: RepoId, head: RevisionInfo | None,
           operations: Sequence[CommitOperation]) -> dict[str, _File]:
    """The head's files with `operations` applied in order: path -> file."""
    files: dict[str, _File] = {}
    if head is not None:
        for entry in Manifest.from_json(head.manifest).files:
            files[entry.path] = _File(entry.sha256, entry.size)
    for op in operations:
        path = check_relpath(op.path)
        if op.op == "add":
            if (op.content is None) == (op.sha256 is None):
                raise RegistryError(f"{path}: a file is added by its bytes or by its sha256, not both or neither")
            files[path] = _File(content=op.content) if op.content is not None \
                else _File(validate_digest(op.sha256 or ""), op.size)
        elif op.op == "delete":
            if files.pop(path, None) is None:
                raise NotFoundError(f"{path}: no such file in {rid.repo} to delete")
        elif op.op == "delete_folder":
            prefix = path.rstrip("/") + "/"
            gone = [p for p in files if p.startswith(prefix)]
            if not gone:
                raise NotFoundError(f"{path}: no such folder in {rid.repo} to delete")
            for p in gone:
                del files[p]
        elif op.op == "copy":
            src = check_relpath(op.src_path or "")
            source = files if op.src_revision is None else {
                e.path: _File(e.sha256, e.size) for e in Manifest.from_json(
                    registry.show(f"{rid.repo}@{op.src_revision}").manifest).files}
            if src not in source:
                raise NotFoundError(f"{src}: no such file in {rid.repo} to copy")
            files[path] = source[src]
        else:
            raise RegistryError(f"unknown commit operation {op.op!r}")
    return files


def _key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return (st.st_dev, st.st_ino)


def _hash(path: Path) -> tuple[str, int]:
    """sha256 and size of a file the commit wrote (inline files, a .bin's safetensors form)."""
    hasher, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            hasher.update(chunk)
            size += len(chunk)
    return "sha256:" + hasher.hexdigest(), size
