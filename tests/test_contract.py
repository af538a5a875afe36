"""One behaviour suite for every registry: the contract `RegistryAPI` promises, checked on four backends.

Each test is written once and receives `reg`: the embedded `registry.Registry`, or
`registry.client.RemoteRegistry` talking to a real `swiftreg serve` subprocess on 127.0.0.1, each on
SQLite and (when SWIFTREG_TEST_DATABASE_URL is set; never skipped then) on PostgreSQL. The assertions
are the same for every backend: same return values, the same exception class (exactly, not a
subclass) and the same message. A difference that is part of the design is written out in the test,
with the reason, where it applies (`backend.remote`); none is silent.

Module-scoped fixtures keep it fast: one registry (and one server) per backend for the whole module,
so every test works in its own namespace. Checkpoints are made once, by the real peft on a tiny
Llama; the Swift multi-adapter one is the converters' output of a two-adapter peft checkpoint.
"""
from __future__ import annotations

import filecmp
import getpass
import hashlib
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import pytest

import converters
from registry import Registry
from registry.client import RemoteRegistry
from registry.errors import (
    AccessDeniedError,
    AmbiguousRefError,
    InvalidCheckpointError,
    InvalidIdError,
    NotFoundError,
    RefExistsError,
    RegistryError,
    RevisionInUseError,
)
from registry.manifest import build_manifest, collect_files
from tests.helpers.checkpoints import write_peft_lora
from tests.helpers.databases import create_postgres_database, drop_postgres_database, postgres_configured
from tests.helpers.models import make_peft_checkpoint
from tests.helpers.server import Server, running_server

if TYPE_CHECKING:
    from registry.api import RegistryAPI

pytestmark = pytest.mark.server

#: local-sqlite, remote-sqlite, and (marked `postgres`, never skipped when configured) the PostgreSQL pair.
BACKENDS = [pytest.param(f"{side}-{database}", marks=[pytest.mark.postgres] if database == "postgresql" else [])
            for database in ["sqlite"] + (["postgresql"] if postgres_configured() else [])
            for side in ("local", "remote")]
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
IMMUTABLE = "tags are immutable (use --force to move it)"


# ===== backends ================================================================================================

@dataclass
class Backend:
    """One registry under test, and what a test may need to know about how it is reached."""

    name: str
    reg: "RegistryAPI"
    admin: "RegistryAPI"      # the same registry with gc rights (a remote one needs an admin token)
    database_url: str
    server: Server | None     # the `swiftreg serve` behind a remote registry

    @property
    def remote(self) -> bool:
        return self.server is not None


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    side, database = request.param.split("-")
    root = tmp_path_factory.mktemp(request.param)
    url = create_postgres_database() if database == "postgresql" else f"sqlite:///{root / 'registry.db'}"
    try:
        if side == "local":
            local = Registry(home=root / "home", database_url=url)
            try:
                yield Backend(request.param, local, local, url, None)
            finally:
                local.close()
            return
        with running_server(root / "server", url) as server:
            # The writer's token is made by the real `swiftreg token create`: its owner is this user.
            with RemoteRegistry(server.url, server.token("write"), home=root / "client") as writer, \
                    RemoteRegistry(server.url, server.admin_token, home=root / "admin") as admin:
                yield Backend(request.param, writer, admin, url, server)
    finally:
        if database == "postgresql":
            drop_postgres_database(url)


@pytest.fixture
def reg(backend: Backend) -> "RegistryAPI":
    return backend.reg


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    """A namespace of this test's own (the registry is shared by the module), the same on every backend."""
    return "t" + hashlib.sha256(request.node.originalname.encode()).hexdigest()[:10]


# ===== checkpoints (made once) =================================================================================

@dataclass(frozen=True)
class Checkpoints:
    peft: Path            # one LoRA adapter, as PeftModel.save_pretrained writes it
    peft2: Path           # another one (other weights): a second revision
    swift: Path           # two adapters (sql, chat) in ms-swift's layout
    peft_as_swift: Path   # converters' output for `peft` in the other format: what a pull must give
    swift_as_peft: Path
    llama_base: Path      # the tiny Llama both adapters were trained on


@pytest.fixture(scope="module")
def ckpt(llama_base: Path, tmp_path_factory: pytest.TempPathFactory) -> Checkpoints:
    root = tmp_path_factory.mktemp("checkpoints")
    make_peft_checkpoint(llama_base, root / "peft", {"default": LORA}, seed=1)
    make_peft_checkpoint(llama_base, root / "peft2", {"default": LORA}, seed=2)
    make_peft_checkpoint(llama_base, root / "peft-multi", {"sql": LORA, "chat": dict(LORA, r=8, lora_alpha=16)},
                         seed=3)
    swift = converters.convert(root / "peft-multi", root / "swift", "swift").destination
    return Checkpoints(
        peft=root / "peft", peft2=root / "peft2", swift=swift,
        peft_as_swift=converters.convert(root / "peft", root / "peft-as-swift", "swift").destination,
        swift_as_peft=converters.convert(swift, root / "swift-as-peft", "peft").destination,
        llama_base=llama_base)


