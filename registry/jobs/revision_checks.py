"""The nightly checks on one adapter revision, each recorded as a `validation_runs` row.

    integrity   every stored blob still hashes to the digest its manifest names
    config      the config and the tensors pass converters.validate (against the base model's
                shapes when the registry has the base)
    roundtrip   converted to the other format and back: every tensor bit-identical, configs equal
    peft_load   the PEFT form loads with the installed peft (PeftModel.from_pretrained on the base)
                and every tensor in the model is the file's, bit for bit
    swift_load  Swift revisions: ms-swift (its own environment, SWIFTREG_SWIFT_PYTHON) loads the
                Swift form and computes what peft computes on the PEFT form
    outputs     on the base model: our merge vs base+adapter vs PEFT's merge_and_unload, and the
                adapter's outputs against the reference figures stored by its first passing run

The revision is read straight from the blob store into a scratch folder, never from the snapshot
cache, so what is checked is what is stored; an unreadable blob fails `integrity` and the checks
go on with the bytes that are there (a shape edited in the store is then named by `config`). A blob
found corrupt is quarantined (registry/service/integrity.py); a quarantined one is unreadable, and
the failure says it was quarantined.

Checks that cannot apply are not recorded (no base model: no load or output checks; a PEFT-only
tuner such as SHiRA: no round trip through Swift); the report says why. Every row carries the
library versions it ran with, so a run after a peft upgrade that fails where the previous one
passed is a regression the report names (report.py).

ms-swift runs in batched subprocesses (registry/interop): one per `validate_revisions` call, for
every Swift revision in it.
"""
from __future__ import annotations

import hashlib
import json
import math
import shutil
import tempfile
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import converters

from ..errors import RegistryError
from ..versions import library_versions
from .kinds import CHECKS
from .queue import _aware

if TYPE_CHECKING:
    import torch

    from ..api import RevisionInfo
    from ..service import Registry

#: relative tolerance of an adapter's outputs against its stored reference figures (float32 math)
REFERENCE_TOLERANCE = 1e-5
#: the checks that read the base model (config: its shapes); the others never resolve it
USES_BASE = frozenset({"config", "peft_load", "swift_load", "outputs"})


@dataclass
class CheckOutcome:
    revision: str          # ns/name@N
    check: str
    passed: bool
    reason: str = ""       # why it failed (empty when it passed)
    metrics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Revision:
    """One revision being checked: where its bytes and its forms are, and what was found so far."""

    ref: str
    info: "RevisionInfo"
    row_id: int | None            # its `revisions.id`: read where first needed (_reference, or _record's transaction)
    scratch: Path
    stored: Path
    base: Path | None
    peft: Path | None = None      # the PEFT form (stored or converted)
    swift: Path | None = None     # the Swift form (stored)
    outcomes: list[CheckOutcome] = field(default_factory=list)
    peft_outputs: dict[str, "torch.Tensor"] = field(default_factory=dict)

    def add(self, check: str, passed: bool, reason: str = "", **metrics: Any) -> CheckOutcome:
        outcome = CheckOutcome(self.ref, check, passed, reason, metrics)
        self.outcomes.append(outcome)
        return outcome


# ----- versions -------------------------------------------------------------------------------------------

_SWIFT_VERSIONS: dict[str, dict[str, str]] = {}


def swift_versions(python: str) -> dict[str, str]:
    """ms-swift's environment's versions (read from its metadata, without importing ms-swift)."""
    if python not in _SWIFT_VERSIONS:
        import subprocess

        code = ("import importlib.metadata as m, json; v = {}\n"
                "for n in ('ms-swift', 'peft', 'transformers', 'torch'):\n"
                "    try: v[n] = m.version(n)\n"
                "    except Exception: pass\n"
                "print(json.dumps(v))")
        done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120)
        _SWIFT_VERSIONS[python] = ({f"swift-env:{k}": v for k, v in json.loads(done.stdout).items()}
                                   if done.returncode == 0 else {"swift-env": "unreadable"})
    return _SWIFT_VERSIONS[python]


