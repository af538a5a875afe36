"""Every error the registry raises, as one tree; each class carries its wire `code` and HTTP `status`.

    RegistryError                       400 bad_request          anything a registry operation refuses
    ├── InvalidIdError                  400 invalid_id           `namespace/name[@ref]` does not parse
    ├── NotFoundError                   404 not_found            no such adapter, base model, ref or revision
    ├── AmbiguousRefError               409 ambiguous_ref        a digest prefix matches several revisions
    ├── RefExistsError                  409 ref_exists           a tag already points elsewhere (--force)
    ├── RevisionInUseError              409 revision_in_use      a deletion refused: a ref, lineage or job needs it
    ├── InvalidCheckpointError          422 invalid_checkpoint   push refused by validation (.problems)
    ├── UnsafePathError                 400 unsafe_path          a file name escapes the checkpoint
    ├── IntegrityError                  500 integrity_error      stored bytes do not match their digest
    ├── BlobsMissingError               409 blobs_missing        a commit names blobs not uploaded (.missing)
    ├── StaleParentError                412 stale_parent         a hub commit's parent is not the branch head
    ├── SwiftEnvironmentError           500 swift_environment    no ms-swift interpreter, or its batch failed
    ├── ServingRefusedError             400 serving_refused      vLLM cannot serve the adapter (.verdict)
    ├── UnavailableError                503 unavailable          a dependency (database, store, disk) is down
    ├── InsufficientStorageError        507 insufficient_storage  the disk is full (.writing: what was written)
    ├── DeviceFailureError              503 device_failure       the GPU failed under tensor work: retry it
    │   ├── DeviceOutOfMemoryError      503 device_out_of_memory  CUDA out of memory (.shard, .needed_bytes)
    │   └── DeviceLostError             503 device_lost          a CUDA error: the GPU failed or was lost mid-job
    ├── StoreError                      400 store_error          the blob store (registry/store/errors.py)
    │   ├── InvalidDigest               400 invalid_digest       not "sha256:" + 64 lowercase hex (.value)
    │   ├── BlobNotFound                404 blob_not_found       no such blob (also a NotFoundError)
    │   ├── BlobDigestMismatch          422 digest_mismatch      uploaded bytes hash to another digest
    │   └── CorruptBlob                 500 corrupt_blob         stored bytes rotted (also an IntegrityError)
    ├── HubError                        400 hub_error            an import from a hub failed (registry/hubs/)
    │   ├── HubNotFoundError            404 hub_not_found        no such hub repository (also a NotFoundError)
    │   └── HubNoAdapterError           400 hub_no_adapter       the hub repository holds no adapter
    ├── TensorError                     400 tensor_error         tensor work refused (registry/tensors/)
    │   ├── AdapterError                400 unusable_adapter     an adapter folder unusable for tensor work
    │   ├── ShapeMismatchError          400 shape_mismatch       an adapter made for another base model
    │   ├── NonFiniteError              400 non_finite           NaN or Inf in a result (--safe)
    │   ├── NotInvertibleError          400 not_invertible       an unmerge the merged weights cannot undo
    │   ├── DeviceError                 400 device_error         a device or dtype name that cannot be used
    │   ├── MergeError                  400 merge_error          a merge or unmerge that cannot be done
    │   │   ├── MergeOutputError        400 merge_output         the merge's destination cannot be written
    │   │   └── MergeCheckError         400 merge_check          a merged tensor outside its rounding bound
    │   └── CombineError                400 combine_error        a combination that cannot be done as asked
    ├── XetError                        400 xet_refused          a Xet xorb or shard refused (registry/xet/)
    │   └── XetMissingError             400 xet_missing          a shard names a xorb or chunk not uploaded
    ├── WebhookError                    400 webhook_error        a webhook refused: its URL, events or key
    │   └── WebhookNotFoundError        404 webhook_not_found    no webhook or delivery with that id
    ├── JobError                        400 job_error            a job operation refused (registry/jobs/)
    │   ├── JobNotFoundError            404 job_not_found        no job with that id (also a NotFoundError)
    │   ├── InvalidJobError             400 invalid_job          unknown kind, or parameters it does not take
    │   ├── JobConflictError            409 job_conflict         an idempotency key reused for another job
    │   ├── JobStateError               409 job_state            the job's state does not allow this
    │   └── JobCancelledError           409 job_cancelled        cancelled while it ran: nothing pushed
    └── RemoteError                     502 remote_error         only over HTTP (.status, .code, .headers)
        ├── AccessDeniedError           403 access_denied        the token does not allow this
        │   ├── UnauthorizedError       401 unauthorized         no token, or an unknown or revoked one
        │   └── ForbiddenError          403 forbidden            the token's scope or namespace is too narrow
        ├── ServerUnreachableError      503 unreachable          no usable answer after the retries
        ├── InvalidRequestError         422 invalid_request      the request is not what the route takes
        ├── MethodNotAllowedError       405 method_not_allowed   the route does not take this method
        ├── RequestTooLargeError        413 too_large            a body or blob over the server's limit
        ├── HeadersTooLargeError        431 headers_too_large    the headers over the server's limit
        ├── RangeNotSatisfiableError    416 range_not_satisfiable  a Range outside the blob
        ├── NotSupportedError           501 not_implemented      this server or store cannot do that yet
        └── UploadError                 400 upload_error         a resumable upload refused (.offset)
            ├── UploadInProgressError   409 upload_in_progress   another upload holds the blob: retry
            ├── UploadOffsetError       409 offset_mismatch      Upload-Offset is not where the server is
            ├── UploadTooLongError      400 too_many_bytes       the body runs past Upload-Length
            ├── UploadQuotaError        413 upload_quota         partial uploads over the namespace's limit
            └── ClientDisconnectedError 400 client_disconnected  the body ended early

    converters.FormatError              422 (its own code)       the format layer (converters/errors.py)

Format problems from the converters (converters.FormatError and its subclasses) pass through
unchanged: they already name the file, key or field at fault. `converters/` knows nothing of HTTP,
so their status is given here, once (FORMAT_STATUS). The CLI prints any of these as one line and
exits 1.

On the wire an error is `{"error": {"code", "message", **extra}}` with the class's status:
`to_payload` writes it (the server's one handler) and `from_payload` rebuilds the same class with the
same message and extra attributes (the client), both by walking this tree, so no table is kept by hand.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from converters.errors import FormatError, InvalidAdapterError

if TYPE_CHECKING:
    from .vllm_checks import Verdict

#: The HTTP status of every converters.FormatError (the format layer has no notion of HTTP).
FORMAT_STATUS = 422
#: Extra attributes of format errors that travel on the wire (FormatError.path does not: it is a server path).
FORMAT_FIELDS: dict[type, tuple[str, ...]] = {InvalidAdapterError: ("problems",)}
#: The modules holding subtrees of RegistryError (they import this one, so they are loaded lazily).
SUBTREES = ("registry.store.errors", "registry.tensors.errors")


class RegistryError(Exception):
    """Base class of everything the registry refuses.

    `code` is the stable wire name (unique in the tree), `status` the HTTP status a server answers it
    with, `fields` the attributes that travel beside the message (see to_payload).
    """

    code: str = "bad_request"
    status: int = 400
    fields: tuple[str, ...] = ()

    def __init_subclass__(cls, *, code: str | None = None, status: int | None = None,
                          fields: tuple[str, ...] | None = None, **kwargs: Any) -> None:
        """`class X(Parent, code="x", status=404)`: every subclass names its own wire code."""
        super().__init_subclass__(**kwargs)
        if code is None:
            raise TypeError(f"{cls.__name__} must define its own wire `code` (registry/errors.py)")
        cls.code = code
        if status is not None:
            cls.status = status
        if fields is not None:
            cls.fields = fields


class InvalidIdError(RegistryError, ValueError, code="invalid_id"):
    """An identifier or name that the grammar in DESIGN.md section 2 does not allow."""


class NotFoundError(RegistryError, LookupError, code="not_found", status=404):
    """The named adapter, base model, ref or revision does not exist."""


class AmbiguousRefError(RegistryError, code="ambiguous_ref", status=409):
    """A digest prefix matches several revisions: give more hex digits."""


class RefExistsError(RegistryError, code="ref_exists", status=409):
    """Tags are immutable: moving one needs --force."""


class RevisionInUseError(RegistryError, code="revision_in_use", status=409, fields=("needed_by",)):
    """A revision cannot be deleted: `.needed_by` names each tag, branch, revision (lineage) or job that needs it."""

    def __init__(self, message: str, needed_by: Sequence[str]) -> None:
        self.needed_by = list(needed_by)
        super().__init__(message)


class InvalidCheckpointError(RegistryError, code="invalid_checkpoint", status=422, fields=("problems",)):
    """Validation found errors; `.problems` lists them."""

    def __init__(self, message: str, problems: Sequence[object] = ()) -> None:
        self.problems = list(problems)
        super().__init__(message)


class UnsafePathError(RegistryError, code="unsafe_path"):
    """A path inside a checkpoint is absolute, climbs out with '..', or is not portable (links: UnsafeFileError)."""


class IntegrityError(RegistryError, code="integrity_error", status=500):
    """Bytes on disk no longer match the digest they are stored under."""


class BlobsMissingError(RegistryError, code="blobs_missing", status=409, fields=("missing",)):
    """A manifest names blobs the store does not hold yet: upload them, then commit again."""

    def __init__(self, message: str, missing: Sequence[str]) -> None:
        self.missing = list(missing)
        super().__init__(message)


class StaleParentError(RegistryError, code="stale_parent", status=412):
    """A hub commit was based on a revision that is no longer its branch's head: pull, then commit again."""