# ===== helpers =================================================================================================

def raises(cls: type[BaseException], message: str | re.Pattern[str], call: Callable[[], Any]) -> BaseException:
    """`call()` raises exactly `cls` (not a subclass, not a parent) with exactly this message."""
    with pytest.raises(BaseException) as caught:
        call()
    exc = caught.value
    assert type(exc) is cls, f"{type(exc).__module__}.{type(exc).__name__}: {exc}  (expected {cls.__name__})"
    if isinstance(message, re.Pattern):
        assert message.fullmatch(str(exc)), str(exc)
    else:
        assert str(exc) == message
    return exc


def digest_of(folder: Path) -> str:
    """The revision digest a folder of safetensors and JSON files must get, on any registry."""
    return build_manifest(collect_files(folder)[0]).digest


def manifest_of(folder: Path) -> dict[str, Any]:
    return build_manifest(collect_files(folder)[0]).to_json()


def same_tree(got: Path, expected: Path) -> None:
    """Byte for byte the same files (names and contents), nothing more, nothing less."""
    def files(root: Path) -> list[str]:
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    assert files(got) == files(expected)
    for rel in files(expected):
        assert filecmp.cmp(got / rel, expected / rel, shallow=False), rel


def refs(info: Any) -> tuple[int, str, list[str], list[str]]:
    return info.number, info.digest, info.tags, info.branches


def same(a: Any, b: Any) -> None:
    """The same revision, every field but `created_at`, whose push-vs-show difference (naive vs aware)
    is asserted by test_push_returns_the_revision_that_show_gives alone, so that defect fails one test."""
    assert {**a.__dict__, "created_at": None} == {**b.__dict__, "created_at": None}


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# ===== gc (first: the registry is still empty) ==================================================================

def test_gc_dry_run_on_an_empty_registry(backend: Backend) -> None:
    assert backend.admin.list() == [], "run the module in file order: this test wants a fresh registry"
    result = backend.admin.gc(grace_seconds=0, dry_run=True)
    assert (result.blobs_removed, result.bytes_removed, result.temp_files_removed, result.blobs_kept,
            result.partial_uploads_removed) == (0, 0, 0, 0, 0)
    if backend.remote:
        # Remote only: gc is an admin operation on a server; a write token is refused (local mode has no tokens).
        with pytest.raises(AccessDeniedError):
            backend.reg.gc(dry_run=True)


def test_every_backend_is_a_registry_api(backend: Backend) -> None:
    from registry.api import RegistryAPI

    assert isinstance(backend.reg, RegistryAPI) and isinstance(backend.admin, RegistryAPI)
    assert backend.reg.home.is_dir()


# ===== push =====================================================================================================

def test_push_a_peft_checkpoint(backend: Backend, reg: "RegistryAPI", ns: str, ckpt: Checkpoints) -> None:
    result = reg.push(ckpt.peft, f"{ns}/peft", message="first", author="alice")
    info = result.revision
    assert result.created and result.notices == []
    assert (info.repo, info.kind, info.number, info.format, info.tags, info.branches) == (
        f"{ns}/peft", "adapter", 1, "peft", [], ["main"])
    assert info.digest == digest_of(ckpt.peft) and info.manifest == manifest_of(ckpt.peft)
    assert info.message == "first" and info.base_model is None and info.parents == [] and info.provenance == []
    assert (info.meta["format"], info.meta["tuner_type"], info.meta["r"], info.meta["lora_alpha"]) == (
        "peft", "LORA", 4, 8)
    assert sorted(info.meta["target_modules"]) == ["q_proj", "v_proj"]
    # Every file is new: a blob per distinct file (a remote push counts the blobs it uploaded).
    assert (result.blobs_written, result.bytes_written) == (
        len(info.manifest["files"]), sum(f["size"] for f in info.manifest["files"]))
    if backend.remote:
        # The server records the owner of the token that pushed (made by `swiftreg token create`, whose default
        # owner is this user), never an author the client claims.
        assert info.author == getpass.getuser()
    else:
        assert info.author == "alice"
    same(reg.show(f"{ns}/peft"), info)


def test_push_returns_the_revision_that_show_gives(reg: "RegistryAPI", ns: str, ckpt: Checkpoints) -> None:
    pushed = reg.push(ckpt.peft, f"{ns}/x").revision
    shown = reg.show(f"{ns}/x")
    assert shown.created_at.tzinfo is not None and pushed.created_at.tzinfo is not None
    assert pushed == shown
    assert reg.push(ckpt.peft, f"{ns}/x").revision == shown
    base = reg.push_base(ckpt.llama_base, f"{ns}/base").revision
    assert base == reg.show(f"{ns}/base")


