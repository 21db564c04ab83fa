"""The service proxy's routes: HTTP and WebSocket to a service, on its own origin.

Requests whose Host is ``<session id>-<service>.<domain>`` are routed here before any Jupyter
route (``install_proxy_routes`` puts the rule first), so a proxied app's paths never reach the
Jupyter server's own handlers, and Jupyter's ``check_host`` (which refuses unknown host names)
does not apply: these handlers are plain tornado handlers that authenticate by the proxy's own
credential, never by Jupyter's cookie or token.

The HTTP side is an HTTP/1.1 client on tornado's ``HTTP1Connection`` (``UpstreamHTTP``): each
response chunk goes to a callback returning the browser-side flush, which the connection awaits
before it reads on, so a slow browser holds the service back instead of filling memory; request
bodies stream up the same way (``stream_request_body``, each chunk's write awaited).

Authentication, for HTTP and WebSocket alike (CVE-2024-28179 was a WebSocket route that skipped
it): a ``url`` token in the query (minted by ``start_service`` or ``direct-access-info``) is
exchanged for a host-only cookie (HttpOnly, SameSite=Lax, path /), then a redirect drops the
token from the URL; every other request needs that cookie. Requests that change state must come
from the service's own origin (Origin / Sec-Fetch-Site), and WebSockets must too (tornado's
``check_origin``).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from jupyter_server.base.handlers import JupyterHandler
from tornado import httputil, web
from tornado.http1connection import HTTP1Connection, HTTP1ConnectionParameters
from tornado.httpclient import HTTPRequest
from tornado.iostream import IOStream, StreamClosedError
from tornado.routing import AnyMatches, HostMatches, Router, Rule
from tornado.tcpclient import TCPClient
from tornado.websocket import WebSocketClientConnection, WebSocketHandler, websocket_connect

from ..errors import (
    AgentError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    SessionsError,
    Timeout,
    Unauthenticated,
)
from ..proxy import (
    SERVICE,
    SESSION_ID,
    ProxyLimits,
    ProxyTokens,
    TokenClaims,
    check_path,
    host_pattern,
    parse_host,
    request_headers,
    response_headers,
    without_query_param,
)
from .base import error_body

if TYPE_CHECKING:
    from ..services import RunningService, ServicesService

UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


OnHeaders = Callable[[httputil.ResponseStartLine, httputil.HTTPHeaders], None]
OnChunk = Callable[[bytes], Awaitable[None]]


class _ResponseDelegate(httputil.HTTPMessageDelegate):
    def __init__(self, on_headers: OnHeaders, on_chunk: OnChunk) -> None:
        self.on_headers = on_headers
        self.on_chunk = on_chunk
        self.got_headers = False
        self.finished = False

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> None:
        assert isinstance(start_line, httputil.ResponseStartLine)
        if 100 <= start_line.code < 200:
            return  # an interim answer (103 Early Hints): the real one follows
        self.got_headers = True
        self.on_headers(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None]:
        # Returned to HTTP1Connection, which awaits it before reading on: flow control.
        return self.on_chunk(chunk)

    def finish(self) -> None:
        self.finished = True

    def on_connection_close(self) -> None:
        return None


class UpstreamHTTP:
    """One proxied HTTP exchange with a service: request streamed up, response streamed down."""

    def __init__(self, host: str, port: int, limits: ProxyLimits) -> None:
        self.host = host
        self.port = port
        self.limits = limits
        self._stream: IOStream | None = None
        self._conn: HTTP1Connection | None = None

    async def open(
        self, method: str, uri: str, headers: httputil.HTTPHeaders, has_body: bool
    ) -> None:
        try:
            self._stream = await TCPClient().connect(
                self.host, self.port, timeout=self.limits.connect_timeout
            )
        except TimeoutError:
            raise Timeout(f"the service did not accept a connection on port {self.port}") from None
        except (OSError, StreamClosedError) as exc:
            raise AgentError(f"the service does not answer on port {self.port}: {exc}") from None
        self._stream.set_nodelay(True)
        self._conn = HTTP1Connection(
            self._stream,
            True,
            HTTP1ConnectionParameters(
                no_keep_alive=True,
                max_header_size=self.limits.max_header_size,
                header_timeout=self.limits.response_timeout,
                max_body_size=2**62,
                body_timeout=self.limits.body_timeout,
                decompress=False,
                chunk_size=64 * 1024,
            ),
        )
        headers["Connection"] = "close"
        if not has_body:
            headers.pop("Content-Length", None)
            headers.pop("Transfer-Encoding", None)
        await self._guard(
            self._conn.write_headers(httputil.RequestStartLine(method, uri, "HTTP/1.1"), headers)
        )

    async def _guard(self, future: Awaitable[None]) -> None:
        try:
            await future
        except StreamClosedError:
            raise AgentError("the service closed the connection") from None

    async def write(self, chunk: bytes) -> None:
        """Send a piece of the request body; returns once it left (flow control upward)."""
        assert self._conn is not None
        await self._guard(self._conn.write(chunk))

    async def respond(self, on_headers: OnHeaders, on_chunk: OnChunk) -> bool:
        """Finish the request and stream the response; whether it arrived whole."""
        assert self._conn is not None
        self._conn.finish()
        delegate = _ResponseDelegate(on_headers, on_chunk)
        try:
            await self._conn.read_response(delegate)
        except StreamClosedError:
            pass
        finally:
            self.close()
        if not delegate.got_headers:
            raise AgentError("the service closed the connection without an answer")
        return delegate.finished

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()


class ProxyContext:
    """What the proxy handlers share: the services, the tokens, limits and names."""

    def __init__(
        self,
        services: ServicesService,
        tokens: ProxyTokens,
        limits: ProxyLimits,
        domain: str,
        jupyter_cookies: list[str],
        same_origin: bool = False,
    ) -> None:
        self.services = services
        self.tokens = tokens
        self.limits = limits
        self.domain = domain
        #: Cookies of the Jupyter server, never forwarded (its login cookie, its XSRF cookie).
        self.jupyter_cookies = jupyter_cookies
        #: The opt-in mode: services under the server's own origin and paths.
        self.same_origin = same_origin


class _ProxyBase(web.RequestHandler):
    """Authentication of a proxied request and the one JSON error shape."""

    context: ProxyContext
    running: RunningService

    def initialize(self, context: ProxyContext) -> None:
        self.context = context

    def check_xsrf_cookie(self) -> None:
        """Not Jupyter's XSRF: the proxy's cookie is SameSite=Lax and unsafe methods must come
        from the service's own origin (``_check_origin``)."""

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        if exc_info and isinstance(exc_info[1], SessionsError):
            status_code = exc_info[1].status_code
        super().send_error(status_code, **kwargs)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.set_header("Cache-Control", "no-store")
        self.finish(json.dumps(error_body(status_code, kwargs.get("exc_info"))))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, SessionsError):
            return
        super().log_exception(typ, value, tb)

    def _own_origin(self) -> str:
        return f"{self.request.protocol}://{self.request.host}"

    def _claims(self, session_id: str, service: str) -> TokenClaims | None:
        """The credential's claims; None when a URL token was exchanged (answered already)."""
        tokens = self.context.tokens
        token = self.get_query_argument(tokens.query_name, None)
        if token is not None and self.request.method in ("GET", "HEAD"):
            claims = tokens.verify(token, "url")
            self._match(claims, session_id, service)
            self.context.services.target(session_id, service, claims)
            cookie = tokens.mint(session_id, service, claims.access_key, kind="cookie")
            self.set_cookie(
                tokens.cookie_name,
                cookie,
                path="/",
                httponly=True,
                secure=self.request.protocol == "https",
                samesite="Lax",
                max_age=int(tokens.cookie_ttl),
            )
            self.set_header("Cache-Control", "no-store")
            self.set_header("Referrer-Policy", "no-referrer")
            self.redirect(without_query_param(self.request.uri or "/", tokens.query_name))
            return None
        claims = tokens.verify(self.get_cookie(tokens.cookie_name), "cookie")
        self._match(claims, session_id, service)
        return claims

    @staticmethod
    def _match(claims: TokenClaims, session_id: str, service: str) -> None:
        if claims.session_id != session_id or claims.service != service:
            raise Unauthenticated("this credential is for another service")

    def _check_origin(self) -> None:
        """State-changing requests only from the service's own origin (no cross-site forms)."""
        if self.request.method not in UNSAFE_METHODS:
            return
        site = self.request.headers.get("Sec-Fetch-Site")
        if site is not None and site not in ("same-origin", "none"):
            raise PermissionDenied("cross-site requests to a service are refused")
        origin = self.request.headers.get("Origin")
        if origin is not None and origin != self._own_origin():
            raise PermissionDenied("cross-origin requests to a service are refused")

    def _authorize(self) -> RunningService | None:
        parsed = parse_host(self.request.host_name, self.context.domain)
        if parsed is None:
            raise NotFound("no such service here")
        if not check_path(self.request.uri or ""):
            raise InvalidRequest("only paths are proxied, never URLs naming a host")
        claims = self._claims(*parsed)
        if claims is None:
            return None
        running = self.context.services.target(parsed[0], parsed[1], claims)
        self._check_origin()
        return running

    def _dropped_cookies(self) -> list[str]:
        return [self.context.tokens.cookie_name, *self.context.jupyter_cookies]

    def _upstream_uri(self) -> str:
        return without_query_param(self.request.uri or "/", self.context.tokens.query_name)

    def _upstream_headers(self, websocket: bool = False) -> httputil.HTTPHeaders:
        pairs = request_headers(
            list(self.request.headers.get_all()),
            drop_cookies=self._dropped_cookies(),
            remote_ip=self.request.remote_ip or "",
            scheme=self.request.protocol,
            websocket=websocket,
        )
        headers = httputil.HTTPHeaders()
        for name, value in pairs:
            headers.add(name, value)
        return headers


