"""No 5xx on client input, in any of the three dialects (issue 14 item 3, M5 and M7): a real `swiftreg serve`
on SQLite and on PostgreSQL, seeded with a PEFT and a Swift repository and tokens of each scope.

First the inputs the issue's probe found, one test each: revision numbers past the INTEGER column,
non-ASCII digits ('²', '٣', '１') as a revision and in Upload-Offset / Upload-Length, lone surrogates in a
manifest path, a `parents` key and job parameters, file names over 255 bytes of UTF-8, and a legal
240-character file name that must also be written back out (snapshots, conversions, pulls).

Then property-based tests, each derandomized (CI reproduces them) and sized to about a minute per
database together; every answer must be below 500 and the server log must hold no traceback:
- schemathesis drives every operation of the published OpenAPI document (all three dialects are in it:
  /api/v1, the Hugging Face routes, the ModelScope routes), positive and negative cases, full Unicode and
  NUL, with a token of each scope, half the cases with a path parameter or upload header made hostile;
- schemathesis's stateful tests run sequences along the links it infers (a revision listed, then read in each
  dialect; a job submitted, then read and cancelled);
- Hypothesis drives the hub routes deeper: hostile path segments (surrogate-escaped bytes like %ED%A0%80,
  huge integers, '²', very long names), revisions, query parameters, Range and cookie headers; a refused
  parameter must come back in the dialect's own error shape;
- Hypothesis sends raw JSON bodies to /api/v1 with lone surrogates, NUL and huge numbers in every string,
  key and revision (schemathesis cannot: it encodes what it sends).
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from registry.client import RemoteRegistry
from registry.errors import UnsafePathError
from registry.manifest import check_relpath
from registry.service import Registry
from tests.helpers.api_v1 import API, assert_error, checkpoint_files, client, manifest_of, push_folder, sha256, upload
from tests.helpers.checkpoints import write_peft_lora, write_swift_lora
from tests.helpers.server import Server

pytestmark = pytest.mark.server

PEFT_REPO, SWIFT_REPO = "team/hostile", "team/swifty"
#: Revision numbers no INTEGER column holds: 2^31 (PostgreSQL's bound), 2^63 and 2^64 (SQLite's), 40 digits
#: (which also reads as a Hugging Face commit id).
HUGE = [str(2**31), str(2**63), str(2**64), "9" * 40]
#: Digits Python's int() and str.isdigit() take, and a revision number must not.
NON_ASCII_DIGITS = ["²", "٣", "１", "1²", "۱۲"]
LONG_NAME = "n" * 236 + ".txt"            # 240 characters: legal, and written back out
WIDE_NAME = "é" * 127 + ".md"             # 257 bytes of UTF-8 in 130 characters: over NAME_MAX


@pytest.fixture(scope="module")
def world(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A PEFT and a Swift repository (tag v1), and tokens of each scope, two limited to a namespace."""
    root = tmp_path_factory.mktemp("hostile")
    peft = write_peft_lora(root / "peft", seed=1400)
    swift = write_swift_lora(root / "swift", seed=1401)
    with client(server, server.write_token) as http:
        for repo, folder in ((PEFT_REPO, peft), (SWIFT_REPO, swift)):
            r = push_folder(http, repo, folder, tag="v1")
            assert r.status_code == 201, r.text
        hf = http.get(f"/api/models/{PEFT_REPO}")
        assert hf.status_code == 200, hf.text
    return {
        "files": checkpoint_files(peft),
        "commit": hf.json()["sha"],
        "tokens": {"admin": server.admin_token, "write": server.write_token, "read": server.read_token,
                   "team-read": server.token("read", "team"), "other-write": server.token("write", "other"),
                   "none": None, "bogus": "srg_" + "0" * 40},
    }


def _get(server: Server, path: str, token: str | None = None, **kwargs: Any) -> httpx.Response:
    with client(server, token if token is not None else server.admin_token) as http:
        return http.request(kwargs.pop("method", "GET"), path, **kwargs)


def _json_post(server: Server, path: str, raw: str, token: str | None = None) -> httpx.Response:
    """POST a JSON text exactly as written (json.dumps cannot write a lone surrogate's escape for us)."""
    return _get(server, path, token or server.write_token, method="POST", content=raw.encode(),
                headers={"Content-Type": "application/json"})


