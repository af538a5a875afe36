"""The browser's session: a token in an HttpOnly cookie, and CSRF protection for every form.

- **Login**: a user pastes a token (`swiftreg token create`) into the login form; the server checks it and
  sets it as the `swiftreg_session` cookie: `HttpOnly` (no script reads it), `SameSite=Strict` (no other
  site's page sends it), `Path=/ui`, `Secure` when the server is reached over https. The cookie is the
  token itself: revoking the token ends every session that holds it, and no server-side session state
  exists to lose or leak. Pages check it exactly as the API checks a bearer header (auth.require).
- **CSRF**: double submit. Every page sets a random `swiftreg_csrf` cookie (HttpOnly, SameSite=Strict)
  when the browser has none, and every form carries its value in a hidden field; a POST whose field does
  not equal the cookie is refused 403 before anything happens. Another site can make a browser send the
  cookie (SameSite aside) but can read neither the cookie nor the page holding the field.

This module imports nothing heavy: the hygiene middleware (registry/server/hygiene.py) asks it for the
session token of a web form post, to apply its "token before the body" rule to web writes too.
"""
from __future__ import annotations

import hmac
import secrets

from starlette.types import Scope

SESSION = "swiftreg_session"
CSRF = "swiftreg_csrf"
PREFIX = "/ui"
#: Web writes that need no session: the login form (it carries the token in its body), and logging out.
OPEN_WRITES = frozenset({PREFIX + "/login", PREFIX + "/logout"})


def cookies(scope: Scope) -> dict[str, str]:
    """The request's cookies (the last of a repeated name wins), from the raw ASGI scope."""
    out: dict[str, str] = {}
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            for part in value.decode("latin-1").split(";"):
                name, sep, val = part.strip().partition("=")
                if sep:
                    out[name.strip()] = val.strip()
    return out


def is_web(scope: Scope) -> bool:
    path = scope.get("path", "")
    return bool(path == PREFIX or path.startswith(PREFIX + "/"))


def session_secret(scope: Scope) -> str | None:
    """The token a web request's session cookie holds (None for other paths and for no session)."""
    if not is_web(scope):
        return None
    return cookies(scope).get(SESSION) or None


def csrf_ok(cookie: str | None, field: str | None) -> bool:
    """Whether a form's CSRF field matches the browser's CSRF cookie (constant-time)."""
    return bool(cookie) and bool(field) and hmac.compare_digest(str(cookie), str(field))


def new_csrf() -> str:
    return secrets.token_urlsafe(24)
