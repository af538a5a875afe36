"""`namespace/name[@ref]`: the one parser every surface uses (DESIGN.md section 2).

    team/sql-lora               main
    team/sql-lora@v3            a tag or branch
    team/sql-lora@7             revision number 7 (ASCII digits, 1 to 2^31-1: registry/params.py)
    team/sql-lora@sha256:3f2a9c01b7de   a digest prefix (12 to 64 hex digits, must be unique)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from .errors import InvalidIdError
from .params import is_revision_number, revision_number

MAX_NAME = 96
MAX_REF = 128
DEFAULT_REF = "main"
#: Matched whole (fullmatch: `$` alone would let a trailing newline through); ASCII only.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*", re.ASCII)
REF_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*", re.ASCII)
DIGEST_PREFIX = re.compile(r"sha256:([0-9a-f]{12,64})", re.ASCII)

RefKind = Literal["name", "number", "digest"]


@dataclass(frozen=True)
class Ref:
    """What follows `@`: a tag/branch name, a revision number, or a digest prefix."""

    kind: RefKind
    value: str

    @property
    def number(self) -> int:
        return revision_number(self.value)

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class RepoId:
    namespace: str
    name: str
    ref: Ref
    explicit_ref: bool = False

    @property
    def repo(self) -> str:
        return f"{self.namespace}/{self.name}"

    def __str__(self) -> str:
        return f"{self.repo}@{self.ref}"


def check_name(value: str, what: str = "name") -> str:
    """A namespace, repository or ref name: a plain file-name-safe word, never a path."""
    if not value:
        raise InvalidIdError(f"{what} is empty")
    if len(value) > MAX_NAME:
        raise InvalidIdError(f"{what} {value[:40]!r}... is {len(value)} characters; at most {MAX_NAME}")
    if ".." in value or not NAME.fullmatch(value):
        raise InvalidIdError(
            f"{what} {value!r} is not allowed: use letters, digits, '.', '_' and '-', starting with a letter or "
            "digit, without '..' or path separators")
    return value


def parse_ref(value: str) -> Ref:
    if value.startswith("sha256:"):
        match = DIGEST_PREFIX.fullmatch(value)
        if not match:
            raise InvalidIdError(f"digest ref {value!r} must be 'sha256:' and 12 to 64 lowercase hex digits")
        return Ref("digest", value)
    if is_revision_number(value):  # ASCII digits only, bounded to the column's INTEGER (registry/params.py)
        revision_number(value)
        return Ref("number", value)
    if len(value) > MAX_REF or ".." in value or not REF_NAME.fullmatch(value):
        raise InvalidIdError(
            f"ref {value[:60]!r} is not a tag/branch name (letters, digits, '.', '_', '-', at most {MAX_REF}), "
            "a revision number, or sha256:<hex>")
    return Ref("name", value)


def check_tag(value: str) -> str:
    """A tag or branch name to create: names only, never something that reads as a number or digest."""
    ref = parse_ref(value)
    if ref.kind != "name":
        raise InvalidIdError(f"{value!r} reads as a revision {ref.kind}; tags must be names like 'v3' or 'prod'")
    return value


def parse_id(text: str, *, allow_ref: bool = True, ref_hint: str = "use --tag to name the revision") -> RepoId:
    """Parse `namespace/name[@ref]`; no ref means `main`. `ref_hint`: what to do instead of an '@ref'
    where none is allowed (a push tags with --tag; `log` lists them all)."""
    if not isinstance(text, str) or not text:
        raise InvalidIdError("an id looks like 'namespace/name' or 'namespace/name@ref'")
    repo, sep, ref_text = text.partition("@")
    parts = repo.split("/")
    if len(parts) != 2:
        raise InvalidIdError(f"{text!r} is not 'namespace/name[@ref]' (exactly one '/')")
    namespace, name = check_name(parts[0], "namespace"), check_name(parts[1], "name")
    if sep and not allow_ref:
        raise InvalidIdError(f"{text!r}: give the repository without '@ref' here ({ref_hint})")
    if sep and not ref_text:
        raise InvalidIdError(f"{text!r} has an empty ref after '@'")
    ref = parse_ref(ref_text) if sep else Ref("name", DEFAULT_REF)
    return RepoId(namespace, name, ref, explicit_ref=bool(sep))