class SwiftEnvironmentError(RegistryError, code="swift_environment", status=500):
    """ms-swift's interpreter (SWIFTREG_SWIFT_PYTHON) is missing, or a batch could not run at all."""


class ServingRefusedError(RegistryError, code="serving_refused"):
    """The adapter exists but vLLM cannot serve it; `.verdict` holds every reason and what to do.

    The verdict stays in the process that made it (the message carries its summary): rebuilt from a
    payload, `.verdict` is None.
    """

    verdict: Verdict | None = None

    def __init__(self, message: str, verdict: Verdict) -> None:
        self.verdict = verdict
        super().__init__(message)


class HubError(RegistryError, code="hub_error"):
    """An import from a hub failed (unreachable, refused, dropped mid-download): nothing was registered."""


class HubNotFoundError(HubError, NotFoundError, code="hub_not_found", status=404):
    """The hub has no such repository or revision (or it is private and no token was given)."""


class HubNoAdapterError(HubError, code="hub_no_adapter"):
    """The hub repository holds no adapter checkpoint where it was looked for (or only pickle files)."""


class XetError(RegistryError, code="xet_refused"):
    """A Xet upload refused: a xorb whose chunks do not hash to its name, a shard that does not parse, or a
    file whose reconstruction does not match its Xet hash or sha256 (the message names which)."""


