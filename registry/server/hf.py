"""The Hugging Face Hub download protocol (../shared/docs/HF_PROTOCOL.md): what huggingface_hub needs.

An unmodified `huggingface_hub` (and so transformers, PEFT, vLLM, ... that download through it)
pointed at this server with `endpoint=` / `HF_ENDPOINT` and `token=` downloads from the registry:

    GET  /api/models/{ns}/{name}                      repo info at main (?blobs=true: sizes and LFS ids)
    GET  /api/models/{ns}/{name}/revision/{rev}       repo info at rev: {"id", "sha", "siblings", ...}
    GET  /api/models/{ns}/{name}/tree/{rev}[/{path}]  ?recursive=&cursor=&limit=: files and folders,
                                                      paginated by `Link: <...>; rel="next"` (1000 a page)
    (HEAD is answered on these too, headers only)
    HEAD /{ns}/{name}/resolve/{rev}/{path}            the file's metadata ...
    GET  /{ns}/{name}/resolve/{rev}/{path}            ... and its bytes (200, or 206 for a Range)

What is served: every adapter in PEFT format (a Swift-stored revision through the registry's derived
conversion, done once and remembered by the registry), every base model as stored.

Revisions (`rev`, URL-encoded by the client): a tag or branch name, a revision number, a digest
prefix `sha256:<12..64 hex>`, or a commit id this server handed out.

Commit ids: the client needs 40 lowercase hex characters. A revision's commit id is the first 40
hex of the sha256 digest of the manifest *as served*: for a base model or a PEFT-stored adapter
that is the revision's own digest; for a Swift-stored adapter it is the digest of its derived PEFT
manifest. So the id is stable across restarts and machines (the conversion is deterministic and
recorded), and it changes only if the served bytes change (a new converter version). A 40-hex
revision is looked up as such a commit id: first as a digest prefix of a revision whose served
form is its stored form, then among the repo's Swift-stored revisions (remembered in-process once
seen), and last as a tag or branch name.

Files: every file is presented as an LFS object: `ETag` / `X-Linked-Etag` and the tree's
`lfs.oid` are the file's sha256 hex (what the client names its cache blobs by, and checks a
`local_dir` copy against), `oid` is the git blob id of the LFS pointer file, `pointerSize` its
length. There is never an `xetHash`. The bytes are streamed (FileResponse, Range supported) straight
from the blob store when it is on local disk: zero copy, and nothing to assemble before answering a
HEAD (the client gives a HEAD 10 s); otherwise, and for converted files, from the registry's
verified snapshot folder.

Errors carry `X-Error-Code` (RepoNotFound, RevisionNotFound, EntryNotFound; EntryNotFound also
`X-Repo-Commit`, so the client can cache the absence) and a `{"error": message}` body. Repository
ids the client could not have sent (`..`, `@`, `--`) and ids that are not valid swiftreg names are
RepoNotFound. Authentication is swiftreg's (`Authorization: Bearer <token>`, read scope on the
namespace): no token -> 401 with `X-Error-Code: RepoNotFound` (what the Hub answers for a private
repo, raised by the client as RepositoryNotFoundError); an unknown or revoked token -> 401
"Invalid credentials in Authorization header"; a token for another namespace -> 403 RepoNotFound.
A Swift revision that PEFT cannot express (e.g. extra_states/) -> 422 with the converter's reason,
remembered per process so the conversion is not retried.
"""
from __future__ import annotations

import functools
import hashlib
import logging
import mimetypes
import os
import re
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from .responses import BlobResponse

import converters

from ..errors import AmbiguousRefError, InvalidIdError, NotFoundError, RegistryError
from ..ids import parse_id, parse_ref
from ..manifest import FileEntry, Manifest, build_manifest, collect_files
from ..service import Registry, RevisionInfo
from ..store.errors import StoreError
from .app import ERROR_CODES, HTTPError
from .auth import bearer, require

log = logging.getLogger("swiftreg.server.hf")

router = APIRouter(tags=["huggingface"])