def test_push_a_swift_multi_adapter_checkpoint(reg: "RegistryAPI", ns: str, ckpt: Checkpoints) -> None:
    result = reg.push(ckpt.swift, f"{ns}/swift", tag="v1")
    info = result.revision
    assert result.created
    assert (info.number, info.format, info.tags, info.branches) == (1, "swift", ["v1"], ["main"])
    assert info.digest == digest_of(ckpt.swift) and info.manifest == manifest_of(ckpt.swift)
    assert [f["path"] for f in info.manifest["files"] if f["path"].endswith(".safetensors")] == [
        "chat/adapter_model.safetensors", "sql/adapter_model.safetensors"]
    assert sorted(a["name"] for a in info.meta["adapters"]) == ["chat", "sql"]
    same(reg.show(f"{ns}/swift@v1"), info)


def test_pushing_unchanged_content_again_creates_nothing(backend: Backend, reg: "RegistryAPI", ns: str,
                                                         ckpt: Checkpoints) -> None:
    first = reg.push(ckpt.peft, f"{ns}/x").revision
    before = backend.admin.gc(grace_seconds=0, dry_run=True).blobs_kept
    again = reg.push(ckpt.peft, f"{ns}/x")
    assert (again.created, again.blobs_written, again.bytes_written) == (False, 0, 0)
    same(again.revision, first)
    with_tag = reg.push(ckpt.peft, f"{ns}/x", tag="stable")  # content known: only the tag is added
    assert not with_tag.created and refs(with_tag.revision) == (1, first.digest, ["stable"], ["main"])
    assert [r.number for r in reg.log(f"{ns}/x")] == [1]
    assert backend.admin.gc(grace_seconds=0, dry_run=True).blobs_kept == before


def test_a_tag_pointing_elsewhere_is_refused_unless_forced(reg: "RegistryAPI", ns: str, ckpt: Checkpoints) -> None:
    reg.push(ckpt.peft, f"{ns}/x", tag="v1")
    raises(RefExistsError, f"tag 'v1' of {ns}/x already points to revision 1; {IMMUTABLE}",
           lambda: reg.push(ckpt.peft2, f"{ns}/x", tag="v1"))
    assert [r.number for r in reg.log(f"{ns}/x")] == [1]  # refused before a revision was made
    moved = reg.push(ckpt.peft2, f"{ns}/x", tag="v1", force=True)
    assert moved.created and refs(moved.revision) == (2, digest_of(ckpt.peft2), ["v1"], ["main"])
    assert reg.show(f"{ns}/x@1").tags == [] and reg.show(f"{ns}/x@1").branches == []
    # The same refusal when the content already is a revision (only the tag would move).
    raises(RefExistsError, f"tag 'v1' of {ns}/x already points to revision 2; {IMMUTABLE}",
           lambda: reg.push(ckpt.peft, f"{ns}/x", tag="v1"))


def test_an_invalid_checkpoint_is_refused(reg: "RegistryAPI", ns: str, ckpt: Checkpoints, tmp_path: Path) -> None:
    src = copy(ckpt.peft, tmp_path / "bad")
    config = json.loads((src / "adapter_config.json").read_text())
    config["r"] = 16
    (src / "adapter_config.json").write_text(json.dumps(config))
    exc = raises(InvalidCheckpointError, re.compile(re.escape(f"{src} is not a valid adapter checkpoint: ") + ".*"
                                                    + re.escape("has 4 rows but the rank for") + ".*"),
                 lambda: reg.push(src, f"{ns}/bad"))
    assert exc.problems  # type: ignore[attr-defined]
    assert reg.list(ns) == []


def test_a_folder_that_is_no_checkpoint_is_refused(reg: "RegistryAPI", ns: str, tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "README.md").write_text("hello\n")
    raises(converters.NotACheckpointError,
           f"{folder}: no adapter_config.json here or in any subfolder: not a Swift or PEFT adapter checkpoint",
           lambda: reg.push(folder, f"{ns}/x"))
    assert reg.list(ns) == []


def test_bin_weights_are_stored_as_safetensors_with_a_notice(reg: "RegistryAPI", ns: str, ckpt: Checkpoints,
                                                             tmp_path: Path) -> None:
    import torch
    from safetensors.torch import load_file

    src = copy(ckpt.peft, tmp_path / "bin")
    weights = load_file(src / "adapter_model.safetensors")
    torch.save(weights, src / "adapter_model.bin")
    (src / "adapter_model.safetensors").unlink()
    result = reg.push(src, f"{ns}/bin")
    assert result.created and result.revision.format == "peft"
    assert result.notices == ["legacy .bin weights were read with weights_only=True and stored as safetensors"]
    paths = [f["path"] for f in result.revision.manifest["files"]]
    assert "adapter_model.safetensors" in paths and not any(p.endswith(".bin") for p in paths)
    stored = load_file(reg.resolve(f"{ns}/bin") / "adapter_model.safetensors")
    assert stored.keys() == weights.keys() and all(torch.equal(stored[k], v) for k, v in weights.items())