# ----- selection ------------------------------------------------------------------------------------------

def select_revisions(reg: "Registry", *, since: datetime | None = None, namespace: str | None = None) -> list[str]:
    """Every adapter revision (`ns/name@N`), oldest first; only those created after `since` if given."""
    from sqlalchemy import select

    from ..db.models import AdapterRecord, RevisionRecord

    query = (select(AdapterRecord.namespace, AdapterRecord.name, RevisionRecord.number, RevisionRecord.created_at)
             .join(RevisionRecord, RevisionRecord.adapter_id == AdapterRecord.id)
             .order_by(AdapterRecord.namespace, AdapterRecord.name, RevisionRecord.number))
    if namespace is not None:
        from ..ids import check_name

        query = query.where(AdapterRecord.namespace == check_name(namespace, "namespace"))
    with reg.db.read() as session:
        rows = session.execute(query).all()
    if since is not None:  # stored in UTC; SQLite hands them back without their zone
        since = _aware(since)
        rows = [r for r in rows if _aware(r.created_at) >= since]
    return [f"{r.namespace}/{r.name}@{r.number}" for r in rows]


def _row_ids(session: Any, infos: "list[RevisionInfo]") -> list[int]:
    """The database ids of the revisions `infos` describe (read by `show_many` already), in one query for the
    whole batch however many repositories it spans, in the caller's transaction."""
    from sqlalchemy import select

    from ..db.models import AdapterRecord, RevisionRecord
    from ..db.queries import any_of, numbers_in

    if not infos:
        return []
    repos = [info.repo.split("/", 1) for info in infos]
    rows = session.execute(select(AdapterRecord.namespace, AdapterRecord.name, RevisionRecord.number, RevisionRecord.id)
                           .join(RevisionRecord, RevisionRecord.adapter_id == AdapterRecord.id)
                           .where(any_of(session, AdapterRecord.namespace, {ns for ns, _ in repos}),
                                  any_of(session, AdapterRecord.name, {name for _, name in repos}),
                                  numbers_in(RevisionRecord.number, {info.number for info in infos})))
    ids = {(f"{row.namespace}/{row.name}", row.number): row.id for row in rows}
    return [ids[(info.repo, info.number)] for info in infos]


# ----- the checks -----------------------------------------------------------------------------------------

def _materialise_unverified(reg: "Registry", rev: _Revision, *, copy: bool = True) -> None:
    """Copy the stored bytes (as they are) into `rev.stored`, hashing them on the way: `integrity`. Without
    `copy` (a run of the integrity check alone) the blobs are hashed where they are and nothing is written."""
    bad, missing = [], []
    for f in rev.info.manifest["files"]:
        target = rev.stored / f["path"]
        digest = hashlib.sha256()
        try:
            if copy:
                target.parent.mkdir(parents=True, exist_ok=True)
            with reg.store.open(f["sha256"]) as src, (open(target, "wb") if copy else nullcontext()) as dst:
                while chunk := src.read(1 << 20):
                    digest.update(chunk)
                    if dst is not None:
                        dst.write(chunk)
        except (OSError, RegistryError) as exc:
            missing.append(f"{f['path']}: blob {f['sha256'][:19]} cannot be read ({exc})")
            continue
        actual = "sha256:" + digest.hexdigest()
        if actual != f["sha256"]:
            bad.append(f"{f['path']}: stored bytes hash to {actual[:19]}, the manifest says {f['sha256'][:19]}")
            reg.check_blob(f["sha256"])  # the quarantine rule (registry/service/integrity.py): reported, never served
    problems = missing + bad
    rev.add("integrity", not problems, "; ".join(problems), files=len(rev.info.manifest["files"]),
            mismatched=len(bad), unreadable=len(missing))


