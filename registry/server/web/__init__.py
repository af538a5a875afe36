"""The web interface of `swiftreg serve`: server-rendered pages under /ui over the same Registry, tokens and
namespace rules as the API (pages.py), the browser session and CSRF (session.py), templates and pictures
(render.py, templates/), and static files (static/: a vendored htmx, the stylesheet, a small script).

Jinja2 templates rendered on the server, with htmx for the little that is better without a full page load
(live search, a running job's log): one process, no Node build, nothing to install beyond the wheel, and a
Content-Security-Policy that allows only this origin's scripts (htmx's own inline style and eval are off).
"""
from __future__ import annotations

from typing import Any


def mount(app: Any) -> None:
    """Add the pages to the app (and `/` -> `/ui/`)."""
    from .pages import root, router

    app.include_router(router)
    app.add_api_route("/", root, methods=["GET"], include_in_schema=False)
