"""The rules of the registry that need neither a database nor HTTP, written once for both registries.

`Registry` (registry/service/) and `RemoteRegistry` (registry/client/) call these, so a push is
prepared, a ref refused and a message worded the same way whether the registry is on this machine or
behind a server:

- push preparation: an adapter checkpoint validated (with the InvalidCheckpointError message), `.bin`
  weights turned into their stored safetensors form, its files collected (pickles left out, with a
  notice) and its manifest built; a base-model folder checked and fingerprinted;
- ref rules: a tag that already points elsewhere ("tags are immutable"), what `rm` refuses;
- the re-push decision: the same content is the revision already there (tagged if asked), and a tag
  that points elsewhere is refused before a single blob is written or sent.

No database, no HTTP: the files of the folder being pushed are read (and a .bin checkpoint converted
into the caller's staging folder); lookups a rule needs are passed in as functions.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, TypeVar

import converters
from converters.base_model import BaseModel
from converters.layout import Checkpoint
from converters.safetensors_io import read_header
from converters.validation import Report, validate_checkpoint

from .api import Kind, RevisionInfo
from .errors import InvalidCheckpointError, InvalidIdError, NotFoundError, RefExistsError, RegistryError
from .ids import DEFAULT_REF, RepoId, check_tag, parse_id
from .manifest import HashFile, Manifest, build_manifest, collect_files
from .params import MAX_PAGE
from .snapshots import copy_snapshot

_T = TypeVar("_T")

#: How many validation errors a refusal spells out before it counts the rest.
SHOWN_ERRORS = 5
#: The formats an adapter revision can be given in (converted once when it was pushed in the other).
ADAPTER_FORMATS = ("swift", "peft")


# ----- push preparation --------------------------------------------------------------------------------

@dataclass(frozen=True)
class PreparedPush:
    """A checkpoint ready to store or upload: its files (relative path, file on disk) and manifest."""

    checkpoint: Checkpoint
    root: Path                       # the folder stored: the checkpoint, or its safetensors copy in staging
    files: list[tuple[str, Path]]
    manifest: Manifest
    notices: list[str]               # warnings for the user: validation warnings, conversions, left-out files


@dataclass(frozen=True)
class PreparedBase:
    """A base-model folder ready to store or upload."""

    root: Path
    meta: dict[str, Any]             # architecture, dtype, parameter count, shape fingerprint
    config: dict[str, Any]           # its config.json
    files: list[tuple[str, Path]]
    manifest: Manifest
    notices: list[str]


def push_target(repo_id: str, tag: str | None) -> RepoId:
    """The repository a push names (a push names no ref: `--tag` does), with the tag checked up front."""
    rid = parse_id(repo_id, allow_ref=False)
    if tag is not None:
        check_tag(tag)
    return rid


def log_target(repo_id: str) -> RepoId:
    """The repository `log` lists: all its revisions, so the id names no ref (`show` shows one revision)."""
    repo = repo_id.partition("@")[0]
    return parse_id(repo_id, allow_ref=False, ref_hint=f"log lists every revision of {repo}, newest first; "
                    f"`swiftreg show {repo_id}` shows that one revision")


def page(limit: int | None, after: _T) -> tuple[int | None, _T]:
    """A listing's page request, checked: `limit` from 1 to MAX_PAGE (None: everything), `after` as given."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE):
        raise RegistryError(f"limit must be an integer from 1 to {MAX_PAGE}, not {limit!r}")
    return limit, after


def after_number(after: int | None) -> int | None:
    """A revision listing's cursor: the number of the last revision shown (the next page lists those below)."""
    if after is not None and (isinstance(after, bool) or not isinstance(after, int) or after < 1):
        raise RegistryError(f"after must be a revision number (a positive integer), not {after!r}")
    return after


def parse_cursor(text: str) -> tuple[str, str, str]:
    """A repository listing's cursor (`ns/name`: an adapter; `base:ns/name`: a base model; what
    `RepoInfo.cursor` gives) as (kind, namespace, name); the ids' own grammar, so a bad one names itself."""
    kind, _, repo = text.rpartition(":")
    if kind not in ("", "adapter", "base"):
        raise InvalidIdError(f"cursor {text[:200]!r}: the part before ':' must be 'base' or 'adapter'")
    rid = parse_id(repo, allow_ref=False)
    return (kind or "adapter", rid.namespace, rid.name)


