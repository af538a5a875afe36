"""Uploads that bypass the server: presigned PUT URLs to the object store (registry/store/s3.py).

    POST /api/v1/uploads/{digest}/direct            {"size": N} -> {"complete": true} (stored already), or
                                                    {"complete": false, "mode": "single"|"multipart", "parts":
                                                     [{"number", "offset", "length", "url"}], "upload_id", ...}
    POST /api/v1/uploads/{digest}/direct/complete   {"size": N, "upload_id": ...} -> 201 {"digest", "size"}

The client PUTs each part's bytes to its URL (short-lived, bound to one object and one part: the signature
covers the key, the upload id and the part number), then asks the server to complete: the server checks
the parts are all there, hashes the object and copies it to the blob's key only when it matched
(`S3BlobStore.finish_upload`); the blob is recorded verified at its object's fingerprint, so the first
download redirect needs no second hash. An interrupted push asks again: the URLs name only the parts the
storage does not hold yet. The upload lands under the owner's key (auth.upload_owner), so one namespace
cannot complete another's; a mismatch stores nothing (422).

Without an object store, or with `--no-redirect`, both routes answer 404 (and `blobs/missing` does not offer
them): the client uses the resumable PATCH uploads of api_v1.py instead.
"""
from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from .. import constants
from .. import errors as E
from ..store import BlobDigestMismatch, validate_digest
from .auth import Caller, counters, prove, scoped, upload_owner, visible, write_any
from .lookup import registry_of
from .schemas import DIGEST, V1Route, error_docs

router = APIRouter(prefix="/api/v1", tags=["api v1"], route_class=V1Route)


class DirectIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(ge=0, le=(1 << 63) - 1)


class DirectDoneIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    size: int = Field(ge=0, le=(1 << 63) - 1)
    upload_id: str | None = Field(default=None, max_length=1024)


def _store(request: Request) -> Any:
    store = registry_of(request).store
    if not getattr(store, "remote", False) or not request.app.state.settings.redirect:
        raise E.NotFoundError("this server takes uploads itself (PATCH /api/v1/uploads/{digest}): its blob store "
                                  "is not object storage, or it runs with --no-redirect")
    return store


@router.post("/uploads/{digest}/direct", summary="Presigned URLs that upload a blob straight to the object store",
             responses=error_docs(400, 401, 403, 404, 413, 422))
def begin_direct(request: Request, digest: DIGEST, body: DirectIn,
                 caller: Annotated[Caller, Depends(write_any)]) -> Response:
    assert caller is not None  # write_any: a token, always
    validate_digest(digest)
    store = _store(request)
    settings = request.app.state.settings
    if body.size > settings.max_blob_bytes:
        raise E.RequestTooLargeError(f"a blob of {body.size} bytes exceeds this server's limit of "
                                     f"{settings.max_blob_bytes} bytes per blob")
    if store.exists(digest) and visible(request, caller, digest):
        try:
            store.touch(digest)  # a commit is about to rely on it
            return JSONResponse({"complete": True, "digest": digest, "size": store.size(digest)})
        except E.NotFoundError:
            pass
    plan = store.begin_upload(upload_owner(caller), digest, body.size, constants.presign_seconds())
    return JSONResponse({"complete": False, "digest": digest, "expires_in": constants.presign_seconds(), **plan})


@router.post("/uploads/{digest}/direct/complete", summary="Check a presigned upload and store it as the blob",
             status_code=201, responses=error_docs(400, 401, 403, 404, 409, 422))
async def complete_direct(request: Request, digest: DIGEST, body: DirectDoneIn,
                          caller: Annotated[Caller, Depends(write_any)]) -> Response:
    assert caller is not None
    validate_digest(digest)
    store = _store(request)
    reg = registry_of(request)
    try:
        info, fingerprint = await run_in_threadpool(store.finish_upload, upload_owner(caller), digest, body.size,
                                                    body.upload_id)
    except BlobDigestMismatch as exc:
        raise BlobDigestMismatch(digest, exc.actual, exc.size, "this upload") from None
    await run_in_threadpool(reg.blob_verified, digest, fingerprint, info.size)  # hashed just now: recorded
    stats = request.app.state.stats
    stats["blobs_stored"] += 1
    if scoped(caller):
        counters(request, caller)["blobs_stored"] += 1
    prove(request, caller, digest)
    return JSONResponse({"digest": info.digest, "size": info.size}, status_code=201)


__all__ = ["router"]