def _raw_json(template: Any, *texts: str) -> str:
    """json.dumps(template) with its strings "<0>", "<1>", ... (values or keys) replaced by raw JSON texts, which
    may hold what json.dumps never writes (a lone surrogate's escape)."""
    out = json.dumps(template)
    for i, text in enumerate(texts):
        out = out.replace(json.dumps(f"<{i}>"), text)
    return out


def _hub_refusal(r: httpx.Response, code: str | None = None) -> None:
    assert r.status_code == 404, f"{r.status_code}: {r.text[:300]}"
    assert "Traceback" not in r.text
    if code is not None:
        assert r.headers.get("x-error-code") == code, r.headers


def _ms_refusal(r: httpx.Response) -> None:
    assert r.status_code == 404, f"{r.status_code}: {r.text[:300]}"
    body = r.json()
    assert body["Success"] is False and body["Code"] == 404, body


def _revision_everywhere(server: Server, rev: str) -> None:
    """`rev` names no revision in any dialect: 400 invalid_id on /api/v1, 404 RevisionNotFound on the hubs."""
    q = quote(rev, safe="")
    for path in (f"{API}/repos/{PEFT_REPO}/refs/{q}", f"{API}/repos/{SWIFT_REPO}/refs/{q}?format=peft",
                 f"{API}/repos/{PEFT_REPO}/refs/{q}/validations"):
        assert_error(_get(server, path), 400, "invalid_id")
    assert_error(_get(server, f"{API}/repos/{PEFT_REPO}/refs/{q}", method="DELETE"), 400, "invalid_id")
    assert_error(_get(server, f"{API}/repos/{PEFT_REPO}/refs/{q}/checks/vllm", method="POST", json={}),
                 400, "invalid_id")
    assert_error(_get(server, f"{API}/repos/{PEFT_REPO}/tags/moved", method="PUT", json={"ref": rev}),
                 400, "invalid_id")
    assert_error(_get(server, f"{API}/jobs", method="POST",
                      json={"kind": "validate", "params": {"revisions": [f"{PEFT_REPO}@{rev}"]}}), 400, "invalid_id")
    for repo in (PEFT_REPO, SWIFT_REPO):
        for path in (f"/api/models/{repo}/revision/{q}", f"/api/models/{repo}/tree/{q}",
                     f"/{repo}/resolve/{q}/README.md", f"/{repo}/resolve/{q}/adapter_config.json"):
            _hub_refusal(_get(server, path), "RevisionNotFound")
            _hub_refusal(_get(server, path, method="HEAD"), "RevisionNotFound")
        for path in (f"/api/v1/models/{repo}?Revision={q}", f"/api/v1/models/{repo}/repo/files?Revision={q}",
                     f"/api/v1/models/{repo}/repo?Revision={q}&FilePath=README.md"):
            _ms_refusal(_get(server, path))


# ----- the inputs the probe found ----------------------------------------------------------------------------

@pytest.mark.parametrize("rev", HUGE)
def test_revision_numbers_past_the_integer_column_are_refused_in_every_dialect(server: Server,
                                                                              world: dict[str, Any],
                                                                              rev: str) -> None:
    _revision_everywhere(server, rev)
    r = _get(server, f"{API}/repos/{PEFT_REPO}/refs/{rev}")
    assert "at most 2147483647" in r.json()["error"]["message"]
    assert _get(server, f"{API}/repos/{PEFT_REPO}/refs/1").status_code == 200  # the bound is not off by one
    assert _get(server, f"/api/models/{PEFT_REPO}/revision/1").status_code == 200
    _hub_refusal(_get(server, f"/api/models/{PEFT_REPO}/revision/{2**31 - 1}"), "RevisionNotFound")


@pytest.mark.parametrize("rev", NON_ASCII_DIGITS)
def test_non_ascii_digits_are_not_revision_numbers(server: Server, world: dict[str, Any], rev: str) -> None:
    _revision_everywhere(server, rev)


