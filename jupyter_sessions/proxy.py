"""The service proxy's machinery: signed tokens, the origin scheme, header rules, and streaming.

- **Tokens** (``ProxyTokens``): HMAC-SHA256 over ``kind``, session, service, owner and expiry,
  with a secret made at server start (a restart invalidates every token and cookie). A ``url``
  token lives ``token_ttl`` seconds and is exchanged for a ``cookie`` token, which lives
  ``cookie_ttl`` seconds and is set on the service's own host only.
- **Origins**: a service is served at ``<session id>-<service>.<domain>``; ``parse_host``
  recovers the pair from the Host header and nothing else.
- **Headers**: hop-by-hop headers, Authorization, the proxy's own cookie and the Jupyter server's
  cookies never go upstream; upstream Set-Cookie loses any Domain attribute, and CORS grants are
  dropped.
- **Limits** (``ProxyLimits``): sizes and times of proxied traffic.

Pure: no tornado here, so the service layer (``services.py``) may use it. The streaming itself
(tornado's HTTP/1.1 connection and WebSocket client) is in ``handlers/proxy.py``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import Unauthenticated

SESSION_ID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"
SERVICE = r"[a-z](?:[a-z0-9-]{0,22}[a-z0-9])?"
_LABEL = re.compile(rf"^(?P<session>{SESSION_ID})-(?P<service>{SERVICE})$")

#: Hop-by-hop headers (RFC 9110 §7.6.1) and others a proxy must not pass on.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        # The proxy answers 100-continue itself (tornado); the service is asked without it.
        "expect",
    }
)
#: Response headers the proxy drops: CORS grants (an app on its own origin needs none from us).
DROPPED_RESPONSE = frozenset(
    {
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "access-control-allow-headers",
        "access-control-allow-methods",
        "access-control-expose-headers",
    }
)


def service_host_label(session_id: str, service: str) -> str:
    """The first label of a service's host name: ``<session id>-<service>``."""
    return f"{session_id}-{service}"


def host_pattern(domain: str) -> str:
    """The tornado host pattern of every service host under ``domain``."""
    return rf"{SESSION_ID}-{SERVICE}\.{re.escape(domain.lower())}"


def parse_host(host_name: str, domain: str) -> tuple[str, str] | None:
    """``(session id, service)`` of a service host name under ``domain``, else None."""
    host_name = host_name.lower()
    suffix = "." + domain.lower()
    if not host_name.endswith(suffix):
        return None
    match = _LABEL.match(host_name[: -len(suffix)])
    if match is None:
        return None
    return match.group("session"), match.group("service")


@dataclass(frozen=True)
class TokenClaims:
    kind: str
    session_id: str
    service: str
    access_key: str
    expires: float


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class ProxyTokens:
    """Mints and checks the proxy's signed, expiring credentials."""

    query_name = "jsess-token"
    cookie_name = "jsess-proxy"

    def __init__(
        self, secret: bytes | None = None, ttl: float = 120.0, cookie_ttl: float = 8 * 3600.0
    ) -> None:
        self._secret = secret or secrets.token_bytes(32)
        self.ttl = ttl
        self.cookie_ttl = cookie_ttl

    def _sign(self, payload: str) -> str:
        return _b64(hmac.new(self._secret, payload.encode(), hashlib.sha256).digest())

    def mint(self, session_id: str, service: str, access_key: str, kind: str = "url") -> str:
        ttl = self.ttl if kind == "url" else self.cookie_ttl
        body = {"t": kind, "s": session_id, "n": service, "k": access_key, "e": time.time() + ttl}
        payload = _b64(json.dumps(body, separators=(",", ":")).encode())
        return f"{payload}.{self._sign(payload)}"

    def verify(self, token: str | None, kind: str) -> TokenClaims:
        """The claims of a valid, unexpired token of ``kind``; Unauthenticated otherwise."""
        if not token or token.count(".") != 1 or len(token) > 2048:
            raise Unauthenticated("a valid proxy token or cookie is required")
        payload, signature = token.split(".")
        if not hmac.compare_digest(signature, self._sign(payload)):
            raise Unauthenticated("the proxy token is not valid")
        try:
            body = json.loads(_unb64(payload))
            claims = TokenClaims(
                kind=str(body["t"]),
                session_id=str(body["s"]),
                service=str(body["n"]),
                access_key=str(body["k"]),
                expires=float(body["e"]),
            )
        except (ValueError, KeyError, TypeError):
            raise Unauthenticated("the proxy token is not valid") from None
        if claims.kind != kind:
            raise Unauthenticated("the proxy token is not valid here")
        if claims.expires < time.time():
            raise Unauthenticated("the proxy token has expired; ask the API for a new URL")
        return claims


