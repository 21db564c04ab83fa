"""Service routes: list a session's services, start and shut one down, and its proxy URLs.

The URLs answered carry a short-lived token; they point at the server the request came to (its
scheme and port), on the service's own host name (``docs/services.md``).
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..actions.services import (
    DirectAccessInfo,
    GetDirectAccessInfoAction,
    ListServicesAction,
    ServiceView,
    ShutdownServiceAction,
    StartServiceAction,
)
from ..serialize import iso
from .base import API_PREFIX, REF, SessionsAPIHandler
from .schema import ERROR, ERRORS, error_responses, json_response
from .sessions import OWNER_PARAM, REF_PARAM

SERVICE = r"(?P<service>[^/]+)"
SERVICE_PARAM = {
    "name": "service",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "A service of the session's catalog (GET services lists them)",
}
MORE_ERRORS = error_responses(404, 409)
SERVICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "protocol": {"type": "string", "enum": ["http", "ws", "tcp"]},
        "port": {"type": "integer"},
        "source": {"type": "string", "enum": ["image", "config", "preopen"]},
        "description": {"type": "string"},
        "status": {
            "type": "string",
            "enum": ["stopped", "starting", "running", "unhealthy", "dead", "unmanaged"],
        },
        "healthy": {"type": "boolean"},
        "started_at": {"type": ["string", "null"], "format": "date-time"},
        "exit_code": {"type": ["integer", "null"]},
        "arguments": {"type": "array", "items": {"type": "string"}},
        "environ": {"type": "array", "items": {"type": "string"}},
    },
}
START_BODY = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "port": {"type": "integer", "minimum": 1024, "maximum": 65535},
        "arguments": {"type": "object", "additionalProperties": {"type": ["string", "boolean"]}},
        "environ": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def service_json(view: ServiceView) -> dict[str, Any]:
    return {
        "name": view.name,
        "protocol": view.protocol,
        "port": view.port,
        "source": view.source,
        "description": view.description,
        "status": view.status,
        "healthy": view.healthy,
        "started_at": iso(view.started_at),
        "exit_code": view.exit_code,
        "arguments": view.arguments,
        "environ": view.environ,
    }


def direct_access_json(info: DirectAccessInfo) -> dict[str, Any]:
    return {
        "session_id": info.session_id,
        "proxy_mode": info.proxy_mode,
        "services": info.services,
        "direct_ports": info.direct_ports,
        "token_ttl": info.token_ttl,
    }


class _ServiceHandler(SessionsAPIHandler):
    auth_resource = "jupyter_sessions:services"

    def _where(self) -> dict[str, Any]:
        """How the caller reached the API, so answered URLs point at the same server."""
        port = None
        host = self.request.host or ""
        if ":" in host.rsplit("]", 1)[-1]:
            tail = host.rsplit(":", 1)[1]
            port = int(tail) if tail.isdigit() else None
        return {"scheme": self.request.protocol, "request_port": port}


class ServicesHandler(_ServiceHandler):
    openapi = {
        "get": {
            "operationId": "list_services",
            "summary": "The session's services (image label, config, preopened ports), each "
            "with its status; health is re-checked now",
            "parameters": [REF_PARAM, OWNER_PARAM],
            "responses": {
                "200": json_response(
                    {
                        "type": "object",
                        "properties": {
                            "services": {"type": "array", "items": SERVICE_SCHEMA},
                            "total": {"type": "integer"},
                        },
                    },
                    "Services",
                ),
                **ERRORS,
                **MORE_ERRORS,
            },
        },
    }

    @web.authenticated
    @authorized
    async def get(self, ref: str) -> None:
        action = ListServicesAction(caller=self.caller, ref=ref, owner_access_key=self.acting_for)
        views = await self.processors.list_services.wait_for_complete(action)
        self.write_json({"services": [service_json(v) for v in views], "total": len(views)})


class StartServiceHandler(_ServiceHandler):
    openapi = {
        "post": {
            "operationId": "start_service",
            "summary": "Start a service in the session; answers once it answers on its port, "
            "with its URL (a short-lived token inside)",
            "parameters": [REF_PARAM, SERVICE_PARAM, OWNER_PARAM],
            "requestBody": {"content": {"application/json": {"schema": START_BODY}}},
            "responses": {
                "200": json_response(
                    {
                        "type": "object",
                        "properties": {"service": SERVICE_SCHEMA, "url": {"type": "string"}},
                    },
                    "Started",
                ),
                **ERRORS,
                **MORE_ERRORS,
                "502": ERROR,
                "504": ERROR,
            },
        },
    }

    @web.authenticated
    @authorized
    async def post(self, ref: str, service: str) -> None:
        body = StartServiceAction.parse_body(self.json_body())
        action = StartServiceAction(
            caller=self.caller,
            ref=ref,
            owner_access_key=self.acting_for,
            service=service,
            **body,
            **self._where(),
        )
        result = await self.processors.start_service.wait_for_complete(action)
        self.write_json({"service": service_json(result.service), "url": result.url})


class ShutdownServiceHandler(_ServiceHandler):
    openapi = {
        "post": {
            "operationId": "shutdown_service",
            "summary": "Stop a running service (TERM, then KILL after a grace period)",
            "parameters": [REF_PARAM, SERVICE_PARAM, OWNER_PARAM],
            "responses": {
                "200": json_response(
                    {"type": "object", "properties": {"service": SERVICE_SCHEMA}}, "Stopped"
                ),
                **ERRORS,
                **MORE_ERRORS,
            },
        },
    }

    @web.authenticated
    @authorized
    async def post(self, ref: str, service: str) -> None:
        action = ShutdownServiceAction(
            caller=self.caller, ref=ref, owner_access_key=self.acting_for, service=service
        )
        view = await self.processors.shutdown_service.wait_for_complete(action)
        self.write_json({"service": service_json(view)})


class DirectAccessInfoHandler(_ServiceHandler):
    openapi = {
        "get": {
            "operationId": "get_direct_access_info",
            "summary": "Proxy URLs (fresh short-lived tokens) of the session's running services",
            "parameters": [REF_PARAM, OWNER_PARAM],
            "responses": {
                "200": json_response(
                    {
                        "type": "object",
                        "properties": {
                            "session_id": {"type": "string"},
                            "proxy_mode": {"type": "string", "enum": ["origin", "same-origin"]},
                            "services": {"type": "object"},
                            "direct_ports": {"type": "object"},
                            "token_ttl": {"type": "number"},
                        },
                    },
                    "How to reach the services",
                ),
                **ERRORS,
                **MORE_ERRORS,
            },
        },
    }

    @web.authenticated
    @authorized
    async def get(self, ref: str) -> None:
        action = GetDirectAccessInfoAction(
            caller=self.caller, ref=ref, owner_access_key=self.acting_for, **self._where()
        )
        info = await self.processors.get_direct_access_info.wait_for_complete(action)
        self.write_json(direct_access_json(info))


service_handlers: list[tuple[str, type]] = [
    (rf"{API_PREFIX}/sessions/{REF}/services", ServicesHandler),
    (rf"{API_PREFIX}/sessions/{REF}/services/{SERVICE}/start", StartServiceHandler),
    (rf"{API_PREFIX}/sessions/{REF}/services/{SERVICE}/shutdown", ShutdownServiceHandler),
    (rf"{API_PREFIX}/sessions/{REF}/direct-access-info", DirectAccessInfoHandler),
]