@web.stream_request_body
class ServiceHTTPProxy(_ProxyBase):
    """HTTP to a service, both bodies streamed with flow control."""

    SUPPORTED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
    upstream: UpstreamHTTP | None = None
    has_body = False

    async def prepare(self) -> None:
        running = self._authorize()
        if running is None:
            return
        self.running = running
        self.request.connection.set_max_body_size(self.context.limits.max_request_body)  # type: ignore[union-attr]
        headers = self._upstream_headers()
        method = self.request.method or "GET"
        length = self.request.headers.get("Content-Length")
        chunked = "chunked" in self.request.headers.get("Transfer-Encoding", "").lower()
        self.has_body = method in BODY_METHODS and (chunked or int(length or 0) > 0)
        if self.has_body and length is None and method not in ("POST", "PUT", "PATCH"):
            # Upstream, only these are sent chunked: anything else needs its length up front.
            raise web.HTTPError(411, reason="Length Required")
        self.upstream = UpstreamHTTP(running.host, running.port, self.context.limits)
        await self.upstream.open(method, self._upstream_uri(), headers, self.has_body)

    async def data_received(self, chunk: bytes) -> None:
        # A body the request line does not allow (a GET's) never goes upstream: its bytes
        # would read as another request on the service's connection.
        if self.upstream is not None and self.has_body:
            await self.upstream.write(chunk)

    async def _respond(self) -> None:
        upstream = self.upstream
        assert upstream is not None

        def on_headers(start: httputil.ResponseStartLine, headers: httputil.HTTPHeaders) -> None:
            self.set_status(start.code, start.reason or "Unknown")
            for name in ("Content-Type", "Server", "Date"):
                self.clear_header(name)
            for name, value in response_headers(list(headers.get_all())):
                self.add_header(name, value)

        async def on_chunk(chunk: bytes) -> None:
            try:
                self.write(chunk)
                await self.flush()  # resolves once the client took it: the upstream waits
            except StreamClosedError:
                upstream.close()  # the client went away: so does the exchange with the service

        complete = await upstream.respond(on_headers, on_chunk)
        if not complete:
            # The service broke off mid-body: the client must see a broken response, not a
            # short one that looks whole.
            self.request.connection.close()  # type: ignore[union-attr]
            return
        self.finish()

    def on_connection_close(self) -> None:
        if self.upstream is not None:
            self.upstream.close()

    async def get(self, *args: Any, **kwargs: Any) -> None:
        await self._respond()

    async def head(self, *args: Any, **kwargs: Any) -> None:
        await self._respond()

    async def post(self, *args: Any, **kwargs: Any) -> None:
        await self._respond()

    async def put(self, *args: Any, **kwargs: Any) -> None:
        await self._respond()

    async def patch(self, *args: Any, **kwargs: Any) -> None:
        await self._respond()

    async def delete(self, *args: Any, **kwargs: Any) -> None:
        await self._respond()

    async def options(self, *args: Any, **kwargs: Any) -> None:
        await self._respond()


