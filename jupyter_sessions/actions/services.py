"""Service actions: list, start and shut down a session's services; their proxy URLs.

``StartServiceAction.from_json`` checks the shape of ``POST sessions/{ref}/services/{name}/start``
(``{port?, arguments?, environ?}``); what the catalog allows is checked by ``services.py``.
``scheme`` and ``request_port`` say how the API was reached, so the URLs answered point to the
same server.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

from ..errors import InvalidRequest
from .base import SessionRefAction

START_FIELDS = frozenset({"port", "arguments", "environ"})
MAX_ITEMS = 64


@dataclass(frozen=True, kw_only=True)
class ServiceRefAction(SessionRefAction):
    """An action that answers URLs: how the caller reached the API."""

    scheme: str = "http"
    request_port: int | None = None


@dataclass(frozen=True, kw_only=True)
class ListServicesAction(SessionRefAction):
    operation: ClassVar[str] = "list_services"


@dataclass(frozen=True, kw_only=True)
class StartServiceAction(ServiceRefAction):
    operation: ClassVar[str] = "start_service"
    service: str
    port: int | None = None
    arguments: Mapping[str, Any] = field(default_factory=dict)
    environ: Mapping[str, Any] = field(default_factory=dict)

    def target(self) -> str | None:
        return f"{self.ref}/{self.service}"

    @staticmethod
    def parse_body(body: Any) -> dict[str, Any]:
        """The body's fields, shape-checked (values are checked against the catalog later)."""
        if not isinstance(body, Mapping):
            raise InvalidRequest("the request body must be a JSON object")
        unknown = sorted(set(body) - START_FIELDS)
        if unknown:
            raise InvalidRequest(f"unknown fields: {', '.join(unknown)}", fields=unknown)
        port = body.get("port")
        if port is not None and (isinstance(port, bool) or not isinstance(port, int)):
            raise InvalidRequest("port must be an integer", field="port")
        parsed: dict[str, Any] = {"port": port}
        for key in ("arguments", "environ"):
            value = body.get(key) or {}
            if not isinstance(value, Mapping) or len(value) > MAX_ITEMS:
                raise InvalidRequest(
                    f"{key} must be an object of at most {MAX_ITEMS} entries", field=key
                )
            if not all(isinstance(k, str) for k in value):
                raise InvalidRequest(f"{key}: names must be strings", field=key)
            parsed[key] = dict(value)
        return parsed


@dataclass(frozen=True, kw_only=True)
class ShutdownServiceAction(SessionRefAction):
    operation: ClassVar[str] = "shutdown_service"
    service: str

    def target(self) -> str | None:
        return f"{self.ref}/{self.service}"


@dataclass(frozen=True, kw_only=True)
class GetDirectAccessInfoAction(ServiceRefAction):
    operation: ClassVar[str] = "get_direct_access_info"


@dataclass(frozen=True)
class ServiceView:
    """A catalog entry with its status: stopped, starting, running, unhealthy, dead, or
    unmanaged (its port answers, but this server did not start it)."""

    name: str
    protocol: str
    port: int
    source: str
    description: str
    status: str
    healthy: bool
    started_at: datetime | None
    exit_code: int | None
    arguments: list[str]
    environ: list[str]


@dataclass(frozen=True)
class StartServiceResult:
    service: ServiceView
    #: The service's URL with a short-lived token, exchanged for a cookie on first use.
    url: str


@dataclass(frozen=True)
class DirectAccessInfo:
    session_id: str
    proxy_mode: str
    #: Running services by name: ``{url, protocol, status}``.
    services: dict[str, dict[str, Any]]
    #: Host-published ports by service name, where the admin allows direct access.
    direct_ports: dict[str, dict[str, Any]]
    token_ttl: float
