"""What the pages are drawn with: the Jinja2 environment (autoescaped), model cards as sanitised Markdown,
and the two pictures drawn on the server as inline SVG (a revision's lineage, its validation history).

Model cards are untrusted input: markdown-it-py renders them (CommonMark, raw HTML allowed so cards with
`<details>` or tables still read well), then nh3 (ammonia) keeps only a list of harmless tags and
attributes and only http(s)/mailto links: a `<script>` is dropped, a `javascript:` link loses its href,
event-handler attributes are removed. The page's Content-Security-Policy would stop a script anyway.
Every other value reaches the page through Jinja2's autoescaping, and the SVG pictures escape each text
they hold (markupsafe), so nothing a writer pushed (a message, a tag, a file name) becomes markup.
"""
from __future__ import annotations

import math
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from markupsafe import Markup, escape

HERE = Path(__file__).parent
_TAGS = {"a", "abbr", "b", "blockquote", "br", "code", "dd", "del", "details", "div", "dl", "dt", "em", "h1", "h2",
         "h3", "h4", "h5", "h6", "hr", "i", "img", "kbd", "li", "ol", "p", "pre", "s", "span", "strong", "sub",
         "summary", "sup", "table", "tbody", "td", "th", "thead", "tr", "ul"}
_ATTRIBUTES = {"a": {"href", "title"}, "img": {"src", "alt", "title"}, "td": {"align"}, "th": {"align"},
               "code": {"class"}}


@lru_cache(maxsize=1)
def environment() -> Any:
    """The pages' Jinja2 environment (built on the first page: `serve` alone pays for importing jinja2)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(HERE / "templates")),
                             autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters.update(size=human_size, when=when, short=short_digest, number=lambda n: f"{n:,}", targets=targets)
    return env


def page(template: str, **context: Any) -> str:
    return str(environment().get_template(template).render(**context))


# ----- Markdown --------------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _markdown() -> Any:
    from markdown_it import MarkdownIt

    return MarkdownIt("commonmark", {"html": True, "linkify": False}).enable("table").enable("strikethrough")


def markdown(source: str) -> Markup:
    """A model card as safe HTML (see the module docstring)."""
    import nh3

    html = _markdown().render(source)
    clean = nh3.clean(html, tags=_TAGS, attributes=_ATTRIBUTES, url_schemes={"http", "https", "mailto"},
                      link_rel="noopener noreferrer nofollow")
    return Markup(clean)  # noqa: S704 - sanitised just above


# ----- filters ----------------------------------------------------------------------------------------------

def human_size(n: Any) -> str:
    if n is None:
        return ""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def when(value: Any) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    return str(value.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"))


def targets(value: Any) -> str:
    """Target modules as stored: a list of names, or one regular expression."""
    if isinstance(value, (list, tuple, set)):
        return ", ".join(sorted(str(v) for v in value))
    return "" if value is None else str(value)


def short_digest(digest: Any) -> str:
    text = str(digest or "")
    return text[:19] if text.startswith("sha256:") else text[:12]


# ----- pictures ---------------------------------------------------------------------------------------------

def _box(x: float, y: float, w: float, h: float, lines: list[str], href: str | None, cls: str) -> str:
    text = "".join(f'<text x="{x + 8}" y="{y + 18 + 15 * i}" class="{"t1" if i == 0 else "t2"}">{escape(line)}'
                   "</text>" for i, line in enumerate(lines))
    rect = f'<rect x="{x}" y="{y}" width="{w}" height="{h}" rx="6" class="{cls}"/>'
    inner = rect + text
    return f'<a href="{escape(href)}">{inner}</a>' if href else inner


def lineage_svg(info: dict[str, Any], link: Any) -> Markup:
    """The revision and where it came from: the inputs of a merge or combination, its base model
    revision, the hub repositories it was imported from. `link(repo, number)` -> a page URL."""
    inputs: list[tuple[list[str], str | None, str]] = []
    for p in info.get("parents") or []:
        if p.get("role") == "operation":
            continue
        if p.get("repo"):
            label = f"{p['repo']}@{p.get('number', '?')}"
            inputs.append(([label, f"{p.get('role', 'input')} ({p.get('kind', 'adapter')})"],
                           link(p["repo"], p.get("number")), "node in"))
        elif p.get("path"):
            inputs.append(([str(p["path"])[-40:], f"{p.get('role', 'input')} (a local folder)"], None, "node in"))
    if info.get("base_model"):
        repo, _, number = str(info["base_model"]).partition("@")
        inputs.append(([str(info["base_model"]), "base model revision"], link(repo, number or None), "node base"))
    for s in info.get("provenance") or []:
        inputs.append(([f"{s.get('hub')}://{s.get('repo')}", f"commit {str(s.get('commit'))[:12]}"], None,
                       "node hub"))
    ops = [p for p in info.get("parents") or [] if p.get("role") == "operation"]
    op = str(ops[-1].get("op") or "operation") if ops else ("import" if info.get("provenance") else "")
    w, h, gap = 250, 44, 14
    rows = max(1, len(inputs))
    height = rows * (h + gap) + gap
    width = 2 * w + 170
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="lineage" role="img" width="{width}" '
             f'height="{height}" viewBox="0 0 {width} {height}"><title>lineage of '
             f'{escape(info["repo"])}@{info["number"]}</title>']
    ty = height / 2 - h / 2
    tx = w + 170
    for i, (lines, href, cls) in enumerate(inputs):
        y = gap + i * (h + gap)
        parts.append(f'<path d="M{w},{y + h / 2} C{w + 85},{y + h / 2} {tx - 85},{ty + h / 2} {tx},{ty + h / 2}" '
                     'class="edge"/>')
        parts.append(_box(0, y, w, h, lines, href, cls))
    if op:
        parts.append(f'<text x="{w + 85}" y="{ty + h / 2 - 6}" class="op" text-anchor="middle">{escape(op)}</text>')
    if not inputs:
        parts.append(f'<text x="{w - 10}" y="{ty + h / 2 + 4}" class="t2" text-anchor="end">'
                     'pushed directly (no recorded inputs)</text>')
    parts.append(_box(tx, ty, w, h, [f"{info['repo']}@{info['number']}", str(info.get("digest", ""))[:23]],
                      None, "node self"))
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 - every text escaped above


def figure(run: dict[str, Any]) -> float | None:
    """The headline number of a validation run: its worst difference where it records one."""
    metrics = run.get("metrics") or {}
    for key in ("max_abs_diff", "max_abs", "relative_error", "rel_error", "max_rel_diff"):
        value = metrics.get(key)
        if isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
    for value in metrics.values():
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def mark_regressions(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each run with `regression`: it failed where the previous run of the same check passed (newest first in,
    newest first out)."""
    last: dict[str, bool] = {}
    out = []
    for run in reversed(history):
        previous = last.get(run["check"])
        out.append({**run, "regression": previous is True and not run["passed"], "figure": figure(run)})
        last[run["check"]] = bool(run["passed"])
    return list(reversed(out))


