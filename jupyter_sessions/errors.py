"""The one error tree of jupyter_sessions and its HTTP mapping.

Every failure a client can cause or observe is one of these classes. Handlers map them to JSON
``{"message", "reason"}`` with the class's status in one place (``handlers/base.py``); the service
and the agents raise them and never import tornado.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SessionsError(Exception):
    """Base of every error a client may see; ``reason`` is a short machine-readable word."""

    status_code: ClassVar[int] = 500
    reason: ClassVar[str] = "internal-error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"message": self.message, "reason": self.reason}
        if self.details:
            body["details"] = self.details
        return body


class InvalidRequest(SessionsError):
    """Malformed input, or a parameter whose feature is not built yet (named, never ignored)."""

    status_code = 400
    reason = "invalid-request"


class Unauthenticated(SessionsError):
    status_code = 401
    reason = "unauthenticated"


class PermissionDenied(SessionsError):
    """Not allowed, including a request larger than the caller's policy allows."""

    status_code = 403
    reason = "permission-denied"


class NotFound(SessionsError):
    """Missing, or belonging to someone else (a user never learns others' sessions exist)."""

    status_code = 404
    reason = "not-found"


class InvalidStatus(SessionsError):
    """The action is not allowed in the session's current status (named in the message)."""

    status_code = 409
    reason = "invalid-status"


class Conflict(SessionsError):
    status_code = 409
    reason = "conflict"


class TooLarge(SessionsError):
    status_code = 413
    reason = "too-large"


class RangeNotSatisfiable(SessionsError):
    """A byte range past the end of a file (RFC 9110 §15.5.17); the answer names the size."""

    status_code = 416
    reason = "range-not-satisfiable"

    def __init__(self, message: str, *, size: int) -> None:
        super().__init__(message, size=size)
        self.size = size


class QuotaExceeded(SessionsError):
    status_code = 429
    reason = "quota-exceeded"


class AgentError(SessionsError):
    """The agent (Docker engine) answered with an error we could not turn into a user error."""

    status_code = 502
    reason = "agent-error"


class AgentUnavailable(SessionsError):
    status_code = 503
    reason = "agent-unavailable"


class Timeout(SessionsError):
    status_code = 504
    reason = "timeout"