COMMIT = re.compile(r"^[0-9a-f]{40}$")
PAGE_SIZE = 1000
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{hex}\nsize {size}\n"
#: The Hub's words for a bad token; the client raises a plain 401 HfHubHTTPError on them, not RepoNotFound.
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


# ----- errors ----------------------------------------------------------------------------------------


class HFError(Exception):
    """An answer in the Hub's error dialect: status, `X-Error-Code`, message, extra headers."""

    def __init__(self, status: int, code: str | None, message: str,
                 headers: dict[str, str] | None = None) -> None:
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}
        super().__init__(message)

    def response(self) -> JSONResponse:
        headers = dict(self.headers)
        if self.code:
            headers["X-Error-Code"] = self.code
        headers["X-Error-Message"] = _header_safe(self.message)
        return JSONResponse({"error": self.message}, status_code=self.status, headers=headers)


def _header_safe(text: str) -> str:
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:500]


def _repo_not_found(repo: str) -> HFError:
    return HFError(404, "RepoNotFound", f"Repository not found: {repo}")


def _hf_errors(route: Callable[..., Any]) -> Callable[..., Any]:
    """Answer HFError and registry refusals in the Hub's dialect (`{"error": message}`, X-Error-Message).

    Crashes still go to the app's handler (logged, bare 500).
    """

    @functools.wraps(route)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return route(*args, **kwargs)
        except HFError as exc:
            return exc.response()
        except (RegistryError, converters.FormatError) as exc:  # e.g. a corrupt blob: 500, the client's
            # cache fallback applies
            status = next(status for cls, status, _ in ERROR_CODES if isinstance(exc, cls))
            if status >= 500:
                log.error("%s while serving the HF protocol: %s", type(exc).__name__, exc)
            return HFError(status, None, str(exc)).response()

    return wrapper


# ----- what is served ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Served:
    """One revision as this protocol serves it."""

    repo: str
    info: RevisionInfo
    format: str                       # served format: "peft" for adapters, the stored one for base models
    manifest: Manifest
    commit: str                       # 40 lowercase hex: manifest digest prefix
    folder: Path | None               # the verified snapshot holding the files, when already materialised

    @property
    def files(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.manifest.files}


