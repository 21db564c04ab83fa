"""The OpenAPI document at ``api/openapi.json``, generated from the route table itself.

Each handler class carries its operations (``openapi`` by HTTP method); the paths come from the
routes, so a route cannot exist without appearing here (a test checks every method is described).
"""

from __future__ import annotations

import re
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from .. import __version__
from .base import API_PREFIX, SessionsAPIHandler

_GROUP = re.compile(r"\(\?P<(\w+)>[^)]*\)")
HTTP_METHODS = ("get", "post", "put", "patch", "delete")

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["message", "reason"],
        "properties": {
            "message": {"type": "string"},
            "reason": {"type": "string"},
            "details": {"type": "object"},
        },
    },
    "Kernel": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "role": {"type": "string"},
            "status": {"type": "string"},
            "agent": {"type": ["string", "null"]},
            "container_id": {"type": ["string", "null"]},
        },
    },
    "Session": {
        "type": "object",
        "properties": {
            "id": {"type": "string", "format": "uuid"},
            "name": {"type": "string"},
            "status": {
                "type": "string",
                "enum": [
                    "PENDING",
                    "SCHEDULED",
                    "PREPARING",
                    "PULLING",
                    "PREPARED",
                    "CREATING",
                    "RUNNING",
                    "RESTARTING",
                    "RUNNING_DEGRADED",
                    "TERMINATING",
                    "TERMINATED",
                    "ERROR",
                    "CANCELLED",
                ],
            },
            "status_info": {"type": "string"},
            "status_changed_at": {"type": "string", "format": "date-time"},
            "result": {"type": "string", "enum": ["UNDEFINED", "SUCCESS", "FAILURE"]},
            "exit_code": {"type": ["integer", "null"]},
            "image": {"type": "string"},
            "type": {"type": "string", "enum": ["interactive", "batch"]},
            "cluster_mode": {"type": "string"},
            "cluster_size": {"type": "integer"},
            "scaling_group": {"type": "string"},
            "resources": {"$ref": "#/components/schemas/Resources"},
            "owner_access_key": {"type": "string"},
            "created_at": {"type": "string", "format": "date-time"},
            "terminated_at": {"type": ["string", "null"], "format": "date-time"},
            "kernels": {"type": "array", "items": {"$ref": "#/components/schemas/Kernel"}},
            "tag": {"type": ["string", "null"]},
            "priority": {"type": "integer"},
            "idle_timeout": {"type": ["integer", "null"]},
            "restarted_from": {"type": ["string", "null"]},
            "depends_on": {"type": "array", "items": {"type": "string"}},
        },
    },
    "Resources": {
        "type": "object",
        "description": "Slot name → amount: cpu cores (decimal), mem bytes or '4g' (binary units)",
        "properties": {
            "cpu": {"type": ["number", "string"]},
            "mem": {"type": ["integer", "string"]},
            "cuda.device": {"type": ["number", "string"]},
        },
        "additionalProperties": False,
    },
    "CreateSession": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "name": {
                "type": "string",
                "pattern": r"^\w[\w.-]*\w$",
                "minLength": 4,
                "maxLength": 64,
            },
            "image": {"type": "string"},
            "resources": {"$ref": "#/components/schemas/Resources"},
            "type": {"type": "string", "enum": ["interactive", "batch"]},
            "startup_command": {
                "type": "string",
                "maxLength": 65536,
                "description": "batch sessions: the shell command they run",
            },
            "batch_timeout": {"type": "number", "exclusiveMinimum": 0},
            "bootstrap_script": {
                "type": "string",
                "maxLength": 65536,
                "description": "shell script run in the work directory before "
                "RUNNING; its failure means ERROR with its output",
            },
            "depends_on": {
                "type": "array",
                "items": {"type": "string"},
                "maxItems": 64,
                "description": "ids or names of the caller's sessions that must "
                "end TERMINATED with SUCCESS first",
            },
            "cluster_mode": {"type": "string", "enum": ["single-node", "multi-node"]},
            "cluster_size": {"type": "integer", "minimum": 1, "maximum": 32},
            "environ": {"type": "object", "additionalProperties": {"type": "string"}},
            "tag": {"type": "string"},
            "scaling_group": {"type": "string", "default": "default"},
            "enqueue_only": {"type": "boolean"},
            "max_wait_seconds": {"type": "number", "minimum": 0, "maximum": 600},
            "reuse_if_exists": {"type": "boolean"},
            "owner_access_key": {
                "type": "string",
                "description": "Admins only: create the session for this keypair (its policy "
                "applies and it owns the session)",
            },
        },
        "description": "preopen_ports and mounts are part of the contract but "
        "answer 400 until their features land.",
    },
    "ExecuteRequest": {
        "type": "object",
        "required": ["mode"],
        "properties": {
            "mode": {"type": "string", "enum": ["query", "batch", "input", "continue"]},
            "code": {"type": "string", "description": "Code (query), or the answer (input)"},
            "run_id": {"type": "string", "description": "Also accepted as runId"},
            "options": {
                "type": "object",
                "properties": {
                    "timeout": {"type": "number", "description": "Seconds before exec-timeout"},
                    "flush_interval": {
                        "type": "number",
                        "description": "Seconds before answering continued",
                    },
                    "clean": {"type": "string"},
                    "build": {"type": "string"},
                    "exec": {"type": "string"},
                },
            },
        },
    },
    "ExecuteResult": {
        "type": "object",
        "properties": {
            "run_id": {"type": "string"},
            "status": {
                "type": "string",
                "enum": [
                    "finished",
                    "continued",
                    "waiting-input",
                    "build-finished",
                    "clean-finished",
                    "exec-timeout",
                ],
            },
            "exit_code": {"type": ["integer", "null"]},
            "console": {
                "type": "array",
                "items": {
                    "type": "array",
                    "prefixItems": [
                        {"type": "string", "enum": ["stdout", "stderr", "media", "html", "log"]},
                        {},
                    ],
                },
            },
            "options": {"type": "object"},
            "files": {"type": "array", "items": {"type": "object"}},
        },
    },
    "StatusChange": {
        "type": "object",
        "properties": {
            "kernel": {"type": ["string", "null"]},
            "from": {"type": ["string", "null"]},
            "to": {"type": "string"},
            "reason": {"type": "string"},
            "at": {"type": "string", "format": "date-time"},
        },
    },
    "Image": {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "present": {"type": "boolean"},
            "is_default": {"type": "boolean"},
            "agents": {"type": "array", "items": {"type": "string"}},
            "size": {"type": ["integer", "null"]},
            "labels": {"type": "object"},
        },
    },
    "Agent": {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "kind": {"type": "string"},
            "url": {"type": "string"},
            "scaling_group": {"type": "string"},
            "status": {"type": "string"},
            "status_info": {"type": "string"},
            "capacity": {"type": "object"},
            "last_seen": {"type": "string", "format": "date-time"},
        },
    },
}