@pytest.mark.parametrize("field", ["Upload-Offset", "Upload-Length"])
@pytest.mark.parametrize("value", [b"\xb2", b"1\xb2", b"\xb9\xb3", "٣".encode(), "１".encode(), b"+1", b"1 2",
                                   b"1_000"])
def test_upload_headers_take_ascii_digits_only(server: Server, field: str, value: bytes) -> None:
    data = b"an upload with odd headers"
    headers: dict[str, Any] = {"Upload-Offset": b"0", "Upload-Length": str(len(data)).encode(), field: value}
    with client(server, server.write_token) as http:
        r = http.patch(f"{API}/uploads/{sha256(data)}", content=data, headers=headers)
        error = assert_error(r, 400, "bad_request")
        assert field in error["message"]
        head = http.head(f"{API}/uploads/{sha256(data)}")
        assert head.status_code == 200 and head.headers["Upload-Offset"] == "0"  # nothing was kept


SURROGATE = "\\ud800"   # in JSON text: a lone high surrogate
LOW = "\\udfff"


@pytest.mark.parametrize("where", ["manifest path", "parents key", "parents value", "message", "tag",
                                   "base_model", "job params key", "job params value", "job idempotency key",
                                   "missing digests", "tag ref", "vllm base_model"])
def test_lone_surrogates_in_json_are_refused(server: Server, world: dict[str, Any], where: str) -> None:
    manifest = manifest_of(world["files"])
    files = manifest["files"]
    commit = f"{API}/repos/team/surrogates/revisions"
    bodies = {
        "manifest path": (commit, {"manifest": {"files": [{**files[0], "path": "<0>"}, *files[1:]]}},
                          f'"README{SURROGATE}.md"'),
        "parents key": (commit, {"manifest": manifest, "parents": [{"<0>": "merge"}]}, f'"op{SURROGATE}"'),
        "parents value": (commit, {"manifest": manifest, "parents": [{"op": "<0>"}]}, f'"x{LOW}"'),
        "message": (commit, {"manifest": manifest, "message": "<0>"}, f'"{SURROGATE}"'),
        "tag": (commit, {"manifest": manifest, "tag": "<0>"}, f'"v{SURROGATE}"'),
        "base_model": (commit, {"manifest": manifest, "base_model": "<0>"}, f'"meta/x{SURROGATE}"'),
        "job params key": (f"{API}/jobs", {"kind": "sleep", "params": {"seconds": 0, "<0>": 1}}, f'"x{SURROGATE}"'),
        "job params value": (f"{API}/jobs", {"kind": "validate", "params": {"revisions": ["<0>"]}},
                             f'"{PEFT_REPO}@1{SURROGATE}"'),
        "job idempotency key": (f"{API}/jobs", {"kind": "sleep", "params": {"seconds": 0}, "idempotency_key": "<0>"},
                                f'"k{SURROGATE}"'),
        "missing digests": (f"{API}/blobs/missing", {"digests": ["<0>"]}, f'"sha256:{SURROGATE}"'),
        "tag ref": (f"{API}/repos/{PEFT_REPO}/tags/t1", {"ref": "<0>"}, f'"v1{SURROGATE}"'),
        "vllm base_model": (f"{API}/repos/{PEFT_REPO}/refs/v1/checks/vllm", {"base_model": "<0>"}, f'"a/b{SURROGATE}"'),
    }
    path, template, text = bodies[where]
    method = "PUT" if where == "tag ref" else "POST"
    r = _get(server, path, server.admin_token, method=method, content=_raw_json(template, text).encode(),
             headers={"Content-Type": "application/json"})
    error = assert_error(r, 400, "bad_request")
    assert "surrogate" in error["message"]
    assert_error(_get(server, f"{API}/repos/team/surrogates/revisions"), 404)  # nothing was committed