class _State:
    """Per-app memo: derived manifests (by snapshot folder), commit ids handed out, refused conversions."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.folder_locks: dict[str, threading.Lock] = {}
        self.derived: dict[str, Manifest] = {}
        self.commits: dict[tuple[str, str], int] = {}
        self.refused: dict[tuple[str, int], str] = {}  # Swift revisions PEFT cannot express: why

    def remember(self, served: Served) -> None:
        with self.lock:
            if len(self.commits) > 65536:
                self.commits.clear()
            self.commits[(served.repo, served.commit)] = served.info.number

    def folder_manifest(self, folder: Path) -> Manifest:
        """The manifest of a (read-only, immutable) snapshot folder, hashed once per process."""
        key = str(folder)
        with self.lock:
            hit = self.derived.get(key)
            if hit is not None:
                return hit
            folder_lock = self.folder_locks.setdefault(key, threading.Lock())
        with folder_lock:
            with self.lock:
                hit = self.derived.get(key)
            if hit is None:
                files, _ = collect_files(folder)
                hit = build_manifest(files)
                with self.lock:
                    if len(self.derived) > 4096:
                        self.derived.clear()
                    self.derived[key] = hit
                    self.folder_locks.pop(key, None)
        return hit


def _state(request: Request) -> _State:
    state = getattr(request.app.state, "hf", None)
    if state is None:
        with _STATE_LOCK:
            state = getattr(request.app.state, "hf", None)
            if state is None:
                state = request.app.state.hf = _State()
    return state


_STATE_LOCK = threading.Lock()


def _registry(request: Request) -> Registry:
    return request.app.state.registry


def _served(registry: Registry, state: _State, info: RevisionInfo, *, swift_fallback: bool = False) -> Served:
    """The served form of a revision: adapters as PEFT (Swift ones converted), base models as stored.

    `swift_fallback` (the ModelScope dialect, whose main client ms-swift loads both forms): a Swift
    revision PEFT cannot express (Swift-only tuners, extra_states/) is served in its stored Swift form
    instead of being refused.
    """
    folder = None
    if info.kind == "adapter" and info.format != "peft":
        # Stopgap until the service offers the derived manifest (Registry.manifest(id, format)):
        # materialise the verified PEFT snapshot (the conversion is done once and recorded by the
        # registry) and hash it once per process.
        key = (info.repo, info.number)
        refused = state.refused.get(key)
        if refused is None:
            try:
                folder = registry.resolve(f"{info.repo}@{info.number}", "peft")
            except converters.FormatError as exc:  # deterministic for these bytes: remember, never retry
                detail = str(exc).removeprefix(f"{exc.path}: ") if exc.path is not None else str(exc)
                refused = f"{info.repo}@{info.number} cannot be served in PEFT format: {detail}"
                with state.lock:
                    state.refused[key] = refused
        if refused is not None and swift_fallback:
            folder = None
        elif refused is not None:
            raise HFError(422, None, refused)
    if folder is not None:
        manifest, fmt = state.folder_manifest(folder), "peft"
    else:
        manifest, fmt = Manifest.from_json(info.manifest), info.format  # stored form: PEFT, Swift fallback, base
    served = Served(info.repo, info, fmt, manifest, manifest.digest.removeprefix("sha256:")[:40], folder)
    state.remember(served)
    return served


def _repo_id(request: Request, namespace: str, name: str, secret: str | None = None) -> str:
    """Check the caller may read `namespace`, then that `namespace/name` is a repository id at all.

    `secret`: a token found outside the Authorization header (ModelScope's session cookie).
    """
    _authorize(request, namespace, secret)
    repo = f"{namespace}/{name}"
    if ".." in repo or "@" in repo or "--" in repo:
        raise _repo_not_found(repo)
    try:
        parse_id(repo, allow_ref=False)
    except InvalidIdError:
        raise _repo_not_found(repo) from None
    return repo


def _authorize(request: Request, namespace: str, secret: str | None = None) -> None:
    try:
        require(request, "read", namespace, secret=secret)
    except HTTPError as exc:
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "www-authenticate"}
        if exc.status == 401 and (bearer(request) or secret) is not None:
            raise HFError(401, None, INVALID_CREDENTIALS, headers) from None
        raise HFError(exc.status, "RepoNotFound", exc.message, headers) from None


def _ensure_repo(registry: Registry, repo: str) -> None:
    try:
        registry.log(repo)
    except NotFoundError:
        raise _repo_not_found(repo) from None


def _revision_not_found(repo: str, rev: str, detail: str = "") -> HFError:
    message = f"Invalid rev id: {rev} for {repo}" + (f" ({detail})" if detail else "")
    return HFError(404, "RevisionNotFound", message)


def _lookup(request: Request, namespace: str, name: str, rev: str, *, swift_fallback: bool = False,
            secret: str | None = None, or_else: str | None = None) -> Served:
    """The served revision `rev` of the repo; `or_else`: the ref to take when `rev` names nothing
    (ModelScope's `master` falls back to the registry's `main`)."""
    repo = _repo_id(request, namespace, name, secret)
    registry, state = _registry(request), _state(request)
    if COMMIT.match(rev):
        served = _by_commit(registry, state, repo, rev, swift_fallback=swift_fallback)
        if served is not None:
            return served
    try:
        parse_ref(rev)
    except InvalidIdError:
        _ensure_repo(registry, repo)
        raise _revision_not_found(repo, rev) from None
    try:
        info = registry.show(f"{repo}@{rev}")
    except NotFoundError:
        info = None
        if or_else is not None:
            try:
                info = registry.show(f"{repo}@{or_else}")
            except NotFoundError:
                pass
        if info is None:
            _ensure_repo(registry, repo)
            raise _revision_not_found(repo, rev) from None
    except AmbiguousRefError as exc:
        raise _revision_not_found(repo, rev, str(exc)) from None
    return _served(registry, state, info, swift_fallback=swift_fallback)


def _by_commit(registry: Registry, state: _State, repo: str, commit: str, *,
               swift_fallback: bool = False) -> Served | None:
    """The revision whose served form has commit id `commit`, if any."""
    with state.lock:
        number = state.commits.get((repo, commit))
    if number is not None:
        try:
            served = _served(registry, state, registry.show(f"{repo}@{number}"), swift_fallback=swift_fallback)
            if served.commit == commit:
                return served
        except (NotFoundError, HFError):
            pass
    try:
        served = _served(registry, state, registry.show(f"{repo}@sha256:{commit}"), swift_fallback=swift_fallback)
        if served.commit == commit:
            return served
    except (NotFoundError, AmbiguousRefError, HFError):
        pass
    try:
        revisions = registry.log(repo)
    except NotFoundError:
        raise _repo_not_found(repo) from None
    for info in revisions:  # newest first; only revisions served in a derived form can still match
        if info.kind != "adapter" or info.format == "peft":
            continue
        try:
            served = _served(registry, state, info, swift_fallback=swift_fallback)
        except HFError:  # refused conversion: it has no PEFT form, so no commit id
            continue
        if served.commit == commit:
            return served
    return None


# ----- JSON shapes ----------------------------------------------------------------------------------------


def _hex(entry: FileEntry) -> str:
    return entry.sha256.removeprefix("sha256:")


def _lfs(entry: FileEntry) -> tuple[str, int]:
    """(git blob id of the LFS pointer file, pointer size): what the Hub reports for an LFS file."""
    pointer = LFS_POINTER.format(hex=_hex(entry), size=entry.size).encode()
    return hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest(), len(pointer)


def _file_json(entry: FileEntry) -> dict[str, Any]:
    oid, pointer_size = _lfs(entry)
    return {"type": "file", "path": entry.path, "size": entry.size, "oid": oid,
            "lfs": {"oid": _hex(entry), "size": entry.size, "pointerSize": pointer_size}}


def _folder_json(path: str, entries: list[FileEntry]) -> dict[str, Any]:
    listing = "".join(f"{e.path}\0{e.sha256}\n" for e in entries if e.path.startswith(path + "/"))
    return {"type": "directory", "path": path, "size": 0, "oid": hashlib.sha1(listing.encode()).hexdigest()}


def _date(value: datetime) -> str:
    return value.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _repo_info(request: Request, served: Served, blobs: bool) -> dict[str, Any]:
    info = served.info
    siblings = []
    for entry in served.manifest.files:
        sibling: dict[str, Any] = {"rfilename": entry.path}
        if blobs:
            oid, pointer_size = _lfs(entry)
            sibling.update(size=entry.size, blobId=oid,
                           lfs={"sha256": _hex(entry), "size": entry.size, "pointerSize": pointer_size})
        siblings.append(sibling)
    namespace = served.repo.split("/")[0]
    library = "peft" if info.kind == "adapter" else "transformers"
    return {
        "_id": served.commit[:24], "id": served.repo, "modelId": served.repo, "author": namespace,
        "sha": served.commit, "lastModified": _date(info.created_at), "createdAt": _date(info.created_at),
        "private": not request.app.state.settings.anonymous_read, "gated": False, "disabled": False,
        "downloads": 0, "likes": 0, "library_name": library, "tags": [library, "swiftreg"],
        "siblings": siblings, "usedStorage": served.manifest.size,
        "swiftreg": {"kind": info.kind, "revision": info.number, "digest": info.digest,
                     "stored_format": info.format, "format": served.format, "tags": info.tags,
                     "branches": info.branches, "base_model": info.base_model},
    }


# ----- routes ---------------------------------------------------------------------------------------------


@router.api_route("/api/models/{namespace}/{name}", methods=["GET", "HEAD"])
@_hf_errors
def model_info(request: Request, namespace: str, name: str, blobs: bool = False) -> Any:
    return _repo_info(request, _lookup(request, namespace, name, "main"), blobs)


@router.api_route("/api/models/{namespace}/{name}/revision/{rev:path}", methods=["GET", "HEAD"])
@_hf_errors
def model_info_at(request: Request, namespace: str, name: str, rev: str, blobs: bool = False) -> Any:
    return _repo_info(request, _lookup(request, namespace, name, rev), blobs)


@router.api_route("/api/models/{namespace}/{name}/tree/{rev}", methods=["GET", "HEAD"])
@router.api_route("/api/models/{namespace}/{name}/tree/{rev}/{path:path}",
                  methods=["GET", "HEAD"])
@_hf_errors
def tree(request: Request, namespace: str, name: str, rev: str, path: str = "", recursive: bool = False,
         cursor: int = 0, limit: int = PAGE_SIZE) -> Any:
    served = _lookup(request, namespace, name, rev)
    entries = list(served.manifest.files)
    prefix = path.strip("/")
    if prefix:
        inside = [e for e in entries if e.path.startswith(prefix + "/")]
        if not inside:
            raise HFError(404, "EntryNotFound", f"{prefix} is not a folder of {served.repo} at "
                          f"{served.commit}", {"X-Repo-Commit": served.commit})
    else:
        inside = entries
    listing: dict[str, dict[str, Any]] = {}
    start = len(prefix) + 1 if prefix else 0
    for entry in inside:
        parts = entry.path[start:].split("/")
        folders = parts[:-1] if recursive else parts[:1] if len(parts) > 1 else []
        for depth in range(1, len(folders) + 1):
            folder = "/".join(filter(None, [prefix, *folders[:depth]]))
            if folder not in listing:
                listing[folder] = _folder_json(folder, entries)
        if recursive or len(parts) == 1:
            listing[entry.path] = _file_json(entry)
    ordered = [listing[k] for k in sorted(listing)]
    limit = max(1, min(limit, PAGE_SIZE))
    cursor = max(0, cursor)
    page = ordered[cursor:cursor + limit]
    headers = {"X-Repo-Commit": served.commit}
    if cursor + limit < len(ordered):
        following = request.url.include_query_params(cursor=cursor + limit, limit=limit)
        headers["Link"] = f'<{following}>; rel="next"'
    return JSONResponse(page, headers=headers)


@router.api_route("/{namespace}/{name}/resolve/{rev}/{path:path}", methods=["GET", "HEAD"])
@_hf_errors
def resolve_file(request: Request, namespace: str, name: str, rev: str, path: str) -> Response:
    served = _lookup(request, namespace, name, rev)
    entry = served.files.get(path)
    if entry is None:
        raise HFError(404, "EntryNotFound", f"{path} is not a file of {served.repo} at {served.commit}",
                      {"X-Repo-Commit": served.commit})
    local, stat = _local_file(_registry(request), served, entry)
    etag = f'"{_hex(entry)}"'
    headers = {"ETag": etag, "X-Linked-Etag": etag, "X-Linked-Size": str(entry.size),
               "X-Repo-Commit": served.commit, "Accept-Ranges": "bytes"}
    media_type = mimetypes.guess_type(entry.path)[0] or "application/octet-stream"
    return BlobResponse(local, headers=headers, media_type=media_type, stat_result=stat)


def _local_file(registry: Registry, served: Served, entry: FileEntry) -> tuple[Path, os.stat_result]:
    """A local file holding `entry`'s bytes: the blob itself (zero copy), else the verified snapshot."""
    if served.folder is None:
        try:
            blob = registry.store.path(entry.sha256)
        except StoreError:
            blob = None
        if blob is not None:
            try:
                stat = os.stat(blob)
                if stat.st_size == entry.size:
                    return blob, stat
            except FileNotFoundError:
                pass
    folder = served.folder or registry.resolve(f"{served.repo}@{served.info.number}", served.format)
    local = folder / entry.path
    return local, os.stat(local)
