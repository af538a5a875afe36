"""The web pages under /ui: thin, like every dialect. Each page checks the session's token exactly as the
API checks a bearer token (auth.require's rules: scopes, namespaces, --anonymous-read), reads through the
Registry and registry/service/browse.py, and renders a template.

    GET  /ui/                                 home: namespaces, search and filters over adapter revisions
    GET  /ui/r/{ns}/{name}                    an adapter (card, revisions, usage) or a base model page
    GET  /ui/r/{ns}/{name}/rev/{ref}          a revision: files, config, lineage, validation history, vLLM
    GET  /ui/r/{ns}/{name}/rev/{ref}/files/{path}   a file's bytes (verified, served as data)
    GET  /ui/compare?left=..&right=..         two adapter revisions compared module by module
    GET  /ui/jobs, /ui/jobs/{id}              the queue; POST /ui/jobs/{id}/cancel (write)
    GET  /ui/admin                            tokens, storage per namespace; POST tokens, revoke, gc dry run
    GET  /ui/login, POST /ui/login, POST /ui/logout

A namespace the token cannot read answers 404, as if it did not exist; a page that needs a scope the
token lacks answers 403; no session where reads are closed is a redirect to the login page. Every POST
checks the CSRF field first (session.py) and answers 403 without it.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool

import converters

from ... import tokens
from ...errors import ForbiddenError, NotFoundError, RegistryError
from ...ids import check_name, parse_id
from ...params import natural, text
from ...service import browse
from ...service.compare import compare as compare_revisions
from ..auth import read_limit, reads_open
from ..lookup import registry_of
from ..responses import blob_response
from . import render, session

router = APIRouter(prefix=session.PREFIX, include_in_schema=False)

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
                    "Referrer-Policy": "same-origin", "Cache-Control": "no-store"}
STATIC = Path(__file__).parent / "static"
_STATIC_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
MAX_FORM = 64 << 10
VLLM_CHECK = "serve:vllm"  # registry/vllm_checks.py CHECK_KIND (not imported: it pulls in the checks' modules)


class LoginRequired(Exception):
    """No usable session where reads need a token: the page redirects to the login form."""


@dataclass
class Viewer:
    """Who is looking: the session's token (None: anonymous, where reads are open) and the CSRF value."""

    token: tokens.TokenInfo | None
    csrf: str
    new_csrf: bool
    open_reads: bool

    def may(self, scope: str, namespace: str | None = None) -> bool:
        if scope == "read" and self.open_reads:
            return True
        return self.token is not None and self.token.allows(scope, namespace)

    @property
    def admin(self) -> bool:
        """An admin without a namespace limit: the admin page is about every namespace."""
        return self.token is not None and self.token.allows("admin") and self.token.namespaces is None


def viewer_of(request: Request, *, login: bool = True) -> Viewer:
    jar = session.cookies(request.scope)
    csrf = jar.get(session.CSRF) or ""
    new = not csrf or len(csrf) > 100
    if new:
        csrf = session.new_csrf()
    token = None
    secret = jar.get(session.SESSION)
    if secret:
        token = tokens.verify(registry_of(request), secret)
        if token is not None and token.revoked:
            token = None
        if token is not None and getattr(request.state, "token_id", None) is None:
            request.state.token_id, request.state.token_owner = token.id, token.owner  # the access log
            tokens.touch(registry_of(request), token.id)
    viewer = Viewer(token, csrf, new, reads_open(request))
    if login and token is None and not viewer.open_reads:
        raise LoginRequired()
    return viewer


def hidden_404(repo: str) -> NotFoundError:
    """What a namespace the token cannot read answers: the very message of a repository that is not there."""
    return NotFoundError(f"no adapter or base model {repo} in this registry")


def readable(viewer: Viewer, namespace: str, repo: str) -> None:
    if not viewer.may("read", namespace):
        raise hidden_404(repo)


def html(request: Request, viewer: Viewer, template: str, http_status: int = 200, **context: Any) -> HTMLResponse:
    body = render.page(template, request=request, viewer=viewer, prefix=session.PREFIX, **context)
    response = HTMLResponse(body, status_code=http_status, headers=SECURITY_HEADERS)
    if viewer.new_csrf:
        response.set_cookie(session.CSRF, viewer.csrf, httponly=True, samesite="strict", path=session.PREFIX,
                            secure=request.url.scheme == "https")
    return response