def test_a_trailing_newline_is_not_part_of_a_name(server: Server, world: dict[str, Any]) -> None:
    """`$` matches before a final newline: names and refs are matched whole, so `team/x\\n` is no repository."""
    with client(server, server.write_token) as http:
        r = push_folder(http, "team/newline%0A", write_peft_lora(server.home.parent / "newline", seed=1405))
        assert_error(r, 400, "invalid_id")
        assert_error(http.get(f"{API}/repos/team/newline%0A/revisions"), 400, "invalid_id")
        assert_error(http.get(f"{API}/repos/{PEFT_REPO}/refs/v1%0A"), 400, "invalid_id")
        assert_error(http.put(f"{API}/repos/{PEFT_REPO}/tags/t%0A", json={"ref": "1"}), 400, "invalid_id")
        assert_error(http.get(f"{API}/repos?namespace=team%0A"), 400, "invalid_id")
        _hub_refusal(http.get(f"/api/models/{PEFT_REPO}%0A"), "RepoNotFound")
        _hub_refusal(http.get(f"/{PEFT_REPO}%0A/resolve/v1/README.md"), "RepoNotFound")
        _hub_refusal(http.get(f"/api/models/{PEFT_REPO}/tree/{'a' * 40}%0A"), "RevisionNotFound")
        _ms_refusal(http.get(f"/api/v1/models/{PEFT_REPO}/repo/files", params={"Revision": "v1\n"}))
        assert "team/newline\n" not in [r["repo"] for r in http.get(f"{API}/repos").json()]


def test_file_names_over_name_max_are_refused_at_commit_naming_the_file(server: Server,
                                                                       world: dict[str, Any]) -> None:
    extra = b"a file with a very wide name"
    with client(server, server.write_token) as http:
        assert upload(http, extra).status_code == 201
        for name in (WIDE_NAME, "docs/" + WIDE_NAME, "a" * 256, "ü" * 128):
            files = [*manifest_of(world["files"])["files"], {"path": name, "size": len(extra), "sha256": sha256(extra)}]
            r = http.post(f"{API}/repos/team/wide/revisions", json={"manifest": {"files": files}})
            error = assert_error(r, 400, "unsafe_path")
            assert name.rsplit("/", 1)[-1][:20] in error["message"] and "255" in error["message"], error
        assert_error(http.get(f"{API}/repos/team/wide/revisions"), 404)


def test_a_long_legal_file_name_is_stored_and_written_back_out(server: Server, world: dict[str, Any],
                                                               tmp_path: Path) -> None:
    """M7: 240 characters (and 254 bytes of UTF-8) are legal at commit, so every way out must write them."""
    folder = write_peft_lora(tmp_path / "ckpt", seed=1402)
    wide = "é" * 126 + ".md"  # 255 bytes: the longest legal name
    (folder / LONG_NAME).write_bytes(b"long name\n")
    (folder / wide).write_bytes(b"wide name\n")
    with client(server, server.write_token) as http:
        r = push_folder(http, "team/long-names", folder, tag="v1")
        assert r.status_code == 201, r.text
        # a conversion writes every file out under temporary names beside them
        r = http.get(f"{API}/repos/team/long-names/refs/v1", params={"format": "swift"})
        assert r.status_code == 200, r.text
        assert {LONG_NAME, wide} <= {f["path"] for f in r.json()["files"]}
        for name, data in ((LONG_NAME, b"long name\n"), (wide, b"wide name\n")):
            got = http.get(f"/team/long-names/resolve/v1/{quote(name)}")
            assert got.status_code == 200 and got.content == data
            got = http.get("/api/v1/models/team/long-names/repo", params={"Revision": "v1", "FilePath": name})
            assert got.status_code == 200 and got.content == data
    remote = RemoteRegistry(server.url, server.read_token, home=tmp_path / "client", retries=0)
    try:
        for fmt in (None, "swift"):
            pulled = remote.pull("team/long-names@v1", tmp_path / f"pulled-{fmt}", format=fmt)
            assert (pulled / LONG_NAME).read_bytes() == b"long name\n"
            assert (pulled / wide).read_bytes() == b"wide name\n"
    finally:
        remote.close()


