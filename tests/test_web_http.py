"""The web pages' security rules over plain HTTP (no browser), on SQLite and PostgreSQL: every page renders
from the seeded registry, the Content-Security-Policy, CSRF, login, escaping, 404 for a namespace the token
cannot read, --anonymous-read, and the redirect to the login page where reads are closed.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest

from tests.helpers.browser import seed_web
from tests.helpers.databases import DATABASES, create_postgres_database, drop_postgres_database
from tests.helpers.server import Server, running_server

pytestmark = [pytest.mark.web, pytest.mark.server]
PAGES = ["/ui/", "/ui/?tuner=LORA&validation=failed&tag=v1&format=peft&base=meta/llama-tiny&q=plain",
         "/ui/r/team/plain", "/ui/r/team/plain/rev/1", "/ui/r/team/plain/rev/v2", "/ui/r/meta/llama-tiny",
         "/ui/r/lab/llama-merged/rev/1", "/ui/r/lab/combined/rev/1", "/ui/r/ext/imported",
         "/ui/compare?left=team/plain@1&right=team/plain@3", "/ui/jobs", "/ui/jobs/1", "/ui/admin"]


@pytest.fixture(scope="module", params=DATABASES)
def site(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Any]]:
    from registry.service import Registry

    root = tmp_path_factory.mktemp(f"web-{request.param}")
    url = f"sqlite:///{root / 'registry.db'}" if request.param == "sqlite" else create_postgres_database()
    try:
        reg = Registry(home=root / "home", database_url=url)
        try:
            made = seed_web(reg, root / "work")
        finally:
            reg.close()
        with running_server(root / "home", url) as srv:
            yield srv, made
    finally:
        if request.param != "sqlite":
            drop_postgres_database(url)


@contextmanager
def session(srv: Server, token: str) -> Iterator[httpx.Client]:
    """A client holding a browser session: its token cookie and a CSRF cookie from a first page."""
    with httpx.Client(base_url=srv.url, timeout=30, cookies={"swiftreg_session": token}) as client:
        client.get("/ui/login")
        assert client.cookies.get("swiftreg_csrf")
        yield client


def test_every_page_renders_with_security_headers(site: tuple[Server, Any]) -> None:
    srv, _ = site
    with session(srv, srv.admin_token) as http:
        for page in PAGES:
            r = http.get(page)
            assert r.status_code == 200, (page, r.text[:2000])
            csp = r.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp and "frame-ancestors 'none'" in csp
            assert r.headers["x-content-type-options"] == "nosniff" and "<script>" not in r.text.replace(
                "<script src=", "")  # no inline script anywhere
        results = http.get("/ui/", params={"validation": "failed"}, headers={"HX-Request": "true",
                                                                               "HX-Target": "results"})
        assert results.status_code == 200 and "<html" not in results.text and 'data-id="team/plain@1"' in results.text
        assert http.get("/ui/static/htmx.min.js").headers["content-type"].startswith("text/javascript")
        assert http.get("/ui/static/..%2Fpages.py").status_code == 404


def test_escaping_and_hostile_card(site: tuple[Server, Any]) -> None:
    srv, _ = site
    with session(srv, srv.admin_token) as http:
        page = http.get("/ui/r/team/evil").text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>alert(1)" not in page
        assert 'href="javascript:' not in page.lower() and "onerror" not in page and "__pwned = 1" not in page
        assert "first &lt;b&gt;cut&lt;/b&gt;" in http.get("/ui/r/team/plain").text


def test_csrf_login_and_logout(site: tuple[Server, Any]) -> None:
    srv, made = site
    job = made["job_lab"].id
    with session(srv, srv.admin_token) as http:
        forged = http.post(f"/ui/jobs/{job}/cancel", data={})
        assert forged.status_code == 403
        wrong = http.post(f"/ui/jobs/{job}/cancel", data={"csrf": "not-the-cookie"})
        assert wrong.status_code == 403
        assert http.post("/ui/admin/tokens", data={"owner": "x", "scope": "admin"}).status_code == 403
        assert httpx.get(srv.url + f"/api/v1/jobs/{job}", headers={"Authorization": f"Bearer {srv.admin_token}"}
                         ).json()["status"] == "queued"
    with httpx.Client(base_url=srv.url, timeout=30) as anon:
        first = anon.get("/ui/r/team/plain")  # reads are closed: the login page, then back
        assert first.status_code == 303 and first.headers["location"].startswith("/ui/login?next=")
        csrf = (anon.get("/ui/login").cookies.get("swiftreg_csrf") or anon.cookies.get("swiftreg_csrf"))
        bad = anon.post("/ui/login", data={"csrf": csrf, "token": "srg_nope", "next": "/ui/"})
        assert bad.status_code == 401 and "unknown or revoked" in bad.text
        assert anon.post("/ui/login", data={"token": srv.read_token}).status_code == 403  # no CSRF field
        ok = anon.post("/ui/login", data={"csrf": csrf, "token": srv.read_token, "next": "//evil.example/"})
        assert ok.status_code == 303 and ok.headers["location"] == "/ui/"  # never another origin
        cookie = ok.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict") and "Path=/ui" in cookie
        assert anon.get("/ui/r/team/plain").status_code == 200
        out = anon.post("/ui/logout", data={"csrf": csrf})
        assert out.status_code == 303 and anon.get("/ui/r/team/plain").status_code == 303


def test_namespaces_scopes_and_revoked_sessions(site: tuple[Server, Any]) -> None:
    srv, _ = site
    scoped = srv.token("read", "team")
    with session(srv, scoped) as http:
        for page in ("/ui/r/lab/combined", "/ui/r/lab/combined/rev/1", "/ui/r/lab/combined/rev/1/files/README.md",
                     "/ui/compare?left=team/plain@1&right=lab/combined@1", "/ui/?namespace=lab"):
            r = http.get(page)
            assert r.status_code == 404, page
        missing = http.get("/ui/r/team/nothing-here")
        assert missing.status_code == 404  # the same answer as a namespace it cannot read
        assert "lab/" not in http.get("/ui/").text.split('id="results"')[1]
        assert http.get("/ui/admin").status_code == 403
        jobs = http.get("/ui/jobs").text
        assert 'data-status="queued"' not in jobs or "lab" not in jobs.split("<tbody>")[1]
    with session(srv, srv.read_token) as http:
        for page in ("/ui/jobs", "/ui/r/team/plain/rev/1", "/ui/jobs/1"):
            assert "cancel" not in http.get(page).text.lower().replace("cancelled", ""), page
    revoked = srv.token("read")
    import subprocess
    import sys

    from tests.helpers.server import registry_env

    tokens = subprocess.run([sys.executable, "-m", "registry.cli", "token", "ls", "--json"],
                            env=registry_env(srv.home, srv.database_url), capture_output=True, text=True, check=True)
    import json

    newest = max(t["id"] for t in json.loads(tokens.stdout))
    subprocess.run([sys.executable, "-m", "registry.cli", "token", "revoke", str(newest)],
                   env=registry_env(srv.home, srv.database_url), capture_output=True, check=True)
    with httpx.Client(base_url=srv.url, timeout=30, cookies={"swiftreg_session": revoked}) as http:
        assert http.get("/ui/r/team/plain").status_code == 303  # a revoked token's session is over


def test_anonymous_read(tmp_path: Path) -> None:
    from registry.service import Registry

    url = f"sqlite:///{tmp_path / 'registry.db'}"
    reg = Registry(home=tmp_path / "home", database_url=url)
    try:
        seed_web(reg, tmp_path / "work")
    finally:
        reg.close()
    with running_server(tmp_path / "home", url, anonymous_read=True) as srv, \
            httpx.Client(base_url=srv.url, timeout=30) as http:
        for page in ("/ui/", "/ui/r/team/plain", "/ui/r/team/plain/rev/1", "/ui/jobs", "/ui/r/meta/llama-tiny"):
            r = http.get(page)
            assert r.status_code == 200 and 'id="who">anonymous' in r.text, page
            assert 'method="post"' not in r.text.replace('action="/ui/logout"', ""), page
        assert http.get("/ui/admin").status_code == 403
        assert http.get("/").headers["location"] == "/ui/"
