"""RemoteRegistry: the local `Registry`'s Python API, spoken over HTTP to a `swiftreg serve`.

    from registry.client import RemoteRegistry
    reg = RemoteRegistry("http://registry.internal:8000", token="srg_...")
    reg.push("out/checkpoint", "team/sql-lora", tag="v3")
    folder = reg.resolve("team/sql-lora@v3", format="peft")

With SWIFTREG_URL (and SWIFTREG_TOKEN) set, `registry.resolve`, `registry.default_registry()` and every
`swiftreg` command use this class instead of the embedded registry: a URL alone switches local and
remote. The protocol is the one in registry/server/__init__.py.

Push: the checkpoint is detected and validated here first (the refusals of a local push, .bin weights
stored as safetensors), hashed, and only the blobs the server lacks are uploaded, in resumable PATCH
chunks read from disk: HEAD tells how many bytes the server already holds, so a push killed halfway
continues where it stopped and a re-push of unchanged files sends no blob bytes. Then one request
commits the manifest; the server re-checks everything before the revision exists.

Resolve / pull: the revision's file list comes from the server; every file is downloaded into a
snapshot cache laid out like the local one (registry/snapshots.py builds it), each blob through a
`.part` file that a later process resumes with `Range` and that is verified (sha256) before it is
renamed into place:

    $SWIFTREG_HOME/remote/<host>_<port>/
        snapshots/<ns>/<name>/r<N>-<format>-<digest16>/   verified folders, as in local mode
        downloads/<sha256 hex>.part                        a blob download in progress or interrupted
        refs/<ns>/<name>/<format>/<ref>                    the last answer for each ref (offline use)

Revision numbers and digests are immutable and remembered in the process; tags and branches are asked
of the server on every resolve, and when it cannot be reached the last answer under refs/ is used, so
an adapter resolved once keeps working offline.

Every call has timeouts; idempotent ones (GET, HEAD, PUT, DELETE, and the read-only POST
blobs/missing) are retried with exponential backoff on connection errors and 5xx answers, any call on
`503 unavailable` after its Retry-After; an upload is resumed from the server's offset instead, a
download from the `.part` file's length. Every one of these loops gives up: after `retries` failures
in a row without progress, `retry_seconds` after the first of them, and after a fixed number of tries
of one blob in all (transport.Budget; SWIFTREG_RETRIES, SWIFTREG_RETRY_SECONDS). A blob the server
holds with the wrong size or bytes is an error naming it at once.

The HTTP itself (client, retries, error mapping) is transport.py beside this module; blob downloads
(.part files, Range, verification) downloads.py. Errors are the classes the server raised
(NotFoundError, RefExistsError, InvalidCheckpointError, a converters.FormatError, ...), rebuilt from
its JSON error code and message by registry.errors.from_payload; the ones only a remote registry
meets (RemoteError, AccessDeniedError, ServerUnreachableError) are in registry/errors.py's tree too.
"""
from __future__ import annotations

import builtins
import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterable, Iterator, Mapping, TypeVar
from urllib.parse import quote

import httpx

import converters
from converters.base_model import BaseModel

from .. import atomic, constants, rules
from ..errors import (
    AccessDeniedError, BlobsMissingError, IntegrityError, InvalidCheckpointError, InvalidIdError, JobError,
    NotFoundError,
    RegistryError, RemoteError, rebuild,
)
from ..api import GcResult, Kind, Progress, PushResult, RepoInfo, RetentionPolicy, RetentionReport, RevisionInfo
from ..ids import RepoId, check_tag, parse_id
from ..manifest import Manifest
from ..snapshots import SnapshotCache
from ..store.digests import format_digest, new_hasher, validate_digest
from .direct import DirectUploader
from .downloads import READ_CHUNK, BlobDownloader
from .transport import COMMIT_TIMEOUT, DEFAULT_TIMEOUT, Http, error_from, retry_after, retryable

__all__ = ["RemoteRegistry", "cache_dir_name"]

#: Bytes per upload request (PATCH), streamed from disk READ_PIECE at a time. Each request is a resume
#: point: a push killed midway resends at most one (none when the server keeps a cut request's bytes).
UPLOAD_CHUNK = 32 << 20
READ_PIECE = 1 << 20


# ----- parsing answers --------------------------------------------------------------------------------

T = TypeVar("T")


def _parsed(parse: Callable[[Mapping[str, Any]], T], data: Any, what: str) -> T:
    """A value type (registry/api.py) from the server's JSON; a malformed answer is a RemoteError."""
    if not isinstance(data, Mapping):
        raise RemoteError(f"the server's {what} answer is not a JSON object")
    try:
        return parse(data)
    except ValueError as exc:
        raise RemoteError(f"the server sent a {exc}") from None