def _check_config(rev: _Revision) -> bool:
    try:
        report = converters.validate(rev.stored, base_model=rev.base)
    except converters.FormatError as exc:
        rev.add("config", False, str(exc))
        return False
    errors = [str(p) for p in report.errors]
    rev.add("config", not errors, "; ".join(errors), adapters=report.adapters, against_base=rev.base is not None,
            warnings=[str(p) for p in report.problems if p.severity != "error"])
    return not errors


def _tensors(folder: Path) -> dict[str, tuple[str, list[int], bytes]]:
    """Every tensor of every safetensors file under `folder`: (relative file/key) -> (dtype, shape, bytes)."""
    from converters.safetensors_io import read_header

    out = {}
    for path in sorted(folder.rglob("*.safetensors")):
        header = read_header(path)
        rel = path.parent.relative_to(folder).as_posix()
        with open(path, "rb") as f:
            data = f.read()
        start = header.data_start
        for t in header.tensors:
            out[f"{rel}::{t.name}"] = (t.dtype, list(t.shape), data[start + t.begin:start + t.end])
    return out


def _configs(folder: Path) -> dict[str, dict[str, Any]]:
    return {a.name: a.config for a in converters.detect(folder).adapters}


def _check_roundtrip(rev: _Revision) -> None:
    stored_format = rev.info.format
    other = "peft" if stored_format == "swift" else "swift"
    there, back = rev.scratch / f"as-{other}", rev.scratch / f"back-{stored_format}"
    try:
        converters.convert(rev.stored, there, other)  # type: ignore[arg-type]
    except converters.RefusedError as exc:
        rev.add("roundtrip", True, applicable=False, note=f"not convertible to {other} by design: {exc}")
        return
    except converters.FormatError as exc:
        rev.add("roundtrip", False, f"{stored_format} -> {other}: {exc}")
        return
    if other == "peft":
        rev.peft = there
    try:
        converters.convert(there, back, stored_format)  # type: ignore[arg-type]
    except converters.FormatError as exc:
        rev.add("roundtrip", False, f"{other} -> {stored_format} (back): {exc}")
        return
    ours, theirs = _tensors(rev.stored), _tensors(back)
    problems = []
    if set(ours) != set(theirs):
        lost, extra = sorted(set(ours) - set(theirs)), sorted(set(theirs) - set(ours))
        problems.append(f"tensor keys differ after the round trip (lost {lost[:3]}, gained {extra[:3]})")
    differing = [k for k in sorted(set(ours) & set(theirs)) if ours[k] != theirs[k]]
    if differing:
        problems.append(f"{len(differing)} tensors not bit-identical after the round trip, e.g. "
                        f"{differing[0].replace('::', ': ')}")
    before, after = _configs(rev.stored), _configs(back)
    for name in sorted(set(before) | set(after)):
        a, b = before.get(name, {}), after.get(name, {})
        changed = sorted(k for k in set(a) | set(b) if _canonical(a.get(k)) != _canonical(b.get(k)))
        if changed:
            problems.append(f"adapter {name}: config fields changed by the round trip: {', '.join(changed[:8])}")
    rev.add("roundtrip", not problems, "; ".join(problems), applicable=True, via=other, tensors=len(ours),
            bytes=sum(len(v[2]) for v in ours.values()))


def _canonical(value: Any) -> str:
    """A config value as JSON text, so equal values compare equal even when they hold NaN (NaN != NaN)."""
    return json.dumps(value, sort_keys=True, default=str)


def _peft_adapters(folder: Path) -> list[tuple[str, Path]]:
    return [(a.name, a.folder) for a in converters.detect(folder).adapters]