def test_pickle_files_are_left_out_with_a_notice(reg: "RegistryAPI", ns: str, ckpt: Checkpoints,
                                                 tmp_path: Path) -> None:
    src = copy(ckpt.peft, tmp_path / "with-pickles")
    (src / "training_args.bin").write_bytes(b"\x80\x04junk")
    (src / "optimizer.pt").write_bytes(b"\x80\x04junk")
    result = reg.push(src, f"{ns}/x")
    assert result.notices == ["left out pickle files (never stored): optimizer.pt, training_args.bin"]
    assert result.revision.digest == digest_of(ckpt.peft)  # exactly the checkpoint without them


def test_push_reports_progress_in_bytes(reg: "RegistryAPI", ns: str, ckpt: Checkpoints) -> None:
    seen: list[int] = []
    result = reg.push(ckpt.swift, f"{ns}/x", progress=seen.append)
    assert sum(seen) == sum(f["size"] for f in result.revision.manifest["files"]) and all(n >= 0 for n in seen)


def test_a_tag_that_reads_as_a_number_or_digest_is_refused_before_anything_is_sent(reg: "RegistryAPI", ns: str,
                                                                                  ckpt: Checkpoints) -> None:
    with pytest.raises(InvalidIdError) as caught:
        reg.tag(f"{ns}/x@1", "42")
    raises(InvalidIdError, str(caught.value), lambda: reg.push(ckpt.peft, f"{ns}/x", tag="42"))
    raises(InvalidIdError, str(caught.value), lambda: reg.push_base(ckpt.llama_base, f"{ns}/b", tag="42"))
    assert reg.list(ns) == []


# ===== show / log / list =========================================================================================

@pytest.fixture
def two_revisions(reg: "RegistryAPI", ns: str, ckpt: Checkpoints) -> tuple[Any, Any]:
    first = reg.push(ckpt.peft, f"{ns}/x", tag="v1").revision
    second = reg.push(ckpt.peft2, f"{ns}/x").revision
    return first, second


def test_show_by_number_tag_branch_and_digest(reg: "RegistryAPI", ns: str, two_revisions: tuple[Any, Any]) -> None:
    first, second = two_revisions
    assert refs(first)[:3] == (1, first.digest, ["v1"]) and refs(second) == (2, second.digest, [], ["main"])
    for ref in ("1", "v1", first.digest, first.digest[:19]):
        assert reg.show(f"{ns}/x@{ref}") == reg.show(f"{ns}/x@1"), ref
    for ref in ("2", "main", second.digest[:19]):
        assert reg.show(f"{ns}/x@{ref}").number == 2, ref
    assert reg.show(f"{ns}/x").number == 2  # no ref: main


def test_log_and_list(backend: Backend, reg: "RegistryAPI", ns: str, two_revisions: tuple[Any, Any]) -> None:
    first, second = two_revisions
    log = reg.log(f"{ns}/x")
    assert [refs(r) for r in log] == [refs(reg.show(f"{ns}/x@2")), refs(reg.show(f"{ns}/x@1"))]
    assert [(r.repo, r.kind, r.format, r.meta) for r in log] == [(f"{ns}/x", "adapter", "peft", second.meta),
                                                                   (f"{ns}/x", "adapter", "peft", first.meta)]
    if backend.remote:
        # By design (RegistryAPI.log): the server's revision list leaves manifests out, so a remote log's
        # `manifest` is {}; show() one revision for its files.
        assert [r.manifest for r in log] == [{}, {}]
        assert [reg.show(f"{ns}/x@{r.number}").manifest for r in log] == [second.manifest, first.manifest]
    else:
        assert [r.manifest for r in log] == [second.manifest, first.manifest]
    [repo] = reg.list(ns)
    assert (repo.repo, repo.kind, repo.tuner_type, repo.revisions, repo.main, repo.base_model, repo.source) == (
        f"{ns}/x", "adapter", "LORA", 2, 2, None, None)
    assert repo.updated_at is not None
    assert reg.list(ns + "-nobody") == []
    assert f"{ns}/x" in [r.repo for r in reg.list()]


def test_not_found(reg: "RegistryAPI", ns: str, two_revisions: tuple[Any, Any]) -> None:
    absent = "sha256:" + "0" * 12
    raises(NotFoundError, f"no adapter or base model {ns}/nope in this registry", lambda: reg.show(f"{ns}/nope"))
    raises(NotFoundError, f"no adapter or base model {ns}/nope in this registry", lambda: reg.log(f"{ns}/nope"))
    raises(NotFoundError, f"{ns}/x has no revision 9 (it has 2)", lambda: reg.show(f"{ns}/x@9"))
    raises(NotFoundError, f"{ns}/x has no tag or branch 'v9'", lambda: reg.show(f"{ns}/x@v9"))
    raises(NotFoundError, f"{ns}/x has no revision with digest {absent}", lambda: reg.show(f"{ns}/x@{absent}"))
    raises(NotFoundError, f"{ns}/x has no tag or branch 'v9'", lambda: reg.resolve(f"{ns}/x@v9"))


@pytest.mark.parametrize("bad", ["", "team", "team/", "/x", "a/b/c", "../x", "team/..", "te am/x", "team/x@",
                                 "team/x@sha256:abc", "team/x@0", "team/x@007", "team/x@a/b", "x" * 97 + "/y",
                                 "team/-x"])
