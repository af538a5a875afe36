"""Which URLs a webhook may target: outbound requests a registry makes on a user's behalf must not become a
way into the registry's own network (server-side request forgery).

- http or https, a host, no user or password in the URL (a credential would sit in the database and
  the logs; put it in the secret instead), no fragment, at most 2,000 characters;
- unless SWIFTREG_WEBHOOK_ALLOW_PRIVATE is set: no loopback, private, link-local, multicast, reserved or
  unspecified address, checked on the literal address at `webhook add` and on every address the name
  resolves to before each delivery, which then connects to a checked address (`pinned`: no DNS rebinding
  between the check and the connection); off by default, tests and single-machine setups turn it on.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

from .. import constants
from ..errors import WebhookError

MAX_URL = 2000


def check(url: str) -> str:
    """The URL, stripped, if a webhook may have it; WebhookError naming what is wrong otherwise."""
    url = (url or "").strip()
    if not url or len(url) > MAX_URL:
        raise WebhookError(f"a webhook URL must have 1 to {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookError(f"webhook URL {url!r} does not parse ({exc})") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookError(f"webhook URL {url!r}: only http:// and https:// are allowed")
    if not parts.hostname:
        raise WebhookError(f"webhook URL {url!r} names no host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise WebhookError("a webhook URL must not carry a user or password: give a --secret instead (the receiver "
                           "checks X-Webhook-Secret or the signature)")
    if parts.fragment:
        raise WebhookError(f"webhook URL {url!r} has a #fragment, which is never sent: leave it out")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise WebhookError("a webhook URL must not contain spaces or control characters")
    if port == 0:
        raise WebhookError(f"webhook URL {url!r}: port 0 cannot be reached")
    literal = _literal(parts.hostname)
    if literal is not None or parts.hostname.lower() in ("localhost", "localhost.localdomain"):
        check_address(parts.hostname, literal or ipaddress.ip_address("127.0.0.1"))
    return url


def _literal(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


def check_address(host: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    """Refuse a private or loopback target unless SWIFTREG_WEBHOOK_ALLOW_PRIVATE allows it."""
    if constants.webhook_allow_private():
        return
    mapped = getattr(address, "ipv4_mapped", None) or address
    if (mapped.is_loopback or mapped.is_private or mapped.is_link_local or mapped.is_multicast
            or mapped.is_reserved or mapped.is_unspecified):
        raise WebhookError(f"webhook host {host} is a private or loopback address ({address}); set "
                           "SWIFTREG_WEBHOOK_ALLOW_PRIVATE=1 on the registry to allow such targets")


@dataclass(frozen=True)
class Target:
    """Where one delivery connects: `url` with the host replaced by an address that was checked (so a name
    cannot resolve to a public address for the check and to a private one for the connection: DNS rebinding),
    the `Host` header to send, and the name TLS verifies the certificate against (`sni_hostname`)."""

    url: str
    host_header: str | None = None
    sni_hostname: str | None = None


def pinned(url: str) -> Target:
    """Before a delivery: resolve the URL's host; every address it resolves to must be allowed (a name that was
    public at `webhook add` may point inside later); connect to the first. With SWIFTREG_WEBHOOK_ALLOW_PRIVATE
    nothing is checked and the URL is used as it is."""
    if constants.webhook_allow_private():
        return Target(url)
    parts = urlsplit(url)
    host = parts.hostname or ""
    if _literal(host) is not None:
        check_address(host, _literal(host))  # type: ignore[arg-type]
        return Target(url)
    try:
        infos = socket.getaddrinfo(host, parts.port or (443 if parts.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)
    except OSError as exc:
        raise WebhookError(f"webhook host {host} does not resolve ({exc})") from None
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not addresses:
        raise WebhookError(f"webhook host {host} resolves to no address")
    for address in addresses:
        check_address(host, address)
    first = addresses[0]
    literal = f"[{first}]" if first.version == 6 else str(first)
    netloc = literal + (f":{parts.port}" if parts.port else "")
    host_header = host + (f":{parts.port}" if parts.port else "")
    return Target(urlunsplit((parts.scheme, netloc, parts.path, parts.query, "")), host_header,
                  host if parts.scheme == "https" else None)
