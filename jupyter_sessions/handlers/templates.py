"""Routes of session templates: CRUD under ``templates``, and ``POST sessions/from-template``.

Thin like every handler. A template's owner key is shown to its owner and to admins only; other
users see that a shared template exists, not whose key made it.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..actions.templates import (
    PARAM_TYPES,
    CreateFromTemplateAction,
    CreateTemplateAction,
    DeleteTemplateAction,
    FromTemplateRequest,
    GetTemplateAction,
    ListTemplatesAction,
    ModifyTemplateAction,
    TemplateChanges,
    TemplateSpec,
)
from ..identity import Caller
from ..repository.repository import TemplateData
from ..serialize import iso, session_json
from .base import API_PREFIX, SessionsAPIHandler
from .schema import ERROR, ERRORS, json_response
from .sessions import SESSION

TEMPLATE_ID = r"(?P<template_id>[^/]+)"
ERROR = ERROR
ID_PARAM = {
    "name": "template_id",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "A template id",
}
PARAMETER_SCHEMA = {
    "type": "object",
    "required": ["type"],
    "additionalProperties": False,
    "properties": {
        "type": {"type": "string", "enum": list(PARAM_TYPES)},
        "default": {"description": "A value of the declared type"},
        "description": {"type": "string"},
    },
}
TEMPLATE_BODY_FIELDS = {
    "name": {"type": "string", "minLength": 1, "maxLength": 128},
    "body": {
        "type": "object",
        "description": 'A POST sessions body; any value may be a placeholder {"$param": '
        '"<name>"}, replaced by that parameter\'s whole value (never inside a string)',
    },
    "parameters": {"type": "object", "additionalProperties": PARAMETER_SCHEMA},
    "shared": {
        "type": "boolean",
        "description": "Visible to every user (admins only; the default for admins' templates)",
    },
}
TEMPLATE = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        **TEMPLATE_BODY_FIELDS,
        "owner_access_key": {
            "type": ["string", "null"],
            "description": "Shown to its owner and to admins only",
        },
        "mine": {"type": "boolean"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
}


def template_json(template: TemplateData, caller: Caller) -> dict[str, Any]:
    mine = template.owner_access_key == caller.access_key
    return {
        "id": template.id,
        "name": template.name,
        "shared": template.shared,
        "mine": mine,
        "owner_access_key": template.owner_access_key if mine or caller.is_admin else None,
        "body": template.body,
        "parameters": template.parameters,
        "created_at": iso(template.created_at),
        "updated_at": iso(template.updated_at),
    }


class TemplatesHandler(SessionsAPIHandler):
    openapi = {
        "get": {
            "operationId": "list_templates",
            "summary": "Templates the caller may use: their own and the shared ones (admins: all)",
            "responses": {
                "200": json_response(
                    {
                        "type": "object",
                        "properties": {
                            "templates": {"type": "array", "items": TEMPLATE},
                            "total": {"type": "integer"},
                        },
                    },
                    "The templates, oldest first",
                ),
                **ERRORS,
            },
        },
        "post": {
            "operationId": "create_template",
            "summary": "Store a template: a POST sessions body with typed parameters",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["name", "body"],
                            "additionalProperties": False,
                            "properties": TEMPLATE_BODY_FIELDS,
                        }
                    }
                },
            },
            "responses": {"201": json_response(TEMPLATE, "The template"), **ERRORS},
        },
    }

    @web.authenticated
    @authorized
    async def get(self) -> None:
        caller = self.caller
        templates = await self.processors.list_templates.wait_for_complete(
            ListTemplatesAction(caller=caller)
        )
        self.write_json(
            {"templates": [template_json(t, caller) for t in templates], "total": len(templates)}
        )

    @web.authenticated
    @authorized
    async def post(self) -> None:
        caller = self.caller
        action = CreateTemplateAction(caller=caller, spec=TemplateSpec.from_json(self.json_body()))
        template = await self.processors.create_template.wait_for_complete(action)
        self.write_json(template_json(template, caller), status=201)


class TemplateHandler(SessionsAPIHandler):
    openapi = {
        "get": {
            "operationId": "get_template",
            "summary": "A template (others' private templates answer 404)",
            "parameters": [ID_PARAM],
            "responses": {"200": json_response(TEMPLATE, "The template"), **ERRORS, "404": ERROR},
        },
        "patch": {
            "operationId": "modify_template",
            "summary": "Replace a template's name, body, parameters or shared flag (its owner "
            "or an admin)",
            "parameters": [ID_PARAM],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "minProperties": 1,
                            "additionalProperties": False,
                            "properties": TEMPLATE_BODY_FIELDS,
                        }
                    }
                },
            },
            "responses": {"200": json_response(TEMPLATE, "The template"), **ERRORS, "404": ERROR},
        },
        "delete": {
            "operationId": "delete_template",
            "summary": "Delete a template (its owner or an admin)",
            "parameters": [ID_PARAM],
            "responses": {"204": {"description": "Deleted"}, **ERRORS, "404": ERROR},
        },
    }

    @web.authenticated
    @authorized
    async def get(self, template_id: str) -> None:
        caller = self.caller
        template = await self.processors.get_template.wait_for_complete(
            GetTemplateAction(caller=caller, template_id=template_id)
        )
        self.write_json(template_json(template, caller))

    @web.authenticated
    @authorized
    async def patch(self, template_id: str) -> None:
        caller = self.caller
        action = ModifyTemplateAction(
            caller=caller,
            template_id=template_id,
            changes=TemplateChanges.from_json(self.json_body()),
        )
        template = await self.processors.modify_template.wait_for_complete(action)
        self.write_json(template_json(template, caller))

    @web.authenticated
    @authorized
    async def delete(self, template_id: str) -> None:
        await self.processors.delete_template.wait_for_complete(
            DeleteTemplateAction(caller=self.caller, template_id=template_id)
        )
        self.set_status(204)
        self.finish()


class FromTemplateHandler(SessionsAPIHandler):
    """``sessions/from-template``: listed before ``sessions/{ref}``, whose pattern matches it."""

    openapi = {
        "post": {
            "operationId": "create_from_template",
            "summary": "Create a session from a template: its body with the parameters filled "
            "in and any POST sessions field given here laid over it; then exactly as POST "
            "sessions (same validation and resource policy)",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["template_id"],
                            "properties": {
                                "template_id": {"type": "string"},
                                "parameters": {
                                    "type": "object",
                                    "description": "Parameter name → value of its type",
                                },
                                "enqueue_only": {"type": "boolean"},
                            },
                            "additionalProperties": True,
                            "description": "Any other field is a POST sessions field that "
                            "overrides the template's",
                        }
                    }
                },
            },
            "responses": {
                "200": json_response(SESSION, "reuse_if_exists found this session"),
                "201": json_response(SESSION, "Created (with the status it has by then)"),
                **ERRORS,
                "404": ERROR,
                "409": ERROR,
                "429": ERROR,
                "503": ERROR,
            },
        },
    }

    @web.authenticated
    @authorized
    async def post(self) -> None:
        action = CreateFromTemplateAction(
            caller=self.caller, request=FromTemplateRequest.from_json(self.json_body())
        )
        result = await self.processors.create_from_template.wait_for_complete(action)
        self.write_json(session_json(result.session), status=201 if result.created else 200)


template_handlers: list[tuple[str, type]] = [
    (rf"{API_PREFIX}/templates", TemplatesHandler),
    (rf"{API_PREFIX}/templates/{TEMPLATE_ID}", TemplateHandler),
]