def test_invalid_ids(reg: "RegistryAPI", bad: str) -> None:
    with pytest.raises(InvalidIdError) as caught:
        reg.show(bad)
    message = str(caught.value)
    for call in (lambda: reg.resolve(bad), lambda: reg.tag(bad, "v1"), lambda: reg.remove_ref(bad)):
        raises(InvalidIdError, message, call)


def test_a_ref_is_refused_where_none_is_allowed(reg: "RegistryAPI", ns: str, ckpt: Checkpoints) -> None:
    with pytest.raises(InvalidIdError) as caught:  # log lists every revision: it points at show, not at --tag
        reg.log(f"{ns}/x@v1")
    assert "--tag" not in str(caught.value) and f"`swiftreg show {ns}/x@v1` shows that one" in str(caught.value)
    with pytest.raises(InvalidIdError, match="use --tag to name the revision"):
        reg.push(ckpt.peft, f"{ns}/x@v1")


def test_an_ambiguous_digest_prefix(backend: Backend, reg: "RegistryAPI", ns: str, ckpt: Checkpoints) -> None:
    """Two revisions whose digests share 14 hex digits: written into the registry's own database, since
    making a real 48-bit sha256 collision is not cheap. What is under test is the lookup and the error."""
    from sqlalchemy import select

    from registry.db import AdapterRecord, Database, RevisionRecord

    reg.push(ckpt.peft, f"{ns}/x")
    prefix = "sha256:abcdef01234567"
    database = Database(backend.database_url)  # the registry's own database (the server's, for a remote one)
    try:
        with database.write() as session:
            repo_id = session.scalars(select(AdapterRecord.id).where(AdapterRecord.namespace == ns)).one()
            for number, fill in ((2, "0"), (3, "1")):
                session.add(RevisionRecord(adapter_id=repo_id, number=number, digest=prefix + fill * 50,
                                           format="peft", manifest={"files": []}, meta={}, parents=[]))
    finally:
        database.close()
    raises(AmbiguousRefError, f"sha256:abcdef012345 matches revisions 2, 3 of {ns}/x; give more hex digits",
           lambda: reg.show(f"{ns}/x@sha256:abcdef012345"))
    assert reg.show(f"{ns}/x@{prefix}1").number == 3


# ===== resolve / pull ===========================================================================================

def test_resolve_in_both_formats_gives_the_same_bytes(reg: "RegistryAPI", ns: str, ckpt: Checkpoints) -> None:
    reg.push(ckpt.peft, f"{ns}/peft", tag="v1")
    reg.push(ckpt.swift, f"{ns}/swift", tag="v1")
    same_tree(reg.resolve(f"{ns}/peft@v1"), ckpt.peft)
    same_tree(reg.resolve(f"{ns}/peft@v1", format="peft"), ckpt.peft)
    same_tree(reg.resolve(f"{ns}/peft@1", format="swift"), ckpt.peft_as_swift)
    same_tree(reg.resolve(f"{ns}/swift@v1"), ckpt.swift)
    same_tree(reg.resolve(f"{ns}/swift@main", format="peft"), ckpt.swift_as_peft)
    assert reg.resolve(f"{ns}/peft@v1", format="swift") == reg.resolve(f"{ns}/peft@1", format="swift")


def test_resolve_follows_a_moved_tag_and_a_new_push(reg: "RegistryAPI", ns: str, ckpt: Checkpoints) -> None:
    reg.push(ckpt.peft, f"{ns}/x", tag="prod")
    same_tree(reg.resolve(f"{ns}/x@prod"), ckpt.peft)
    same_tree(reg.resolve(f"{ns}/x"), ckpt.peft)
    reg.push(ckpt.peft2, f"{ns}/x")
    same_tree(reg.resolve(f"{ns}/x"), ckpt.peft2)  # main moved
    same_tree(reg.resolve(f"{ns}/x@prod"), ckpt.peft)
    reg.tag(f"{ns}/x@2", "prod", force=True)
    same_tree(reg.resolve(f"{ns}/x@prod"), ckpt.peft2)
    same_tree(reg.resolve(f"{ns}/x@1"), ckpt.peft)


def test_pull_to_a_folder(reg: "RegistryAPI", ns: str, ckpt: Checkpoints, tmp_path: Path) -> None:
    reg.push(ckpt.swift, f"{ns}/swift", tag="v1")
    out = reg.pull(f"{ns}/swift@v1", tmp_path / "out", format="peft")
    assert out == (tmp_path / "out").absolute()
    same_tree(out, ckpt.swift_as_peft)
    assert all(os.stat(p).st_mode & 0o200 for p in out.rglob("*"))  # a working copy, not the read-only cache
    raises(RegistryError, f"{out} already exists; choose a new path or pass --overwrite",
           lambda: reg.pull(f"{ns}/swift@v1", out))
    same_tree(reg.pull(f"{ns}/swift@v1", out, overwrite=True), ckpt.swift)
    assert reg.pull(f"{ns}/swift@v1") == reg.resolve(f"{ns}/swift@v1")  # no folder: the snapshot