def _check_peft_load(rev: _Revision) -> None:
    import torch
    from peft import PeftModel, get_peft_model_state_dict
    from safetensors.torch import load_file

    from ..tensors import equivalence as eq

    assert rev.peft is not None and rev.base is not None
    problems, loaded_tensors = [], 0
    inputs = eq.probe_inputs(rev.base)
    for name, folder in _peft_adapters(rev.peft):
        try:
            model = PeftModel.from_pretrained(eq.load_model(rev.base, torch.float32), folder, adapter_name=name).eval()
        except Exception as exc:  # noqa: BLE001 - the installed peft's refusal is the finding
            problems.append(f"adapter {name}: PeftModel.from_pretrained failed: {type(exc).__name__}: {exc}")
            continue
        state = get_peft_model_state_dict(model, adapter_name=name)
        weights = folder / "adapter_model.safetensors"
        saved = load_file(str(weights)) if weights.is_file() else {}
        missing = sorted(set(saved) - set(state))
        if missing:
            problems.append(f"adapter {name}: peft did not load {len(missing)} tensors, e.g. {missing[0]}")
        for key in sorted(set(saved) & set(state)):
            a, b = saved[key], state[key].detach().to("cpu", saved[key].dtype)
            if a.shape != b.shape or not torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)):
                problems.append(f"adapter {name}: {key} in the loaded model differs from the file "
                                f"({tuple(b.shape)} vs {tuple(a.shape)})")
                break
        loaded_tensors += len(saved)
        rev.peft_outputs[name] = eq.outputs(model, inputs)
        del model
    rev.add("peft_load", not problems, "; ".join(problems), adapters=[n for n, _ in _peft_adapters(rev.peft)],
            tensors=loaded_tensors)


def _figures(out: "torch.Tensor") -> dict[str, Any]:
    flat = out.reshape(-1)
    return {"l2": flat.norm().item(), "sum": flat.sum().item(), "head": [round(v, 9) for v in flat[:8].tolist()],
            "shape": list(out.shape)}


def _reference(reg: "Registry", rev: _Revision) -> dict[str, Any] | None:
    """The reference figures of the revision's first passing `outputs` run, if any."""
    from sqlalchemy import select

    from ..db.models import ValidationRunRecord

    with reg.db.read() as session:
        if rev.row_id is None:
            rev.row_id = _row_ids(session, [rev.info])[0]
        rows = session.scalars(select(ValidationRunRecord).where(
            ValidationRunRecord.revision_id == rev.row_id, ValidationRunRecord.check_kind == "outputs",
            ValidationRunRecord.passed.is_(True)).order_by(ValidationRunRecord.id).limit(1)).all()
    return rows[0].metrics.get("reference") if rows else None


def _check_outputs(reg: "Registry", rev: _Revision) -> None:
    import torch

    from converters.methods import tuners

    from ..tensors import equivalence as eq
    from ..tensors.adapter_tensors import load_adapter
    from ..tensors.merge import merge_checkpoint

    assert rev.peft is not None and rev.base is not None
    problems, comparisons, figures = [], [], {}
    stored_reference = _reference(reg, rev)
    for name, folder in _peft_adapters(rev.peft):
        merged = rev.scratch / f"merged-{name}"
        try:
            refusal = tuners.merge_refusal(str(converters.detect(folder).adapters[0].config.get("peft_type")))
            if refusal is None:  # merge vs base + adapter where the type merges; its outputs below either way
                merge_checkpoint(rev.base, load_adapter(folder, base_dir=rev.base), merged, device="cpu")
                for c in eq.check_merge(rev.base, folder, merged, device="cpu"):
                    comparisons.append({"adapter": name, **c.to_dict()})
                    if not c.passed:
                        problems.append(f"adapter {name}: {c.name}: {c.reason}")
        except Exception as exc:  # noqa: BLE001 - a merge or model load that fails is the finding
            problems.append(f"adapter {name}: {type(exc).__name__}: {exc}")
            continue
        finally:
            shutil.rmtree(merged, ignore_errors=True)
        out = rev.peft_outputs.get(name)
        if out is None:
            out = eq.peft_outputs(rev.base, folder, eq.probe_inputs(rev.base), dtype=torch.float32)
            rev.peft_outputs[name] = out
        figures[name] = _figures(out)
        if not all(math.isfinite(v) for v in (figures[name]["l2"], figures[name]["sum"])):
            problems.append(f"adapter {name}: its outputs on the probe batch hold NaN or Inf")
            figures[name] = {**figures[name], "l2": str(figures[name]["l2"]), "sum": str(figures[name]["sum"]),
                             "head": [v if math.isfinite(v) else str(v) for v in figures[name]["head"]]}
            continue
        reference = (stored_reference or {}).get(name)
        if reference is not None:
            drift = abs(figures[name]["l2"] - reference["l2"]) / (abs(reference["l2"]) or 1.0)
            head = max((abs(a - b) for a, b in zip(figures[name]["head"], reference["head"])), default=0.0)
            figures[name]["drift_from_reference"] = drift
            if figures[name]["shape"] != reference["shape"] or drift > REFERENCE_TOLERANCE or \
                    head > REFERENCE_TOLERANCE * max(1.0, max(abs(v) for v in reference["head"])):
                problems.append(f"adapter {name}: outputs moved from the stored reference (relative change of the "
                                f"output norm {drift:.3g}, largest change in the first values {head:.3g}, "
                                f"tolerance {REFERENCE_TOLERANCE:g})")
    rev.add("outputs", not problems, "; ".join(problems), comparisons=comparisons,
            reference=stored_reference if stored_reference is not None else figures, figures=figures,
            reference_is_new=stored_reference is None)


