"""Admin routes: keypairs, resource policies and the audit log (``jupyter_sessions:admin``).

Thin like every handler: parse the request into an action, run it through the account
processors, write the JSON. A keypair's secret appears in one answer only, ``POST keypairs``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..accounts import AccountProcessors
from ..actions.accounts import (
    CreateKeypairAction,
    CreateResourcePolicyAction,
    GetAuditLogAction,
    GetResourcePolicyAction,
    ListKeypairsAction,
    ListResourcePoliciesAction,
    ModifyResourcePolicyAction,
    NewKeypairParams,
    NewPolicyParams,
    PolicyChanges,
    RevokeKeypairAction,
)
from ..repository.accounts import POLICY_LIMITS, ResourcePolicyData
from ..repository.repository import AuditEntry, KeypairData
from ..serialize import iso
from .base import API_PREFIX, SessionsAPIHandler
from .schema import ERROR, ERRORS, json_response

ACCESS_KEY = r"(?P<access_key>[^/]+)"
POLICY_NAME = r"(?P<name>[^/]+)"

# --- JSON shapes (DESIGN §4) ---------------------------------------------------------------------


def keypair_json(keypair: KeypairData) -> dict[str, Any]:
    """A keypair as listed: never its secret."""
    return {
        "access_key": keypair.access_key,
        "user": keypair.user,
        "is_admin": keypair.is_admin,
        "is_owner": keypair.is_owner,
        "is_active": keypair.revoked_at is None,
        "resource_policy": keypair.resource_policy,
        "created_at": iso(keypair.created_at),
        "revoked_at": iso(keypair.revoked_at),
    }


def policy_json(policy: ResourcePolicyData) -> dict[str, Any]:
    body: dict[str, Any] = {"name": policy.name}
    body.update({key: getattr(policy, key) for key in POLICY_LIMITS})
    body["created_at"] = iso(policy.created_at)
    return body


def audit_json(entry: AuditEntry) -> dict[str, Any]:
    return {
        "at": iso(entry.at),
        "access_key": entry.access_key,
        "action": entry.action,
        "target": entry.target,
        "outcome": entry.outcome,
        "error": entry.error,
        "duration_ms": entry.duration_ms,
    }


# --- OpenAPI pieces (inline: the shared component list lives in openapi.py) --------------------

_NULLABLE_INT = {"type": ["integer", "null"], "minimum": 0}
_SLOTS = {"$ref": "#/components/schemas/Resources"}
KEYPAIR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "access_key": {"type": "string"},
        "user": {"type": "string"},
        "is_admin": {"type": "boolean"},
        "is_owner": {"type": "boolean"},
        "is_active": {"type": "boolean"},
        "resource_policy": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
        "revoked_at": {"type": ["string", "null"], "format": "date-time"},
    },
}
NEW_KEYPAIR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        **KEYPAIR_SCHEMA["properties"],
        "secret_key": {"type": "string", "description": "Shown this once, never again"},
    },
}
POLICY_LIMITS_SCHEMA: dict[str, Any] = {
    "max_concurrent_sessions": _NULLABLE_INT,
    "total_resource_slots": _SLOTS,
    "max_pending_sessions": _NULLABLE_INT,
    "max_session_resources": _SLOTS,
    "idle_timeout": {**_NULLABLE_INT, "minimum": 1, "description": "Seconds"},
    "max_session_lifetime": {**_NULLABLE_INT, "minimum": 1, "description": "Seconds"},
    "max_containers_per_session": {**_NULLABLE_INT, "minimum": 1},
    "storage_quota": {
        "type": ["integer", "string", "null"],
        "description": "Bytes, or an amount with a binary unit such as '10g'",
    },
    "max_images": _NULLABLE_INT,
}
POLICY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": "null (or {} for slots) means unlimited",
    "properties": {
        "name": {"type": "string"},
        **POLICY_LIMITS_SCHEMA,
        "created_at": {"type": "string", "format": "date-time"},
    },
}
AUDIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "at": {"type": "string", "format": "date-time"},
        "access_key": {"type": ["string", "null"]},
        "action": {"type": "string"},
        "target": {"type": ["string", "null"]},
        "outcome": {"type": "string", "enum": ["success", "failure", "cancelled", "error"]},
        "error": {"type": ["string", "null"]},
        "duration_ms": {"type": "integer"},
    },
}


def _list_of(key: str, item: Mapping[str, Any], description: str) -> dict[str, Any]:
    return json_response(
        {
            "type": "object",
            "properties": {
                key: {"type": "array", "items": item},
                "total": {"type": "integer"},
            },
        },
        description,
    )


def _body(schema: Mapping[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


# --- handlers ------------------------------------------------------------------------------------


class AccountsAPIHandler(SessionsAPIHandler):
    """Base of the admin routes."""

    auth_resource = "jupyter_sessions:admin"

    @property
    def accounts(self) -> AccountProcessors:
        return self.sessions_app.account_processors


class KeypairsHandler(AccountsAPIHandler):
    openapi = {
        "get": {
            "operationId": "list_keypairs",
            "summary": "Every keypair, revoked ones included; never a secret",
            "responses": {"200": _list_of("keypairs", KEYPAIR_SCHEMA, "Keypairs"), **ERRORS},
        },
        "post": {
            "operationId": "create_keypair",
            "summary": "Make a keypair; the answer is the only time its secret is shown",
            "requestBody": _body(
                {
                    "type": "object",
                    "required": ["user"],
                    "additionalProperties": False,
                    "properties": {
                        "user": {"type": "string", "maxLength": 128},
                        "is_admin": {"type": "boolean", "default": False},
                        "resource_policy": {"type": "string", "default": "default"},
                    },
                }
            ),
            "responses": {"201": json_response(NEW_KEYPAIR_SCHEMA, "The new keypair"), **ERRORS},
        },
    }

    @web.authenticated
    @authorized
    async def get(self) -> None:
        result = await self.accounts.list_keypairs.wait_for_complete(
            ListKeypairsAction(caller=self.caller)
        )
        self.write_json(
            {"keypairs": [keypair_json(k) for k in result.keypairs], "total": result.total}
        )

    @web.authenticated
    @authorized
    async def post(self) -> None:
        params = NewKeypairParams.from_json(self.json_body())
        created = await self.accounts.create_keypair.wait_for_complete(
            CreateKeypairAction(caller=self.caller, params=params)
        )
        self.set_header("Cache-Control", "no-store")
        self.write_json({**keypair_json(created.keypair), "secret_key": created.secret_key}, 201)


class KeypairHandler(AccountsAPIHandler):
    openapi = {
        "delete": {
            "operationId": "revoke_keypair",
            "summary": "Revoke a keypair: it stops authenticating at once; its sessions keep "
            "running. Revoking again changes nothing; the owner's keypair cannot be revoked",
            "parameters": [
                {"name": "access_key", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "200": json_response(KEYPAIR_SCHEMA, "The revoked keypair"),
                **ERRORS,
                "404": ERROR,
                "409": ERROR,
            },
        },
    }

    @web.authenticated
    @authorized
    async def delete(self, access_key: str) -> None:
        keypair = await self.accounts.revoke_keypair.wait_for_complete(
            RevokeKeypairAction(caller=self.caller, access_key=access_key)
        )
        self.write_json(keypair_json(keypair))


class ResourcePoliciesHandler(AccountsAPIHandler):
    openapi = {
        "get": {
            "operationId": "list_resource_policies",
            "summary": "Every resource policy",
            "responses": {
                "200": _list_of("resource_policies", POLICY_SCHEMA, "Resource policies"),
                **ERRORS,
            },
        },
        "post": {
            "operationId": "create_resource_policy",
            "summary": "Make a resource policy; limits left out are unlimited",
            "requestBody": _body(
                {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {"name": {"type": "string"}, **POLICY_LIMITS_SCHEMA},
                }
            ),
            "responses": {
                "201": json_response(POLICY_SCHEMA, "The new policy"),
                **ERRORS,
                "409": ERROR,
            },
        },
    }

    @web.authenticated
    @authorized
    async def get(self) -> None:
        result = await self.accounts.list_resource_policies.wait_for_complete(
            ListResourcePoliciesAction(caller=self.caller)
        )
        self.write_json(
            {
                "resource_policies": [policy_json(p) for p in result.policies],
                "total": result.total,
            }
        )

    @web.authenticated
    @authorized
    async def post(self) -> None:
        params = NewPolicyParams.from_json(self.json_body())
        policy = await self.accounts.create_resource_policy.wait_for_complete(
            CreateResourcePolicyAction(caller=self.caller, params=params)
        )
        self.write_json(policy_json(policy), 201)


_NAME_PARAM = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}


class ResourcePolicyHandler(AccountsAPIHandler):
    openapi = {
        "get": {
            "operationId": "get_resource_policy",
            "summary": "One resource policy",
            "parameters": [_NAME_PARAM],
            "responses": {
                "200": json_response(POLICY_SCHEMA, "The policy"),
                **ERRORS,
                "404": ERROR,
            },
        },
        "patch": {
            "operationId": "modify_resource_policy",
            "summary": "Change some limits of a resource policy (null: unlimited)",
            "parameters": [_NAME_PARAM],
            "requestBody": _body(
                {
                    "type": "object",
                    "additionalProperties": False,
                    "minProperties": 1,
                    "properties": POLICY_LIMITS_SCHEMA,
                }
            ),
            "responses": {
                "200": json_response(POLICY_SCHEMA, "The changed policy"),
                **ERRORS,
                "404": ERROR,
            },
        },
    }

    @web.authenticated
    @authorized
    async def get(self, name: str) -> None:
        policy = await self.accounts.get_resource_policy.wait_for_complete(
            GetResourcePolicyAction(caller=self.caller, name=name)
        )
        self.write_json(policy_json(policy))

    @web.authenticated
    @authorized
    async def patch(self, name: str) -> None:
        changes = PolicyChanges.from_json(self.json_body(), name)
        policy = await self.accounts.modify_resource_policy.wait_for_complete(
            ModifyResourcePolicyAction(caller=self.caller, name=name, changes=changes)
        )
        self.write_json(policy_json(policy))


class AuditLogHandler(AccountsAPIHandler):
    openapi = {
        "get": {
            "operationId": "get_audit_log",
            "summary": "The newest audited actions first: who, what, on what, outcome, duration",
            "parameters": [
                {
                    "name": "limit",
                    "in": "query",
                    "schema": {"type": "integer", "default": 100, "minimum": 1, "maximum": 1000},
                }
            ],
            "responses": {
                "200": json_response(
                    {
                        "type": "object",
                        "properties": {
                            "entries": {"type": "array", "items": AUDIT_SCHEMA},
                            "total": {"type": "integer"},
                        },
                    },
                    "Audit entries",
                ),
                **ERRORS,
            },
        },
    }

    @web.authenticated
    @authorized
    async def get(self) -> None:
        limit = self.int_arg("limit", 100, minimum=1, maximum=1000)
        result = await self.accounts.get_audit_log.wait_for_complete(
            GetAuditLogAction(caller=self.caller, limit=limit)
        )
        self.write_json(
            {"entries": [audit_json(e) for e in result.entries], "total": len(result.entries)}
        )


account_handlers: list[tuple[str, type]] = [
    (rf"{API_PREFIX}/keypairs", KeypairsHandler),
    (rf"{API_PREFIX}/keypairs/{ACCESS_KEY}", KeypairHandler),
    (rf"{API_PREFIX}/resource-policies", ResourcePoliciesHandler),
    (rf"{API_PREFIX}/resource-policies/{POLICY_NAME}", ResourcePolicyHandler),
    (rf"{API_PREFIX}/audit-log", AuditLogHandler),
]