class ServiceWebSocketProxy(_ProxyBase, WebSocketHandler):
    """A WebSocket to a service: authenticated before the upgrade, frames relayed both ways."""

    upstream: WebSocketClientConnection | None = None
    pump: asyncio.Task[None] | None = None

    async def get(self, *args: Any, **kwargs: Any) -> None:
        running = self._authorize()
        if running is None:
            return  # a URL token was exchanged: the redirect is the answer
        self.running = running
        origin = self.request.headers.get("Origin")
        if origin is not None and origin != self._own_origin():
            raise PermissionDenied("WebSockets to a service must come from its own origin")
        uri = self._upstream_uri()
        protocols = [
            p.strip()
            for p in self.request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()
        ]
        limits = self.context.limits
        request = HTTPRequest(
            f"ws://{running.host}:{running.port}{uri}",
            headers=self._upstream_headers(websocket=True),
            connect_timeout=limits.connect_timeout,
            request_timeout=limits.response_timeout,
        )
        try:
            self.upstream = await websocket_connect(
                request,
                subprotocols=protocols or None,
                max_message_size=limits.max_ws_message,
            )
        except Exception as exc:
            raise AgentError(f"the service refused the WebSocket: {exc}") from None
        await super().get(*args, **kwargs)

    def select_subprotocol(self, subprotocols: list[str]) -> str | None:
        return self.upstream.selected_subprotocol if self.upstream is not None else None

    def get_compression_options(self) -> dict[str, Any] | None:
        return None

    def open(self, *args: Any, **kwargs: Any) -> None:
        self.set_nodelay(True)
        self.pump = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        """Service → browser; awaiting each write keeps a slow browser from filling memory."""
        upstream = self.upstream
        assert upstream is not None
        try:
            while (message := await upstream.read_message()) is not None:
                await self.write_message(message, binary=isinstance(message, bytes))
        except Exception:  # the browser went away
            upstream.close()
            return
        self.close(upstream.close_code or 1000, upstream.close_reason or "")

    async def on_message(self, message: str | bytes) -> None:
        """Browser → service; tornado reads the next frame only once this returns."""
        if self.upstream is not None:
            try:
                await self.upstream.write_message(message, binary=isinstance(message, bytes))
            except Exception:
                self.close(1011, "the service went away")

    def on_close(self) -> None:
        if self.upstream is not None:
            self.upstream.close(self.close_code or 1000, self.close_reason or "")
        if self.pump is not None and not self.pump.done():
            self.pump.cancel()