def _error_page(request: Request, exc: RegistryError | converters.FormatError) -> Response:
    status = getattr(exc, "status", 422)
    try:
        viewer = viewer_of(request, login=False)
    except RegistryError:
        viewer = Viewer(None, session.new_csrf(), True, reads_open(request))
    return html(request, viewer, "error.html", status, status=status, message=str(exc),
                code=getattr(exc, "code", "error"))


def web(handler: Callable[..., Response]) -> Callable[..., Response]:
    """A page: refusals of the error tree rendered as an HTML page with their status (a dependency that is
    down, 5xx, is left to the server's own handlers: 503 with Retry-After), no session -> the login page."""

    @functools.wraps(handler)
    def page(request: Request, *args: Any, **kwargs: Any) -> Response:
        try:
            return handler(request, *args, **kwargs)
        except LoginRequired:
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return RedirectResponse(f"{session.PREFIX}/login?next={quote(target, safe='')}", status_code=303)
        except (RegistryError, converters.FormatError) as exc:
            if getattr(exc, "status", 422) >= 500:
                raise
            return _error_page(request, exc)

    return page


async def form_of(request: Request) -> dict[str, str]:
    """A urlencoded form body (at most 64 KiB), first value of each field."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM:
            raise RegistryError("the form is larger than 64 KiB")
    try:
        fields = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=200)
    except (UnicodeDecodeError, ValueError):
        raise RegistryError("the form is not urlencoded UTF-8") from None
    return {k: text(v[0], f"form field {k!r}") for k, v in fields.items()}


def posted(handler: Callable[..., Response]) -> Callable[..., Any]:
    """A form POST: the body read, the CSRF field checked against the cookie (403 without), then `handler`
    (request, viewer, form, **path) in the thread pool."""

    async def post(request: Request, **kwargs: Any) -> Response:
        try:
            data = await form_of(request)
        except RegistryError as exc:
            return await run_in_threadpool(_error_page, request, exc)
        if not session.csrf_ok(session.cookies(request.scope).get(session.CSRF), data.get("csrf")):
            return await run_in_threadpool(
                _error_page, request, ForbiddenError("the form's CSRF token is missing or does not match this "
                                                     "browser's: reload the page and submit it again"))

        def run() -> Response:
            return web(lambda req: handler(req, viewer_of(req), data, **kwargs))(request)

        return await run_in_threadpool(run)

    signature = inspect.signature(handler)  # what FastAPI reads: the request and the path's parameters
    post.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=[p for n, p in signature.parameters.items() if n not in ("viewer", "data")])
    post.__name__ = handler.__name__
    return post


# ----- home and search -------------------------------------------------------------------------------------

FILTERS = ("q", "base", "tuner", "tag", "format", "validation", "namespace")


def _filters(request: Request) -> browse.Filters:
    values: dict[str, str | None] = {}
    for key in FILTERS:
        value = request.query_params.get(key, "").strip()
        values[key] = text(value, f"the {key} filter")[:200] or None
    if values["validation"] and values["validation"] not in browse.VALIDATION_STATES:
        raise RegistryError(f"validation must be one of {', '.join(browse.VALIDATION_STATES)}")
    return browse.Filters(**values)


def _after(request: Request) -> int | None:
    value = request.query_params.get("after")
    return natural(value, "after") if value else None


@router.get("/")
@web
def home(request: Request) -> Response:
    viewer = viewer_of(request)
    reg = registry_of(request)
    filters = _filters(request)
    limit = read_limit(request, viewer.token)
    if filters.namespace:
        check_name(filters.namespace, "namespace")
        if not viewer.may("read", filters.namespace):
            raise NotFoundError(f"no namespace {filters.namespace} in this registry")
    results = browse.search(reg, filters, namespaces=limit, after=_after(request))
    query = {k: v for k, v in filters.__dict__.items() if v}
    context: dict[str, Any] = {"filters": filters, "results": results, "query": query}
    if request.headers.get("hx-request") and request.headers.get("hx-target") == "results":
        return html(request, viewer, "results.html", **context)
    return html(request, viewer, "home.html", namespaces=browse.namespaces_summary(reg, limit),
                facets=browse.facets(reg, limit), **context)


# ----- repositories ----------------------------------------------------------------------------------------

def _small_blob(request: Request, digest: str, size: int, limit: int = 1 << 20) -> bytes | None:
    """A small stored file's bytes, verified against its digest (None: too large, or not intact)."""
    if size > limit:
        return None
    reg = registry_of(request)
    try:
        with reg.store.open(digest) as f:
            data = f.read(limit + 1)
    except (OSError, RegistryError):
        return None
    return data if "sha256:" + hashlib.sha256(data).hexdigest() == digest else None