def checked(report: Report, label: str) -> list[str]:
    """The report's warnings as notices; InvalidCheckpointError naming `label` when it has errors."""
    if not report.ok:
        more = len(report.errors) - SHOWN_ERRORS
        raise InvalidCheckpointError(
            f"{label} is not a valid adapter checkpoint: " + "; ".join(str(p) for p in report.errors[:SHOWN_ERRORS])
            + (f" (and {more} more)" if more > 0 else ""), report.errors)
    return [str(p) for p in report.problems if p.severity == "warning"]


def storable_form(checkpoint: Checkpoint, staging: Path, notices: list[str]) -> Path:
    """The folder to store: the checkpoint itself, or a safetensors copy under `staging` when it holds .bin.

    Pickled weights are never stored (loading them runs code); they are read once here with
    weights_only=True and kept as safetensors, and the user is told.
    """
    if not any(a.weights_format == "bin" for a in checkpoint.adapters):
        return checkpoint.path
    result = converters.convert(checkpoint.path, staging / "checkpoint", checkpoint.format)
    notices.append("legacy .bin weights were read with weights_only=True and stored as safetensors")
    notices.extend(result.notices)
    return result.destination


def stored_files(root: Path, notices: list[str], hash_file: HashFile | None = None
                 ) -> tuple[list[tuple[str, Path]], Manifest]:
    """The files of `root` that are stored, and their manifest; left-out pickles become a notice.
    `hash_file`: how each file is hashed (build_manifest), e.g. into the blob store as it is read."""
    files, skipped = collect_files(root)
    if skipped:
        notices.append("left out pickle files (never stored): " + ", ".join(skipped))
    return files, build_manifest(files, hash_file=hash_file)


def prepare_adapter(checkpoint: Checkpoint, staging: Path, base: BaseModel | None = None, *,
                    allow_nonfinite: bool = False, hash_file: HashFile | None = None) -> PreparedPush:
    """Validate a detected checkpoint (against `base` when given) and build what a push stores.

    `staging` is an empty folder the caller owns for the duration of the push (a .bin conversion
    is written there). A refusal names the checkpoint's folder. NaN or Inf tensor values are refused
    unless `allow_nonfinite` (then a notice names them).
    """
    notices = checked(validate_checkpoint(checkpoint, base, allow_nonfinite=allow_nonfinite), str(checkpoint.path))
    root = storable_form(checkpoint, staging, notices)
    files, manifest = stored_files(root, notices, hash_file)
    return PreparedPush(checkpoint, root, files, manifest, notices)


def named_after_folder(exc: InvalidCheckpointError, repo: str, folder: Path) -> InvalidCheckpointError:
    """A server's refusal of a pushed checkpoint (it names the repository) as a local push words it (the folder)."""
    message = str(exc)
    if message.startswith(f"{repo} is not a valid adapter checkpoint: "):
        message = str(folder) + message[len(repo):]
    return InvalidCheckpointError(message, exc.problems)


def no_base_model(base_id: str) -> NotFoundError:
    """The refusal of a `base_model` that names no base model (nothing, or an adapter)."""
    return NotFoundError(f"no base model {parse_id(base_id).repo} in this registry (push it with `swiftreg base push`)")


