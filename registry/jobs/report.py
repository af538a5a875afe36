"""What one `validate-all` found: a table for people, JSON for machines, JUnit XML for CI dashboards.

A regression is a (revision, check) whose previous recorded result passed and whose result in this
run fails: that is what the nightly run exits non-zero for. The previous result's library versions
are kept beside the new ones, so "passed with peft 0.21.2, fails with peft 0.22.0" reads off the
report directly.
"""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select

from .kinds import CHECKS

if TYPE_CHECKING:
    from ..service import Registry


@dataclass
class CheckResult:
    revision: str
    check: str
    passed: bool
    reason: str
    metrics: dict[str, Any]
    library_versions: dict[str, Any]
    previous: dict[str, Any] | None = None   # the last earlier result: passed, run_id, library_versions

    @property
    def regression(self) -> bool:
        return not self.passed and self.previous is not None and bool(self.previous["passed"])

    def to_dict(self) -> dict[str, Any]:
        return {"revision": self.revision, "check": self.check, "passed": self.passed, "reason": self.reason,
                "regression": self.regression, "metrics": self.metrics, "library_versions": self.library_versions,
                "previous": self.previous}


@dataclass
class ValidationReport:
    run_id: str
    revisions: list[str]
    results: list[CheckResult]
    seconds: float = 0.0
    backend: str = "inline"
    jobs: list[dict[str, Any]] = field(default_factory=list)   # id, status, error of each validate job
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.passed]

    @property
    def regressions(self) -> list[CheckResult]:
        return [r for r in self.results if r.regression]

    @property
    def failed_jobs(self) -> list[dict[str, Any]]:
        """Validate jobs that ended without recording their checks (crashed, stalled out, cancelled)."""
        return [j for j in self.jobs if j["status"] != "succeeded" and not j.get("recorded")]

    def to_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "backend": self.backend, "seconds": round(self.seconds, 3),
                "revisions": len(self.revisions), "checks": len(self.results), "failed": len(self.failures),
                "regressions": [r.to_dict() for r in self.regressions], "jobs": self.jobs, "notes": self.notes,
                "results": [r.to_dict() for r in self.results]}

    def table(self) -> str:
        """One row per revision, one column per check: ok, FAIL, REGRESSED, or - (not applicable)."""
        by_rev: dict[str, dict[str, CheckResult]] = {rev: {} for rev in self.revisions}
        r: CheckResult | None
        for r in self.results:
            by_rev.setdefault(r.revision, {})[r.check] = r
        header = ["revision"] + list(CHECKS)
        rows = [header]
        for rev, checks in by_rev.items():
            row = [rev]
            for check in CHECKS:
                r = checks.get(check)
                row.append("-" if r is None else "ok" if r.passed else "REGRESSED" if r.regression else "FAIL")
            rows.append(row)
        widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
        lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
        for r in self.failures:
            was = ""
            if r.regression and r.previous:
                was = f" (passed before, run {r.previous['run_id']}, with {_versions(r.previous['library_versions'])})"
            lines.append(f"{'REGRESSED' if r.regression else 'FAILED'} {r.revision} {r.check}: {r.reason}{was}")
        for j in self.failed_jobs:
            lines.append(f"JOB {j['id']} {j['status']}: {j.get('error') or 'no result'}")
        lines.append(f"{len(self.revisions)} revisions, {len(self.results)} checks, {len(self.failures)} failed, "
                     f"{len(self.regressions)} regressions, in {self.seconds:.1f} s ({self.backend})")
        return "\n".join(lines)

    def junit_xml(self) -> str:
        """One testsuite; one testcase per (revision, check), `classname` the revision."""
        suite = ET.Element("testsuite", name="swiftreg validate-all",
                           tests=str(len(self.results) + len(self.failed_jobs)),
                           failures=str(len(self.failures)), errors=str(len(self.failed_jobs)),
                           time=f"{self.seconds:.3f}")
        props = ET.SubElement(suite, "properties")
        ET.SubElement(props, "property", name="run_id", value=self.run_id)
        versions = self.results[0].library_versions if self.results else {}
        for name, version in sorted(versions.items()):
            ET.SubElement(props, "property", name=name, value=str(version))
        for r in self.results:
            case = ET.SubElement(suite, "testcase", classname=r.revision, name=r.check)
            if not r.passed:
                failure = ET.SubElement(case, "failure", message=r.reason[:1000],
                                        type="regression" if r.regression else "failure")
                failure.text = json.dumps(r.metrics, indent=1, default=str)[:20000]
        for j in self.failed_jobs:
            case = ET.SubElement(suite, "testcase", classname="jobs", name=f"job {j['id']}")
            ET.SubElement(case, "error", message=str(j.get("error") or j["status"])[:1000])
        return ET.tostring(suite, encoding="unicode", xml_declaration=True)

    def write(self, json_path: Path | None = None, junit_path: Path | None = None) -> None:
        if json_path is not None:
            Path(json_path).write_text(json.dumps(self.to_dict(), indent=1, default=str))
        if junit_path is not None:
            Path(junit_path).write_text(self.junit_xml())


def _versions(v: dict[str, Any]) -> str:
    keys = [k for k in ("peft", "transformers", "torch", "swift-env:ms-swift") if k in v]
    return ", ".join(f"{k} {v[k]}" for k in keys) or "unknown versions"


def build(reg: "Registry", run_id: str, revisions: list[str]) -> ValidationReport:
    """Read back every row this run recorded, each with the result before it: one query for the whole run (the
    previous result found by a correlated subquery on the (revision, check) index, not one query per row)."""
    from sqlalchemy.orm import aliased

    from ..db.models import AdapterRecord, RevisionRecord, ValidationRunRecord

    run = ValidationRunRecord
    earlier, before = aliased(ValidationRunRecord), aliased(ValidationRunRecord)
    previous_id = (select(func.max(earlier.id))
                   .where(earlier.revision_id == run.revision_id, earlier.check_kind == run.check_kind,
                          earlier.id < run.id, (earlier.run_id != run_id) | earlier.run_id.is_(None))
                   .correlate(run).scalar_subquery())
    with reg.db.read() as session:
        rows = session.execute(  # of the previous result, only what the report shows (not its metrics)
            select(run, AdapterRecord.namespace, AdapterRecord.name, RevisionRecord.number, before.id,
                   before.passed, before.run_id, before.library_versions, before.finished_at)
            .join(RevisionRecord, run.revision_id == RevisionRecord.id)
            .join(AdapterRecord, RevisionRecord.adapter_id == AdapterRecord.id)
            .outerjoin(before, before.id == previous_id)
            .where(run.run_id == run_id).order_by(run.id)).all()
        results = []
        for found in rows:
            row: ValidationRunRecord = found[0]
            ns, name, number, prior_id, passed, prior_run, prior_versions, finished = found[1:]
            metrics = dict(row.metrics or {})
            reason = str(metrics.pop("reason", ""))
            previous = None if prior_id is None else {"passed": passed, "run_id": prior_run,
                                                      "library_versions": prior_versions,
                                                      "finished_at": str(finished)}
            results.append(CheckResult(f"{ns}/{name}@{number}", row.check_kind, row.passed, reason, metrics,
                                       row.library_versions or {}, previous))
    order = {rev: i for i, rev in enumerate(revisions)}
    results.sort(key=lambda r: (order.get(r.revision, len(order)), CHECKS.index(r.check) if r.check in CHECKS else 99))
    return ValidationReport(run_id, revisions, results)
