"""The web pages in a real headless Chromium against a real `swiftreg serve` (SQLite; the pages' queries on
PostgreSQL are exercised by tests/test_web_http.py): every page checked against the API's JSON, search and
filters, compare, the token lifecycle in the admin page, a hostile model card, read-only and namespace-scoped
tokens. One browser for the module; a screenshot of each page is saved (the path is printed).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import pytest

from tests.helpers.browser import artifacts_dir, chromium, seed_web
from tests.helpers.server import Server, running_server

pytestmark = [pytest.mark.web, pytest.mark.server]
API = "/api/v1"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, Any], Path]]:
    from registry.service import Registry

    root = tmp_path_factory.mktemp("web")
    url = f"sqlite:///{root / 'registry.db'}"
    reg = Registry(home=root / "home", database_url=url)
    try:
        made = seed_web(reg, root / "work")
    finally:
        reg.close()
    with running_server(root / "home", url) as srv:
        yield srv, made, artifacts_dir(root)


@pytest.fixture(scope="module")
def browser(site: tuple[Server, dict[str, Any], Path]) -> Iterator[Any]:
    with chromium() as driver:
        login(driver, site[0], site[0].admin_token)  # each test may run alone (-k)
        yield driver


def api(srv: Server, path: str, token: str | None = None) -> Any:
    r = httpx.get(srv.url + API + path, headers={"Authorization": f"Bearer {token or srv.admin_token}"}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def login(driver: Any, srv: Server, token: str) -> None:
    from selenium.webdriver.common.by import By

    driver.delete_all_cookies()
    driver.get(srv.url + "/ui/login")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "login-submit").click()
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, 10).until(lambda d: "/ui/login" not in d.current_url)
    assert driver.find_element(By.ID, "who").text != "anonymous"  # logged in: the token's owner and scope


def shot(driver: Any, folder: Path, name: str) -> Path:
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))
    print(f"screenshot: {path}")
    return path


def texts(driver: Any, selector: str, attribute: str | None = None) -> list[str]:
    """Texts (or an attribute) of the elements `selector` finds, read in one script: atomic even while htmx
    swaps a polling part of the page (the jobs pages refresh themselves)."""
    return list(driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]))"
        ".map(e => arguments[1] ? e.getAttribute(arguments[1]) : (e.innerText ?? e.textContent).trim())",
        selector, attribute))


def all_revisions(srv: Server) -> dict[str, dict[str, Any]]:
    """`repo@number` -> the API's revision JSON, for every adapter revision."""
    out = {}
    for repo in api(srv, "/repos"):
        if repo["kind"] == "adapter":
            for rev in api(srv, f"/repos/{repo['repo']}/revisions"):
                out[f"{repo['repo']}@{rev['number']}"] = {**rev, "tuner_type": repo["tuner_type"],
                                                          "base": repo["base_model"]}
    return out


def wait_rows(driver: Any, expected: set[str]) -> set[str]:
    """The search results once htmx has swapped them to `expected` (or what they are after 10 s)."""
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        WebDriverWait(driver, 10).until(lambda d: set(texts(d, "tr.revision-row", "data-id")) == expected)
    except Exception:  # noqa: BLE001 - the assertion below says what differs
        pass
    return set(texts(driver, "tr.revision-row", "data-id"))


