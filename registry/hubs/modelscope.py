"""Imports from ModelScope, through the real `modelscope` client (1.38+: its modelscope-hub core).

The client reads its own variables (MODELSCOPE_ENDPOINT, MODELSCOPE_API_TOKEN, MODELSCOPE_CACHE, ...).
The listing names the commit id of the revision (`Revision` of each file); the download is pinned to
it, and the client checks every file's sha256 and size against the listing.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import HubError, HubNotFoundError
from . import Listing, Source, hub_failure

MASTER = "master"  # ModelScope's default branch


def _api():  # type: ignore[no-untyped-def]
    try:
        from modelscope_hub.api import HubApi
    except ImportError:
        raise HubError("importing from ModelScope needs its client: pip install 'modelscope>=1.38' "
                       "(which brings modelscope-hub)") from None

    return HubApi()


def listing(src: Source) -> Listing:
    """The commit id and file list of `src`: a repo check, then one recursive listing."""
    api = _api()  # first: it turns a missing client into a HubError that says what to install
    from modelscope_hub.errors import AuthenticationError, NotExistError, PermissionDeniedError

    endpoint = str(api.legacy.endpoint)
    try:
        api.legacy.get_repo_info(src.repo, "model")
    except (NotExistError, AuthenticationError, PermissionDeniedError):
        raise HubNotFoundError(f"ModelScope at {endpoint} has no model {src.repo} (or it is private: set "
                               "MODELSCOPE_API_TOKEN); nothing was imported") from None
    except Exception as exc:
        raise hub_failure(src, exc, "listing") from None
    try:
        raw = api.legacy.list_repo_files(src.repo, "model", revision=src.revision or MASTER, recursive=True)
    except NotExistError:
        raise HubNotFoundError(f"ModelScope at {endpoint} has no revision {src.revision or MASTER!r} of "
                               f"{src.repo}; nothing was imported") from None
    except Exception as exc:
        raise hub_failure(src, exc, "listing") from None
    files = [f for f in raw if isinstance(f, dict) and f.get("Type", "blob") != "tree" and f.get("Path")]
    commits = {str(f.get("Revision") or "") for f in files}
    if len(commits) != 1 or not next(iter(commits)):
        raise HubError(f"ModelScope at {endpoint} answered no single commit id for {src} ({sorted(commits)[:3]})")
    return Listing(commits.pop(), endpoint, [str(f["Path"]) for f in files])


def download(src: Source, found: Listing, files: list[str], dest: Path) -> None:
    """Download `files` at the listed commit into `dest` (the client's progress bars and checksums)."""
    # modelscope's own snapshot_download is this function behind a shim; `import modelscope` alone
    # costs about 5 s (it scans its model zoo), modelscope_hub 0.25 s.
    from modelscope_hub.compat.snapshot_download import snapshot_download

    try:
        snapshot_download(src.repo, revision=found.commit, local_dir=str(dest), allow_patterns=files)
    except Exception as exc:  # dropped connection, checksum mismatch, 5xx: nothing is registered
        raise hub_failure(src, exc, "downloading") from None
