"""The ModelScope read API (../shared/docs/MODELSCOPE.md): what `modelscope.snapshot_download` needs.

ms-swift downloads every hub id with `modelscope.snapshot_download` and lets the environment pick
the endpoint, so with `MODELSCOPE_ENDPOINT=http://host:port` (new client, 1.38+) or
`MODELSCOPE_DOMAIN=host:port` over HTTPS (classic client, 1.37) `Swift.from_pretrained(model,
"team/name", revision="v1")` loads from the registry with no code change:

    GET  /api/v1/models/{owner}/{name}                       repo info (the classic client's existence check)
    GET  /api/v1/models/{owner}/{name}/revisions             branches and tags (the classic client accepts
                                                             only names listed here)
    GET  /api/v1/models/{owner}/{name}/repo/files            ?Revision=&Recursive=&Root=: Name, Path, Type,
                                                             Size, Sha256 and Revision (a commit id) per file
    GET  /api/v1/models/{owner}/{name}/repo                  ?Revision=&FilePath=: the bytes (Range supported)

Every JSON answer is in ModelScope's envelope `{"Code": 200, "Success": true, "Data": ...}`; errors
carry the HTTP status in `Code`, `Success: false` and a `Message` naming the repo and revision.

What is served: the form ms-swift loads best. LoRA-family adapters in canonical PEFT form (ms-swift
loads them through PEFT and gets every tensor, embedding LoRA included; its own Swift loader drops
embedding LoRA), Swift-only tuners in their stored Swift form; base models as stored. Revision
resolution, commit ids and file serving are the Hugging Face dialect's (hf.py), shared here; the
revision `master` (ModelScope's default branch) means `main` unless the repo has a `master` ref.

Authentication is the rest of the server's: a bearer token (the new client sends one) or the same
token in the `m_session_id` cookie (what the classic client sends after `HubApi.login`), read scope
on the namespace, and --anonymous-read.
"""
from __future__ import annotations

import functools
import logging
import mimetypes
import uuid
from typing import Any, Callable

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

import converters

from ..errors import NotFoundError, RegistryError
from ..ids import DEFAULT_REF
from . import hf
from .app import ERROR_CODES
from .responses import BlobResponse

log = logging.getLogger("swiftreg.server.modelscope")

router = APIRouter(tags=["modelscope"])

MASTER = "master"
#: The session cookie the classic client (and the new one, besides its bearer header) sends its token in.
SESSION_COOKIE = "m_session_id"


class MSError(Exception):
    """An answer in ModelScope's error envelope."""

    def __init__(self, status: int, message: str) -> None:
        self.status, self.message = status, message
        super().__init__(message)

    def response(self) -> JSONResponse:
        return JSONResponse({"Code": self.status, "Success": False, "Message": self.message,
                             "RequestId": uuid.uuid4().hex}, status_code=self.status)


def _envelope(data: Any) -> JSONResponse:
    return JSONResponse({"Code": 200, "Success": True, "Message": "success", "RequestId": uuid.uuid4().hex,
                         "Data": data})


def _ms_errors(route: Callable[..., Any]) -> Callable[..., Any]:
    """Answer the shared lookup's refusals (HFError) and registry refusals in ModelScope's envelope."""

    @functools.wraps(route)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return route(*args, **kwargs)
        except MSError as exc:
            return exc.response()
        except hf.HFError as exc:
            return MSError(exc.status, exc.message).response()
        except (RegistryError, converters.FormatError) as exc:
            status = next(status for cls, status, _ in ERROR_CODES if isinstance(exc, cls))
            if status >= 500:
                log.error("%s while serving the ModelScope API: %s", type(exc).__name__, exc)
            return MSError(status, str(exc)).response()

    return wrapper


def _secret(request: Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE) or None


def _lookup(request: Request, owner: str, name: str, revision: str | None) -> hf.Served:
    """The served revision for a ModelScope revision string (None and `master` mean the main branch)."""
    rev = revision or MASTER
    try:
        return hf._lookup(request, owner, name, rev, swift_fallback=True, secret=_secret(request),
                          or_else=DEFAULT_REF if rev == MASTER else None)
    except hf.HFError as exc:
        if exc.code == "RevisionNotFound":
            raise MSError(404, f"The model {owner}/{name} has no revision {rev!r} (a tag, a branch, master, a "
                          "revision number or a commit id)") from None
        raise