def test_home_search_and_filters_match_the_api(site: tuple[Server, dict[str, Any], Path], browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    srv, _, shots = site
    login(browser, srv, srv.admin_token)
    revisions = all_revisions(srv)
    browser.get(srv.url + "/ui/")
    namespaces = {r["repo"].split("/")[0] for r in api(srv, "/repos")}
    assert set(texts(browser, "#namespaces a", "data-namespace")) == namespaces
    assert set(texts(browser, "tr.revision-row", "data-id")) == set(revisions)  # fewer than a page
    shot(browser, shots, "home")

    browser.find_element(By.ID, "f-tag").send_keys("v2")
    assert wait_rows(browser, {k for k, r in revisions.items() if "v2" in r["tags"]}) == {"team/plain@2"}
    browser.find_element(By.ID, "f-tag").clear()
    browser.find_element(By.ID, "f-q").send_keys("plain")
    assert wait_rows(browser, {k for k in revisions if "plain" in k}) == {k for k in revisions if "plain" in k}
    browser.find_element(By.ID, "f-q").clear()
    verdicts = {}
    for key in revisions:
        repo, number = key.split("@")
        history = api(srv, f"/repos/{repo}/refs/{number}/validations")
        verdicts[key] = "none" if not history else ("passed" if history[0]["passed"] else "failed")
    Select(browser.find_element(By.ID, "f-validation")).select_by_value("failed")
    failed = {k for k, v in verdicts.items() if v == "failed"}
    assert failed and wait_rows(browser, failed) == failed
    Select(browser.find_element(By.ID, "f-validation")).select_by_value("passed")
    passed = {k for k, v in verdicts.items() if v == "passed"}
    assert wait_rows(browser, passed) == passed
    Select(browser.find_element(By.ID, "f-validation")).select_by_value("")
    Select(browser.find_element(By.ID, "f-base")).select_by_value("meta/llama-tiny")
    based = {k for k, r in revisions.items() if r["base"] == "meta/llama-tiny"}
    assert based != set(revisions) and wait_rows(browser, based) == based
    assert "base=meta%2Fllama-tiny" in browser.current_url  # the filtered list has its own address
    shot(browser, shots, "search")


def test_adapter_page_matches_the_api(site: tuple[Server, dict[str, Any], Path], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    srv, _, shots = site
    browser.get(srv.url + "/ui/r/team/plain")
    revs = api(srv, "/repos/team/plain/revisions")
    rows = browser.find_elements(By.CSS_SELECTOR, "#repo-revisions tr.revision-row")
    assert [int(r.get_attribute("data-number")) for r in rows] == [r["number"] for r in revs]
    for row, rev in zip(rows, revs):
        shown = sorted(p.text for p in row.find_elements(By.CSS_SELECTOR, ".pill"))
        assert shown == sorted(rev["tags"] + rev["branches"])
        assert row.find_element(By.CSS_SELECTOR, ".format").text == rev["format"]
        assert row.find_element(By.CSS_SELECTOR, ".author").text == (rev["author"] or "")
        assert row.find_element(By.CSS_SELECTOR, ".message").text == (rev["message"] or "")
        assert row.find_element(By.CSS_SELECTOR, ".ralpha").text == f"{rev['meta']['r']} / {rev['meta']['lora_alpha']}"
        full = api(srv, f"/repos/team/plain/refs/{rev['number']}")
        assert int(row.find_element(By.CSS_SELECTOR, ".size").get_attribute("data-bytes")) == \
            sum(f["size"] for f in full["files"])
    assert browser.find_element(By.CSS_SELECTOR, "#card-body h1").text == "Plain adapter"
    snippets = texts(browser, "#usage pre")
    assert any("swiftreg pull team/plain@main" in s for s in snippets)
    assert any("PeftModel.from_pretrained" in s and srv.url in s for s in snippets)
    assert any("Swift.from_pretrained" in s for s in snippets) and any("registry.resolve" in s for s in snippets)
    assert any('"model": "team/plain@main"' in s for s in snippets)
    assert len(texts(browser, "#usage button.copy")) == len(snippets)
    shot(browser, shots, "adapter")

    browser.get(srv.url + "/ui/r/ext/imported")
    (imported,) = api(srv, "/repos/ext/imported/revisions")
    (source,) = api(srv, "/repos/ext/imported/refs/1")["provenance"]
    assert imported["number"] == 1
    assert source["commit"] in browser.find_element(By.CSS_SELECTOR, "td.provenance").text
    assert f"hf://{source['repo']}" in browser.find_element(By.CSS_SELECTOR, "td.provenance").text


def test_revision_page_files_lineage_history(site: tuple[Server, dict[str, Any], Path], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    srv, _, shots = site
    browser.get(srv.url + "/ui/r/team/plain/rev/1")
    rev = api(srv, "/repos/team/plain/refs/1")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.file-row")
    assert [(r.get_attribute("data-path"), r.get_attribute("data-sha"), int(r.get_attribute("data-size")))
            for r in rows] == [(f["path"], f["sha256"], f["size"]) for f in rev["files"]]
    assert browser.find_element(By.ID, "rev-digest").text == rev["digest"]
    history = api(srv, "/repos/team/plain/refs/1/validations")
    shown = browser.find_elements(By.CSS_SELECTOR, "tr.history-row")
    assert [int(r.get_attribute("data-id")) for r in shown] == [h["id"] for h in history]
    assert [r.get_attribute("data-passed") == "true" for r in shown] == [h["passed"] for h in history]
    regressions = [r.get_attribute("data-id") for r in shown if r.get_attribute("data-regression") == "true"]
    assert regressions == [str(history[0]["id"])]  # the failed run after two passes
    assert len(browser.find_elements(By.CSS_SELECTOR, "#history-plot svg circle.pass, #history-plot svg circle.fail")) \
        == len(history)
    assert len(browser.find_elements(By.CSS_SELECTOR, "#history-plot svg circle.regression")) == 1
    assert "torch 2.13.0" in browser.find_element(By.CSS_SELECTOR, "tr.history-row .versions").text
    shot(browser, shots, "revision")

    # a download link gives the stored bytes (through the browser session's cookie)
    link = rows[0].find_element(By.TAG_NAME, "a").get_attribute("href")
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    body = httpx.get(link, cookies=cookies, timeout=30)
    assert body.status_code == 200 and "sha256:" + hashlib.sha256(body.content).hexdigest() == rev["files"][0]["sha256"]

    # the vLLM verdict recorded for revision 2
    browser.get(srv.url + "/ui/r/team/plain/rev/2")
    (vllm,) = [h for h in api(srv, "/repos/team/plain/refs/2/validations") if h["check"] == "serve:vllm"]
    assert ("can serve" if vllm["passed"] else "refused") in browser.find_element(By.ID, "rev-vllm").text

    # lineage: a combination's inputs, a merge's base and adapter, an import's upstream
    browser.get(srv.url + "/ui/r/lab/combined/rev/1")
    combined = api(srv, "/repos/lab/combined/refs/1")
    labels = texts(browser, "#lineage svg text")
    for p in combined["parents"]:
        if p.get("repo"):
            assert f"{p['repo']}@{p['number']}" in labels
    assert "combine" in labels and combined["base_model"] in labels
    shot(browser, shots, "lineage-combination")
    browser.get(srv.url + "/ui/r/lab/llama-merged/rev/1")
    merged = api(srv, "/repos/lab/llama-merged/refs/1")
    labels = texts(browser, "#lineage svg text")
    assert {f"{p['repo']}@{p['number']}" for p in merged["parents"] if p.get("repo")} <= set(labels)
    assert "merge" in labels
    browser.get(srv.url + "/ui/r/ext/imported/rev/1")
    assert "hf://someone/lora" in texts(browser, "#lineage svg text")


def _peft_modules(srv: Server, ref: str) -> dict[str, dict[str, np.ndarray]]:
    from safetensors.numpy import load

    info = api(srv, f"/repos/team/plain/refs/{ref}")
    (weights,) = [f for f in info["files"] if f["path"].endswith(".safetensors")]
    data = httpx.get(srv.url + API + f"/blobs/{weights['sha256']}",
                     headers={"Authorization": f"Bearer {srv.admin_token}"}, timeout=30).content
    out: dict[str, dict[str, np.ndarray]] = {}
    for key, value in load(data).items():
        module, part = key.removeprefix("base_model.model.").rsplit(".lora_", 1)
        out.setdefault(module, {})[part[0]] = value
    return out


def test_compare_names_exactly_the_modules_that_differ(site: tuple[Server, dict[str, Any], Path],
                                                       browser: Any) -> None:
    from selenium.webdriver.common.by import By

    srv, _, shots = site
    left, right = _peft_modules(srv, "1"), _peft_modules(srv, "3")
    differ = {m for m in set(left) | set(right)
              if m not in left or m not in right or any(not np.array_equal(left[m][p], right[m][p]) for p in "AB")}
    browser.get(srv.url + "/ui/compare?left=team/plain@1&right=team/plain@3")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.module-row")
    assert {r.get_attribute("data-module") for r in rows} == differ and len(differ) == 2
    changes = {r.get_attribute("data-module"): r.get_attribute("data-change") for r in rows}
    assert sorted(changes.values()) == ["changed", "removed"]
    changed = next(m for m, c in changes.items() if c == "changed")
    scale = 8 / 4  # lora_alpha / r of tests/helpers/checkpoints.py
    expected = [scale * float(np.linalg.norm(side[changed]["B"].astype(np.float64) @ side[changed]["A"]))
                for side in (left, right)]
    row = next(r for r in rows if r.get_attribute("data-module") == changed)
    shown = row.find_elements(By.TAG_NAME, "td")[4].text.split(" → ")
    assert [float(s) for s in shown] == pytest.approx(expected, rel=1e-3)
    shot(browser, shots, "compare")
    # ranks: team/plain@1 (r=4) against team/rank8@1 (r=8): every module changes rank
    browser.get(srv.url + "/ui/compare?left=team/plain@1&right=team/rank8@1")
    assert texts(browser, "#cmp-config tr.config-row", "data-key")  # r and lora_alpha differ
    assert all("rank" in t for t in texts(browser, "tr.module-row td:nth-child(2)"))


def test_base_model_page_lists_every_adapter_that_names_it(site: tuple[Server, dict[str, Any], Path],
                                                           browser: Any) -> None:
    srv, _, shots = site
    browser.get(srv.url + "/ui/r/meta/llama-tiny")
    naming = {r["repo"] for r in api(srv, "/repos") if r.get("base_model") == "meta/llama-tiny"}
    assert naming and set(texts(browser, "tr.adapter-row", "data-repo")) == naming
    assert [int(n) for n in texts(browser, "tr.revision-row", "data-number")] == \
        [r["number"] for r in api(srv, "/repos/meta/llama-tiny/revisions")]
    shot(browser, shots, "base-model")


def test_jobs_page_and_cancel(site: tuple[Server, dict[str, Any], Path], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    srv, made, shots = site
    browser.get(srv.url + "/ui/jobs")
    jobs = api(srv, "/jobs")
    assert [int(i) for i in texts(browser, "tr.job-row", "data-id")] == [j["id"] for j in jobs]
    assert texts(browser, "tr.job-row", "data-status") == [j["status"] for j in jobs]
    shot(browser, shots, "jobs")
    job = made["job_team"].id
    browser.get(srv.url + f"/ui/jobs/{job}")
    assert texts(browser, "#job-status") == [api(srv, f"/jobs/{job}")["status"]] == ["queued"]
    from selenium.webdriver.support.ui import WebDriverWait

    browser.find_element(By.ID, "cancel").click()
    WebDriverWait(browser, 10, ignored_exceptions=(Exception,)).until(
        lambda d: texts(d, "#job-status") == ["cancelled"])
    assert api(srv, f"/jobs/{job}")["status"] == "cancelled"
    assert not texts(browser, "#cancel")
    shot(browser, shots, "job")


def test_admin_token_lifecycle_storage_and_gc(site: tuple[Server, dict[str, Any], Path], browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    srv, _, shots = site
    browser.get(srv.url + "/ui/admin")
    browser.find_element(By.ID, "t-owner").send_keys("web-made")
    Select(browser.find_element(By.ID, "t-scope")).select_by_value("read")
    browser.find_element(By.ID, "t-namespaces").send_keys("team")
    browser.find_element(By.ID, "t-create").click()
    secret = WebDriverWait(browser, 10).until(lambda d: d.find_element(By.ID, "new-secret")).text
    shot(browser, shots, "admin")
    assert secret.startswith("srg_")
    with httpx.Client(base_url=srv.url, headers={"Authorization": f"Bearer {secret}"}, timeout=30) as http:
        assert http.get(API + "/repos/team/plain/revisions").status_code == 200  # it works
        assert http.get(API + "/repos/lab/combined/revisions").status_code == 403  # within its namespace only
        browser.get(srv.url + "/ui/admin")
        assert secret not in browser.page_source  # shown once, never again
        row = next(r for r in browser.find_elements(By.CSS_SELECTOR, "tr.token-row") if "web-made" in r.text)
        token_id = row.get_attribute("data-id")
        assert "never" not in row.text  # its use above was recorded
        row.find_element(By.CSS_SELECTOR, "button.revoke").click()
        WebDriverWait(browser, 10).until(lambda d: token_id not in texts(d, "tr.token-row", "data-id"))
        assert http.get(API + "/repos/team/plain/revisions").status_code == 401
    # storage per namespace against the API's manifests; the gc dry run deletes nothing
    storage = {r.get_attribute("data-namespace"): int(r.get_attribute("data-bytes"))
               for r in browser.find_elements(By.CSS_SELECTOR, "tr.storage-row")}
    expected: dict[str, dict[str, int]] = {}
    for repo in api(srv, "/repos"):
        for rev in api(srv, f"/repos/{repo['repo']}/revisions"):
            for f in api(srv, f"/repos/{repo['repo']}/refs/{rev['number']}")["files"]:
                expected.setdefault(repo["repo"].split("/")[0], {})[f["sha256"]] = f["size"]
    assert storage == {ns: sum(blobs.values()) for ns, blobs in expected.items()}
    browser.find_element(By.ID, "gc-dry-run").click()
    WebDriverWait(browser, 10).until(lambda d: d.find_elements(By.ID, "gc-result"))
    assert browser.find_element(By.CSS_SELECTOR, "#gc-result dd[data-key='blobs_removed']").text.isdigit()
    assert api(srv, "/repos/team/plain/refs/1")["files"]  # still there


def test_hostile_model_card_renders_inert(site: tuple[Server, dict[str, Any], Path], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    srv, _, shots = site
    browser.get(srv.url + "/ui/r/team/evil")
    card = browser.find_element(By.ID, "card-body")
    assert "Evil card" in card.text and card.find_elements(By.TAG_NAME, "table")  # Markdown rendered
    assert not card.find_elements(By.TAG_NAME, "script")
    assert browser.execute_script("return window.__pwned === undefined") is True
    assert browser.title != "pwned"
    for a in card.find_elements(By.TAG_NAME, "a"):
        assert not (a.get_attribute("href") or "").lower().startswith("javascript:")
        a.click()  # clicking does nothing either
    assert browser.execute_script("return window.__pwned === undefined") is True
    for img in card.find_elements(By.TAG_NAME, "img"):
        assert img.get_attribute("onerror") is None
    # the revision's message `<script>alert(1)</script>` is shown as text
    assert "<script>alert(1)</script>" in browser.find_element(By.CSS_SELECTOR, "td.message").text
    shot(browser, shots, "hostile-card")


def test_read_only_and_scoped_tokens(site: tuple[Server, dict[str, Any], Path], browser: Any) -> None:
    from selenium.webdriver.common.by import By

    srv, made, shots = site
    login(browser, srv, srv.read_token)
    for page in ("/ui/jobs", f"/ui/jobs/{made['job_lab'].id}", "/ui/r/team/plain", "/ui/r/team/plain/rev/1"):
        browser.get(srv.url + page)
        assert not browser.find_elements(By.CSS_SELECTOR, "form[method=post]:not([action$='/logout'])"), page
    assert not browser.find_elements(By.ID, "nav-admin")
    browser.get(srv.url + "/ui/admin")
    assert browser.find_element(By.ID, "error-status").text == "403"
    # a forged form post (no CSRF field) from this very session is refused
    cookies = {c["name"]: c["value"] for c in browser.get_cookies()}
    forged = httpx.post(srv.url + f"/ui/jobs/{made['job_lab'].id}/cancel", cookies=cookies, timeout=30)
    assert forged.status_code == 403 and api(srv, f"/jobs/{made['job_lab'].id}")["status"] == "queued"

    scoped = srv.token("read", "team")
    login(browser, srv, scoped)
    browser.get(srv.url + "/ui/r/lab/combined")
    assert browser.find_element(By.ID, "error-status").text == "404"
    assert httpx.get(srv.url + "/ui/r/lab/combined", cookies={"swiftreg_session": scoped}).status_code == 404
    browser.get(srv.url + "/ui/")
    assert {i.split("/")[0] for i in texts(browser, "tr.revision-row", "data-id")} == {"team"}
    shot(browser, shots, "scoped-404")