def test_formats_a_revision_cannot_be_given_in(reg: "RegistryAPI", ns: str, ckpt: Checkpoints) -> None:
    reg.push(ckpt.peft, f"{ns}/x")
    raises(RegistryError, "format must be 'swift' or 'peft', not 'onnx'", lambda: reg.resolve(f"{ns}/x", format="onnx"))
    raises(RegistryError, "format must be 'swift' or 'peft', not 'onnx'",
           lambda: reg.pull(f"{ns}/x", format="onnx"))


def test_a_base_model_is_given_in_its_own_format_only(reg: "RegistryAPI", ns: str, ckpt: Checkpoints) -> None:
    reg.push_base(ckpt.llama_base, f"{ns}/llama")
    same_tree(reg.resolve(f"{ns}/llama"), ckpt.llama_base)
    for fmt in ("peft", "swift"):
        raises(RegistryError, f"{ns}/llama is stored as transformers; it cannot be served as {fmt!r}",
               lambda fmt=fmt: reg.resolve(f"{ns}/llama", format=fmt))
    same_tree(reg.resolve(f"{ns}/llama", format="transformers"), ckpt.llama_base)


# ===== refs =====================================================================================================

def test_tags_move_only_when_forced(reg: "RegistryAPI", ns: str, two_revisions: tuple[Any, Any]) -> None:
    info = reg.tag(f"{ns}/x@2", "v2")
    assert refs(info) == (2, two_revisions[1].digest, ["v2"], ["main"])
    assert reg.tag(f"{ns}/x@1", "v1") == reg.show(f"{ns}/x@1")  # already there: nothing to move
    raises(RefExistsError, f"tag 'v1' of {ns}/x already points to revision 1; {IMMUTABLE}",
           lambda: reg.tag(f"{ns}/x@2", "v1"))
    assert reg.tag(f"{ns}/x@2", "v1", force=True).tags == ["v1", "v2"]
    assert reg.show(f"{ns}/x@1").tags == []
    raises(RefExistsError, f"{ns}/x@main is a branch, not a tag; move a branch with `swiftreg branch "
           f"{ns}/x@REVISION main`", lambda: reg.tag(f"{ns}/x@1", "main"))
    raises(InvalidIdError, re.compile(".*reads as a revision number.*"), lambda: reg.tag(f"{ns}/x@1", "42"))
    raises(NotFoundError, f"no adapter or base model {ns}/nope in this registry", lambda: reg.tag(f"{ns}/nope@1", "v1"))
    raises(NotFoundError, f"{ns}/x has no revision 7 (it has 2)", lambda: reg.tag(f"{ns}/x@7", "v7"))


def test_a_branch_moves_to_any_revision_and_a_repush_says_main_did_not_move(
        reg: "RegistryAPI", ns: str, ckpt: Checkpoints, two_revisions: tuple[Any, Any]) -> None:
    first, second = two_revisions
    assert reg.show(f"{ns}/x").number == 2
    again = reg.push(ckpt.peft, f"{ns}/x")  # revision 1's files: nothing new, and main does not move by itself
    assert not again.created and again.revision.number == 1 and reg.show(f"{ns}/x").number == 2
    assert again.notices == [f"main did not move: it points at another revision, and {ns}/x@1 already holds this "
                             f"content; to serve it by default, move the branch: swiftreg branch {ns}/x@1 main"]
    rolled = reg.branch(f"{ns}/x@1", "main")  # the rollback the notice names
    assert refs(rolled) == (1, first.digest, ["v1"], ["main"])
    assert reg.show(f"{ns}/x").number == 1 and reg.resolve(f"{ns}/x") == reg.resolve(f"{ns}/x@1")
    assert reg.push(ckpt.peft, f"{ns}/x").notices == []  # main holds it now: nothing to say
    assert refs(reg.branch(f"{ns}/x@2", "canary")) == (2, second.digest, [], ["canary"])  # a new branch
    assert reg.branch(f"{ns}/x@canary", "main").number == 2  # by any ref
    assert reg.show(f"{ns}/x@1").branches == [] and sorted(reg.show(f"{ns}/x@2").branches) == ["canary", "main"]
    raises(RefExistsError, f"{ns}/x@v1 is a tag, not a branch", lambda: reg.branch(f"{ns}/x@2", "v1"))
    raises(InvalidIdError, re.compile(".*reads as a revision number.*"), lambda: reg.branch(f"{ns}/x@1", "7"))
    raises(NotFoundError, f"{ns}/x has no revision 9 (it has 2)", lambda: reg.branch(f"{ns}/x@9", "main"))
    third = reg.push(ckpt.swift, f"{ns}/x").revision
    assert third.number == 3 and reg.show(f"{ns}/x").number == 3  # a new push moves main forward again
    assert [r.number for r in reg.log(f"{ns}/x")] == [3, 2, 1]  # revisions never changed