def history_svg(history: list[dict[str, Any]]) -> Markup:
    """Validation runs over time: one lane per check, a dot per run (passed, failed; a regression ringed)."""
    if not history:
        return Markup("")
    checks = sorted({r["check"] for r in history})
    times = [datetime.fromisoformat(r["started_at"]).timestamp() if r.get("started_at") else 0.0 for r in history]
    lo, hi = min(times), max(times)
    span = (hi - lo) or 1.0
    left, lane, width = 170, 30, 760
    height = lane * len(checks) + 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="history" role="img" width="{width}" height="{height}" '
             f'viewBox="0 0 {width} {height}"><title>validation history</title>']
    for i, check in enumerate(checks):
        y = 20 + i * lane
        parts.append(f'<text x="{left - 10}" y="{y + 4}" class="t2" text-anchor="end">{escape(check)}</text>'
                     f'<line x1="{left}" y1="{y}" x2="{width - 20}" y2="{y}" class="lane"/>')
    for run, t in zip(history, times):
        x = left + 10 + (t - lo) / span * (width - left - 40)
        y = 20 + checks.index(run["check"]) * lane
        state = "pass" if run["passed"] else "fail"
        label = f"{run['check']} {'passed' if run['passed'] else 'failed'} {when(run.get('started_at'))}"
        if run.get("figure") is not None:
            label += f" ({run['figure']:.3g})"
        ring = f'<circle cx="{x:.1f}" cy="{y}" r="9" class="regression"/>' if run.get("regression") else ""
        parts.append(f'<g>{ring}<circle cx="{x:.1f}" cy="{y}" r="5" class="{state}"><title>{escape(label)}</title>'
                     '</circle></g>')
    parts.append(f'<text x="{left}" y="{height - 6}" class="t2">{escape(when(datetime.fromtimestamp(lo)))}</text>'
                 f'<text x="{width - 20}" y="{height - 6}" class="t2" text-anchor="end">'
                 f'{escape(when(datetime.fromtimestamp(hi)))}</text></svg>')
    return Markup("".join(parts))  # noqa: S704 - every text escaped above
