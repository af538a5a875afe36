"""The lookup both hub dialects need (hf.py, modelscope.py): which revision a hub request names, in
which form it is served, and where its files' bytes are.

What is served: adapters in PEFT format (a Swift-stored revision through the registry's derived
conversion, `Registry.manifest(id, "peft")`: done once and recorded by the registry), base models as
stored. A Swift revision PEFT cannot express is refused (422, remembered per process so the
conversion is not retried), or served in its stored form where the dialect's client loads that too.

Commit ids: the Hub's clients need 40 lowercase hex characters. A revision's commit id is the first
40 hex of the sha256 digest of the manifest *as served*, so it is stable across restarts and machines
and changes only if the served bytes change (a new converter version). A 40-hex revision is looked up
as such a commit id: first among the ids this process handed out, then as a digest prefix of a
revision whose served form is its stored form, then among the repo's Swift-stored revisions, and last
as a tag or branch name.

Refusals are `HubRefusal`s carrying the Hub's error codes (RepoNotFound, RevisionNotFound,
EntryNotFound); each dialect renders them in its own shape.
"""
from __future__ import annotations

import re
import threading
from dataclasses import dataclass

from fastapi import Request
from fastapi.responses import Response

import converters

from ..api import RevisionInfo
from ..errors import AccessDeniedError, AmbiguousRefError, InvalidIdError, NotFoundError
from ..ids import parse_id, parse_ref
from ..manifest import FileEntry, Manifest
from ..service import Registry
from .auth import bearer, require
from .errors import HubRefusal
from .responses import blob_response, remote_blob

COMMIT = re.compile(r"^[0-9a-f]{40}$")
#: The Hub's words for a bad token; the client raises a plain 401 HfHubHTTPError on them, not RepoNotFound.
INVALID_CREDENTIALS = "Invalid credentials in Authorization header"


@dataclass(frozen=True)
class Served:
    """One revision as the hub dialects serve it."""

    repo: str
    info: RevisionInfo
    format: str                       # served format: "peft" for adapters, the stored one for base models
    manifest: Manifest
    commit: str                       # 40 lowercase hex: manifest digest prefix

    @property
    def files(self) -> dict[str, FileEntry]:
        return {f.path: f for f in self.manifest.files}


class HubState:
    """Per-app memo: the commit ids handed out, and the Swift revisions PEFT cannot express (why)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.commits: dict[tuple[str, str], int] = {}
        self.refused: dict[tuple[str, int], str] = {}

    def remember(self, served: Served) -> None:
        with self.lock:
            if len(self.commits) > 65536:
                self.commits.clear()
            self.commits[(served.repo, served.commit)] = served.info.number


def registry_of(request: Request) -> Registry:
    """The app's one Registry."""
    registry: Registry = request.app.state.registry
    return registry


def repo_not_found(repo: str) -> HubRefusal:
    return HubRefusal(404, "RepoNotFound", f"Repository not found: {repo}")


def revision_not_found(repo: str, rev: str, detail: str = "") -> HubRefusal:
    message = f"Invalid rev id: {rev} for {repo}" + (f" ({detail})" if detail else "")
    return HubRefusal(404, "RevisionNotFound", message)


def hub_repo(request: Request, namespace: str, name: str, secret: str | None = None) -> str:
    """Check the caller may read `namespace`, then that `namespace/name` is a repository id at all.

    Ids the Hub's clients could not have sent (`..`, `@`, `--`) and ids that are not valid swiftreg
    names are RepoNotFound. `secret`: a token found outside the Authorization header (ModelScope's
    session cookie).
    """
    _authorize(request, namespace, secret)
    repo = f"{namespace}/{name}"
    if ".." in repo or "@" in repo or "--" in repo:
        raise repo_not_found(repo)
    try:
        parse_id(repo, allow_ref=False)
    except InvalidIdError:
        raise repo_not_found(repo) from None
    return repo


def _authorize(request: Request, namespace: str, secret: str | None = None) -> None:
    """No token: 401 RepoNotFound (the Hub's answer for a private repo); an unknown or revoked token:
    401 INVALID_CREDENTIALS; a token for another namespace: 403 RepoNotFound."""
    try:
        require(request, "read", namespace, secret=secret)
    except AccessDeniedError as exc:
        headers = {k: v for k, v in exc.headers.items() if k.lower() == "www-authenticate"}
        if exc.status == 401 and (bearer(request) or secret) is not None:
            raise HubRefusal(401, None, INVALID_CREDENTIALS, headers) from None
        raise HubRefusal(exc.status, "RepoNotFound", str(exc), headers) from None


def lookup(request: Request, namespace: str, name: str, rev: str, *, swift_fallback: bool = False,
           secret: str | None = None, or_else: str | None = None) -> Served:
    """The served revision `rev` of the repo.

    `swift_fallback` (the ModelScope dialect, whose main client ms-swift loads both forms): a Swift
    revision PEFT cannot express is served in its stored Swift form instead of being refused.
    `or_else`: the ref to take when `rev` names nothing (ModelScope's `master` falls back to `main`).
    """
    repo = hub_repo(request, namespace, name, secret)
    registry, state = registry_of(request), _state(request)
    if COMMIT.fullmatch(rev):  # whole: `$` alone lets a trailing newline through
        found = _by_commit(registry, state, repo, rev, swift_fallback=swift_fallback)
        if found is not None:
            return found
    try:
        parse_ref(rev)
    except InvalidIdError:
        _ensure_repo(registry, repo)
        raise revision_not_found(repo, rev) from None
    info: RevisionInfo | None = None
    try:
        info = registry.show(f"{repo}@{rev}")
    except NotFoundError:
        if or_else is not None:
            try:
                info = registry.show(f"{repo}@{or_else}")
            except NotFoundError:
                pass
    except AmbiguousRefError as exc:
        raise revision_not_found(repo, rev, str(exc)) from None
    if info is None:
        _ensure_repo(registry, repo)
        raise revision_not_found(repo, rev)
    return _served(registry, state, info, swift_fallback=swift_fallback)