# --- the opt-in same-origin mode: {base_url}jupyter-sessions/proxy/{session}/{service}/... ------


class _SameOrigin(_ProxyBase, JupyterHandler):
    """Authenticated by Jupyter itself (token, login cookie, keypair), then stripped of it.

    The app shares the Jupyter server's origin here: its JavaScript could read the server's
    XSRF cookie and call its API. That is the mode's documented risk (docs/services.md).
    """

    async def _jupyter_auth(self) -> None:
        await JupyterHandler.prepare(self, _redirect_to_login=False)
        if self.current_user is None:
            raise Unauthenticated("authentication required: a Jupyter token or login cookie")

    def _authorize(self) -> RunningService | None:
        session_id, service = self.path_kwargs["session_id"], self.path_kwargs["service"]
        if not check_path(self.request.uri or ""):
            raise InvalidRequest("only paths are proxied, never URLs naming a host")
        caller = self.settings["jupyter_sessions"].identity.caller_for(self.current_user)
        running = self.context.services.target_for_caller(
            session_id, service, caller.access_key, caller.is_admin
        )
        self._check_origin()
        return running

    def _upstream_uri(self) -> str:
        uri = without_query_param(self.request.uri or "/", self.context.tokens.query_name)
        uri = without_query_param(uri, "token")  # Jupyter's own token never goes upstream
        if not self.running.knows_base_url:
            # An app not told its base URL (http.server) gets paths relative to its root.
            uri = uri[len(self.running.base_url.rstrip("/")) :]
            uri = uri if uri.startswith("/") else "/" + uri
        return uri

    def _dropped_cookies(self) -> list[str]:
        login = self.identity_provider.get_cookie_name(self)
        return [*super()._dropped_cookies(), login, "_xsrf"]