Headers = list[tuple[str, str]]


def _connection_listed(headers: Headers) -> set[str]:
    listed: set[str] = set()
    for name, value in headers:
        if name.lower() == "connection":
            listed.update(part.strip().lower() for part in value.split(",") if part.strip())
    return listed


def strip_cookies(header: str, drop: Iterable[str]) -> str:
    """A Cookie header without the named cookies."""
    dropped = set(drop)
    kept = []
    for part in header.split(";"):
        name = part.split("=", 1)[0].strip()
        if name and name not in dropped:
            kept.append(part.strip())
    return "; ".join(kept)


def request_headers(
    incoming: Headers,
    *,
    drop_cookies: Iterable[str],
    remote_ip: str,
    scheme: str,
    websocket: bool = False,
) -> Headers:
    """What goes upstream: no hop-by-hop headers, no Authorization, none of the server's cookies."""
    hop = HOP_BY_HOP | _connection_listed(incoming)
    out: Headers = []
    forwarded, host = "", ""
    for name, value in incoming:
        lower = name.lower()
        if lower == "x-forwarded-for":
            forwarded = value
        elif lower == "host":
            host = value
        if lower in hop or lower == "authorization":
            continue
        if websocket and lower.startswith("sec-websocket-"):
            continue  # the WebSocket client makes its own handshake
        if lower == "cookie":
            value = strip_cookies(value, drop_cookies)
            if not value:
                continue
        if lower.startswith("x-forwarded-"):
            continue  # set below, from what this server saw
        out.append((name, value))
    out.append(("X-Forwarded-For", f"{forwarded}, {remote_ip}" if forwarded else remote_ip))
    out.append(("X-Forwarded-Proto", scheme))
    if host:
        out.append(("X-Forwarded-Host", host))
    return out


def response_headers(incoming: Headers) -> Headers:
    """What goes back to the browser: no hop-by-hop headers, cookies bound to the service host."""
    hop = HOP_BY_HOP | _connection_listed(incoming) | DROPPED_RESPONSE
    out = []
    for name, value in incoming:
        lower = name.lower()
        if lower in hop:
            continue
        if lower == "set-cookie":
            value = _host_only_cookie(value)
        out.append((name, value))
    return out


def _host_only_cookie(value: str) -> str:
    """A Set-Cookie without Domain, so an app can't set cookies for sibling hosts."""
    parts = [p for p in value.split(";") if not p.strip().lower().startswith("domain=")]
    return ";".join(parts)


@dataclass(frozen=True)
class ProxyLimits:
    """Size and time limits of proxied traffic (from SessionsApp traitlets)."""

    connect_timeout: float = 10.0
    #: Seconds to wait for the upstream's response headers.
    response_timeout: float = 300.0
    #: Seconds a whole response body may take (large downloads need a generous value).
    body_timeout: float = 3600.0
    max_request_body: int = 1024 * 2**20
    max_header_size: int = 64 * 1024
    max_ws_message: int = 64 * 2**20


def without_query_param(uri: str, name: str) -> str:
    """``uri`` with every ``name=`` query parameter removed (the token leaves the URL)."""
    path, _, query = uri.partition("?")
    if not query:
        return uri
    kept = [p for p in query.split("&") if p and p.split("=", 1)[0] != name]
    return path + ("?" + "&".join(kept) if kept else "")


def check_path(uri: str) -> bool:
    """Only origin-form targets (``/path?query``) are proxied: never a URL naming a host."""
    return uri.startswith("/") and not uri.startswith("//")


__all__ = [
    "ProxyLimits",
    "ProxyTokens",
    "TokenClaims",
    "check_path",
    "host_pattern",
    "parse_host",
    "request_headers",
    "response_headers",
    "service_host_label",
    "strip_cookies",
    "without_query_param",
]