class XetMissingError(XetError, code="xet_missing"):
    """A shard names a xorb that was never uploaded (or that the token may not use), or a chunk past its end."""


class WebhookError(RegistryError, code="webhook_error"):
    """A webhook refused (registry/webhooks/): a URL it may not target, an unknown event kind, a key that
    cannot decrypt its secret."""


class WebhookNotFoundError(WebhookError, NotFoundError, code="webhook_not_found", status=404):
    """No webhook (or delivery) with that id in the namespaces the caller may manage."""


class JobError(RegistryError, code="job_error"):
    """A job operation refused (registry/jobs/)."""


class JobNotFoundError(JobError, NotFoundError, code="job_not_found", status=404):
    """No job with that id."""


class InvalidJobError(JobError, ValueError, code="invalid_job"):
    """The job's kind is unknown or its parameters are not what that kind takes."""


class JobConflictError(JobError, code="job_conflict", status=409):
    """The idempotency key names a job submitted with another kind or other parameters."""


class JobStateError(JobError, code="job_state", status=409):
    """The job is in a state that does not allow this (a finished job cannot be cancelled)."""


class JobCancelledError(JobError, code="job_cancelled", status=409):
    """The job was cancelled (or given to another worker) while it ran: its result is not pushed."""


class UnavailableError(RegistryError, code="unavailable", status=503, fields=("dependency", "retry_after")):
    """A dependency the registry needs is down: `.dependency` names it ("database", "store", "disk"),
    `.retry_after` is the seconds a client should wait (sent as `Retry-After`). Nothing was changed."""

    def __init__(self, message: str, dependency: str, retry_after: int = 5) -> None:
        self.dependency = dependency
        self.retry_after = retry_after
        self.headers = {"Retry-After": str(retry_after)}
        super().__init__(message)


class InsufficientStorageError(RegistryError, code="insufficient_storage", status=507, fields=("writing",)):
    """The filesystem a write needed is full; `.writing` says what was being written. Nothing partial
    was kept visible: free space (or run gc) and retry."""

    def __init__(self, message: str, writing: str) -> None:
        self.writing = writing
        super().__init__(message)