def test_local_push_and_pull_agree_on_file_names(database_url: str, tmp_path: Path) -> None:
    """The embedded registry: a 240-character name pushes and pulls back; a name that is not UTF-8 is
    refused at push, naming the file (the commit refuses the same names: check_relpath is shared)."""
    reg = Registry(home=tmp_path / "home", database_url=database_url)
    try:
        folder = write_peft_lora(tmp_path / "ckpt", seed=1403)
        (folder / LONG_NAME).write_bytes(b"long\n")
        reg.push(folder, "team/long", tag="v1")
        for fmt in (None, "swift"):
            assert (reg.pull("team/long@v1", format=fmt) / LONG_NAME).read_bytes() == b"long\n"
        assert (reg.pull("team/long@v1", tmp_path / "out") / LONG_NAME).read_bytes() == b"long\n"
        bad = write_peft_lora(tmp_path / "bad", seed=1404)
        (bad / os.fsdecode(b"notes-\xff\xfe.txt")).write_bytes(b"a name that is not UTF-8")
        with pytest.raises(UnsafePathError, match="notes-"):
            reg.push(bad, "team/bad")
    finally:
        reg.close()


def test_the_parsers() -> None:
    """registry/params.py: one parser per kind, refusing what Python's own int() and isdigit() let through."""
    from registry import params

    assert params.revision_number("2147483647") == 2**31 - 1
    for bad in ("2147483648", "0", "007", "²", "٣", "１", "", " 1", "1 ", "+1", "-1", "1\n", "0" * 5000 + "1"):
        with pytest.raises(params.InvalidIdError):
            params.revision_number(bad)
    assert params.natural("0" * 5000 + "12", "n") == 12
    for bad in ("²", "٣", "１", "", "1e3", "0x10", "9" * 20):
        with pytest.raises(params.RegistryError):
            params.natural(bad, "n")
    assert params.text("ok é 中", "x") == "ok é 中"
    for bad in ("a\x00b", "\ud800", "x\udfff"):
        with pytest.raises(params.RegistryError):
            params.text(bad, "x")
    assert params.unstorable({"a": [1, {"b\ud800": 2}]}) and params.unstorable({"a": ["x\x00"]})
    assert params.unstorable({"a": [1, {"b": "é"}], "c": None}) is None
    for name in ("a" * 255, "é" * 127 + "a", "x", "中" * 85, LONG_NAME):
        check_relpath(f"dir/{name}")
        for tag in ("tmp-0123456789abcdef", "0123456789abcdef.partial"):
            temp = params.temp_name(name, tag)
            assert len(temp.encode()) <= params.NAME_MAX and temp.startswith(".") and temp.endswith(tag)
    for bad in ("a" * 256, "é" * 128, "x/\ud800", "\x00", "a//b", "../a"):
        with pytest.raises(UnsafePathError):
            check_relpath(bad)
    assert params.flag("True", "x") is True and params.flag("0", "x") is False
    with pytest.raises(params.RegistryError):
        params.flag("maybe", "x")
    from registry.errors import InvalidJobError
    from registry.jobs.api import parse_since

    for bad in ("²h", "１d", "9" * 15 + "d"):  # `swiftreg validate-all --since`
        with pytest.raises(InvalidJobError):
            parse_since(bad)


# ----- property-based: every route of the three dialects ------------------------------------------------------

#: The fuzzing budget per database (Hypothesis examples, one request each) for the schemathesis pass, the hub
#: pass and the raw-JSON pass: about half a minute per database on an idle two-core machine. SWIFTREG_HOSTILE_SCALE
#: multiplies it for a deeper run by hand (the examples stay derandomized: the same seed, more of them).
SCALE = float(os.environ.get("SWIFTREG_HOSTILE_SCALE", "1"))
API_EXAMPLES = int(1200 * SCALE)
HUB_EXAMPLES = int(1800 * SCALE)
JSON_EXAMPLES = int(600 * SCALE)
STATEFUL_EXAMPLES = int(60 * SCALE)  # sequences of up to 10 steps
FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True, phases=[Phase.explicit,
                Phase.generate, Phase.shrink], suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def tally() -> Iterator[dict[str, Counter[int]]]:
    """How many requests each pass sent, by status (printed with -s; the status file quotes them)."""
    counts: dict[str, Counter[int]] = {}
    yield counts
    for name, statuses in counts.items():
        print(f"\n{name}: {sum(statuses.values())} requests, statuses {dict(sorted(statuses.items()))}")


def _server_log(server: Server) -> str:
    port = server.url.rsplit(":", 1)[1]
    return (server.home.parent / f"server-{port}.log").read_text()


