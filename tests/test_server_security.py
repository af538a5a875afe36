"""Who may call what on /api/v1, and what hostile input gets: a real server on SQLite and PostgreSQL.

Every write and admin route is called without a token, with a read token, with a write token for
another namespace and with a revoked token; paths, manifests, bodies and headers are made hostile;
and schemathesis fuzzes the published OpenAPI document looking for any 500.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.helpers.checkpoints import write_peft_lora
from tests.helpers.api_v1 import (
    API,
    assert_error,
    checkpoint_files,
    client,
    manifest_of,
    push_folder,
    raw_http,
    sha256,
    upload,
)
from tests.helpers.server import Server, registry_env, running_server

pytestmark = pytest.mark.server

REPO = "team/secure"
SECRET = b"the server's own secret file: must never be served"


def _cli(srv: Server, *args: str) -> Any:
    done = subprocess.run([sys.executable, "-m", "registry.cli", *args], env=registry_env(srv.home, srv.database_url),
                          capture_output=True, text=True, check=True)
    return done.stdout


@pytest.fixture(scope="module")
def world(server: Server, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A pushed repository, tokens of every kind, and a secret file beside the registry home."""
    folder = write_peft_lora(tmp_path_factory.mktemp("secure") / "ckpt", seed=900)
    with client(server, server.write_token) as http:
        r = push_folder(http, REPO, folder, tag="v1")
        assert r.status_code == 201, r.text
    (server.home.parent / "secret.txt").write_bytes(SECRET)
    (server.home / "secret.txt").write_bytes(SECRET)
    revoked = json.loads(_cli(server, "token", "create", "--scope", "admin", "--json"))
    _cli(server, "token", "revoke", str(revoked["id"]))
    return {
        "files": checkpoint_files(folder),
        "other_write": server.token("write", "other"),
        "team_write": server.token("write", "team"),
        "other_read": server.token("read", "other"),
        "revoked": revoked["token"],
    }


def _call(srv: Server, token: str | None, method: str, path: str, **kwargs: Any) -> httpx.Response:
    with client(srv, token) as http:
        return http.request(method, path, **kwargs)


DIGEST = sha256(b"a blob for the auth checks")
#: (method, path, request arguments, namespace-scoped?)
WRITE_ROUTES = [
    ("POST", f"{API}/blobs/missing", {"json": {"digests": [DIGEST]}}, False),
    ("HEAD", f"{API}/uploads/{DIGEST}", {}, False),
    ("PATCH", f"{API}/uploads/{DIGEST}", {"content": b"x", "headers": {"Upload-Offset": "0", "Upload-Length": "1"}},
     False),
    ("POST", f"{API}/repos/{REPO}/revisions", {"json": {"manifest": {"files": [
        {"path": "README.md", "size": 1, "sha256": DIGEST}]}}}, True),
    ("PUT", f"{API}/repos/{REPO}/tags/stolen", {"json": {"ref": "1"}}, True),
    ("DELETE", f"{API}/repos/{REPO}/tags/v1", {}, True),
    ("DELETE", f"{API}/repos/{REPO}/refs/v1", {}, True),
]
ADMIN_ROUTES = [
    ("POST", f"{API}/gc", {"json": {"grace_seconds": 0}}),
    ("GET", f"{API}/stats", {}),
]
READ_ROUTES = [
    f"{API}/repos",
    f"{API}/repos?namespace=team",
    f"{API}/repos/{REPO}/revisions",
    f"{API}/repos/{REPO}/refs/v1",
    f"{API}/repos/{REPO}/refs/1?format=swift",
]


# ----- authentication and authorisation -------------------------------------------------------------------------