class DeviceFailureError(RegistryError, code="device_failure", status=503,
                         fields=("device", "shard", "needed_bytes", "retryable")):
    """The accelerator failed under tensor work (registry/tensors/gpu_faults.py): `.device` where, `.shard` the
    base shard being worked on (None when not known), `.needed_bytes` what the failed allocation asked for.
    Nothing was pushed or written; the work can be retried (`.retryable`), on another device or with
    `--device cpu`."""

    retryable = True

    def __init__(self, message: str, device: str | None = None, shard: str | None = None,
                 needed_bytes: int | None = None, retryable: bool = True) -> None:
        self.device, self.shard, self.needed_bytes, self.retryable = device, shard, needed_bytes, retryable
        super().__init__(message)


class DeviceOutOfMemoryError(DeviceFailureError, code="device_out_of_memory"):
    """CUDA ran out of memory; the message names the shard, the memory it needed and what to try."""


class DeviceLostError(DeviceFailureError, code="device_lost"):
    """A CUDA error other than out of memory (the GPU fell off the bus, an illegal address, a reset): the job
    fails, leaving no partial revision, and another worker or device can run it again."""


# ----- what only a registry over HTTP meets -------------------------------------------------------------

class RemoteError(RegistryError, code="remote_error", status=502):
    """A refusal of the HTTP protocol, or an answer local mode has no class for.

    `status` and `code` are the class's, or the server's own for a code this tree does not know;
    `headers` are response headers a server sends with it (WWW-Authenticate, Connection: close).
    """

    def __init__(self, message: str, status: int | None = None, code: str | None = None, *,
                 headers: Mapping[str, str] | None = None) -> None:
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers = dict(headers or {})
        super().__init__(message)


class AccessDeniedError(RemoteError, code="access_denied", status=403):
    """401: no token or an unknown / revoked one; 403: the token lacks the scope or namespace."""


class UnauthorizedError(AccessDeniedError, code="unauthorized", status=401):
    """No bearer token, or one the server does not know (or has revoked)."""


class ForbiddenError(AccessDeniedError, code="forbidden", status=403):
    """The token is valid but its scope or namespace does not allow this request."""


class ServerUnreachableError(RemoteError, code="unreachable", status=503):
    """The server gave no usable answer after every retry (connection refused or reset, timeouts, 5xx)."""


class InvalidRequestError(RemoteError, code="invalid_request", status=422):
    """The request (its JSON body, query or headers) is not what the route takes."""


class MethodNotAllowedError(RemoteError, code="method_not_allowed", status=405):
    """The route exists but does not take this HTTP method."""


class RequestTooLargeError(RemoteError, code="too_large", status=413):
    """A request body, manifest or blob over the server's limit."""


class HeadersTooLargeError(RemoteError, code="headers_too_large", status=431):
    """The request's headers together exceed the server's limit."""


class RangeNotSatisfiableError(RemoteError, code="range_not_satisfiable", status=416):
    """The Range asked for lies outside the blob."""


class NotSupportedError(RemoteError, code="not_implemented", status=501):
    """This server (or its blob store) cannot do that yet."""


class UploadError(RemoteError, code="upload_error", status=400, fields=("offset",)):
    """A resumable upload refused; `.offset` is how many bytes of the blob the server holds (when known)."""

    def __init__(self, message: str, offset: int | None = None, *,
                 headers: Mapping[str, str] | None = None) -> None:
        self.offset = offset
        super().__init__(message, headers=headers)


class UploadInProgressError(UploadError, code="upload_in_progress", status=409):
    """Another upload of the same blob holds it: ask HEAD for the offset and retry."""


class UploadOffsetError(UploadError, code="offset_mismatch", status=409):
    """Upload-Offset is not where the server stands: continue from `.offset`."""


class UploadTooLongError(UploadError, code="too_many_bytes"):
    """The body runs past Upload-Length; the bytes of this request were dropped."""


class UploadQuotaError(UploadError, code="upload_quota", status=413):
    """The bytes held in unfinished uploads of this namespace (or token) would exceed the server's limit:
    finish or abandon those uploads (they expire on their own) and retry."""


class ClientDisconnectedError(UploadError, code="client_disconnected"):
    """The connection closed before the request body ended (an upload resumes from `.offset`)."""