def _revision(data: Any) -> RevisionInfo:
    return _parsed(RevisionInfo.from_dict, data, "revision")


def _policy(data: Any) -> RetentionPolicy | None:
    """The `{"policy": ...}` answer of the retention routes."""
    if not isinstance(data, Mapping):
        raise RemoteError("the server's retention answer is not a JSON object")
    policy = data.get("policy")
    return None if policy is None else _parsed(RetentionPolicy.from_dict, policy, "retention policy")


def _files_of(data: Mapping[str, Any]) -> Manifest:
    """The file list of a refs answer (`files`, else the stored manifest), every path and digest checked."""
    files = data.get("files")
    if files is None:
        files = (data.get("revision") or data).get("manifest", {}).get("files")
    if isinstance(files, Mapping):  # {"files": [...]} nested
        files = files.get("files")
    manifest = Manifest.from_json({"files": files})
    for entry in manifest.files:
        validate_digest(entry.sha256)
        if entry.size < 0:
            raise RemoteError(f"the server lists {entry.path} with a negative size")
    return manifest


def cache_dir_name(url: str) -> str:
    """`<host>_<port>` of a server URL, safe as one folder name."""
    parsed = httpx.URL(url)
    if not parsed.host:
        raise RegistryError(f"SWIFTREG_URL {url!r} is not an http(s) URL like http://127.0.0.1:8000")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return f"{re.sub(r'[^A-Za-z0-9.-]', '-', parsed.host)}_{port}"


def _file_range(f: BinaryIO, offset: int, length: int, rel: str) -> Iterator[bytes]:
    """`length` bytes of an open file from `offset`, streamed in READ_PIECE pieces (bounded memory)."""
    f.seek(offset)
    while length > 0:
        piece = f.read(min(READ_PIECE, length))
        if not piece:
            raise IntegrityError(f"{rel}: the file shrank while it was being pushed; push it again")
        length -= len(piece)
        yield piece


# ----- the registry --------------------------------------------------------------------------------------

