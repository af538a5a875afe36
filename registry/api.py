"""The one contract: `RegistryAPI`, and the values that cross it.

`Registry` (registry/service/, the embedded registry) and `RemoteRegistry` (registry/client/, the same
calls over HTTP) both implement `RegistryAPI`; every consumer (the CLI, the vLLM plugin, the serving
checks, registry operations) is typed against it, so switching local and remote is a URL and nothing
else. The value types live here too, with their JSON shape (`to_dict` / `from_dict`), because the
server writes them and the client reads them back: one definition keeps the two ends in step.

This module imports nothing of the service or the client (they import it).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Mapping, Protocol, runtime_checkable

from .store.digests import validate_digest

if TYPE_CHECKING:
    from .hubs import ImportResult
    from .jobs.queue import JobInfo
    from .jobs.report import ValidationReport
    from .snapshots import SnapshotCache

Kind = Literal["adapter", "base"]
#: Called with a byte count as files are stored or uploaded (for progress bars).
Progress = Callable[[int], None]


def _when(value: Any) -> datetime:
    """An ISO timestamp from JSON (a trailing Z accepted); the epoch when absent."""
    if isinstance(value, str) and value:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return datetime.fromtimestamp(0).astimezone()


def _kind(value: Any) -> Kind:
    if value in (None, "", "adapter"):
        return "adapter"
    if value == "base":
        return "base"
    raise ValueError(f"kind must be 'adapter' or 'base', not {value!r}")


@dataclass(frozen=True)
class RevisionInfo:
    """One immutable revision of an adapter or base model, with the refs that point at it now."""

    repo: str
    kind: Kind
    number: int
    digest: str
    format: str
    tags: list[str]
    branches: list[str]
    created_at: datetime
    message: str | None
    author: str | None
    meta: dict[str, Any]
    manifest: dict[str, Any]
    base_model: str | None = None
    parents: list[dict[str, Any]] = field(default_factory=list)
    provenance: list[dict[str, Any]] = field(default_factory=list)  # hub imports it came from (hubs/)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["created_at"] = self.created_at.isoformat()
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RevisionInfo":
        """The inverse of to_dict (also accepts `{"revision": {...}}`); ValueError when malformed.

        Answers without a manifest (a revisions list) get an empty one.
        """
        if isinstance(data.get("revision"), Mapping):
            data = data["revision"]
        try:
            return cls(
                repo=str(data["repo"]), kind=_kind(data.get("kind")), number=int(data["number"]),
                digest=validate_digest(data["digest"]), format=str(data["format"]),
                tags=list(data.get("tags") or []), branches=list(data.get("branches") or []),
                created_at=_when(data.get("created_at")), message=data.get("message"), author=data.get("author"),
                meta=dict(data.get("meta") or {}), manifest=dict(data.get("manifest") or {}),
                base_model=data.get("base_model"), parents=list(data.get("parents") or []),
                provenance=list(data.get("provenance") or []))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed revision ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class PushResult:
    """What a push did: the revision, whether it is new, and what this call stored or uploaded."""

    revision: RevisionInfo
    created: bool          # False: identical content was already a revision
    blobs_written: int
    bytes_written: int
    notices: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RepoInfo:
    """One adapter or base-model repository, as `list` shows it."""

    repo: str
    kind: Kind
    tuner_type: str | None
    revisions: int
    main: int | None
    updated_at: datetime | None
    base_model: str | None
    source: dict[str, Any] | None = None  # provenance of the main revision, when it was imported

    @property
    def cursor(self) -> str:
        """Where the next page of a listing that ends here starts: `list(..., after=info.cursor)`."""
        return self.repo if self.kind == "adapter" else f"base:{self.repo}"

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["updated_at"] = self.updated_at.isoformat() if self.updated_at else None
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RepoInfo":
        """The inverse of to_dict; ValueError when malformed."""
        try:
            updated = data.get("updated_at")
            return cls(repo=str(data["repo"]), kind=_kind(data.get("kind")), tuner_type=data.get("tuner_type"),
                       revisions=int(data.get("revisions") or 0), main=data.get("main"),
                       updated_at=_when(updated) if updated else None, base_model=data.get("base_model"),
                       source=data.get("source"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed repository ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class GcResult:
    """What a garbage collection removed and kept."""

    blobs_removed: int
    bytes_removed: int
    temp_files_removed: int
    blobs_kept: int
    partial_uploads_removed: int = 0  # resumable uploads abandoned past the grace (registry/store/uploads.py)
    revisions_deleted: int = 0        # by retention rules, before the sweep (registry/service/retention.py)
    staging_removed: int = 0          # folders of killed pushes, commits and conversions past the grace
    staging_bytes_removed: int = 0
    kept_in_grace: int = 0            # unreferenced blobs spared only because they are younger than the grace
    kept_in_grace_bytes: int = 0
    xet_removed: int = 0              # xorbs and shards of Xet uploads no revision's blob needs (registry/xet/)
    xet_bytes_removed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "GcResult":
        """The inverse of to_dict (the temp, kept and partial counts default to 0); ValueError when malformed."""
        try:
            return cls(int(data["blobs_removed"]), int(data["bytes_removed"]),
                       int(data.get("temp_files_removed", 0)), int(data.get("blobs_kept", 0)),
                       *(int(data.get(name, 0)) for name in _GC_COUNTS))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed gc result ({type(exc).__name__}: {exc})") from None


_GC_COUNTS = ("partial_uploads_removed", "revisions_deleted", "staging_removed", "staging_bytes_removed",
              "kept_in_grace", "kept_in_grace_bytes", "xet_removed", "xet_bytes_removed")


@dataclass(frozen=True)
class RetentionPolicy:
    """A repository's retention rule: keep its newest `keep_last` revisions, and every tagged one if
    `keep_tagged`; whatever a branch, a lineage link or an active job needs is kept whatever the rule."""

    repo: str
    keep_last: int
    keep_tagged: bool = True

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RetentionPolicy":
        """The inverse of to_dict; ValueError when malformed."""
        try:
            return cls(str(data["repo"]), int(data["keep_last"]), bool(data.get("keep_tagged", True)))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed retention policy ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class RetentionReport:
    """What applying retention policies did: revisions `deleted` (`ns/name@N`), and those the rules would
    have deleted but something needs (`kept`: `ns/name@N: why`). Their blobs are reclaimed by gc."""

    deleted: list[str]
    kept: list[str]
    dry_run: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RetentionReport":
        """The inverse of to_dict; ValueError when malformed."""
        try:
            return cls([str(d) for d in data["deleted"]], [str(k) for k in data["kept"]], bool(data.get("dry_run")))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed retention report ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class WebhookInfo:
    """A receiver of one namespace's events (registry/webhooks/). `secret` is set only in the answer of
    `add_webhook` when the registry generated it: it is stored encrypted and never shown again."""

    id: int
    namespace: str
    url: str
    events: list[str] | None          # the kinds it gets; None: every kind
    description: str | None
    created_at: datetime
    created_by: str | None = None
    pending: int = 0                  # deliveries not finished yet
    last_status: str | None = None    # the newest finished delivery's status
    secret: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["created_at"] = self.created_at.isoformat()
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "WebhookInfo":
        """The inverse of to_dict; ValueError when malformed."""
        try:
            events = data.get("events")
            return cls(int(data["id"]), str(data["namespace"]), str(data["url"]),
                       None if events is None else [str(e) for e in events], data.get("description"),
                       _when(data.get("created_at")), data.get("created_by"), int(data.get("pending") or 0),
                       data.get("last_status"), data.get("secret"))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed webhook ({type(exc).__name__}: {exc})") from None


@dataclass(frozen=True)
class DeliveryInfo:
    """One event sent (or to be sent) to one webhook, with the receiver's last answer and its attempts."""

    id: int
    uuid: str                         # the X-Swiftreg-Delivery header: the same on every retry
    webhook_id: int
    event_id: int
    event: str                        # the event's kind
    stream: str                       # events of one stream (a repository) are delivered in order
    sequence: int
    status: str                       # pending, sending, succeeded, failed
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None = None
    finished_at: datetime | None = None
    response_status: int | None = None
    response_body: str | None = None
    error: str | None = None
    duration_ms: int | None = None
    redelivery_of: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        for key in ("created_at", "next_attempt_at", "finished_at"):
            d[key] = d[key].isoformat() if d[key] is not None else None
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DeliveryInfo":
        """The inverse of to_dict; ValueError when malformed."""
        try:
            d: dict[str, Any] = {k: data.get(k) for k in cls.__dataclass_fields__}
            for key in ("created_at", "next_attempt_at", "finished_at"):
                d[key] = _when(d[key]) if d[key] else None
            d["created_at"] = d["created_at"] or _when(None)
            d["history"] = list(d["history"] or [])
            for key in ("id", "webhook_id", "event_id", "sequence", "attempts"):
                d[key] = int(d[key])
            return cls(**d)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed delivery ({type(exc).__name__}: {exc})") from None