def _swift_loads(revs: list[_Revision], python: str) -> None:
    """Load every Swift revision with ms-swift in one subprocess; compare with peft's outputs."""
    from safetensors.torch import load_file

    from ..errors import SwiftEnvironmentError
    from ..interop.swift_env import run_jobs
    from ..tensors import equivalence as eq

    from ..interop import swift_checks

    jobs: list[dict[str, Any]] = []
    todo: list[tuple[_Revision, int]] = []
    expects: dict[str, int] = {}
    for rev in revs:
        assert rev.swift is not None and rev.base is not None
        checkpoint = converters.detect(rev.swift)
        names = [a.name for a in checkpoint.adapters]
        own = swift_checks.swift_only_adapters(rev.swift)
        if own:  # ms-swift's own tuners: ms-swift builds each stored config on the base; names and shapes must match
            expects[rev.ref] = len(jobs)
            jobs.append(swift_checks.expect_job(rev.ref, rev.swift, rev.base, own))
        jobs.append({"id": rev.ref, "op": "load", "base": str(rev.base), "checkpoint": str(rev.swift),
                     "adapters": names, "probe": eq.probe_inputs(rev.base).tolist(),
                     "outputs": str(rev.scratch / "swift-outputs.safetensors"),
                     "attention_mask": any(a.type_name == "PROMPT" for a in checkpoint.adapters),
                     "forward_errors_ok": bool(own),
                     "model_class": "AutoModelForCausalLM" if eq.is_causal_lm(rev.base) else "AutoModel"})
        todo.append((rev, len(jobs) - 1))
    if not jobs:
        return
    versions = swift_versions(python)
    try:
        results = run_jobs(jobs, python=python)
    except (SwiftEnvironmentError, OSError) as exc:
        for rev, _ in todo:
            rev.add("swift_load", False, f"the ms-swift batch did not run: {str(exc)[-600:]}", versions=versions)
        return
    for rev, index in todo:
        result = results[index]
        problems, figures, notes = [], {}, []
        if rev.ref in expects:
            assert rev.swift is not None
            built = results[expects[rev.ref]]
            if not built.get("ok"):
                problems.append(f"ms-swift cannot build the stored tuner config on the base: {built.get('error')}")
            else:
                problems += [f"adapter {a}: {where}: {message}"
                             for a, where, message in swift_checks.compare(rev.swift, built["expected"])]
                notes.append(f"ms-swift's own tuners checked by ms-swift: {', '.join(built['adapters'])}")
        if not result.get("ok"):
            problems.append(f"ms-swift could not load the Swift form: {result.get('error')}")
            rev.add("swift_load", False, "; ".join(problems), versions=versions, notes=notes)
            continue
        theirs = load_file(str(rev.scratch / "swift-outputs.safetensors"))
        for name, error in (result.get("forward_errors") or {}).items():
            notes.append(f"adapter {name}: ms-swift loads it, but its own forward fails on this base ({error[:300]}); "
                         "no reference outputs recorded")
        for name in result["adapters"]:
            if name in (result.get("forward_errors") or {}):
                continue
            ours = rev.peft_outputs.get(name)
            if ours is None:  # no PEFT form (a Swift-only tuner), or peft_load failed and says so itself
                figures[name] = {"reference": _figures(theirs[name])}  # ms-swift's outputs, recorded
                notes.append(f"adapter {name}: loaded by ms-swift; no peft outputs to compare with")
                continue
            assert rev.base is not None  # only revisions with a base model get here
            c = eq.compare(f"ms-swift vs peft ({name})", theirs[name], ours, "float32",
                           logits=eq.is_causal_lm(rev.base))
            figures[name] = c.to_dict()
            if not c.passed:
                problems.append(f"adapter {name}: ms-swift and peft disagree: relative error {c.rel_err:.3g} "
                                f"over {c.tolerance:g}")
        rev.add("swift_load", not problems, "; ".join(problems), comparisons=figures, versions=versions,
                kind=result.get("kind"), notes=notes)