#: Values for path parameters the schema's own strategies rarely reach: numbers past any INTEGER column,
#: Unicode digits, any Unicode text, very long names.
_RAW = st.one_of(
    st.integers(min_value=2**31 - 2, max_value=2**80).map(str),
    st.text(st.sampled_from("0123456789²³¹٣１۱"), min_size=1, max_size=25),
    st.text(st.characters(codec="utf-8"), min_size=1, max_size=20),
    st.sampled_from(["x" * 300, "é" * 200, "..", "a@b", "sha256:" + "0" * 64, "1" * 40]),
)


@st.composite
def hostile(draw: st.DrawFn, cases: st.SearchStrategy[Any]) -> Any:
    """A schemathesis case, half the time with one path parameter and the upload headers made hostile."""
    case = draw(cases)
    if case.path_parameters and draw(st.booleans()):
        case.path_parameters[draw(st.sampled_from(sorted(case.path_parameters)))] = draw(_RAW)
    for key in [k for k in (case.headers or {}) if k.lower().startswith("upload-")]:
        if draw(st.booleans()):
            case.headers[key] = draw(st.text(st.sampled_from("0123456789²³¹"), min_size=1, max_size=22))
    return case


def test_every_api_v1_operation_answers_no_5xx(server: Server, world: dict[str, Any],
                                               tally: dict[str, Counter[int]]) -> None:
    """schemathesis over the published OpenAPI document: positive and negative cases of every operation,
    full Unicode strings and NUL, with a token of each scope."""
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{server.url}{API}/openapi.json")
    schema.config.generation.update(modes=list(GenerationMode), codec="utf-8", allow_x00=True)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    cases = hostile(st.one_of([op.as_strategy(mode) for op in operations for mode in GenerationMode]))
    tokens = list(world["tokens"].values())
    seen = tally.setdefault(f"api_v1 ({server.database_url.split(':')[0]})", Counter())

    @settings(FUZZ, max_examples=API_EXAMPLES)
    @given(case=cases, token=st.sampled_from(tokens))
    def run(case: Any, token: str | None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        response = case.call(base_url=server.url, headers=headers, timeout=60)
        seen[response.status_code] += 1
        assert response.status_code < 500, (case.method, case.formatted_path, case.query, case.body,
                                            response.status_code, response.text[:500])

    run()
    log = _server_log(server)
    assert "Traceback" not in log and "unhandled error" not in log, log[-5000:]


def test_stateful_sequences_answer_no_5xx(server: Server, world: dict[str, Any],
                                         tally: dict[str, Counter[int]]) -> None:
    """schemathesis's stateful tests: sequences that feed one answer into the next request (the links it infers
    between operations: a revision listed, then read in each dialect; a job submitted, then read and cancelled),
    with full Unicode and an admin token, so later steps reach deep into real state."""
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(f"{server.url}{API}/openapi.json")
    schema.config.generation.update(modes=list(GenerationMode), codec="utf-8", allow_x00=True)
    seen = tally.setdefault(f"stateful ({server.database_url.split(':')[0]})", Counter())
    headers = {"Authorization": f"Bearer {server.admin_token}"}

    class Sequences(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"base_url": server.url, "headers": headers, "timeout": 60}

        def validate_response(self, response: Any, case: Any, *args: Any, **kwargs: Any) -> None:
            seen[response.status_code] += 1
            assert response.status_code < 500, (case.method, case.formatted_path, case.query, case.body,
                                                response.status_code, response.text[:500])

    Sequences.run(settings=settings(FUZZ, max_examples=STATEFUL_EXAMPLES, stateful_step_count=10))
    log = _server_log(server)
    assert "Traceback" not in log and "unhandled error" not in log, log[-5000:]


# Hostile pieces for the hub dialects' routes.
_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
_SEGMENTS = st.one_of(
    _TEXT.filter(bool).map(lambda s: quote(s, safe="")),
    st.sampled_from(["%ED%A0%80", "%ED%BF%BF", "%C0%AF", "%FF", "%00", "%2F", "..", ".", "%2E%2E", "a@b", "a--b",
                     "x" * 300, "é" * 200, "%E2%82%AC" * 100]),
    st.integers(min_value=0, max_value=2**200).map(str),
    st.text(st.sampled_from("0123456789²³¹٣１۱"), min_size=1, max_size=25).map(lambda s: quote(s, safe="")),
)
_NAMES = st.one_of(st.sampled_from(["team/hostile", "team/swifty", "team/absent", "other/x"]),
                   st.tuples(_SEGMENTS, _SEGMENTS).map("/".join))
_REVS = st.one_of(st.sampled_from(["main", "master", "v1", "1", "2", str(2**31 - 1), "sha256:" + "0" * 12, "0" * 40]),
                  _SEGMENTS)
_PATHS = st.one_of(st.sampled_from(["README.md", "adapter_config.json", "adapter_model.safetensors", "default/",
                                    "default/adapter_config.json", "", "a/../README.md"]),
                   st.lists(_SEGMENTS, min_size=1, max_size=3).map("/".join))
_QUERY_VALUES = st.one_of(_SEGMENTS, st.sampled_from(["true", "false", "True", "1", "-1", "0", "", str(2**64),
                                                      "1e9", "²"]))
_HEADER_VALUES = st.one_of(
    st.sampled_from(["bytes=0-", "bytes=5-2", "bytes=-1", "bytes=99999999999999999999-", "bytes=²-",
                     "bytes=0-0,1-1", "bytes=x"]).map(lambda v: v.encode("latin-1")),
    st.binary(max_size=30).map(lambda b: bytes(c for c in b if 0x20 <= c != 0x7F).strip()),  # what h11 sends
)


@st.composite
def hub_requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], dict[str, bytes]]:
    """(method, target, query, extra headers) for one hub route, with hostile pieces anywhere."""
    repo, rev, path = draw(_NAMES), draw(_REVS), draw(_PATHS)
    quoted = quote(rev, safe="") if rev in ("sha256:" + "0" * 12,) else rev
    target = draw(st.sampled_from([
        f"/api/models/{repo}", f"/api/models/{repo}/revision/{quoted}", f"/api/models/{repo}/tree/{quoted}",
        f"/api/models/{repo}/tree/{quoted}/{path}", f"/{repo}/resolve/{quoted}/{path}",
        f"/api/v1/models/{repo}", f"/api/v1/models/{repo}/revisions", f"/api/v1/models/{repo}/repo/files",
        f"/api/v1/models/{repo}/repo", "/api/v1/repos/internalAccelerationInfo"]))
    keys = ["Revision", "FilePath", "Recursive", "Root", "recursive", "cursor", "limit", "blobs", "expand"]
    query = draw(st.dictionaries(st.sampled_from(keys), _QUERY_VALUES, max_size=4))
    if target.endswith("/repo") and draw(st.booleans()):
        query["FilePath"] = path
    headers = draw(st.dictionaries(st.sampled_from(["Range", "Cookie", "If-None-Match", "Accept-Encoding"]),
                                   _HEADER_VALUES, max_size=2))
    return draw(st.sampled_from(["GET", "GET", "HEAD"])), target, query, headers