def _card(request: Request, manifest: dict[str, Any]) -> Any:
    for f in manifest.get("files", []):
        if f["path"].lower() in ("readme.md", "readme"):
            data = _small_blob(request, f["sha256"], f["size"])
            if data is not None:
                return render.markdown(data.decode("utf-8", "replace"))
    return None


def _configs(request: Request, manifest: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for f in manifest.get("files", []):
        name = f["path"].rsplit("/", 1)[-1]
        if name.endswith(".json") and "config" in name:
            data = _small_blob(request, f["sha256"], f["size"], 256 << 10)
            if data is None:
                continue
            try:
                shown = json.dumps(json.loads(data), indent=2, sort_keys=True)
            except ValueError:
                shown = data.decode("utf-8", "replace")
            out.append({"path": f["path"], "text": shown})
    return out


def usage(request: Request, repo: str, ref: str) -> dict[str, str]:
    """Copyable ways to use `repo@ref` from this server."""
    base = str(request.base_url).rstrip("/")
    rid = f"{repo}@{ref}"
    return {
        "swiftreg pull": f"export SWIFTREG_URL={base} SWIFTREG_TOKEN=srg_...\n"
                         f"swiftreg pull {rid} ./{repo.split('/')[1]}",
        "registry.resolve": f"# SWIFTREG_URL={base} SWIFTREG_TOKEN=srg_...\nimport registry\n"
                            f"path = registry.resolve({rid!r}, format=\"peft\")",
        "PEFT (HF_ENDPOINT)": f"# HF_ENDPOINT={base} HF_TOKEN=srg_...\nfrom peft import PeftModel\n"
                              f"model = PeftModel.from_pretrained(base_model, {repo!r}, revision={ref!r})",
        "ms-swift (MODELSCOPE_ENDPOINT)": f"# MODELSCOPE_ENDPOINT={base} MODELSCOPE_API_TOKEN=srg_...\n"
                                          "from swift.tuners import Swift\n"
                                          f"model = Swift.from_pretrained(model, {repo!r}, revision={ref!r})",
        "vLLM request": "curl -s localhost:8000/v1/completions -H 'content-type: application/json' \\\n"
                        f"    -d '{json.dumps({'model': rid, 'prompt': 'Hello', 'max_tokens': 16})}'",
    }


@router.get("/r/{ns}/{name}")
@web
def repository(request: Request, ns: str, name: str) -> Response:
    viewer = viewer_of(request)
    repo_id = f"{check_name(ns, 'namespace')}/{check_name(name, 'name')}"
    readable(viewer, ns, repo_id)
    reg = registry_of(request)
    repo = browse.repository(reg, repo_id)
    revisions = browse.revisions(reg, repo, after=_after(request))
    if repo["kind"] == "base":
        adapters = browse.adapters_of_base(reg, repo["id"], namespaces=read_limit(request, viewer.token))
        return html(request, viewer, "basemodel.html", repo=repo, revisions=revisions, adapters=adapters)
    main = next((r for r in revisions.rows if "main" in r.branches), None)
    card = None
    if main is not None:
        card = _card(request, reg.show(f"{repo_id}@{main.number}").manifest)
    ref = "main" if main is not None else (str(revisions.rows[0].number) if revisions.rows else "main")
    return html(request, viewer, "adapter.html", repo=repo, revisions=revisions, card=card,
                usage=usage(request, repo_id, ref), can_write=viewer.may("write", ns))


@router.get("/r/{ns}/{name}/rev/{ref}")
@web
def revision(request: Request, ns: str, name: str, ref: str) -> Response:
    viewer = viewer_of(request)
    repo_id = f"{check_name(ns, 'namespace')}/{check_name(name, 'name')}"
    readable(viewer, ns, repo_id)
    reg = registry_of(request)
    info = reg.show(f"{repo_id}@{text(ref, 'the ref')}").to_dict()
    history: list[dict[str, Any]] = []
    if info["kind"] == "adapter":
        history = render.mark_regressions(reg.validation_history(f"{repo_id}@{info['number']}", limit=500))
    vllm = next((h for h in history if h["check"] == VLLM_CHECK), None)

    def link(repo: str, number: Any) -> str | None:
        owner = repo.split("/")[0]
        if not viewer.may("read", owner):
            return None
        return f"{session.PREFIX}/r/{repo}" + (f"/rev/{quote(str(number), safe='')}" if number else "")

    return html(request, viewer, "revision.html", info=info, history=history, vllm=vllm,
                lineage=render.lineage_svg(info, link), plot=render.history_svg(history),
                configs=_configs(request, info["manifest"]), size=sum(f["size"] for f in info["manifest"]["files"]),
                usage=usage(request, repo_id, str(info["number"])), card=_card(request, info["manifest"]))


@router.get("/r/{ns}/{name}/rev/{ref}/files/{path:path}")
@web
def download(request: Request, ns: str, name: str, ref: str, path: str) -> Response:
    viewer = viewer_of(request)
    repo_id = f"{check_name(ns, 'namespace')}/{check_name(name, 'name')}"
    readable(viewer, ns, repo_id)
    reg = registry_of(request)
    info = reg.show(f"{repo_id}@{text(ref, 'the ref')}")
    entry = next((f for f in info.manifest["files"] if f["path"] == path), None)
    if entry is None:
        raise NotFoundError(f"{repo_id}@{info.number} has no file {path!r}")
    blob = reg.servable_blob(entry["sha256"], entry["size"], whole="range" in request.headers,
                             head=request.method == "HEAD")
    return blob_response(reg, blob, {"ETag": f'"{entry["sha256"]}"'}, entry["path"])


@router.get("/compare")
@web
def compare(request: Request) -> Response:
    viewer = viewer_of(request)
    left, right = (request.query_params.get(k, "").strip() for k in ("left", "right"))
    if not left or not right:
        raise RegistryError("compare needs two revisions: ?left=ns/name@ref&right=ns/name@ref")
    for rid in (parse_id(text(left, "left")), parse_id(text(right, "right"))):
        readable(viewer, rid.namespace, rid.repo)
    result = compare_revisions(registry_of(request), left, right)
    return html(request, viewer, "compare.html", result=result)


# ----- jobs ------------------------------------------------------------------------------------------------

def _job_visible(viewer: Viewer, namespace: str | None, scope: str) -> bool:
    """The API's rule (server/jobs.py): a job of one namespace needs `scope` there; one of several (None) a
    token without a namespace limit (any reader where reads are open)."""
    if namespace is not None:
        return viewer.may(scope, namespace)
    if scope == "read" and viewer.open_reads:
        return True
    return viewer.token is not None and viewer.token.namespaces is None and viewer.token.allows(scope)


@router.get("/jobs")
@web
def jobs(request: Request) -> Response:
    viewer = viewer_of(request)
    status = request.query_params.get("status") or None
    if status is not None and status not in ("queued", "running", "succeeded", "failed", "cancelled"):
        raise RegistryError("status must be one of queued, running, succeeded, failed, cancelled")
    found = registry_of(request).jobs(status=status, namespaces=read_limit(request, viewer.token), limit=200)
    found = [j for j in found if _job_visible(viewer, j.namespace, "read")]
    return html(request, viewer, "jobs.html", jobs=found, status=status,
                can_cancel={j.id: _job_visible(viewer, j.namespace, "write") for j in found})


@router.get("/jobs/{job_id}")
@web
def job(request: Request, job_id: str) -> Response:
    viewer = viewer_of(request)
    found = registry_of(request).job(natural(job_id, "the job id"))
    if not _job_visible(viewer, found.namespace, "read"):
        raise NotFoundError(f"no job with id {found.id}")
    log = found.log or ""
    return html(request, viewer, "job.html", job=found, log_tail=log[-8000:],
                params=json.dumps(found.params, indent=2),
                result=json.dumps(found.result, indent=2) if found.result is not None else None,
                can_cancel=_job_visible(viewer, found.namespace, "write") and not found.finished)


@router.post("/jobs/{job_id}/cancel")
@posted
def cancel(request: Request, viewer: Viewer, data: dict[str, str], job_id: str) -> Response:
    reg = registry_of(request)
    found = reg.job(natural(job_id, "the job id"))
    if not _job_visible(viewer, found.namespace, "read"):
        raise NotFoundError(f"no job with id {found.id}")
    if not _job_visible(viewer, found.namespace, "write"):
        raise ForbiddenError("cancelling this job needs a write token for its namespace")
    reg.cancel_job(found.id)
    return RedirectResponse(f"{session.PREFIX}/jobs/{found.id}", status_code=303)


# ----- admin -----------------------------------------------------------------------------------------------

def _admin(viewer: Viewer) -> None:
    if not viewer.admin:
        raise ForbiddenError("the admin page needs an admin token without a namespace limit")


def _admin_page(request: Request, viewer: Viewer, **extra: Any) -> Response:
    reg = registry_of(request)
    used = tokens.last_used(reg)
    rows = [t for t in tokens.list_tokens(reg) if not t.revoked]
    return html(request, viewer, "admin.html", tokens=rows, used=used, storage=browse.storage(reg),
                **{"secret": None, "created": None, "gc": None, **extra})


@router.get("/admin")
@web
def admin(request: Request) -> Response:
    viewer = viewer_of(request)
    _admin(viewer)
    return _admin_page(request, viewer)


@router.post("/admin/tokens")
@posted
def create_token(request: Request, viewer: Viewer, data: dict[str, str]) -> Response:
    _admin(viewer)
    owner = data.get("owner", "").strip()
    if not owner or len(owner) > 200:
        raise RegistryError("a token needs an owner (at most 200 characters)")
    names = [n.strip() for n in data.get("namespaces", "").split(",") if n.strip()]
    for n in names:
        check_name(n, "namespace")
    secret, info = tokens.create(registry_of(request), data.get("scope", ""), owner, names or None)
    return _admin_page(request, viewer, secret=secret, created=info)


@router.post("/admin/tokens/{token_id}/revoke")
@posted
def revoke_token(request: Request, viewer: Viewer, data: dict[str, str], token_id: str) -> Response:
    _admin(viewer)
    tokens.revoke(registry_of(request), natural(token_id, "the token id"))
    return RedirectResponse(f"{session.PREFIX}/admin", status_code=303)


@router.post("/admin/gc")
@posted
def gc_dry_run(request: Request, viewer: Viewer, data: dict[str, str]) -> Response:
    _admin(viewer)
    result = registry_of(request).gc(dry_run=True)
    return _admin_page(request, viewer, gc=result.to_dict())


# ----- login -----------------------------------------------------------------------------------------------

def _next(value: str | None) -> str:
    """Where to go after logging in: a page of this interface, never another origin."""
    if value and value.startswith(session.PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return session.PREFIX + "/"


@router.get("/login")
@web
def login_form(request: Request) -> Response:
    viewer = viewer_of(request, login=False)
    return html(request, viewer, "login.html", next=_next(request.query_params.get("next")), message=None)


@router.post("/login")
async def login(request: Request) -> Response:
    try:
        data = await form_of(request)
    except RegistryError as exc:
        return await run_in_threadpool(_error_page, request, exc)

    def run() -> Response:
        viewer = viewer_of(request, login=False)
        if not session.csrf_ok(session.cookies(request.scope).get(session.CSRF), data.get("csrf")):
            return _error_page(request, ForbiddenError("the form's CSRF token is missing or does not match this "
                                                       "browser's: reload the page and submit it again"))
        secret = data.get("token", "").strip()
        token = tokens.verify(registry_of(request), secret) if secret else None
        if token is None or token.revoked:
            return html(request, viewer, "login.html", 401, next=_next(data.get("next")),
                        message="That token is unknown or revoked.")
        response = RedirectResponse(_next(data.get("next")), status_code=303)
        response.set_cookie(session.SESSION, secret, httponly=True, samesite="strict", path=session.PREFIX,
                            secure=request.url.scheme == "https")
        return response

    return await run_in_threadpool(run)


@router.post("/logout")
async def logout(request: Request) -> Response:
    data = await form_of(request)
    if not session.csrf_ok(session.cookies(request.scope).get(session.CSRF), data.get("csrf")):
        return await run_in_threadpool(_error_page, request, ForbiddenError("the form's CSRF token is missing"))
    response = RedirectResponse(session.PREFIX + "/login", status_code=303)
    response.delete_cookie(session.SESSION, path=session.PREFIX, httponly=True, samesite="strict")
    return response


# ----- static files ----------------------------------------------------------------------------------------

@router.get("/static/{name}")
def static(name: str) -> Response:
    path = STATIC / name
    if "/" in name or name.startswith(".") or path.suffix not in _STATIC_TYPES or not path.is_file():
        raise NotFoundError(f"no static file {name!r}")
    return FileResponse(path, media_type=_STATIC_TYPES[path.suffix],
                        headers={"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"})


def root() -> Response:
    """`/`: the web interface."""
    return RedirectResponse(session.PREFIX + "/", status_code=307)