def test_deleting_a_revision_and_retention_rules(backend: Backend, reg: "RegistryAPI", ns: str,
                                                ckpt: Checkpoints) -> None:
    admin = backend.admin  # remote: deleting history takes an admin token on the namespace
    reg.push(ckpt.peft, f"{ns}/x", tag="v1")
    reg.push(ckpt.peft2, f"{ns}/x")
    reg.push(ckpt.swift, f"{ns}/x")
    if backend.remote:  # local mode has no tokens
        with pytest.raises(AccessDeniedError):
            reg.delete_revision(f"{ns}/x@2")
    raises(RevisionInUseError, f"{ns}/x@1 is still needed by tag v1: move or remove those first (a lineage link "
           "keeps the revisions a merge or combination was made from, for unmerge)",
           lambda: admin.delete_revision(f"{ns}/x@1"))
    raises(InvalidIdError, f"name the revision to delete: {ns}/x@NUMBER (a number or sha256 digest)",
           lambda: admin.delete_revision(f"{ns}/x"))
    assert refs(admin.delete_revision(f"{ns}/x@2")) == (2, digest_of(ckpt.peft2), [], [])
    # Who deleted it differs by design: the OS user locally, the token's owner on a server.
    raises(NotFoundError, re.compile(rf"{ns}/x@2 was deleted on \S+ \S+ UTC by \S+ \(rm --revision\)"),
           lambda: reg.show(f"{ns}/x@2"))
    assert [r.number for r in reg.log(f"{ns}/x")] == [3, 1]
    assert reg.retention(f"{ns}/x") is None
    policy = admin.set_retention(f"{ns}/x", 1, keep_tagged=False)
    assert policy == reg.retention(f"{ns}/x") and (policy.repo, policy.keep_last, policy.keep_tagged) == (
        f"{ns}/x", 1, False)
    dry = admin.apply_retention(f"{ns}/x", dry_run=True)
    assert (dry.deleted, dry.kept, dry.dry_run) == ([], [f"{ns}/x@1: needed by tag v1"], True)
    reg.untag(f"{ns}/x", "v1")
    report = admin.apply_retention(f"{ns}/x")
    assert (report.deleted, report.kept) == ([f"{ns}/x@1"], []) and [r.number for r in reg.log(f"{ns}/x")] == [3]
    assert admin.set_retention(f"{ns}/x", None) is None and reg.retention(f"{ns}/x") is None
    raises(RegistryError, f"{ns}/x has no retention rule (swiftreg retention set NAMESPACE/NAME --keep-last N)",
           lambda: admin.apply_retention(f"{ns}/x"))


def test_untag_and_remove_ref(reg: "RegistryAPI", ns: str, two_revisions: tuple[Any, Any]) -> None:
    reg.untag(f"{ns}/x", "v1")
    raises(NotFoundError, f"{ns}/x has no tag or branch 'v1'", lambda: reg.show(f"{ns}/x@v1"))
    raises(NotFoundError, f"{ns}/x has no tag or branch 'v1'", lambda: reg.untag(f"{ns}/x", "v1"))
    raises(RegistryError, f"{ns}/x@main is a branch, not a tag", lambda: reg.untag(f"{ns}/x", "main"))
    raises(RegistryError, f"removing {ns}/x@main leaves the repository without a default; pass --force if you mean it",
           lambda: reg.remove_ref(f"{ns}/x@main"))
    raises(RegistryError, f"rm removes a tag or branch: name it, as in {ns}/x@v1", lambda: reg.remove_ref(f"{ns}/x"))
    raises(RegistryError, f"rm removes a tag or branch: name it, as in {ns}/x@v1", lambda: reg.remove_ref(f"{ns}/x@2"))
    reg.tag(f"{ns}/x@1", "old")
    reg.remove_ref(f"{ns}/x@old")  # rm a tag
    raises(NotFoundError, f"{ns}/x has no tag or branch 'old'", lambda: reg.remove_ref(f"{ns}/x@old"))
    assert reg.show(f"{ns}/x@1").tags == []
    reg.remove_ref(f"{ns}/x@main", force=True)
    raises(NotFoundError, f"{ns}/x has no tag or branch 'main'", lambda: reg.show(f"{ns}/x"))
    assert [r.number for r in reg.log(f"{ns}/x")] == [2, 1]  # revisions stay


def test_ref_operations_on_a_repository_that_does_not_exist(reg: "RegistryAPI", ns: str) -> None:
    missing = f"no adapter or base model {ns}/nope in this registry"
    raises(NotFoundError, missing, lambda: reg.untag(f"{ns}/nope", "v1"))
    raises(NotFoundError, missing, lambda: reg.remove_ref(f"{ns}/nope@v1"))
    raises(NotFoundError, missing, lambda: reg.resolve(f"{ns}/nope@v1"))
    raises(NotFoundError, missing, lambda: reg.pull(f"{ns}/nope"))