def test_every_hub_route_answers_no_5xx(server: Server, world: dict[str, Any],
                                        tally: dict[str, Counter[int]]) -> None:
    """Hypothesis over the Hugging Face and ModelScope routes (not in the OpenAPI document): hostile path
    segments (Unicode, surrogate-escaped bytes, huge integers, '²', very long names), revisions, query
    parameters and headers, with a token of each scope (or the session cookie, or none)."""
    tokens = list(world["tokens"].values())
    seen = tally.setdefault(f"hub dialects ({server.database_url.split(':')[0]})", Counter())

    with httpx.Client(base_url=server.url, timeout=60) as http:
        @settings(FUZZ, max_examples=HUB_EXAMPLES)
        @given(request=hub_requests(), token=st.sampled_from(tokens), cookie=st.booleans())
        def run(request: tuple[str, str, dict[str, str], dict[str, bytes]], token: str | None, cookie: bool) -> None:
            method, target, query, extra = request
            headers: dict[str, Any] = dict(extra)
            if token and cookie:
                headers["Cookie"] = f"m_session_id={token}"
            elif token:
                headers["Authorization"] = f"Bearer {token}"
            query_text = "&".join(f"{k}={v if re.fullmatch(r'[%0-9A-Za-z._~-]*', v) else quote(v)}"
                                  for k, v in query.items())
            url = httpx.URL(server.url + target + (f"?{query_text}" if query_text else ""))
            response = http.request(method, url, headers=headers)
            seen[response.status_code] += 1
            assert response.status_code < 500, (method, target, query, extra, response.status_code,
                                                response.text[:500])
            if response.status_code in (400, 422) and method == "GET":  # a refused parameter: the dialect's shape
                body = response.json()
                if target.startswith("/api/v1/"):
                    assert body["Success"] is False and body["Code"] == response.status_code, body
                else:
                    assert isinstance(body.get("error"), str), body

        run()
    log = _server_log(server)
    assert "Traceback" not in log and "unhandled error" not in log, log[-5000:]