@pytest.mark.parametrize("method,path,kwargs,scoped", WRITE_ROUTES, ids=[f"{m} {p}" for m, p, _, _ in WRITE_ROUTES])
def test_write_routes_refuse_weak_or_missing_tokens(server: Server, world: dict[str, Any], method: str, path: str,
                                                    kwargs: dict[str, Any], scoped: bool) -> None:
    r = _call(server, None, method, path, **kwargs)
    assert_error(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    assert_error(_call(server, "srg_not-a-real-token", method, path, **kwargs), 401, "unauthorized")
    assert_error(_call(server, "Basic dXNlcjpwYXNz", method, path, **kwargs), 401, "unauthorized")
    assert_error(_call(server, world["revoked"], method, path, **kwargs), 401, "unauthorized")
    assert_error(_call(server, server.read_token, method, path, **kwargs), 403, "forbidden")
    if scoped:
        assert_error(_call(server, world["other_write"], method, path, **kwargs), 403, "forbidden")
    # Nothing above changed anything: the tag is still there, and nothing was stored.
    assert _call(server, server.read_token, "GET", f"{API}/repos/{REPO}/refs/v1").status_code == 200
    assert not (server.home / "blobs" / "sha256" / DIGEST[7:9] / DIGEST[9:]).exists()


@pytest.mark.parametrize("method,path,kwargs", ADMIN_ROUTES, ids=[f"{m} {p}" for m, p, _ in ADMIN_ROUTES])
def test_admin_routes_need_an_admin_token(server: Server, world: dict[str, Any], method: str, path: str,
                                          kwargs: dict[str, Any]) -> None:
    assert_error(_call(server, None, method, path, **kwargs), 401, "unauthorized")
    assert_error(_call(server, world["revoked"], method, path, **kwargs), 401, "unauthorized")
    assert_error(_call(server, server.read_token, method, path, **kwargs), 403, "forbidden")
    assert_error(_call(server, server.write_token, method, path, **kwargs), 403, "forbidden")
    assert_error(_call(server, world["team_write"], method, path, **kwargs), 403, "forbidden")
    ok = _call(server, server.admin_token, method, path, **({"json": {"dry_run": True}} if method == "POST" else {}))
    assert ok.status_code == 200, ok.text


def test_a_namespace_token_writes_its_namespace_only(server: Server, world: dict[str, Any]) -> None:
    r = _call(server, world["team_write"], "PUT", f"{API}/repos/{REPO}/tags/scoped", json={"ref": "1"})
    assert r.status_code == 200 and "scoped" in r.json()["tags"]
    r = _call(server, world["team_write"], "PUT", f"{API}/repos/other/x/tags/scoped", json={"ref": "1"})
    assert_error(r, 403, "forbidden")
    # uploads are content-addressed, not namespaced: any write token may upload
    assert _call(server, world["other_write"], "HEAD", f"{API}/uploads/{DIGEST}").status_code == 200


def test_reads_need_a_token_and_a_namespace_token_reads_its_namespace_only(server: Server,
                                                                          world: dict[str, Any]) -> None:
    blob = world["files"][0]["sha256"]
    for path in [*READ_ROUTES, f"{API}/blobs/{blob}"]:
        assert_error(_call(server, None, "GET", path), 401, "unauthorized")
        assert_error(_call(server, world["revoked"], "GET", path), 401, "unauthorized")
        assert _call(server, server.read_token, "GET", path).status_code == 200, path
    for path in READ_ROUTES[2:]:
        assert_error(_call(server, world["other_read"], "GET", path), 403, "forbidden")
    listed = _call(server, world["other_read"], "GET", f"{API}/repos").json()
    assert REPO not in {r["repo"] for r in listed}
    assert_error(_call(server, world["other_read"], "GET", f"{API}/repos?namespace=team"), 403, "forbidden")


def test_anonymous_read_opens_reads_only(database_url: str, tmp_path: Path) -> None:
    with running_server(tmp_path / "home", database_url, anonymous_read=True) as srv:
        folder = write_peft_lora(tmp_path / "ckpt", seed=901)
        with client(srv, srv.write_token) as http:
            assert push_folder(http, REPO, folder, tag="v1").status_code == 201
        blob = checkpoint_files(folder)[0]["sha256"]
        for path in [*READ_ROUTES, f"{API}/blobs/{blob}"]:
            assert _call(srv, None, "GET", path).status_code == 200, path
        for method, path, kwargs, _ in WRITE_ROUTES:
            assert_error(_call(srv, None, method, path, **kwargs), 401, "unauthorized")
        for method, path, kwargs in ADMIN_ROUTES:
            assert_error(_call(srv, None, method, path, **kwargs), 401, "unauthorized")
        assert_error(_call(srv, "srg_bogus", "GET", f"{API}/repos"), 401)  # a bad token is not anonymous


# ----- hostile paths, manifests, bodies and headers ---------------------------------------------------------------

TRAVERSALS = [
    ("GET", f"{API}/repos/../secret/revisions"),
    ("GET", f"{API}/repos/%2e%2e/secret/revisions"),
    ("GET", f"{API}/repos/team/%2e%2e/revisions"),
    ("GET", f"{API}/repos/team/..%2F..%2Fsecret.txt/revisions"),
    ("GET", f"{API}/repos/team%2F..%2F../secure/revisions"),
    ("GET", f"{API}/repos/{REPO}/refs/.."),
    ("GET", f"{API}/repos/{REPO}/refs/%2e%2e"),
    ("GET", f"{API}/repos/{REPO}/refs/..%2F..%2F..%2Fsecret.txt"),
    ("GET", f"{API}/repos/{REPO}/refs/v1%2F..%2F..%2Fsecret.txt"),
    ("GET", f"{API}/repos/{REPO}/refs/%2Fetc%2Fpasswd"),
    ("GET", f"{API}/repos/{REPO}/refs/v1@2"),
    ("GET", f"{API}/repos/team@x/secure/revisions"),
    ("GET", f"{API}/blobs/..%2F..%2Fsecret.txt"),
    ("GET", f"{API}/blobs/%2e%2e%2fsecret.txt"),
    ("GET", f"{API}/blobs/sha256:..%2F..%2F..%2Fsecret.txt"),
    ("GET", f"{API}/blobs/sha256%3A..%2f..%2fregistry.db"),
    ("GET", f"{API}/blobs/..%5C..%5Csecret.txt"),
    ("GET", f"{API}/blobs/%00"),
    ("HEAD", f"{API}/uploads/..%2F..%2Fsecret.txt"),
    ("PATCH", f"{API}/uploads/sha256%3A..%2F..%2F..%2Fpwned"),
    ("PUT", f"{API}/repos/{REPO}/tags/%2e%2e"),
    ("PUT", f"{API}/repos/%2e%2e/secure/tags/v9"),
    ("DELETE", f"{API}/repos/{REPO}/tags/..%2F..%2Fv1"),
    ("DELETE", f"{API}/repos/{REPO}/refs/%2e%2e"),
    ("POST", f"{API}/repos/%2e%2e/%2e%2e/revisions"),
]


@pytest.mark.parametrize("method,target", TRAVERSALS, ids=[f"{m} {t}" for m, t in TRAVERSALS])
def test_path_traversal_is_refused_and_reaches_no_file(server: Server, world: dict[str, Any], method: str,
                                                       target: str) -> None:
    headers = {"Authorization": f"Bearer {server.admin_token}", "Upload-Offset": "0", "Upload-Length": "5"}
    body = b""
    if method in ("PUT", "POST"):
        body = json.dumps({"ref": "1", "manifest": manifest_of(world["files"])}).encode()
        headers["Content-Type"] = "application/json"
    elif method == "PATCH":
        body = b"pwned"
    outside = set(server.home.parent.iterdir())
    status, _, payload = raw_http(server.url, method, target, headers, body)
    assert status in (400, 404), (status, payload[:300])
    assert SECRET not in payload and b"Traceback" not in payload
    if method != "HEAD":
        error = json.loads(payload)["error"]
        assert error["code"] and error["message"] and str(server.home) not in error["message"]
    assert {p for p in set(server.home.parent.iterdir()) - outside if not p.name.startswith("registry.db")} == set()
    assert not any("pwned" in p.name for p in server.home.parent.rglob("*"))
    uploads = server.home / "blobs" / "uploads"
    # uploads/<owner>/<64 hex>.partial|.lock (an owner folder per token namespace limit, issue 14)
    assert all(len(p.name.split(".")[0]) == 64 for p in uploads.rglob("*") if p.is_file()) if uploads.exists() else True


@pytest.mark.parametrize("path", ["../x", "a/../../x", "/etc/passwd", "..", "./README.md", "a//b", "C:\\x",
                                  "a\\..\\x", "a\x00b", "", "x/" * 600])
def test_hostile_manifest_paths_are_400(server: Server, world: dict[str, Any], path: str) -> None:
    good = world["files"][0]
    manifest = {"files": [{"path": path, "size": good["size"], "sha256": good["sha256"]}]}
    r = _call(server, server.write_token, "POST", f"{API}/repos/hostile/paths/revisions", json={"manifest": manifest})
    assert_error(r, 400, "bad_request" if "\x00" in path else "unsafe_path")
    assert_error(_call(server, server.read_token, "GET", f"{API}/repos/hostile/paths/revisions"), 404)


def test_malformed_manifests_are_refused_without_500(server: Server, world: dict[str, Any]) -> None:
    f = world["files"]
    cases = [
        {"files": [manifest_of(f)["files"][0], manifest_of(f)["files"][0]]},               # duplicate path
        {"files": [{"path": "a", "size": 1, "sha256": f[0]["sha256"]},
                   {"path": "a/b", "size": 1, "sha256": f[1]["sha256"]}]},                  # a file used as a folder
        {"files": [{"path": "x", "size": "many", "sha256": f[0]["sha256"]}]},
        {"files": [{"path": "x", "size": -1, "sha256": f[0]["sha256"]}]},
        {"files": [{"path": "x", "size": 1}]},
        {"files": [{"path": "x", "size": 1, "sha256": "sha256:../../secret"}]},
        {"files": []},
        {"files": "not a list"},
        {},
        {"files": [{"path": "x", "size": f[0]["size"] + 1, "sha256": f[0]["sha256"]}]},    # size disagrees
        manifest_of(f) | {"files": [{"path": "model.bin", "size": f[0]["size"], "sha256": f[0]["sha256"]}]},
    ]
    for manifest in cases:
        r = _call(server, server.write_token, "POST", f"{API}/repos/hostile/shapes/revisions",
                  json={"manifest": manifest})
        assert_error(r, (400, 409, 422))
    for body in (b"{", b"[]", b"null", b'{"manifest": ' + b"[" * 5000 + b"]" * 5000 + b"}"):
        r = _call(server, server.write_token, "POST", f"{API}/repos/hostile/shapes/revisions", content=body,
                  headers={"Content-Type": "application/json"})
        assert_error(r, (400, 422))
    r = _call(server, server.write_token, "POST", f"{API}/repos/hostile/shapes/revisions",
              json={"manifest": manifest_of(f), "tag": "../v1"})
    assert_error(r, 400, "invalid_id")
    r = _call(server, server.write_token, "POST", f"{API}/repos/hostile/shapes/revisions",
              json={"manifest": manifest_of(f), "base_model": "../../etc"})
    assert_error(r, 400, "invalid_id")
    assert_error(_call(server, server.read_token, "GET", f"{API}/repos/hostile/shapes/revisions"), 404)


def test_hostile_checkpoint_contents_are_refused_without_server_paths(server: Server, world: dict[str, Any],
                                                                     tmp_path: Path) -> None:
    """Files that pass the upload but not the checks: a refusal naming the file, never a 500 or a server path."""
    weights = next(f for f in world["files"] if f["path"].endswith(".safetensors"))["data"]
    cases = [
        ("base", {"config.json": b"[]", "model.safetensors": weights}),
        ("base", {"config.json": b'{"architectures": [{}]}', "model.safetensors": weights}),
        ("base", {"config.json": b'{"architectures": ["' + b"X" * 300 + b'"]}', "model.safetensors": weights}),
        ("base", {"config.json": b"{not json", "model.safetensors": weights}),
        ("base", {"config.json": b"{}", "model.safetensors": b"garbage!"}),
        ("base", {"config.json": b"{}", "README.md": b"no weights"}),
        ("adapter", {"adapter_config.json": b"[]", "adapter_model.safetensors": weights}),
        ("adapter", {"adapter_config.json": b"{}", "adapter_model.safetensors": b"\xff" * 64}),
        ("adapter", {"notes.txt": b"not a checkpoint at all"}),
    ]
    with client(server, server.write_token) as http:
        for i, (kind, contents) in enumerate(cases):
            folder = tmp_path / str(i)
            folder.mkdir()
            for name, data in contents.items():
                (folder / name).write_bytes(data)
            r = push_folder(http, f"hostile/contents-{i}", folder, kind=kind)
            error = assert_error(r, (400, 422))
            assert str(server.home) not in error["message"] and "swiftreg-commit" not in error["message"], error
            assert "/tmp" not in error["message"], error


def test_json_that_cannot_be_stored_is_400(server: Server, world: dict[str, Any]) -> None:
    manifest = manifest_of(world["files"])
    path = f"{API}/repos/hostile/json/revisions"
    for body in ({"manifest": manifest, "message": "nul \x00 inside"},
                 {"manifest": manifest, "parents": [{"k\x00": 1}]},
                 {"manifest": manifest, "parents": [{"op": "merge", "weights": [1, 2]}], "tag": "v\x00"}):
        assert_error(_call(server, server.write_token, "POST", path, json=body), 400, "bad_request")
    for constant in ("NaN", "Infinity", "-Infinity"):
        body = '{"manifest": ' + json.dumps(manifest) + ', "parents": [{"x": ' + constant + "}]}"
        assert_error(_call(server, server.write_token, "POST", path, content=body.encode(),
                           headers={"Content-Type": "application/json"}), 400, "bad_request")
    assert_error(_call(server, server.admin_token, "POST", f"{API}/gc", content=b'{"grace_seconds": 1e999}',
                       headers={"Content-Type": "application/json"}), 422)
    assert_error(_call(server, server.read_token, "GET", f"{API}/repos/hostile/json/revisions"), 404)


def test_oversized_bodies_are_413(server: Server, world: dict[str, Any]) -> None:
    path = f"{API}/repos/hostile/big/revisions"
    auth = {"Authorization": f"Bearer {server.write_token}", "Content-Type": "application/json"}
    # Declared too large: refused before a byte of the body is read.
    status, _, payload = raw_http(server.url, "POST", path, {**auth, "Content-Length": str(64 << 20)})
    assert status == 413 and json.loads(payload)["error"]["code"] == "too_large"
    # Actually too large, with an honest Content-Length ...
    pad = "x" * (4 << 20)
    body = json.dumps({"manifest": manifest_of(world["files"]), "message": pad}).encode()
    assert_error(_call(server, server.write_token, "POST", path, content=body,
                       headers={"Content-Type": "application/json"}), 413, "too_large")

    # ... and streamed without one (chunked): counted as it arrives.
    def chunks() -> Iterator[bytes]:
        for i in range(0, len(body), 1 << 20):
            yield body[i:i + (1 << 20)]

    assert_error(_call(server, server.write_token, "POST", path, content=chunks(),
                       headers={"Content-Type": "application/json"}), 413, "too_large")
    assert_error(_call(server, server.write_token, "POST", f"{API}/blobs/missing",
                       json={"digests": [DIGEST] * 70_000}), 413, "too_large")
    # An upload larger than the server takes per blob is refused from its declared length.
    r = _call(server, server.write_token, "PATCH", f"{API}/uploads/{DIGEST}", content=b"x",
              headers={"Upload-Offset": "0", "Upload-Length": str(1 << 60)})
    assert_error(r, 413, "too_large")
    assert_error(_call(server, server.read_token, "GET", f"{API}/repos/hostile/big/revisions"), 404)


def test_oversized_header_is_refused_without_500(server: Server) -> None:
    status, _, payload = raw_http(server.url, "GET", f"{API}/repos",
                                  {"Authorization": f"Bearer {server.read_token}", "X-Big": "a" * 65536})
    assert status in (400, 431), status
    assert b"Traceback" not in payload
    r = _call(server, server.read_token, "GET", f"{API}/repos")  # and the server is fine afterwards
    assert r.status_code == 200
    for bogus in ("srg_" + "a" * 150, "srg_" + "a" * 300, "a" * 8000):
        assert_error(_call(server, bogus, "GET", f"{API}/repos"), 401, "unauthorized")


def test_upload_with_wrong_bytes_is_422_and_stores_nothing(server: Server) -> None:
    claimed = b"the bytes the client promised"
    sent = b"other bytes that were sent!!!"
    assert len(claimed) == len(sent)
    digest, actual = sha256(claimed), sha256(sent)
    with client(server, server.write_token) as http:
        r = http.patch(f"{API}/uploads/{digest}", content=sent[:10],
                       headers={"Upload-Offset": "0", "Upload-Length": str(len(sent))})
        assert r.status_code == 204
        error = assert_error(upload_rest(http, digest, sent, 10), 422, "digest_mismatch")
        assert str(server.home) not in error["message"]
        head = http.head(f"{API}/uploads/{digest}")
        assert head.headers["Upload-Offset"] == "0" and head.headers["Upload-Complete"] == "false"
        assert_error(http.get(f"{API}/blobs/{digest}"), 404)
        assert_error(http.get(f"{API}/blobs/{actual}"), 404)
        # a single PATCH with all the wrong bytes: the same
        assert_error(upload(http, sent, digest, pieces=1), 422, "digest_mismatch")
    blobs = server.home / "blobs"
    for d in (digest, actual):
        assert not (blobs / "sha256" / d[7:9] / d[9:]).exists()
    assert not (blobs / "uploads" / f"{digest[7:]}.partial").exists()
    assert not [p for p in (blobs / "tmp").iterdir()]


def upload_rest(http: httpx.Client, digest: str, data: bytes, offset: int) -> httpx.Response:
    return http.patch(f"{API}/uploads/{digest}", content=data[offset:],
                      headers={"Upload-Offset": str(offset), "Upload-Length": str(len(data))})


def test_bad_upload_headers_and_digests(server: Server) -> None:
    data = b"header checks"
    with client(server, server.write_token) as http:
        url = f"{API}/uploads/{sha256(data)}"
        for headers in ({}, {"Upload-Offset": "0"}, {"Upload-Length": "13"},
                        {"Upload-Offset": "-1", "Upload-Length": "13"}, {"Upload-Offset": "0", "Upload-Length": "ten"},
                        {"Upload-Offset": "0x0", "Upload-Length": "13"}, {"Upload-Offset": "14", "Upload-Length": "13"},
                        {"Upload-Offset": "9" * 30, "Upload-Length": "13"}):
            assert_error(http.patch(url, content=data, headers=headers), (400, 422))
        for bad in ("sha256:" + "A" * 64, "sha256:" + "0" * 63, "md5:" + "0" * 32, "sha256:" + "g" * 64):
            assert_error(http.patch(f"{API}/uploads/{bad}", content=data,
                                    headers={"Upload-Offset": "0", "Upload-Length": "13"}), 400, "invalid_digest")
            assert http.head(f"{API}/uploads/{bad}").status_code == 400
        assert_error(http.post(f"{API}/blobs/missing", json={"digests": ["sha256:../../x"]}), 400, "invalid_digest")
        assert_error(http.post(f"{API}/blobs/missing", json={"digests": "sha256:" + "0" * 64}), 422)


def test_unknown_routes_and_methods_answer_in_the_error_shape(server: Server) -> None:
    with client(server, server.admin_token) as http:
        assert_error(http.get(f"{API}/nope"), 404, "not_found")
        r = http.put(f"{API}/stats")
        assert_error(r, 405, "method_not_allowed")
        assert "GET" in r.headers["allow"]


# ----- fuzzing -----------------------------------------------------------------------------------------------------

@pytest.mark.slow  # a long fuzzing pass: in the full suite, not in --fast
def test_schemathesis_finds_no_server_error(database_url: str, tmp_path: Path) -> None:
    """Fuzz every /api/v1 operation of the published schema with an admin token: no answer may be a 500."""
    schemathesis = Path(sys.executable).parent / "schemathesis"
    assert schemathesis.exists(), "schemathesis is in requirements/dev.txt: install it into the venv"
    with running_server(tmp_path / "home", database_url) as srv:
        folder = write_peft_lora(tmp_path / "ckpt", seed=902)
        with client(srv, srv.write_token) as http:  # the schema's examples name this repository and tag
            assert push_folder(http, "team/sql-lora", folder, tag="v1").status_code == 201
        done = subprocess.run(
            [str(schemathesis), "run", f"{srv.url}{API}/openapi.json", "--header",
             f"Authorization: Bearer {srv.admin_token}", "--checks", "not_a_server_error",
             "--include-path-regex", "^/api/v1/", "--max-examples", "25", "--seed", "20240601", "--workers", "1",
             "--generation-database", "none", "--request-timeout", "60", "--no-color", "--max-failures", "5"],
            cwd=tmp_path, capture_output=True, text=True, timeout=300)
        log = next(tmp_path.glob("server-*.log")).read_text()
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    assert "Traceback" not in log and "unhandled error" not in log, log[-5000:]


def test_blob_routes_are_scoped_to_the_token_namespaces(server: Server, world: dict[str, Any],
                                                        tmp_path: Path) -> None:
    """A digest is not a key: a namespace token reads and builds on only its namespaces' blobs."""
    blob = max(world["files"], key=lambda f: f["size"])
    data = (server.home / "blobs" / "sha256" / blob["sha256"][7:9] / blob["sha256"][9:]).read_bytes()
    outsider, insider = server.token("write", "outside"), world["team_write"]
    # read: absent for the outsider (the same answer as a blob nobody has), present for the team
    assert_error(_call(server, outsider, "GET", f"{API}/blobs/{blob['sha256']}"), 404, "blob_not_found")
    assert _call(server, insider, "GET", f"{API}/blobs/{blob['sha256']}").content == data
    assert _call(server, server.read_token, "GET", f"{API}/blobs/{blob['sha256']}").status_code == 200
    # dedup answers do not leak it either
    missing = _call(server, outsider, "POST", f"{API}/blobs/missing", json={"digests": [blob["sha256"]]})
    assert missing.json()["missing"] == [blob["sha256"]]
    assert _call(server, insider, "POST", f"{API}/blobs/missing",
                 json={"digests": [blob["sha256"]]}).json()["missing"] == []
    head = _call(server, outsider, "HEAD", f"{API}/uploads/{blob['sha256']}")
    assert head.headers["upload-complete"] == "false" and head.headers["upload-offset"] == "0"
    # a commit naming it is refused until the outsider proves it holds the bytes by uploading them
    manifest = {"files": [{"path": "adapter_model.safetensors", "size": blob["size"], "sha256": blob["sha256"]}]}
    refused = _call(server, outsider, "POST", f"{API}/repos/outside/copy/revisions", json={"manifest": manifest})
    assert assert_error(refused, 409, "blobs_missing")["missing"] == [blob["sha256"]]
    with client(server, outsider) as http:
        assert upload(http, data, blob["sha256"]).status_code == 201
    head = _call(server, outsider, "HEAD", f"{API}/uploads/{blob['sha256']}")
    assert head.headers["upload-complete"] == "true"
    # the bytes it uploaded are its own now (nothing was stored twice: the store holds one copy)
    assert _call(server, outsider, "GET", f"{API}/blobs/{blob['sha256']}").content == data
    assert len(list((server.home / "blobs" / "sha256" / blob["sha256"][7:9]).glob(blob["sha256"][9:] + "*"))) == 1
