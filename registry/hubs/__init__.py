"""`swiftreg import`: bring an adapter in from the Hugging Face Hub or ModelScope, with its provenance.

    hf://owner/name[@revision]     downloaded with huggingface_hub (HF_ENDPOINT, HF_TOKEN, ... apply)
    ms://owner/name[@revision]     downloaded with modelscope (MODELSCOPE_ENDPOINT, MODELSCOPE_API_TOKEN, ...)

One import: ask the hub which commit the revision is (one listing request), stop there if this
repository already holds an import of that commit, pick the files (the adapter, its README and
args.json and other plain files; pickles such as training_args.bin or optimizer.pt are never
downloaded), download them with the hub's own client into a folder inside the registry home, then
push them like any checkpoint (detected, validated, converted from .bin if need be) with the
provenance recorded in the revision's own transaction. A failure at any step registers nothing.
Each hub is one small module (huggingface.py, modelscope.py) with the same two functions.
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import converters
from converters.layout import is_pickle_file

from ..errors import HubError, HubNoAdapterError, InvalidCheckpointError, InvalidIdError
from ..ids import check_tag, parse_id
from ..manifest import check_relpath

if TYPE_CHECKING:
    from ..api import RevisionInfo
    from ..service import Registry

_SOURCE = re.compile(r"^(hf|ms)://([A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*)(?:@(.+))?$")
CONFIG = "adapter_config.json"


@dataclass(frozen=True)
class Source:
    """A parsed SOURCE argument."""

    hub: str                 # "hf" or "ms"
    repo: str                # owner/name on the hub
    revision: str | None     # as the user asked (None: the hub's default branch)

    def __str__(self) -> str:
        return f"{self.hub}://{self.repo}@{self.revision or 'default branch'}"


@dataclass(frozen=True)
class Listing:
    """What the hub answered for a revision: its commit id, its endpoint, and the files at that commit."""

    commit: str
    endpoint: str
    files: list[str]


@dataclass(frozen=True)
class ImportResult:
    revision: RevisionInfo
    created: bool                 # False: already a revision (this commit imported before, or same bytes)
    already_imported: bool        # True: this hub commit was imported before; nothing was downloaded
    source: Source
    commit: str
    files: list[str] = field(default_factory=list)   # downloaded (relative to the repo root)
    notices: list[str] = field(default_factory=list)


def parse_source(source: str) -> Source:
    """`hf://owner/name[@revision]` or `ms://owner/name[@revision]`, checked."""
    match = _SOURCE.match(source.strip())
    if match is None or ".." in match.group(2) or "--" in match.group(2):
        raise InvalidIdError(f"{source!r} is not a hub source: write hf://owner/name[@revision] (Hugging Face Hub) "
                             "or ms://owner/name[@revision] (ModelScope)")
    hub, repo, revision = match.groups()
    if revision is not None and (not revision or any(c.isspace() for c in revision) or len(revision) > 200):
        raise InvalidIdError(f"{source!r}: the revision after '@' must be a branch, tag or commit id")
    return Source(hub, repo, revision)


def _client(hub: str) -> Any:
    if hub == "hf":
        from . import huggingface

        return huggingface
    from . import modelscope

    return modelscope


def select_files(files: list[str], subfolder: str) -> tuple[list[str], list[str]]:
    """(files to download, pickles left out) under `subfolder` ("" for the repo root)."""
    prefix = f"{subfolder}/" if subfolder else ""
    chosen, pickles = [], []
    for path in sorted(files):
        if not path.startswith(prefix) or any(part.startswith(".") for part in path.split("/")):
            continue  # elsewhere in the repo, or .gitattributes / .cache: not part of a checkpoint
        name = path.rsplit("/", 1)[-1]
        if is_pickle_file(name, weights_allowed=True):  # adapter_model.bin: weights only, read with weights_only
            pickles.append(path)
        else:
            chosen.append(path)
    return chosen, pickles


def import_into(registry: Registry, source: str, repo_id: str, *, tag: str | None = None,
                base_model: str | None = None, base_folder: Path | None = None, subfolder: str | None = None,
                message: str | None = None, allow_nonfinite: bool = False,
                progress: Callable[[int], None] | None = None) -> ImportResult:
    """Registry.import_from's work (the service method only delegates here)."""
    src = parse_source(source)
    rid = parse_id(repo_id, allow_ref=False)
    if tag is not None:
        check_tag(tag)
    sub = (subfolder or "").strip("/")
    if sub:
        check_relpath(sub)
    client = _client(src.hub)
    listing = client.listing(src)
    where = f"{src} (commit {listing.commit})"
    done = registry.find_import(rid.repo, src.hub, src.repo, listing.commit, sub)
    if done is not None:
        if tag is not None and tag not in done.tags:
            done = registry.tag(f"{rid.repo}@{done.number}", tag)
        return ImportResult(done, created=False, already_imported=True, source=src, commit=listing.commit,
                            notices=[f"{where} is already revision {done.number} of {rid.repo}; nothing imported"])
    chosen, pickles = select_files(listing.files, sub)
    inside = f" under {sub}/" if sub else ""
    if not any(p.rsplit("/", 1)[-1] == CONFIG for p in chosen):
        found = [p for p in chosen + pickles if not p.endswith(".md")]
        pickle_only = bool(found) and all(is_pickle_file(p) for p in found)
        detail = (f"it holds only a pickle checkpoint{inside} ({', '.join(sorted(found)[:5])}), which swiftreg never "
                  "loads (push safetensors weights with an adapter_config.json)" if pickle_only
                  else f"no {CONFIG}{inside}")
        hint = "" if sub or not any("/" in p for p in chosen) else "; pass --subfolder if the adapter is in a folder"
        raise HubNoAdapterError(f"{where} holds no adapter checkpoint: {detail}{hint}; nothing was imported")
    notices = [f"left out pickle files (never downloaded): {', '.join(pickles)}"] if pickles else []
    with tempfile.TemporaryDirectory(prefix="swiftreg-import-", dir=registry.home) as tmp:
        client.download(src, listing, chosen, Path(tmp))
        missing = [f for f in chosen if not (Path(tmp) / f).is_file()]
        if missing:  # a client that stopped early without an error
            raise HubError(f"downloading {src} left out {', '.join(missing[:5])}; nothing was imported, try again")
        root = Path(tmp) / sub if sub else Path(tmp)
        provenance = {"hub": src.hub, "endpoint": listing.endpoint, "repo": src.repo,
                      "requested_revision": src.revision, "commit": listing.commit, "subfolder": sub}
        try:
            result = registry.push(root, rid.repo, tag=tag, base_model=base_model, base_folder=base_folder,
                                   progress=progress, allow_nonfinite=allow_nonfinite,
                                   message=message or f"imported from {src.hub}://{src.repo}@{listing.commit}",
                                   provenance=provenance)
        except (InvalidCheckpointError, converters.FormatError) as exc:
            text = str(exc).replace(f"{root}/", "").replace(str(root), src.repo)
            raise HubNoAdapterError(f"{where}: not a valid adapter checkpoint: {text}; nothing was imported") from None
    return ImportResult(result.revision, result.created, False, src, listing.commit,
                        [p[len(sub) + 1:] if sub else p for p in chosen], notices + list(result.notices))


def hub_failure(src: Source, exc: BaseException, what: str) -> HubError:
    """A HubError for a client failure that is not the user's (network, dropped connection, server error)."""
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
    return HubError(f"{what} {src} failed ({type(exc).__name__}: {text}); nothing was imported, try again")