class RemoteRegistry:
    """A registry behind `swiftreg serve`: the `registry.api.RegistryAPI` that `Registry` offers locally."""

    def __init__(self, url: str, token: str | None = None, home: Path | str | None = None, *,
                 timeout: httpx.Timeout | float = DEFAULT_TIMEOUT, retries: int | None = None,
                 retry_seconds: float | None = None, backoff: float = 0.25, chunk_size: int = UPLOAD_CHUNK,
                 transport: httpx.BaseTransport | None = None) -> None:
        """`retries` / `retry_seconds` bound every retry loop (transport.Budget); None reads SWIFTREG_RETRIES
        (default 4) / SWIFTREG_RETRY_SECONDS (default 120)."""
        if not url or not str(url).startswith(("http://", "https://")):
            raise RegistryError(f"registry URL {url!r} must start with http:// or https://")
        self.url = str(url).rstrip("/")
        self.home = Path(home) if home is not None else constants.home()
        self.home.mkdir(parents=True, exist_ok=True)
        self.cache = self.home / "remote" / cache_dir_name(self.url)
        self.snapshots = SnapshotCache(self.cache / "snapshots")
        self.chunk_size = max(1, int(chunk_size))
        timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        retries = constants.retries() if retries is None else max(0, int(retries))
        retry_seconds = constants.retry_seconds() if retry_seconds is None else max(0.0, float(retry_seconds))
        self._http = Http(self.url, token, timeout, retries, backoff, transport, retry_seconds)
        self._downloads = BlobDownloader(self._http, self.url, self.cache / "downloads")
        self._direct = DirectUploader(self._http)  # presigned uploads to the server's object store
        # resolve() memo for immutable refs (numbers, digests): (id, format) -> folder.
        self._memo: dict[tuple[str, str | None], Path] = {}

    def __repr__(self) -> str:
        return f"RemoteRegistry({self.url!r}, home={str(self.home)!r})"

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> "RemoteRegistry":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- plumbing -----------------------------------------------------------------------------------

    @staticmethod
    def _repo_path(rid: RepoId) -> str:
        return f"/api/v1/repos/{rid.namespace}/{rid.name}"

    @staticmethod
    def _q(value: str) -> str:
        return quote(value, safe=":")

    def _ref_answer(self, rid: RepoId, ref: str, format: str | None = None,
                    retries: int | None = None) -> dict[str, Any]:
        params = {"format": format} if format else None
        data = self._http.json("GET", f"{self._repo_path(rid)}/refs/{self._q(ref)}", params=params,
                               retries=retries)
        if not isinstance(data, dict):
            raise RemoteError("the server's refs answer is not a JSON object")
        return data

    def stats(self) -> dict[str, Any]:
        """The server's counters (bytes_received, blobs_stored, ...); needs an admin token."""
        return self._http.json("GET", "/api/v1/stats")

    # ----- reading -------------------------------------------------------------------------------------

    def show(self, repo_id: str) -> RevisionInfo:
        rid = parse_id(repo_id)
        return _revision(self._ref_answer(rid, rid.ref.value))

    def log(self, repo_id: str, *, limit: int | None = None, after: int | None = None) -> list[RevisionInfo]:
        """Revisions, newest first (without manifests: `show` one for its files)."""
        rid = rules.log_target(repo_id)
        limit, after = rules.page(limit, rules.after_number(after))
        params = {k: str(v) for k, v in (("limit", limit), ("after", after)) if v is not None}
        data = self._http.json("GET", f"{self._repo_path(rid)}/revisions", params=params or None)
        items = data.get("revisions", []) if isinstance(data, Mapping) else data
        return sorted((_revision(d) for d in items), key=lambda r: r.number, reverse=True)

    def list(self, namespace: str | None = None, *, limit: int | None = None,
             after: str | None = None) -> list[RepoInfo]:
        limit, _ = rules.page(limit, after and rules.parse_cursor(after))
        params = {k: str(v) for k, v in (("namespace", namespace), ("limit", limit), ("after", after)) if v}
        data = self._http.json("GET", "/api/v1/repos", params=params or None)
        items = data.get("repos", []) if isinstance(data, Mapping) else data
        return [_parsed(RepoInfo.from_dict, d, "repository") for d in items]

    # ----- refs ------------------------------------------------------------------------------------------

    def tag(self, repo_id: str, tag: str, *, force: bool = False) -> RevisionInfo:
        rid = parse_id(repo_id)
        check_tag(tag)
        data = self._http.json("PUT", f"{self._repo_path(rid)}/tags/{self._q(tag)}",
                               json={"ref": rid.ref.value, "force": force})
        return _revision(data)

    def branch(self, repo_id: str, branch: str) -> RevisionInfo:
        rid = parse_id(repo_id)
        check_tag(branch)
        data = self._http.json("PUT", f"{self._repo_path(rid)}/branches/{self._q(branch)}",
                               json={"ref": rid.ref.value})
        return _revision(data)

    def delete_revision(self, repo_id: str) -> RevisionInfo:
        """Delete a revision on the server (an admin token on its namespace); refused while something needs it."""
        rid = parse_id(repo_id)
        if not rid.explicit_ref:
            raise InvalidIdError(f"name the revision to delete: {rid.repo}@NUMBER (a number or sha256 digest)")
        return _revision(self._http.json("DELETE", f"{self._repo_path(rid)}/revisions/{self._q(rid.ref.value)}"))

    def set_retention(self, repo_id: str, keep_last: int | None, *,
                      keep_tagged: bool = True) -> RetentionPolicy | None:
        rid = parse_id(repo_id, allow_ref=False)
        data = self._http.json("PUT", f"{self._repo_path(rid)}/retention",
                               json={"keep_last": keep_last, "keep_tagged": keep_tagged})
        return _policy(data)

    def retention(self, repo_id: str) -> RetentionPolicy | None:
        rid = parse_id(repo_id, allow_ref=False)
        return _policy(self._http.json("GET", f"{self._repo_path(rid)}/retention"))

    def apply_retention(self, repo_id: str | None = None, *, dry_run: bool = False) -> RetentionReport:
        repo = parse_id(repo_id, allow_ref=False).repo if repo_id is not None else None
        data = self._http.json("POST", "/api/v1/retention/apply", json={"repo": repo, "dry_run": dry_run})
        return _parsed(RetentionReport.from_dict, data, "retention report")

    def untag(self, repo_id: str, tag: str) -> None:
        rid = parse_id(repo_id)
        self._http.send("DELETE", f"{self._repo_path(rid)}/tags/{self._q(tag)}")

    def remove_ref(self, repo_id: str, *, force: bool = False) -> None:
        """`rm ns/name@ref`: drop a tag or branch on the server; revisions stay."""
        rid = rules.ref_to_remove(repo_id, force=force)
        self._http.send("DELETE", f"{self._repo_path(rid)}/refs/{self._q(rid.ref.value)}",
                        params={"force": "true" if force else "false"})

    def gc(self, grace_seconds: float = 3600.0, dry_run: bool = False) -> GcResult:
        """Garbage-collect the server's blob store (admin token)."""
        data = self._http.json("POST", "/api/v1/gc", json={"grace_seconds": grace_seconds, "dry_run": dry_run})
        return _parsed(GcResult.from_dict, data, "gc")

    def check_serving(self, repo_id: str, target: str = "vllm", *, max_lora_rank: int = 16,
                      served_model: str | None = None, record: bool = True) -> dict[str, Any]:
        """The server checks what `target` can serve of the revision and records the verdict (write token).

        `served_model` must be a registry base model id here: the server never reads paths it is sent.
        """
        rid = parse_id(repo_id)
        if target != "vllm" or not record:
            raise RegistryError("a remote registry runs and records the 'vllm' serving check only; for an unrecorded "
                                "check use `swiftreg validate ID --target vllm`")
        return self._http.json("POST", f"{self._repo_path(rid)}/refs/{self._q(rid.ref.value)}/checks/vllm",
                               json={"max_lora_rank": max_lora_rank, "base_model": served_model})

    # ----- push --------------------------------------------------------------------------------------------

    def import_from(self, source: str, repo_id: str, *, tag: str | None = None, base_model: str | None = None,
                    subfolder: str | None = None, message: str | None = None, progress: Progress | None = None,
                    wait: float | None = 3600.0, poll: float = 1.0,
                    on_queued: Callable[[Any], None] | None = None, base_folder: Path | None = None,
                    allow_nonfinite: bool = False) -> Any:
        """Import on the server's side: an `import` job its workers run, downloading from the hub there
        (the server's HF_ENDPOINT / MODELSCOPE_ENDPOINT apply, and no adapter bytes cross this client).

        Waits up to `wait` seconds for the job (None: for ever); `on_queued` hears the queued job
        first. Returns the same ImportResult as a local import; a failed import raises the job's error.
        """
        from ..hubs import ImportResult, parse_source

        if base_folder is not None:
            raise RegistryError(f"the server imports with its own workers and cannot read the folder {base_folder}: "
                                "push that base model first (`swiftreg base push DIR NS/NAME`) and name it, or import "
                                "into the embedded registry (without SWIFTREG_URL)")
        params: dict[str, Any] = {"source": source, "id": repo_id}
        for key, value in (("tag", tag), ("base_model", base_model), ("subfolder", subfolder), ("message", message)):
            if value is not None:
                params[key] = value
        if allow_nonfinite:
            params["allow_nonfinite"] = True
        src = parse_source(source)
        job = self.submit_job("import", params, key=f"import:{uuid.uuid4().hex}")
        if on_queued is not None:
            on_queued(job)
        deadline = None if wait is None else time.monotonic() + wait
        while not job.finished:
            if deadline is not None and time.monotonic() > deadline:
                raise JobError(f"import job {job.id} on {self.url} is still {job.status} after {wait:.0f} s: is a "
                               f"`swiftreg worker` running beside that server? (`swiftreg jobs show {job.id}` "
                               "follows it; it stays queued)")
            time.sleep(poll)
            job = self.job(job.id)
        result = job.result or {}
        if job.status != "succeeded":
            error = result.get("error") or f"the import job ended {job.status}"
            error = f"{error} (import job {job.id} on {self.url})"
            # a refusal keeps its class (a HubNotFoundError is still a NotFoundError); a crash is a JobError
            raise rebuild(result.get("code") or "", error, result.get("details")) or JobError(error)
        revision = self.show(f"{result['revision']['repo']}@{result['revision']['number']}")
        return ImportResult(revision, bool(result.get("created")), bool(result.get("already_imported")), src,
                            str(result.get("commit", "")), list(result.get("files", [])),
                            list(result.get("notices", [])))

    def push(self, path: Path | str, repo_id: str, *, tag: str | None = None, force: bool = False,
             message: str | None = None, author: str | None = None, base_model: str | None = None,
             parents: builtins.list[dict[str, Any]] | None = None, progress: Progress | None = None,
             allow_nonfinite: bool = False, base_folder: Path | str | None = None) -> PushResult:
        """Upload the checkpoint at `path` as a new revision of adapter `repo_id` (or find it already there).

        Validated here first (the server checks again, and against `base_model`); only blobs the
        server lacks are sent. `author` is accepted for API parity: the server records the token's
        owner. `bytes_written` / `blobs_written` count what this call uploaded. NaN or Inf tensor
        values are refused (here and by the server) unless `allow_nonfinite`. `base_folder`: a local model
        folder validated against here (the server cannot read it, and records no base).
        """
        rid = rules.push_target(repo_id, tag)
        checkpoint = converters.detect(Path(path))
        if base_model is not None:
            self._check_base(base_model)  # refused before uploading; the server validates against it
        with tempfile.TemporaryDirectory(prefix="swiftreg-push-", dir=self.home) as staging:
            base = BaseModel.open(Path(base_folder)) if base_folder is not None else None
            prepared = rules.prepare_adapter(checkpoint, Path(staging), base, allow_nonfinite=allow_nonfinite)
            manifest, notices = prepared.manifest, prepared.notices
            existing = self._existing(rid, "adapter", manifest.digest, tag, force)
            if existing is not None:
                return PushResult(existing, created=False, blobs_written=0, bytes_written=0,
                                  notices=notices + rules.repush_notices(rid.repo, existing))
            written, written_bytes = self._upload_files(prepared.files, manifest, progress)
            try:
                result = self._commit(rid, manifest, prepared.files, "adapter", tag=tag, force=force, message=message,
                                      base_model=base_model, parents=parents, allow_nonfinite=allow_nonfinite)
            except InvalidCheckpointError as exc:  # the server's checks against the base
                raise rules.named_after_folder(exc, rid.repo, checkpoint.path) from None
        notices += [n for n in result.notices if n not in notices]
        return PushResult(result.revision, result.created, written + result.blobs_written,
                          written_bytes + result.bytes_written, notices)

    def push_base(self, path: Path | str, repo_id: str, *, tag: str | None = None, force: bool = False,
                  message: str | None = None, parents: builtins.list[dict[str, Any]] | None = None,
                  progress: Progress | None = None) -> PushResult:
        """Upload a transformers model folder (config.json + safetensors) as a base-model revision."""
        rid = rules.push_target(repo_id, tag)
        prepared = rules.prepare_base(path)  # the local refusals: no config.json, no safetensors
        existing = self._existing(rid, "base", prepared.manifest.digest, tag, force)
        if existing is not None:
            return PushResult(existing, False, 0, 0, prepared.notices + rules.repush_notices(rid.repo, existing))
        written, written_bytes = self._upload_files(prepared.files, prepared.manifest, progress)
        result = self._commit(rid, prepared.manifest, prepared.files, "base", tag=tag, force=force, message=message,
                              base_model=None, parents=parents)
        return PushResult(result.revision, result.created, written + result.blobs_written,
                          written_bytes + result.bytes_written, prepared.notices + result.notices)

    def _check_base(self, base_id: str) -> None:
        """Refuse a `base_model` that names no base model revision, in the words of a local push."""
        try:
            base = self.show(base_id)
        except NotFoundError:
            try:
                revisions = self.log(parse_id(base_id).repo)
            except NotFoundError:
                raise rules.no_base_model(base_id) from None
            if revisions and revisions[0].kind != "base":
                raise rules.no_base_model(base_id) from None
            raise
        if base.kind != "base":
            raise rules.no_base_model(base_id)

    def _existing(self, rid: RepoId, kind: Kind, digest: str, tag: str | None, force: bool) -> RevisionInfo | None:
        """The revision already holding this content (tagged if asked), by the shared re-push rule."""
        return rules.existing_revision(rid, kind, digest, tag, force, find=lambda ref: self._find_revision(rid, ref),
                                       tag_revision=self.tag)

    def _find_revision(self, rid: RepoId, ref: str) -> RevisionInfo | None:
        """The revision of `rid.repo` that `ref` names on the server; None if there is none."""
        try:
            return _revision(self._ref_answer(rid, ref))
        except NotFoundError:
            return None

    def _missing(self, digests: builtins.list[str]) -> builtins.list[str]:
        data = self._http.json("POST", "/api/v1/blobs/missing", json={"digests": digests}, idempotent=True)
        if isinstance(data, Mapping):  # whether the server hands out presigned uploads (client/direct.py)
            self._direct.available = bool(data.get("direct_uploads"))
        missing = data.get("missing") if isinstance(data, Mapping) else None
        if not isinstance(missing, list):
            raise RemoteError("the server's blobs/missing answer has no 'missing' list")
        return [validate_digest(d) for d in missing]

    def _upload_files(self, files: builtins.list[tuple[str, Path]], manifest: Manifest,
                      progress: Progress | None, only: Iterable[str] | None = None) -> tuple[int, int]:
        """Upload the blobs the server lacks (or just `only`); progress gets every file's bytes."""
        by_path = {f.path: f for f in manifest.files}
        missing = set(only) if only is not None else set(self._missing(list(dict.fromkeys(
            f.sha256 for f in manifest.files))))
        written = written_bytes = 0
        for rel, full in files:
            entry = by_path[rel]
            if entry.sha256 in missing:
                written_bytes += self._upload(entry.sha256, full, entry.size, rel, progress)
                missing.discard(entry.sha256)
                written += 1
            elif progress is not None and only is None:
                progress(entry.size)
        return written, written_bytes

    def _upload_offset(self, digest: str) -> tuple[int, bool]:
        """(bytes the server holds of this blob, whether it is complete and verified)."""
        response = self._http.send("HEAD", f"/api/v1/uploads/{self._q(digest)}", allow=(404,))
        if response.status_code == 404:
            return 0, False
        try:
            offset = int(response.headers.get("Upload-Offset", "0"))
        except ValueError:
            raise RemoteError(f"HEAD uploads/{digest}: Upload-Offset is not a number") from None
        return offset, response.headers.get("Upload-Complete", "false").lower() == "true"

    def _upload(self, digest: str, path: Path, size: int, rel: str, progress: Progress | None) -> int:
        """Send the bytes of one blob from where the server stands; returns the bytes sent by this call.
        Straight to the server's object store when it offers presigned URLs (client/direct.py)."""
        direct = self._direct.upload(digest, path, size, rel, progress)
        if direct is not None:
            return direct
        url = f"/api/v1/uploads/{self._q(digest)}"
        offset, complete = self._upload_offset(digest)
        if complete:
            if progress is not None:
                progress(size)
            return 0
        if offset > size:
            raise RemoteError(f"the server holds {offset} bytes of {rel} ({digest}), which has {size}")
        if progress is not None and offset:
            progress(offset)
        sent = 0
        furthest = offset  # the most bytes of this blob the server has held: getting past it is progress
        budget = self._http.budget(transfer=True)
        response: httpx.Response | None
        error: httpx.TransportError | None
        with open(path, "rb") as f:
            while True:
                length = min(self.chunk_size, size - offset)
                try:
                    response = self._http.client.patch(url, content=_file_range(f, offset, length, rel), headers={
                        "Upload-Offset": str(offset), "Upload-Length": str(size), "Content-Length": str(length),
                        "Content-Type": "application/offset+octet-stream"})
                except httpx.TransportError as exc:
                    response, error = None, exc
                else:
                    error = None
                    if response.status_code in (201, 204):
                        sent += length
                        if response.status_code == 201:
                            if progress is not None:
                                progress(size - offset)
                            return sent
                        try:
                            new = int(response.headers["Upload-Offset"])
                        except (KeyError, ValueError):
                            new = offset + length
                        if progress is not None and new > offset:
                            progress(new - offset)
                        if new <= offset and length:
                            raise RemoteError(f"the server did not advance the upload of {rel} past {offset}")
                        offset = new
                        if offset > furthest:
                            furthest = offset
                            budget.progress()
                        if offset >= size and not length:
                            return sent
                        continue
                    if response.status_code == 422:
                        raise IntegrityError(f"{rel}: the server refused the bytes of blob {digest}: "
                                             f"{error_from(response, 'PATCH ' + url)} (did the file change during "
                                             "the push? push it again)")
                    # 409: another upload holds the blob, or its bytes moved the offset: follow the server
                    if response.status_code != 409 and not retryable(response):
                        raise error_from(response, f"PATCH {url}")
                # A dropped connection, a 409 or a 5xx: ask the server where it stands and go on from there.
                if not budget.again(retry_after(response)):
                    if response is None:
                        raise self._http.unreachable("PATCH", url, error, budget) from None
                    raise self._http.final("PATCH", url, response, budget)
                offset, sent, complete = self._follow(digest, offset, size, sent, progress)
                if complete:
                    return sent
                if offset > furthest:
                    furthest = offset
                    budget.progress()

    def _follow(self, digest: str, offset: int, size: int, sent: int,
                progress: Progress | None) -> tuple[int, int, bool]:
        """After a cut or refused PATCH: the server's offset, with the bytes it kept counted as sent."""
        new, complete = self._upload_offset(digest)
        if complete:
            new = size
        if new > offset:
            sent += new - offset  # part of a cut request (or another client's bytes: close enough)
            if progress is not None:
                progress(new - offset)
        return new, sent, complete

    def _commit(self, rid: RepoId, manifest: Manifest, files: builtins.list[tuple[str, Path]], kind: Kind, *,
                tag: str | None, force: bool, message: str | None, base_model: str | None,
                parents: builtins.list[dict[str, Any]] | None, allow_nonfinite: bool = False) -> PushResult:
        """POST the manifest. A blob gc took meanwhile is uploaded again once.

        A commit is content-addressed (the same manifest gives the same revision), so it is retried
        like an idempotent call; a retry after a lost answer reports created=False.
        """
        body: dict[str, Any] = {"manifest": manifest.to_json(), "kind": kind, "tag": tag, "force": force,
                                "message": message,
                "base_model": base_model, "parents": list(parents or [])}
        if allow_nonfinite:
            body["allow_nonfinite"] = True
        extra_blobs = extra_bytes = 0
        for attempt in range(2):
            try:
                response = self._http.send("POST", f"{self._repo_path(rid)}/revisions", json=body, idempotent=True,
                                           timeout=COMMIT_TIMEOUT)
                break
            except BlobsMissingError as exc:
                if attempt:
                    raise
                n, b = self._upload_files(files, manifest, None, only=exc.missing)
                extra_blobs, extra_bytes = extra_blobs + n, extra_bytes + b
        data = response.json()
        info = _revision(data)
        created = bool(data.get("created", response.status_code == 201)) if isinstance(data, Mapping) else True
        notices = list(data.get("notices") or []) if isinstance(data, Mapping) else []
        return PushResult(info, created, extra_blobs, extra_bytes, notices)

    # ----- materialising ------------------------------------------------------------------------------------

    def resolve(self, repo_id: str, format: str | None = None) -> Path:
        """A verified local folder holding `repo_id`'s revision in `format` (its stored format by default).

        Numbers and digests are answered from memory after the first call; tags and branches are
        asked of the server each time, and from the last recorded answer when it is unreachable.
        """
        hit = self._memo.get((repo_id, format))
        if hit is not None and os.path.isdir(hit):
            return hit
        rid = parse_id(repo_id)
        cached = self._cached_ref(rid, format)
        # the server converts to the adapter formats; any other is the stored one or refused (rules.served_format)
        asked = format if format in rules.ADAPTER_FORMATS else None
        try:  # with an answer on disk to fall back on, a down server is not waited for long
            data = self._ref_answer(rid, rid.ref.value, asked, retries=1 if cached is not None else None)
        except RemoteError as exc:
            refused = isinstance(exc, AccessDeniedError) or (exc.status is not None and exc.status < 500)
            if cached is None or refused:
                raise
            return cached
        info = _revision(data)
        target = rules.served_format(rid.repo, info.kind, info.format, format)
        folder = self.snapshots.folder(rid.namespace, rid.name, info.number, target, info.digest)
        if not folder.is_dir():
            files = _files_of(data)
            self._materialise(folder, files)
        self._record_ref(rid, format, info.number, target, info.digest, folder)
        if rid.ref.kind in ("number", "digest"):
            if len(self._memo) > 4096:
                self._memo.clear()
            self._memo[(repo_id, format)] = folder
        return folder

    def pull(self, repo_id: str, output: Path | str | None = None, format: str | None = None, *,
             overwrite: bool = False) -> Path:
        """Materialise a revision; with `output`, copy it there (atomically) and return that path."""
        return rules.pulled(self.resolve(repo_id, format), output, overwrite=overwrite)

    # refs/<ns>/<name>/<format or _stored>/<ref>: the last folder a ref resolved to, for offline use.

    def _ref_file(self, rid: RepoId, format: str | None) -> Path:
        return self.cache / "refs" / rid.namespace / rid.name / (format or "_stored") / rid.ref.value

    def _record_ref(self, rid: RepoId, format: str | None, number: int, target: str, digest: str,
                    folder: Path) -> None:
        path = self._ref_file(rid, format)
        record = {"digest": digest, "number": number, "format": target, "folder": folder.name}
        try:
            if path.is_file() and json.loads(path.read_text()) == record:
                return
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic.write_file(path, json.dumps(record).encode())
        except (OSError, ValueError):
            pass  # only an offline convenience: never fail a resolve over it

    def _cached_ref(self, rid: RepoId, format: str | None) -> Path | None:
        try:
            record = json.loads(self._ref_file(rid, format).read_text())
            folder = self.snapshots.folder(rid.namespace, rid.name, int(record["number"]), str(record["format"]),
                                           validate_digest(record["digest"]))
        except (OSError, ValueError, KeyError, TypeError, RegistryError):
            return None
        return folder if folder.is_dir() else None

    def _materialise(self, folder: Path, files: Manifest) -> Path:
        """Build a snapshot folder from the server's blobs (through SnapshotCache: locked, atomic)."""
        placed: dict[str, Path] = {}
        sizes = {f.path: f.size for f in files.files}

        def fetch(digest: str, dst: Path, rel: str) -> None:
            size = sizes[rel]
            first = placed.get(digest)
            if first is None or not self._copy_verified(first, dst, digest):
                if not self._reuse_sibling(folder, rel, size, digest, dst):
                    self._downloads.download(digest, size, dst, rel)
            placed[digest] = dst

        return self.snapshots.materialise(folder, lambda: files, fetch)

    @staticmethod
    def _copy_verified(src: Path, dst: Path, digest: str) -> bool:
        """Copy a local file that should hold `digest`; keep the copy only if it really does."""
        try:
            shutil.copyfile(src, dst)
            hasher = new_hasher()
            with open(dst, "rb") as f:
                while chunk := f.read(READ_CHUNK):
                    hasher.update(chunk)
        except OSError:
            dst.unlink(missing_ok=True)
            return False
        if format_digest(hasher.hexdigest()) != digest:
            dst.unlink(missing_ok=True)
            return False
        return True

    def _reuse_sibling(self, folder: Path, rel: str, size: int, digest: str, dst: Path) -> bool:
        """Take an unchanged file from another cached revision of the same repository, not the network."""
        try:
            siblings = [d for d in folder.parent.iterdir() if d.is_dir() and not d.name.startswith(".")]
        except OSError:
            return False
        for sibling in siblings:
            candidate = sibling / rel
            try:
                if candidate.is_file() and not candidate.is_symlink() and candidate.stat().st_size == size:
                    if self._copy_verified(candidate, dst, digest):
                        return True
            except OSError:
                continue
        return False

    # ----- jobs and validation history (issue 6; the server only queues: its workers run them) -----------

    def submit_job(self, kind: str, params: dict[str, Any], *, key: str | None = None, backend: str = "worker",
                   ray_address: str | None = None) -> Any:
        """Queue a job on the server (idempotent with `key`); the server's workers run it."""
        from ..jobs.queue import JobInfo

        if backend != "worker":
            raise RegistryError(f"a remote registry only queues jobs for its workers: use backend 'worker', "
                                f"not {backend!r}")
        body: dict[str, Any] = {"kind": kind, "params": params}
        if key is not None:
            body["idempotency_key"] = key
        return JobInfo.from_dict(self._http.json("POST", "/api/v1/jobs", json=body, idempotent=key is not None))

    def job(self, job_id: int) -> Any:
        from ..jobs.queue import JobInfo

        return JobInfo.from_dict(self._http.json("GET", f"/api/v1/jobs/{int(job_id)}"))

    def jobs(self, *, status: str | None = None, kind: str | None = None, namespaces: builtins.list[str] | None = None,
             limit: int = 100) -> builtins.list[Any]:
        from ..jobs.queue import JobInfo

        params = {k: v for k, v in (("status", status), ("kind", kind), ("limit", limit)) if v is not None}
        found = [JobInfo.from_dict(d) for d in self._http.json("GET", "/api/v1/jobs", params=params)]
        return [j for j in found if namespaces is None or j.namespace in namespaces]

    def cancel_job(self, job_id: int) -> Any:
        from ..jobs.queue import JobInfo

        return JobInfo.from_dict(self._http.json("POST", f"/api/v1/jobs/{int(job_id)}/cancel"))

    def validation_history(self, repo_id: str, check_kind: str | None = None,
                           limit: int = 200) -> builtins.list[dict[str, Any]]:
        rid = parse_id(repo_id)
        params: dict[str, Any] = {"limit": limit}
        if check_kind is not None:
            params["check"] = check_kind
        return self._http.json("GET", f"{self._repo_path(rid)}/refs/{self._q(rid.ref.value)}/validations",
                              params=params)

    def validate_all(self, **options: Any) -> Any:
        raise RegistryError("validate-all runs where the registry's database is (a cron job or a Kubernetes CronJob "
                            "beside the server): not over HTTP")

    # ----- webhooks (issue 22; admin tokens: the server's dispatcher delivers) --------------------------------

    def add_webhook(self, url: str, namespace: str, *, events: builtins.list[str] | None = None,
                    secret: str | None = None, description: str | None = None) -> Any:
        from ..api import WebhookInfo

        body = {"url": url, "namespace": namespace, "events": events, "secret": secret, "description": description}
        return _parsed(WebhookInfo.from_dict, self._http.json("POST", "/api/v1/webhooks", json=body), "webhook")

    def webhooks(self, namespace: str | None = None) -> builtins.list[Any]:
        from ..api import WebhookInfo

        data = self._http.json("GET", "/api/v1/webhooks", params={"namespace": namespace} if namespace else None)
        return [_parsed(WebhookInfo.from_dict, d, "webhook") for d in data]

    def remove_webhook(self, webhook_id: int) -> None:
        self._http.send("DELETE", f"/api/v1/webhooks/{int(webhook_id)}")

    def test_webhook(self, webhook_id: int) -> Any:
        from ..api import DeliveryInfo

        data = self._http.json("POST", f"/api/v1/webhooks/{int(webhook_id)}/test", idempotent=False)
        return _parsed(DeliveryInfo.from_dict, data, "delivery")

    def webhook_deliveries(self, webhook_id: int, *, limit: int = 50) -> builtins.list[Any]:
        from ..api import DeliveryInfo

        data = self._http.json("GET", f"/api/v1/webhooks/{int(webhook_id)}/deliveries", params={"limit": limit})
        return [_parsed(DeliveryInfo.from_dict, d, "delivery") for d in data]

    def redeliver(self, delivery_id: int) -> Any:
        from ..api import DeliveryInfo

        data = self._http.json("POST", f"/api/v1/webhooks/deliveries/{int(delivery_id)}/redeliver", idempotent=False)
        return _parsed(DeliveryInfo.from_dict, data, "delivery")