def _unix(info: Any) -> int:
    return int(info.created_at.timestamp())


# ----- routes ---------------------------------------------------------------------------------------------


@router.get("/api/v1/models/{owner}/{name}")
@_ms_errors
def model_info(request: Request, owner: str, name: str, Revision: str | None = None) -> Any:  # noqa: N803
    served = _lookup(request, owner, name, Revision)
    info = served.info
    return _envelope({
        "Id": info.digest, "Name": name, "Path": owner, "ChineseName": name, "Revision": served.commit,
        "CreatedTime": _unix(info), "LastUpdatedTime": _unix(info), "Visibility": 5, "IsPublished": 1,
        "ModelType": [], "Tasks": [], "Libraries": [served.format],
        "StorageSize": served.manifest.size,
        "SwiftReg": {"kind": info.kind, "revision": info.number, "digest": info.digest,
                     "stored_format": info.format, "format": served.format, "tags": info.tags,
                     "branches": info.branches, "base_model": info.base_model},
    })


@router.get("/api/v1/models/{owner}/{name}/revisions")
@_ms_errors
def revisions(request: Request, owner: str, name: str) -> Any:
    repo = hf._repo_id(request, owner, name, _secret(request))
    try:
        history = hf._registry(request).log(repo)
    except NotFoundError:
        raise MSError(404, f"The model {repo} does not exist in this registry") from None
    branches: list[dict[str, Any]] = []
    tags: list[dict[str, Any]] = []
    names: set[str] = set()
    for info in history:  # newest first: the classic client takes Tags[0] as the latest
        for branch in info.branches:
            branches.append({"Revision": branch, "CreatedAt": _unix(info), "CommitId": info.digest})
            names.add(branch)
        for tag in info.tags:
            tags.append({"Revision": tag, "CreatedAt": _unix(info), "CommitId": info.digest})
    main = next((b for b in branches if b["Revision"] == DEFAULT_REF), None)
    if main is not None and MASTER not in names:
        branches.append({**main, "Revision": MASTER})
    return _envelope({"RevisionMap": {"Branches": branches, "Tags": tags}})


@router.get("/api/v1/models/{owner}/{name}/repo/files")
@_ms_errors
def files(request: Request, owner: str, name: str, Revision: str | None = None,  # noqa: N803
          Recursive: str = "False", Root: str | None = None) -> Any:  # noqa: N803
    served = _lookup(request, owner, name, Revision)
    recursive = Recursive.lower() == "true"
    prefix = (Root or "").strip("/")
    start = len(prefix) + 1 if prefix else 0
    listing: dict[str, dict[str, Any]] = {}
    for entry in served.manifest.files:
        if prefix and not entry.path.startswith(prefix + "/"):
            continue
        parts = entry.path[start:].split("/")
        folders = parts[:-1] if recursive else parts[:1] if len(parts) > 1 else []
        for depth in range(1, len(folders) + 1):
            folder = "/".join(filter(None, [prefix, *folders[:depth]]))
            listing.setdefault(folder, {"Name": folder.rsplit("/", 1)[-1], "Path": folder, "Type": "tree",
                                        "Size": 0, "Revision": served.commit})
        if recursive or len(parts) == 1:
            listing[entry.path] = {"Name": parts[-1], "Path": entry.path, "Type": "blob", "Size": entry.size,
                                   "Sha256": hf._hex(entry), "Revision": served.commit, "Mode": "100644",
                                   "IsLFS": True, "CommitId": served.commit}
    return _envelope({"Files": [listing[k] for k in sorted(listing)]})


@router.api_route("/api/v1/models/{owner}/{name}/repo", methods=["GET", "HEAD"])
@_ms_errors
def download(request: Request, owner: str, name: str, FilePath: str, Revision: str | None = None) -> Response:  # noqa: N803
    served = _lookup(request, owner, name, Revision)
    entry = served.files.get(FilePath)
    if entry is None:
        raise MSError(404, f"{FilePath} is not a file of {served.repo} at revision {Revision or MASTER}")
    local, stat = hf._local_file(hf._registry(request), served, entry)
    headers = {"ETag": f'"{hf._hex(entry)}"', "Accept-Ranges": "bytes", "X-Repo-Commit": served.commit}
    media_type = mimetypes.guess_type(entry.path)[0] or "application/octet-stream"
    return BlobResponse(local, headers=headers, media_type=media_type, stat_result=stat)