def base_meta(root: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(meta, config.json) of a transformers model folder, or the refusal that says what is missing.

    The fingerprint hashes every tensor's name, dtype and shape, so adapters can be matched to the
    base they were trained on without reading a weight.
    """
    if not (root / "config.json").is_file():
        raise RegistryError(f"{root} has no config.json: a base model is a transformers model folder")
    try:
        config = json.loads((root / "config.json").read_text())
    except ValueError as exc:
        raise RegistryError(f"{root / 'config.json'} is not valid JSON: {exc}") from None
    if not isinstance(config, dict):
        raise RegistryError(f"{root / 'config.json'} must hold a JSON object")
    shards = sorted(root.glob("*.safetensors"))
    if not shards:
        raise RegistryError(f"{root} has no *.safetensors weights; convert pytorch_model.bin to safetensors first")
    shapes = []
    dtypes: dict[str, int] = {}
    parameters = 0
    for shard in shards:
        for t in read_header(shard).tensors:
            shapes.append((t.name, t.dtype, list(t.shape)))
            dtypes[t.dtype] = dtypes.get(t.dtype, 0) + 1
            parameters += t.numel
    fingerprint = "sha256:" + hashlib.sha256(json.dumps(sorted(shapes)).encode()).hexdigest()
    architectures = config.get("architectures") or [config.get("model_type")]
    architecture = architectures[0] if isinstance(architectures, list) and architectures else None
    if architecture is not None and not (isinstance(architecture, str) and len(architecture) <= 200):
        raise RegistryError(f"{root / 'config.json'}: the architecture must be a class name of at most 200 characters")
    return {"format": "transformers", "architecture": architecture,
            "model_type": config.get("model_type"), "tensors": len(shapes), "parameters": parameters,
            "dtype": max(dtypes, key=dtypes.__getitem__) if dtypes else None,
            "fingerprint": fingerprint}, config


def prepare_base(path: Path | str, hash_file: HashFile | None = None) -> PreparedBase:
    """Check a base-model folder (config.json, safetensors weights) and build what a push stores."""
    root = Path(path)
    meta, config = base_meta(root)
    notices: list[str] = []
    files, manifest = stored_files(root, notices, hash_file)
    return PreparedBase(root, meta, config, files, manifest, notices)


# ----- refs --------------------------------------------------------------------------------------------------

def tag_taken(tag: str, repo: str, number: int) -> RefExistsError:
    """The refusal to move a tag without force."""
    return RefExistsError(f"tag {tag!r} of {repo} already points to revision {number}; tags are immutable "
                          "(use --force to move it)")


def ref_to_remove(repo_id: str, *, force: bool) -> RepoId:
    """The id `rm` was given, when it may remove it: a named tag or branch, and `main` only with force."""
    rid = parse_id(repo_id)
    if not rid.explicit_ref or rid.ref.kind != "name":
        raise RegistryError(f"rm removes a tag or branch: name it, as in {rid.repo}@v1")
    if rid.ref.value == DEFAULT_REF and not force:
        raise RegistryError(f"removing {rid.repo}@main leaves the repository without a default; "
                            "pass --force if you mean it")
    return rid


class _Tagger(Protocol):
    def __call__(self, repo_id: str, tag: str, *, force: bool = False) -> RevisionInfo: ...


def existing_revision(rid: RepoId, kind: Kind, digest: str, tag: str | None, force: bool, *,
                      find: Callable[[str], RevisionInfo | None], tag_revision: _Tagger) -> RevisionInfo | None:
    """The revision that already holds this content (tagged if asked), or None when a push must store it.

    `find(ref)` answers which revision of `rid.repo` a ref names (None: no such ref or repository).
    A tag that already points elsewhere is refused here, before a single blob is written or sent.
    """
    same = find(digest)
    if same is None or same.kind != kind or same.digest != digest:
        if tag is not None and not force:
            current = find(tag)
            if current is not None:
                raise tag_taken(tag, rid.repo, current.number)
        return None
    if tag is not None and tag not in same.tags:
        return tag_revision(f"{rid.repo}@{same.number}", tag, force=force)
    return same


def base_model_folder(value: str | Path | None) -> Path | None:
    """`--base-model` given as a local folder: an existing directory (a transformers model folder, checked
    when opened); None when `value` names no directory, so it is read as a registry id. A folder wins over
    an id spelled the same, as for every PATH-or-ID argument of the CLI."""
    if value is None:
        return None
    path = Path(value)
    return path if path.is_dir() else None


def repush_notices(repo: str, same: RevisionInfo) -> list[str]:
    """What a push that found its content already stored tells the user: that `main` did not move when
    it points elsewhere, and the command that moves it."""
    if DEFAULT_REF in same.branches:
        return []
    return [f"{DEFAULT_REF} did not move: it points at another revision, and {repo}@{same.number} already holds "
            f"this content; to serve it by default, move the branch: swiftreg branch {repo}@{same.number} "
            f"{DEFAULT_REF}"]


# ----- reading -----------------------------------------------------------------------------------------------

def served_format(repo: str, kind: Kind, stored: str, format: str | None) -> str:
    """The format a revision stored as `stored` is given in when `format` is asked (None: as stored)."""
    target = format or stored
    if target == stored:
        return target
    if target not in ADAPTER_FORMATS:
        raise RegistryError(f"format must be 'swift' or 'peft', not {target!r}")
    if kind == "base":
        raise RegistryError(f"{repo} is stored as {stored}; it cannot be served as {target!r}")
    return target


def pulled(snapshot: Path, output: Path | str | None, *, overwrite: bool) -> Path:
    """What `pull` returns: the snapshot itself, or an atomic copy of it at `output`."""
    if output is None:
        return snapshot
    return copy_snapshot(snapshot, Path(output), overwrite=overwrite)