def test_tags_on_a_base_model(reg: "RegistryAPI", ns: str, ckpt: Checkpoints, tmp_path: Path) -> None:
    from tests.helpers.models import build_base

    reg.push_base(ckpt.llama_base, f"{ns}/llama", tag="v1")
    info = reg.tag(f"{ns}/llama@1", "stable")
    assert (info.kind, info.tags, info.branches) == ("base", ["stable", "v1"], ["main"])
    other = build_base("llama", tmp_path / "other", seed=1)
    raises(RefExistsError, f"tag 'v1' of {ns}/llama already points to revision 1; {IMMUTABLE}",
           lambda: reg.push_base(other, f"{ns}/llama", tag="v1"))
    assert [r.number for r in reg.log(f"{ns}/llama")] == [1]
    raises(RefExistsError, f"{ns}/llama@main is a branch, not a tag; move a branch with `swiftreg branch "
           f"{ns}/llama@REVISION main`", lambda: reg.tag(f"{ns}/llama@1", "main"))
    reg.untag(f"{ns}/llama", "stable")
    assert reg.show(f"{ns}/llama@v1").tags == ["v1"]
    reg.remove_ref(f"{ns}/llama@v1")
    raises(NotFoundError, f"{ns}/llama has no tag or branch 'v1'", lambda: reg.show(f"{ns}/llama@v1"))


# ===== base models ==============================================================================================

def test_push_base(reg: "RegistryAPI", ns: str, ckpt: Checkpoints) -> None:
    base = reg.push_base(ckpt.llama_base, f"{ns}/llama", tag="v1")
    info = base.revision
    assert base.created and base.notices == []
    assert (info.repo, info.kind, info.number, info.format, info.tags, info.branches, info.base_model) == (
        f"{ns}/llama", "base", 1, "transformers", ["v1"], ["main"], None)
    assert info.digest == digest_of(ckpt.llama_base) and info.manifest == manifest_of(ckpt.llama_base)
    assert (info.meta["architecture"], info.meta["model_type"]) == ("LlamaForCausalLM", "llama")
    again = reg.push_base(ckpt.llama_base, f"{ns}/llama")
    assert (again.created, again.blobs_written, again.bytes_written) == (False, 0, 0)
    same(again.revision, info)
    assert [(r.repo, r.kind, r.revisions, r.main) for r in reg.list(ns)] == [(f"{ns}/llama", "base", 1, 1)]
    same(reg.show(f"{ns}/llama@v1"), info)
    same_tree(reg.resolve(f"{ns}/llama@v1"), ckpt.llama_base)


@pytest.fixture
def llama(reg: "RegistryAPI", ns: str, ckpt: Checkpoints) -> str:
    reg.push_base(ckpt.llama_base, f"{ns}/llama", tag="v1")
    return f"{ns}/llama"


def test_an_adapter_pushed_with_its_base_model(reg: "RegistryAPI", ns: str, ckpt: Checkpoints, llama: str) -> None:
    pushed = reg.push(ckpt.peft, f"{ns}/x", base_model=f"{llama}@v1").revision
    assert pushed.base_model == f"{llama}@1"
    same(reg.show(f"{ns}/x"), pushed)
    assert [(r.repo, r.kind, r.base_model) for r in reg.list(ns)] == [
        (f"{ns}/x", "adapter", llama), (llama, "base", None)]


def test_an_adapter_that_does_not_fit_the_base_model_is_refused(reg: "RegistryAPI", ns: str, llama: str,
                                                               tmp_path: Path) -> None:
    deeper = write_peft_lora(tmp_path / "deeper", seed=5, layers=3)  # the tiny Llama has 2 layers
    raises(InvalidCheckpointError,
           re.compile(re.escape(f"{deeper} is not a valid adapter checkpoint: [error] default: "
                                "model.layers.2.self_attn.q_proj: no weight model.layers.2.self_attn.q_proj.weight "
                                "in the base model ") + ".*"),
           lambda: reg.push(deeper, f"{ns}/deeper", base_model=llama))
    assert reg.list(ns)[0].repo == llama and len(reg.list(ns)) == 1


def test_an_unknown_base_model_is_refused(reg: "RegistryAPI", ns: str, ckpt: Checkpoints, llama: str) -> None:
    raises(NotFoundError, f"{llama} has no revision 9 (it has 1)",
           lambda: reg.push(ckpt.peft, f"{ns}/y", base_model=f"{llama}@9"))
    raises(NotFoundError, f"no base model {ns}/nope in this registry (push it with `swiftreg base push`)",
           lambda: reg.push(ckpt.peft, f"{ns}/y", base_model=f"{ns}/nope"))
    assert [r.repo for r in reg.list(ns)] == [llama]


def test_an_adapter_is_no_base_model(reg: "RegistryAPI", ns: str, ckpt: Checkpoints) -> None:
    reg.push(ckpt.peft, f"{ns}/x")
    raises(NotFoundError, f"no base model {ns}/x in this registry (push it with `swiftreg base push`)",
           lambda: reg.push(ckpt.peft2, f"{ns}/y", base_model=f"{ns}/x"))
    assert [r.repo for r in reg.list(ns)] == [f"{ns}/x"]