class SameOriginHTTPProxy(_SameOrigin, ServiceHTTPProxy):
    async def prepare(self) -> None:  # type: ignore[override]
        await self._jupyter_auth()
        await ServiceHTTPProxy.prepare(self)


class SameOriginWebSocketProxy(_SameOrigin, ServiceWebSocketProxy):
    async def get(self, *args: Any, **kwargs: Any) -> None:
        await self._jupyter_auth()
        await ServiceWebSocketProxy.get(self, *args, **kwargs)


class _ProxyRouter(Router):
    """Picks the WebSocket or the HTTP handler for a proxied request."""

    def __init__(self, app: web.Application, context: ProxyContext, same_origin: bool) -> None:
        self.app = app
        self.context = context
        self.same_origin = same_origin
        base = app.settings.get("base_url", "/").rstrip("/")
        self.path = re.compile(
            rf"^{re.escape(base)}/jupyter-sessions/proxy/(?P<session_id>{SESSION_ID})/"
            rf"(?P<service>{SERVICE})(?:/.*)?$"
        )

    def find_handler(
        self, request: httputil.HTTPServerRequest, **kwargs: Any
    ) -> httputil.HTTPMessageDelegate | None:
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"
        target: dict[str, Any] = {"context": self.context}
        if not self.same_origin:
            handler: type[web.RequestHandler] = (
                ServiceWebSocketProxy if upgrade else ServiceHTTPProxy
            )
            return self.app.get_handler_delegate(request, handler, target)
        match = self.path.match(request.path or "")
        if match is None:
            return None
        handler = SameOriginWebSocketProxy if upgrade else SameOriginHTTPProxy
        return self.app.get_handler_delegate(
            request,
            handler,
            target,
            path_kwargs={k: v.encode() for k, v in match.groupdict().items()},
        )


def proxy_context(app: Any) -> ProxyContext:
    """The proxy's context from a SessionsApp (its services were made in initialize_settings)."""
    services = app.service.services
    cookie = getattr(app.serverapp.identity_provider, "cookie_name", "") or ""
    return ProxyContext(
        services=services,
        tokens=services.tokens,
        limits=services.config.limits,
        domain=services.config.domain,
        jupyter_cookies=[cookie] if cookie else [],
        same_origin=services.config.proxy_mode == "same-origin",
    )


def install_proxy_routes(web_app: web.Application, context: ProxyContext) -> None:
    """Route every service host to the proxy, ahead of all of the server's own routes; in the
    same-origin mode, the proxy's paths instead (any host the server answers)."""
    if context.same_origin:
        rule = Rule(AnyMatches(), _ProxyRouter(web_app, context, same_origin=True))
    else:
        rule = Rule(
            HostMatches(host_pattern(context.domain)),
            _ProxyRouter(web_app, context, same_origin=False),
        )
    web_app.default_router.rules.insert(0, rule)