def empty_repo(request: Request, namespace: str, name: str) -> bool:
    """Whether `namespace/name` is a repository with no revision yet (made by a hub client's `create_repo`,
    service/commits.py): its `main` names nothing, so each of its files is absent (EntryNotFound), which is
    what transformers' and PEFT's `push_to_hub` ask about its README before the first commit."""
    try:
        return not registry_of(request).log(f"{namespace}/{name}", limit=1)
    except (NotFoundError, InvalidIdError):
        return False


def _state(request: Request) -> HubState:
    state: HubState = request.app.state.hub
    return state


def _ensure_repo(registry: Registry, repo: str) -> None:
    try:
        registry.log(repo)
    except NotFoundError:
        raise repo_not_found(repo) from None


def _served(registry: Registry, state: HubState, info: RevisionInfo, *, swift_fallback: bool = False) -> Served:
    """The served form of a revision: adapters as PEFT (Swift ones converted), base models as stored."""
    manifest, fmt = None, info.format
    if info.kind == "adapter" and info.format != "peft":
        key = (info.repo, info.number)
        refused = state.refused.get(key)
        if refused is None:
            try:
                manifest, fmt = registry.manifest(f"{info.repo}@{info.number}", "peft"), "peft"
            except converters.FormatError as exc:  # deterministic for these bytes: remember, never retry
                detail = str(exc).removeprefix(f"{exc.path}: ") if exc.path is not None else str(exc)
                refused = f"{info.repo}@{info.number} cannot be served in PEFT format: {detail}"
                with state.lock:
                    state.refused[key] = refused
        if refused is not None and not swift_fallback:
            raise HubRefusal(422, None, refused)
    if manifest is None:
        manifest = Manifest.from_json(info.manifest)  # stored form: PEFT, Swift fallback, base
    served = Served(info.repo, info, fmt, manifest, manifest.digest.removeprefix("sha256:")[:40])
    state.remember(served)
    return served


def _by_commit(registry: Registry, state: HubState, repo: str, commit: str, *,
               swift_fallback: bool = False) -> Served | None:
    """The revision whose served form has commit id `commit`, if any."""
    with state.lock:
        number = state.commits.get((repo, commit))
    if number is not None:
        try:
            served = _served(registry, state, registry.show(f"{repo}@{number}"), swift_fallback=swift_fallback)
            if served.commit == commit:
                return served
        except (NotFoundError, HubRefusal):
            pass
    try:
        served = _served(registry, state, registry.show(f"{repo}@sha256:{commit}"), swift_fallback=swift_fallback)
        if served.commit == commit:
            return served
    except (NotFoundError, AmbiguousRefError, HubRefusal):
        pass
    # A revision served in a derived form: only forms already derived can have handed out this commit id, so
    # this is one query and never a conversion (an unknown commit must not convert every Swift revision).
    number = registry.derived_revision(repo, "peft", commit)
    if number is not None:
        try:
            served = _served(registry, state, registry.show(f"{repo}@{number}"), swift_fallback=swift_fallback)
            if served.commit == commit:
                return served
        except (NotFoundError, HubRefusal):
            pass
    return None


# ----- files ------------------------------------------------------------------------------------------------

def sha256_hex(entry: FileEntry) -> str:
    """The file's sha256 as bare hex: what the Hub's clients name their cache blobs and ETags by."""
    return entry.sha256.removeprefix("sha256:")


def listing(served: Served, prefix: str, recursive: bool) -> dict[str, FileEntry | None]:
    """The entries of folder `prefix` ("" for the top), sorted by path: files (their entry) and folders
    (None); only the folder's own children unless `recursive`."""
    found: dict[str, FileEntry | None] = {}
    start = len(prefix) + 1 if prefix else 0
    for entry in served.manifest.files:
        if prefix and not entry.path.startswith(prefix + "/"):
            continue
        parts = entry.path[start:].split("/")
        folders = parts[:-1] if recursive else parts[:1] if len(parts) > 1 else []
        for depth in range(1, len(folders) + 1):
            found.setdefault("/".join(filter(None, [prefix, *folders[:depth]])), None)
        if recursive or len(parts) == 1:
            found[entry.path] = entry
    return {path: found[path] for path in sorted(found)}


def file_response(request: Request, served: Served, entry: FileEntry, headers: dict[str, str]) -> Response:
    """`entry`'s bytes (Range supported) streamed from its blob, verified (responses.py: a corrupt blob is
    never answered whole; it is quarantined and later requests get `BlobNotFound` saying so), as data
    (`nosniff`, a sandboxing CSP, and `application/octet-stream` + attachment but for JSON, Markdown and
    plain text). Nothing to assemble before answering a HEAD (the Hub's client gives a HEAD 10 s)."""
    registry = registry_of(request)
    if getattr(registry.store, "remote", False):  # object storage: a redirect, or streamed (responses.py)
        return remote_blob(request, registry, entry.sha256, entry.size, headers, entry.path)
    blob = registry.servable_blob(entry.sha256, entry.size, whole="range" in request.headers,
                                  head=request.method == "HEAD")
    return blob_response(registry, blob, headers, entry.path)