_JSON_TEXT = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=8).map(lambda s: json.dumps(s)[1:-1]),
    st.sampled_from(["\\ud800", "\\udfff", "\\ud83d", "\\u0000", "\\udcff\\udcfe", "\\ud800\\udc00"]),
).map(lambda inner: f'"{inner}"')


@st.composite
def surrogate_bodies(draw: st.DrawFn) -> tuple[str, str, str]:
    """(method, path, JSON text) for a /api/v1 route with a body: valid shapes, hostile strings and keys."""
    s = lambda: draw(_JSON_TEXT)  # noqa: E731
    size = draw(st.one_of(st.integers(0, 100), st.integers(2**62, 2**70)))
    rev = draw(st.one_of(_JSON_TEXT, st.integers(0, 2**70).map(lambda n: f'"{PEFT_REPO}@{n}"')))
    ns = draw(st.sampled_from(["team", "other"]))
    entry = {"path": "<0>", "size": size, "sha256": "<1>"}
    choices = [
        ("POST", f"{API}/repos/{ns}/fuzzed/revisions",
         _raw_json({"manifest": {"files": [entry]}, "parents": [{"<2>": "<3>"}], "message": "<4>"},
                   *(s() for _ in range(5)))),
        ("POST", f"{API}/blobs/missing", _raw_json({"digests": ["<0>"]}, s())),
        ("PUT", f"{API}/repos/{PEFT_REPO}/tags/fuzzed", _raw_json({"ref": "<0>"}, rev)),
        ("POST", f"{API}/jobs", _raw_json({"kind": "validate", "params": {"revisions": ["<0>"], "checks": ["<1>"]}},
                                          rev, s())),
        ("POST", f"{API}/jobs", _raw_json({"kind": "merge", "params": {"adapter": "<0>", "base": "<1>", "push": "<2>",
                                                                       "<3>": 1}}, rev, s(), s(), s())),
        ("POST", f"{API}/jobs", _raw_json({"kind": "sleep", "params": {"seconds": 0}, "idempotency_key": "<0>"}, s())),
        ("POST", f"{API}/repos/{PEFT_REPO}/refs/v1/checks/vllm", _raw_json({"base_model": "<0>"}, s())),
    ]
    return draw(st.sampled_from(choices))


def test_api_v1_bodies_with_hostile_strings_answer_no_5xx(server: Server, world: dict[str, Any],
                                                          tally: dict[str, Counter[int]]) -> None:
    """Raw JSON (schemathesis cannot send a lone surrogate: it encodes what it sends) with surrogate escapes,
    NUL and huge numbers in every string, key and revision of the /api/v1 bodies."""
    seen = tally.setdefault(f"api_v1 raw JSON ({server.database_url.split(':')[0]})", Counter())
    with httpx.Client(base_url=server.url, timeout=60,
                      headers={"Authorization": f"Bearer {server.admin_token}",
                               "Content-Type": "application/json"}) as http:
        @settings(FUZZ, max_examples=JSON_EXAMPLES)
        @given(request=surrogate_bodies())
        def run(request: tuple[str, str, str]) -> None:
            method, path, raw = request
            response = http.request(method, path, content=raw.encode())
            seen[response.status_code] += 1
            assert response.status_code < 500, (method, path, raw, response.status_code, response.text[:500])

        run()
    log = _server_log(server)
    assert "Traceback" not in log and "unhandled error" not in log, log[-5000:]