def _use_swift(swift: bool | None) -> str | None:
    from .. import constants

    python = constants.swift_python()
    if swift is False:
        return None
    if swift is True and not python:
        raise RegistryError("validation asked for the ms-swift checks but SWIFTREG_SWIFT_PYTHON is not set: point it "
                            "at a Python with ms-swift installed")
    return python


def validate_revisions(reg: "Registry", refs: Iterable[str], *, run_id: str | None = None, job_id: int | None = None,
                       checks: Iterable[str] | None = None, swift: bool | None = None) -> list[CheckOutcome]:
    """Run the checks on each revision and record every outcome; the outcomes, in order."""
    wanted = set(checks or CHECKS)
    unknown = wanted - set(CHECKS)
    if unknown:
        raise RegistryError(f"unknown validation check(s) {', '.join(sorted(unknown))}; checks: {', '.join(CHECKS)}")
    python = _use_swift(swift) if "swift_load" in wanted else None
    with tempfile.TemporaryDirectory(prefix="swiftreg-validate-", dir=reg.home) as tmp:
        revs: list[_Revision] = []
        refs = list(refs)
        infos = reg.show_many(refs)
        for ref, info in zip(refs, infos):
            if info.kind != "adapter":
                raise RegistryError(f"{ref} is a base model; validation checks adapter revisions")
        hashing_only = wanted == {"integrity"}  # the blobs hashed where they lie: no scratch, no base model
        for i, (ref, info) in enumerate(zip(refs, infos)):
            ref = f"{info.repo}@{info.number}"
            scratch = Path(tmp) / f"r{i}"
            base = reg.resolve(info.base_model) if info.base_model and wanted & USES_BASE else None
            rev = _Revision(ref, info, None, scratch, scratch / "stored", base)
            revs.append(rev)
            if not hashing_only:
                rev.stored.mkdir(parents=True)
            _materialise_unverified(reg, rev, copy=not hashing_only)  # every other check reads these bytes
            if hashing_only:
                continue
            readable = rev.outcomes[-1].metrics["unreadable"] == 0
            config_ok = _check_config(rev) if readable and "config" in wanted else readable
            if not (readable and config_ok):
                continue  # nothing further can be trusted to say anything new
            if "roundtrip" in wanted or {"peft_load", "outputs", "swift_load"} & wanted:
                _check_roundtrip(rev)
            if info.format == "peft":
                rev.peft = rev.stored
            else:
                rev.swift = rev.stored
            if rev.base is None or rev.peft is None:
                continue
            if "peft_load" in wanted or "swift_load" in wanted:
                _check_peft_load(rev)
            if "outputs" in wanted:
                _check_outputs(reg, rev)
        if python is not None:
            _swift_loads([r for r in revs if r.swift is not None and r.base is not None], python)
        for rev in revs:
            rev.outcomes = [o for o in rev.outcomes if o.check in wanted]
        _record(reg, revs, run_id=run_id, job_id=job_id)
        return [o for rev in revs for o in rev.outcomes]


