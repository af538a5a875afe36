"""Imports from the Hugging Face Hub, through the real `huggingface_hub` client.

The client reads its own variables (HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE, HF_HUB_DISABLE_PROGRESS_BARS,
...); nothing here overrides them. The revision is pinned to the commit id the Hub answered before
any byte is downloaded, so the files are exactly that commit's even if a branch moves meanwhile.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import HubError, HubNotFoundError
from . import Listing, Source, hub_failure


def listing(src: Source) -> Listing:
    """The commit id and file list of `src` (one request)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled, RepositoryNotFoundError, RevisionNotFoundError

    api = HfApi()
    try:
        info = api.model_info(src.repo, revision=src.revision)
    except RevisionNotFoundError:
        raise HubNotFoundError(f"the Hugging Face Hub at {api.endpoint} has no revision {src.revision!r} of "
                               f"{src.repo}; nothing was imported") from None
    except RepositoryNotFoundError:
        raise HubNotFoundError(f"the Hugging Face Hub at {api.endpoint} has no repository {src.repo} (or it is "
                               f"private: set HF_TOKEN) at {src.revision or 'main'}; nothing was imported") from None
    except OfflineModeIsEnabled:
        raise HubError(f"cannot import {src}: HF_HUB_OFFLINE is set") from None
    except Exception as exc:  # network, 5xx, a malformed answer: the hub's failure, not the user's
        raise hub_failure(src, exc, "listing") from None
    if not info.sha:
        raise HubError(f"the Hugging Face Hub at {api.endpoint} answered no commit id for {src}")
    return Listing(info.sha, api.endpoint, [s.rfilename for s in info.siblings or []])


def download(src: Source, found: Listing, files: list[str], dest: Path) -> None:
    """Download `files` at the listed commit into `dest` (the client's progress bars, sha256 checked by it)."""
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(src.repo, revision=found.commit, local_dir=dest, allow_patterns=files)
    except Exception as exc:  # dropped connection, 5xx, disk full: nothing is registered
        raise hub_failure(src, exc, "downloading") from None
