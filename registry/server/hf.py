"""The Hugging Face Hub download protocol (docs/HF_PROTOCOL.md): what huggingface_hub needs.

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
conversion, done once and remembered by the registry), every base model as stored. Revision lookup
and commit ids are shared with the ModelScope dialect (lookup.py).

Revisions (`rev`, URL-encoded by the client): a tag or branch name, a revision number, a digest
prefix `sha256:<12..64 hex>`, or a commit id this server handed out (the first 40 hex of the
digest of the manifest as served).

Files: every file is presented as an LFS object: `ETag` / `X-Linked-Etag` and the tree's
`lfs.oid` are the file's sha256 hex (what the client names its cache blobs by, and checks a
`local_dir` copy against), `oid` is the git blob id of the LFS pointer file, `pointerSize` its
length. There is never an `xetHash`. The bytes are streamed (Range supported) straight from the
blob store, converted files included, and verified on the way (registry/server/responses.py): the
client does not hash what it downloads, so a corrupt blob is cut short before its last byte and
quarantined, never completed; nothing is assembled before answering a HEAD (the client gives a HEAD
10 s). Files are served as data: `nosniff`, a sandboxing CSP, and `application/octet-stream` with
`Content-Disposition: attachment` for anything but JSON, Markdown and plain text.

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

import hashlib
import logging
from datetime import datetime, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from ..manifest import FileEntry
from ..params import flag, natural
from .errors import HubRefusal, hub_errors
from .lookup import Served, empty_repo, file_response, listing, lookup, sha256_hex

log = logging.getLogger("swiftreg.server.hf")

router = APIRouter(tags=["huggingface"])

PAGE_SIZE = 1000
LFS_POINTER = "version https://git-lfs.github.com/spec/v1\noid sha256:{hex}\nsize {size}\n"


def _render(exc: HubRefusal) -> JSONResponse:
    """The Hub's error shape: `{"error": message}`, `X-Error-Code` and `X-Error-Message`."""
    headers = dict(exc.headers)
    if exc.code:
        headers["X-Error-Code"] = exc.code
    headers["X-Error-Message"] = _header_safe(exc.message)
    return JSONResponse({"error": exc.message}, status_code=exc.status, headers=headers)


def _header_safe(text: str) -> str:
    """Printable ASCII, without the leading or trailing spaces a header value may not have (h11 refuses them)."""
    return "".join(c if " " <= c <= "~" else "?" for c in text)[:500].strip()


_hf_errors = hub_errors(_render, "HF protocol", log)


# ----- JSON shapes ----------------------------------------------------------------------------------------


def _lfs(entry: FileEntry) -> tuple[str, int]:
    """(git blob id of the LFS pointer file, pointer size): what the Hub reports for an LFS file."""
    pointer = LFS_POINTER.format(hex=sha256_hex(entry), size=entry.size).encode()
    return hashlib.sha1(b"blob %d\0" % len(pointer) + pointer).hexdigest(), len(pointer)


def _file_json(entry: FileEntry) -> dict[str, Any]:
    oid, pointer_size = _lfs(entry)
    return {"type": "file", "path": entry.path, "size": entry.size, "oid": oid,
            "lfs": {"oid": sha256_hex(entry), "size": entry.size, "pointerSize": pointer_size}}


def _folder_json(path: str, entries: list[FileEntry]) -> dict[str, Any]:
    listed = "".join(f"{e.path}\0{e.sha256}\n" for e in entries if e.path.startswith(path + "/"))
    return {"type": "directory", "path": path, "size": 0, "oid": hashlib.sha1(listed.encode()).hexdigest()}


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
                           lfs={"sha256": sha256_hex(entry), "size": entry.size, "pointerSize": pointer_size})
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
def model_info(request: Request, namespace: str, name: str, blobs: str = "false") -> Any:
    with_blobs = flag(blobs, "blobs")
    return _repo_info(request, lookup(request, namespace, name, "main"), with_blobs)


@router.api_route("/api/models/{namespace}/{name}/revision/{rev:path}", methods=["GET", "HEAD"])
@_hf_errors
def model_info_at(request: Request, namespace: str, name: str, rev: str, blobs: str = "false") -> Any:
    with_blobs = flag(blobs, "blobs")
    return _repo_info(request, lookup(request, namespace, name, rev), with_blobs)


@router.api_route("/api/models/{namespace}/{name}/tree/{rev}", methods=["GET", "HEAD"])
@router.api_route("/api/models/{namespace}/{name}/tree/{rev}/{path:path}",
                  methods=["GET", "HEAD"])
@_hf_errors
def tree(request: Request, namespace: str, name: str, rev: str, path: str = "",
         recursive_text: Annotated[str, Query(alias="recursive")] = "false",
         cursor_text: Annotated[str, Query(alias="cursor")] = "0",
         limit_text: Annotated[str, Query(alias="limit")] = str(PAGE_SIZE)) -> Any:
    # parsed here (registry/params.py), so a bad one is refused in the Hub's error shape, not FastAPI's
    recursive = flag(recursive_text, "recursive")
    cursor, limit = natural(cursor_text, "cursor"), natural(limit_text, "limit")
    served = lookup(request, namespace, name, rev)
    prefix = path.strip("/")
    found = listing(served, prefix, recursive)
    if prefix and not found:
        raise HubRefusal(404, "EntryNotFound", f"{prefix} is not a folder of {served.repo} at "
                         f"{served.commit}", {"X-Repo-Commit": served.commit})
    entries = list(served.manifest.files)
    ordered = [_file_json(entry) if entry is not None else _folder_json(where, entries)
               for where, entry in found.items()]
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
    try:
        served = lookup(request, namespace, name, rev)
    except HubRefusal as exc:  # a repository with no revision yet: every file of `main` is absent
        if exc.code == "RevisionNotFound" and rev == "main" and empty_repo(request, namespace, name):
            raise HubRefusal(404, "EntryNotFound", f"{path} is not a file of {namespace}/{name}: it has no "
                             "revision yet") from None
        raise
    entry = served.files.get(path)
    if entry is None:
        raise HubRefusal(404, "EntryNotFound", f"{path} is not a file of {served.repo} at {served.commit}",
                         {"X-Repo-Commit": served.commit})
    etag = f'"{sha256_hex(entry)}"'
    return file_response(request, served, entry, {
        "ETag": etag, "X-Linked-Etag": etag, "X-Linked-Size": str(entry.size), "X-Repo-Commit": served.commit})
