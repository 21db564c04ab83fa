"""The base of every route: authentication, the caller, JSON in and out, and the one error mapping.

Handlers stay thin: parse and validate the request, build an action, run it through its processor,
write the result. Every error becomes ``{"message", "reason"}`` with the status of the error tree
(``errors.py``); no traceback ever reaches a client.
"""

from __future__ import annotations

import json
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, ClassVar

from jupyter_server.base.handlers import APIHandler
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web

from ..errors import (
    InvalidRequest,
    RangeNotSatisfiable,
    SessionsError,
    TooLarge,
    Unauthenticated,
)
from ..identity import Caller

if TYPE_CHECKING:
    from ..app import SessionsApp

MAX_JSON_BODY = 1 * 2**20
API_PREFIX = "/jupyter-sessions/api"
#: A session reference in a route: an id, or the name of one of the caller's own sessions.
REF = r"(?P<ref>[^/]+)"


class SessionsHandlerMixin:
    """What every handler of ours shares, HTTP or WebSocket: the app, the caller, JSON errors."""

    settings: dict[str, Any]
    current_user: Any
    request: Any
    log: Any

    @property
    def sessions_app(self) -> SessionsApp:
        return self.settings["jupyter_sessions"]

    @property
    def processors(self) -> Any:
        return self.sessions_app.processors

    @property
    def caller(self) -> Caller:
        return self.sessions_app.identity.caller_for(self.current_user)

    @property
    def acting_for(self) -> str | None:
        """``?owner_access_key=``: an admin acting for another key (an empty value means none)."""
        return self.get_query_argument("owner_access_key", None) or None  # type: ignore[attr-defined]

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        exc_info = kwargs.get("exc_info")
        if exc_info and isinstance(exc_info[1], SessionsError):
            status_code = exc_info[1].status_code
        super().send_error(status_code, **kwargs)  # type: ignore[misc]

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")  # type: ignore[attr-defined]
        if status_code == 401:
            self.set_header("WWW-Authenticate", 'Token realm="jupyter_sessions"')  # type: ignore[attr-defined]
        error = kwargs["exc_info"][1] if kwargs.get("exc_info") else None
        if isinstance(error, RangeNotSatisfiable):
            self.set_header("Content-Range", f"bytes */{error.size}")  # type: ignore[attr-defined]
        self.finish(json.dumps(error_body(status_code, kwargs.get("exc_info"))))  # type: ignore[attr-defined]

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, SessionsError):
            self.log.info(
                "%s %s → %d %s",
                self.request.method,
                self.request.path,
                value.status_code,
                value.message,
            )
            return
        super().log_exception(typ, value, tb)  # type: ignore[misc]


def error_body(status_code: int, exc_info: Any) -> dict[str, Any]:
    """The JSON of an error: ours as they are, tornado's by status, anything else generic."""
    error = exc_info[1] if exc_info else None
    if isinstance(error, SessionsError):
        return error.to_json()
    if isinstance(error, web.HTTPError) or error is None:
        phrase = (
            HTTPStatus(status_code).phrase
            if status_code in HTTPStatus._value2member_map_
            else "Error"
        )
        message = getattr(error, "log_message", None) or phrase
        reason = getattr(error, "reason", None) or phrase.lower().replace(" ", "-")
        return {"message": message, "reason": reason}
    return {"message": "internal server error (logged on the server)", "reason": "internal-error"}


class SessionsAPIHandler(SessionsHandlerMixin, ExtensionHandlerMixin, APIHandler):
    """Base of the REST handlers (subclasses set ``auth_resource`` and ``openapi``)."""

    auth_resource = "jupyter_sessions:sessions"
    #: OpenAPI operation objects by lower-case HTTP method (see handlers/openapi.py).
    openapi: ClassVar[dict[str, dict[str, Any]]] = {}

    async def prepare(self) -> None:  # type: ignore[override]
        await super().prepare()
        if self.current_user is None:
            raise Unauthenticated("authentication required: a Jupyter token or login cookie")
        await self.sessions_app.ensure_started()

    # --- input -------------------------------------------------------------------------------

    def json_body(self) -> Any:
        body = self.request.body or b""
        if len(body) > MAX_JSON_BODY:
            raise TooLarge(f"the JSON body is over {MAX_JSON_BODY} bytes")
        if not body.strip():
            return {}
        try:
            return json.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise InvalidRequest(f"the body is not valid JSON: {exc}") from None

    def bool_arg(self, name: str, default: bool = False) -> bool:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on", ""):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise InvalidRequest(f"query parameter {name} must be true or false", field=name)

    def int_arg(self, name: str, default: int, *, minimum: int = 0, maximum: int = 10_000) -> int:
        raw = self.get_query_argument(name, None)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise InvalidRequest(f"query parameter {name} must be an integer", field=name) from None
        if not minimum <= value <= maximum:
            raise InvalidRequest(
                f"query parameter {name} must be from {minimum} to {maximum}", field=name
            )
        return value

    # --- output ------------------------------------------------------------------------------

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json; charset=UTF-8")
        self.finish(json.dumps(payload))