# ----- the wire form, derived from the tree -----------------------------------------------------------

Refusal = RegistryError | FormatError


def tree() -> dict[str, type[Exception]]:
    """code -> class for every class of the tree (RegistryError's and converters.FormatError's)."""
    for module in SUBTREES:
        importlib.import_module(module)
    out: dict[str, type[Exception]] = {}
    for root in (RegistryError, FormatError):
        todo: list[type[Exception]] = [root]
        while todo:
            cls = todo.pop()
            out.setdefault(cls.code, cls)  # type: ignore[attr-defined]
            todo.extend(cls.__subclasses__())
    return out


def status_of(exc: Refusal | type[Refusal]) -> int:
    """The HTTP status an error (or error class) is answered with."""
    if isinstance(exc, FormatError) or (isinstance(exc, type) and issubclass(exc, FormatError)):
        return FORMAT_STATUS
    return exc.status


def fields_of(cls: type[Exception]) -> tuple[str, ...]:
    """The attributes of `cls` that travel beside its message."""
    if issubclass(cls, RegistryError):
        return cls.fields
    return tuple(name for base in cls.__mro__ for name in FORMAT_FIELDS.get(base, ()))


def to_payload(exc: Refusal) -> tuple[int, dict[str, Any]]:
    """(status, `{"error": {"code", "message", **extra}}`) for a tree error: the server's one answer.

    Sequences travel as lists of strings (a validation problem as its text), paths as strings.
    """
    if not isinstance(exc, (RegistryError, FormatError)):
        raise TypeError(f"{type(exc).__name__} is not in the error tree (registry/errors.py)")
    extra = {name: _plain(getattr(exc, name, None)) for name in fields_of(type(exc))}
    return status_of(exc), {"error": {"code": exc.code, "message": str(exc), **extra}}


def from_payload(status: int, body: Any, *, fallback: str | None = None) -> RegistryError | FormatError:
    """The error a server answered with `status` and JSON `body`, rebuilt as the class it raised.

    A known code gives its class with the server's message and extra attributes, built without
    calling its constructor (constructors format messages; this one is final). An unknown code
    falls back by status: 404 NotFoundError, 401/403 AccessDeniedError, else RemoteError. `fallback`
    is the message when the body has none (a HEAD, a proxy's HTML page).
    """
    code: str | None = None
    message: Any = None
    extra: dict[str, Any] = {}
    if isinstance(body, Mapping) and isinstance(body.get("error"), Mapping):
        err = body["error"]
        code = err.get("code") if isinstance(err.get("code"), str) else None
        message = err.get("message")
        extra = {k: v for k, v in err.items() if k not in ("code", "message")}
    elif isinstance(body, Mapping) and isinstance(body.get("detail"), (str, list)):  # FastAPI's own 4xx
        detail = body["detail"]
        message = detail if isinstance(detail, str) else str(detail)[:500]
    text = str(message or fallback or f"HTTP {status}")
    known = rebuild(code, text if message is None else str(message), extra, status) if code is not None else None
    if known is not None:
        return known
    if status == 404:
        return NotFoundError(text)
    if status in (401, 403):
        return AccessDeniedError(text, status, code or ("unauthorized" if status == 401 else "forbidden"))
    return RemoteError(f"{text} (HTTP {status}{', ' + code if code else ''})", status, code)


def rebuild(code: str, message: str, extra: Mapping[str, Any] | None = None,
            status: int | None = None) -> RegistryError | FormatError | None:
    """The class `code` names with `message` and the extra attributes in `extra`; None for an unknown code.

    Built without calling the constructor: constructors format their message (FormatError prefixes
    its path), and `message` is already the final one. `status` is kept on a RemoteError that was
    answered with another status than its class's.
    """
    cls = tree().get(code)
    if cls is None:
        return None
    exc: Any = cls.__new__(cls)
    Exception.__init__(exc, message)
    if isinstance(exc, RemoteError):
        exc.headers = {}
        if status is not None and status != exc.status:
            exc.status = status
    extra = extra or {}
    for name in fields_of(cls):
        value = extra.get(name)
        setattr(exc, name, [] if value is None and name in ("problems", "missing", "needed_by") else value)
    return exc


def _plain(value: object) -> Any:
    """A JSON value for an extra attribute."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [str(v) for v in value]
    return str(value)