def _record(reg: "Registry", revs: list[_Revision], *, run_id: str | None, job_id: int | None) -> None:
    """Every outcome a `validation_runs` row, in one transaction with the failures' events: one multi-row INSERT
    (executemany, no ids read back), a third of the ORM's cost per row on PostgreSQL."""
    from sqlalchemy import insert

    from ..db.models import ValidationRunRecord

    versions = library_versions()
    now = datetime.now(timezone.utc)

    def row_of(rev: _Revision, o: CheckOutcome) -> dict[str, Any]:
        metrics = dict(o.metrics)
        if o.reason:
            metrics["reason"] = o.reason
        extra = metrics.pop("versions", {}) if o.check == "swift_load" else {}
        return {"revision_id": rev.row_id, "check_kind": o.check, "metrics": _jsonable(metrics), "passed": o.passed,
                "library_versions": {**versions, **extra}, "started_at": now,
                "finished_at": datetime.now(timezone.utc), "run_id": run_id, "job_id": job_id}

    with reg.db.write() as session:
        unread = [rev for rev in revs if rev.row_id is None]
        for rev, row_id in zip(unread, _row_ids(session, [rev.info for rev in unread])):
            rev.row_id = row_id
        rows = [row_of(rev, o) for rev in revs for o in rev.outcomes]
        if rows:
            session.execute(insert(ValidationRunRecord), rows)
        for rev in revs:
            _announce_failures(session, rev, versions, run_id=run_id, job_id=job_id)


def _announce_failures(session: Any, rev: _Revision, versions: dict[str, Any], *, run_id: str | None,
                       job_id: int | None) -> None:
    """validation.regressed (a check that passed last time fails now) or validation.failed, one event per
    revision and run, in the transaction that records the results (registry/webhooks/outbox.py)."""
    from sqlalchemy import select

    from ..db.models import ValidationRunRecord
    from ..webhooks import outbox

    failed = [o for o in rev.outcomes if not o.passed]
    if not failed:
        return
    checks = []
    session.flush()  # this run's rows are written: the previous result is the one before them
    for o in failed:
        query = select(ValidationRunRecord).where(ValidationRunRecord.revision_id == rev.row_id,
                                                  ValidationRunRecord.check_kind == o.check)
        if run_id:
            query = query.where((ValidationRunRecord.run_id != run_id) | ValidationRunRecord.run_id.is_(None))
        before = session.scalars(query.order_by(ValidationRunRecord.id.desc())
                                 .offset(0 if run_id else 1).limit(1)).first()
        previous = None if before is None else {"passed": before.passed, "run_id": before.run_id,
                                                "library_versions": before.library_versions}
        checks.append({"check": o.check, "reason": o.reason, "metrics": _jsonable(o.metrics),
                       "regression": bool(previous and previous["passed"]), "previous": previous})
    info = rev.info
    namespace, _, _ = info.repo.partition("/")
    kind = "validation.regressed" if any(c["regression"] for c in checks) else "validation.failed"
    outbox.record(session, kind, namespace=namespace, stream=info.repo, data={
        "repo": info.repo, "head": info.digest, "validation": {
            "run_id": run_id, "job_id": job_id, "checks": checks, "library_versions": _jsonable(versions),
            "failed": [c["check"] for c in checks], "regressed": [c["check"] for c in checks if c["regression"]]},
        "revision": {"number": info.number, "digest": info.digest, "format": info.format,
                     "tuner_type": (info.meta or {}).get("tuner_type")}})


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))