@runtime_checkable
class RegistryAPI(Protocol):
    """What every registry offers, embedded or remote. Ids are `namespace/name[@ref]` (registry/ids.py).

    An implementation may accept more keyword arguments than these (the embedded push records
    provenance; the remote import waits for the server's job), never fewer.
    """

    #: The local cache of verified snapshot folders resolve() hands out (`swiftreg cache ls|prune`).
    snapshots: SnapshotCache

    home: Path  # this machine's folder for the registry's files (snapshots, scratch space)

    def push(self, path: Path | str, repo_id: str, *, tag: str | None = None, force: bool = False,
             message: str | None = None, author: str | None = None, base_model: str | None = None,
             parents: list[dict[str, Any]] | None = None, progress: Progress | None = None,
             allow_nonfinite: bool = False, base_folder: Path | str | None = None) -> PushResult:
        """Store the adapter checkpoint at `path` as a new revision of `repo_id` (or find it already there).
        Tensors holding NaN or Inf are refused unless `allow_nonfinite`. `base_model` (registered) is validated
        against and recorded; `base_folder` (a local model folder) is only validated against."""
        ...

    def push_base(self, path: Path | str, repo_id: str, *, tag: str | None = None, force: bool = False,
                  message: str | None = None, parents: list[dict[str, Any]] | None = None,
                  progress: Progress | None = None) -> PushResult:
        """Store a transformers model folder (config.json + safetensors) as a base-model revision."""
        ...

    def import_from(self, source: str, repo_id: str, *, tag: str | None = None, base_model: str | None = None,
                    subfolder: str | None = None, message: str | None = None,
                    progress: Progress | None = None, base_folder: Path | None = None,
                    allow_nonfinite: bool = False) -> ImportResult:
        """Import an adapter from `hf://owner/name[@rev]` or `ms://owner/name[@rev]` (`base_folder`: a local
        model folder to validate against, embedded registries only: a server cannot read it)."""
        ...

    def show(self, repo_id: str) -> RevisionInfo:
        """The revision an id names (`main` when it names no ref)."""
        ...

    def log(self, repo_id: str, *, limit: int | None = None, after: int | None = None) -> list[RevisionInfo]:
        """Every revision of a repository, newest first; with `limit`, at most that many, and with `after`, only
        those numbered below it (keyset pagination: the next page starts after the last number shown).

        A remote log carries no file lists (each `manifest` is `{}`, to keep long logs small):
        `show` a revision for its files.
        """
        ...

    def resolve(self, repo_id: str, format: str | None = None) -> Path:
        """A verified local folder holding the revision, in `format` (its stored format by default)."""
        ...

    def pull(self, repo_id: str, output: Path | str | None = None, format: str | None = None, *,
             overwrite: bool = False) -> Path:
        """Materialise a revision; with `output`, copy it there (atomically) and return that path."""
        ...

    def tag(self, repo_id: str, tag: str, *, force: bool = False) -> RevisionInfo:
        """Point tag `tag` at the revision `repo_id` names (tags are immutable unless forced)."""
        ...

    def branch(self, repo_id: str, branch: str) -> RevisionInfo:
        """Point branch `branch` at the revision `repo_id` names, creating or moving it (`main` included: how a
        bad revision is rolled back); a tag of that name is refused. The revision stays what it was."""
        ...

    def untag(self, repo_id: str, tag: str) -> None:
        """Remove a tag (never a branch); the revision stays."""
        ...

    def delete_revision(self, repo_id: str) -> RevisionInfo:
        """Delete the revision `repo_id` names (`rm --revision`), on the record; refused (RevisionInUseError)
        while a tag, a branch, a lineage link or an active job needs it. Its blobs go at the next gc."""
        ...

    def set_retention(self, repo_id: str, keep_last: int | None, *, keep_tagged: bool = True) -> RetentionPolicy | None:
        """Set the repository's retention rule (None: remove it); gc and apply_retention enforce it."""
        ...

    def retention(self, repo_id: str) -> RetentionPolicy | None:
        """The repository's retention rule, if it has one."""
        ...

    def apply_retention(self, repo_id: str | None = None, *, dry_run: bool = False) -> RetentionReport:
        """Delete the revisions retention rules do not keep (one repository's, or every one's)."""
        ...

    def remove_ref(self, repo_id: str, *, force: bool = False) -> None:
        """`rm ns/name@ref`: drop a tag or branch (`main` only when forced); revisions stay."""
        ...

    def gc(self, grace_seconds: float = 3600.0, dry_run: bool = False) -> GcResult:
        """Delete blobs nothing references that are older than the grace period."""
        ...

    def check_serving(self, repo_id: str, target: str = "vllm", *, max_lora_rank: int = 16,
                      served_model: str | None = None, record: bool = True) -> dict[str, Any]:
        """Whether `target` can serve the revision; the verdict (recorded in validation_runs)."""
        ...

    def submit_job(self, kind: str, params: dict[str, Any], *, key: str | None = None, backend: str = "worker",
                   ray_address: str | None = None) -> JobInfo:
        """Record a job (idempotent with `key`); the backend decides where it runs."""
        ...

    def job(self, job_id: int) -> JobInfo:
        """One job, as it stands now."""
        ...

    def jobs(self, *, status: str | None = None, kind: str | None = None, namespaces: list[str] | None = None,
             limit: int = 100) -> list[JobInfo]:
        """Jobs, newest first."""
        ...

    def cancel_job(self, job_id: int) -> JobInfo:
        """Cancel a queued or running job."""
        ...

    def validation_history(self, repo_id: str, check_kind: str | None = None,
                           limit: int = 200) -> list[dict[str, Any]]:
        """Every recorded check of a revision, newest first."""
        ...

    def validate_all(self, **options: Any) -> ValidationReport:
        """Run the revision checks over every adapter revision (only where the database is)."""
        ...

    def add_webhook(self, url: str, namespace: str, *, events: list[str] | None = None, secret: str | None = None,
                    description: str | None = None) -> WebhookInfo:
        """Send `namespace`'s events (`events`: these kinds only) to `url`, signed with `secret` (generated, and
        returned once, when not given). The URL is checked (registry/webhooks/urls.py)."""
        ...

    def webhooks(self, namespace: str | None = None) -> list[WebhookInfo]:
        """The webhooks (of one namespace), oldest first; never their secrets."""
        ...

    def remove_webhook(self, webhook_id: int) -> None:
        """Remove a webhook and its deliveries."""
        ...

    def test_webhook(self, webhook_id: int) -> DeliveryInfo:
        """Send the webhook a `webhook.test` event now and wait for the answer; the delivery."""
        ...

    def webhook_deliveries(self, webhook_id: int, *, limit: int = 50) -> list[DeliveryInfo]:
        """A webhook's deliveries, newest first, with the receivers' answers."""
        ...

    def redeliver(self, delivery_id: int) -> DeliveryInfo:
        """Queue the event of delivery `delivery_id` again for its webhook (a new delivery id)."""
        ...

    def close(self) -> None:
        """Release connections; the registry is not used afterwards."""
        ...

    # last: below this line `list` names the method, not the builtin
    def list(self, namespace: str | None = None, *, limit: int | None = None,
             after: str | None = None) -> list[RepoInfo]:
        """Every repository (of one namespace): adapters, then base models, each by name; with `limit`, at most
        that many, and with `after` (the last one's `RepoInfo.cursor`), only those that follow it."""
        ...