def openapi_path(pattern: str) -> str:
    """``/jupyter-sessions/api/sessions/(?P<ref>[^/]+)`` → ``/sessions/{ref}``."""
    path = pattern.removeprefix(API_PREFIX)
    path = _GROUP.sub(lambda m: "{" + m.group(1) + "}", path)
    return path.rstrip("$") or "/"


def implemented_methods(handler: type) -> list[str]:
    return [
        m
        for m in HTTP_METHODS
        if m in vars(handler)
        or any(
            m in vars(base)
            for base in handler.__mro__
            if issubclass(base, SessionsAPIHandler) and base is not SessionsAPIHandler
        )
    ]


def build_document(routes: list[tuple[str, type]], base_url: str = "/") -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for pattern, handler in routes:
        operations = getattr(handler, "openapi", {})
        path_item = paths.setdefault(openapi_path(pattern), {})
        for method in implemented_methods(handler):
            operation = dict(operations.get(method, {}))
            operation.setdefault("responses", {"default": {"description": "undocumented"}})
            operation["x-auth-resource"] = getattr(handler, "auth_resource", None)
            path_item[method] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "jupyter_sessions",
            "version": __version__,
            "description": "Managed compute sessions: containers hosting Jupyter kernels.",
        },
        "servers": [{"url": base_url.rstrip("/") + API_PREFIX}],
        "security": [{"token": []}],
        "paths": paths,
        "components": {
            "schemas": SCHEMAS,
            "responses": {
                "Error": {
                    "description": "An error",
                    "content": {
                        "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                    },
                }
            },
            "securitySchemes": {
                "token": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "Authorization",
                    "description": "'token <Jupyter server token>'",
                },
            },
        },
    }


class OpenAPIHandler(SessionsAPIHandler):
    openapi = {
        "get": {
            "operationId": "openapi",
            "summary": "This document",
            "responses": {"200": {"description": "The OpenAPI 3.1 document"}},
        },
    }

    @web.authenticated
    @authorized
    async def get(self) -> None:
        from . import default_handlers

        self.write_json(build_document(default_handlers, self.base_url))
