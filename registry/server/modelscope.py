"""The ModelScope read API (docs/MODELSCOPE.md): what `modelscope.snapshot_download` needs.

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
resolution, commit ids and file serving are shared with the Hugging Face dialect (lookup.py); the
revision `master` (ModelScope's default branch) means `main` unless the repo has a `master` ref.

Authentication is the rest of the server's: a bearer token (the new client sends one) or the same
token in the `m_session_id` cookie (what the classic client sends after `HubApi.login`), read scope
on the namespace, and --anonymous-read.
"""
from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from ..api import RevisionInfo
from ..errors import NotFoundError
from ..ids import DEFAULT_REF
from ..params import flag
from .errors import HubRefusal, hub_errors
from .lookup import Served, file_response, hub_repo, listing, lookup, registry_of, sha256_hex

log = logging.getLogger("swiftreg.server.modelscope")

router = APIRouter(tags=["modelscope"])

MASTER = "master"
#: The session cookie the classic client (and the new one, besides its bearer header) sends its token in.
SESSION_COOKIE = "m_session_id"


def _render(exc: HubRefusal) -> JSONResponse:
    """ModelScope's error envelope: the HTTP status in `Code`, `Success: false` and a `Message`."""
    return JSONResponse({"Code": exc.status, "Success": False, "Message": exc.message,
                         "RequestId": uuid.uuid4().hex}, status_code=exc.status, headers=exc.headers)


_ms_errors = hub_errors(_render, "ModelScope API", log)


def _envelope(data: Any) -> JSONResponse:
    return JSONResponse({"Code": 200, "Success": True, "Message": "success", "RequestId": uuid.uuid4().hex,
                         "Data": data})


def _secret(request: Request) -> str | None:
    return request.cookies.get(SESSION_COOKIE) or None


def _lookup(request: Request, owner: str, name: str, revision: str | None) -> Served:
    """The served revision for a ModelScope revision string (None and `master` mean the main branch)."""
    rev = revision or MASTER
    try:
        return lookup(request, owner, name, rev, swift_fallback=True, secret=_secret(request),
                      or_else=DEFAULT_REF if rev == MASTER else None)
    except HubRefusal as exc:
        if exc.code == "RevisionNotFound":
            raise HubRefusal(404, None, f"The model {owner}/{name} has no revision {rev!r} (a tag, a branch, master, "
                             "a revision number or a commit id)") from None
        raise


def _unix(info: RevisionInfo) -> int:
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
    repo = hub_repo(request, owner, name, _secret(request))
    try:
        history = registry_of(request).log(repo)
    except NotFoundError:
        raise HubRefusal(404, None, f"The model {repo} does not exist in this registry") from None
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
    recursive = flag(Recursive, "Recursive")
    served = _lookup(request, owner, name, Revision)
    found = listing(served, (Root or "").strip("/"), recursive)
    entries = []
    for path, entry in found.items():
        if entry is None:
            entries.append({"Name": path.rsplit("/", 1)[-1], "Path": path, "Type": "tree", "Size": 0,
                            "Revision": served.commit})
        else:
            entries.append({"Name": path.rsplit("/", 1)[-1], "Path": path, "Type": "blob", "Size": entry.size,
                            "Sha256": sha256_hex(entry), "Revision": served.commit, "Mode": "100644",
                            "IsLFS": True, "CommitId": served.commit})
    return _envelope({"Files": entries})


@router.api_route("/api/v1/models/{owner}/{name}/repo", methods=["GET", "HEAD"])
@_ms_errors
def download(request: Request, owner: str, name: str, FilePath: str | None = None,  # noqa: N803
             Revision: str | None = None) -> Response:  # noqa: N803
    if FilePath is None:  # refused in ModelScope's envelope, not FastAPI's
        raise HubRefusal(400, None, "the FilePath query parameter names the file to download")
    served = _lookup(request, owner, name, Revision)
    entry = served.files.get(FilePath)
    if entry is None:
        raise HubRefusal(404, None, f"{FilePath} is not a file of {served.repo} at revision {Revision or MASTER}")
    return file_response(request, served, entry,
                         {"ETag": f'"{sha256_hex(entry)}"', "X-Repo-Commit": served.commit})
