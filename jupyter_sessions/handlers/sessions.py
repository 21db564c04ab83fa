"""Routes of the session life cycle: create, list, inspect, modify, rename, restart, destroy,
re-check statuses, status history."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..actions.lifecycle import (
    MAX_PRIORITY,
    MAX_TRANSIT_IDS,
    MIN_PRIORITY,
    CheckAndTransitStatusAction,
    CreateFromParamsAction,
    CreateSessionParams,
    DestroySessionAction,
    GetDependencyGraphAction,
    GetSessionInfoAction,
    GetStatusHistoryAction,
    ListSessionsAction,
    ModifySessionAction,
    RenameSessionAction,
    RestartSessionAction,
    SessionChanges,
    parse_rename,
    parse_transit_ids,
)
from ..serialize import history_json, session_json
from ..types import SessionStatus, parse_enum
from .base import SessionsAPIHandler
from .schema import ERROR, ERRORS, json_response

SESSION = {"$ref": "#/components/schemas/Session"}
REF_PARAM = {
    "name": "ref",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "A session id, or the name of one of the caller's own sessions",
}
OWNER_PARAM = {
    "name": "owner_access_key",
    "in": "query",
    "schema": {"type": "string"},
    "description": "Admins only: act on another access key's sessions",
}


NAME_SCHEMA = {"type": "string", "pattern": r"^\w[\w.-]*\w$", "minLength": 4, "maxLength": 64}
SESSION_CHANGES = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "name": NAME_SCHEMA,
        "tag": {"type": ["string", "null"], "maxLength": 256},
        "priority": {"type": "integer", "minimum": MIN_PRIORITY, "maximum": MAX_PRIORITY},
        "idle_timeout": {
            "type": ["integer", "null"],
            "minimum": 1,
            "description": "Seconds; capped by the resource policy's; null: the policy's",
        },
        "resources": {"$ref": "#/components/schemas/Resources"},
    },
}


class SessionsHandler(SessionsAPIHandler):
    openapi = {
        "get": {
            "operationId": "match_sessions",
            "summary": "List the caller's sessions, newest first",
            "parameters": [
                {
                    "name": "match",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": "Prefix of a session name or id",
                },
                {
                    "name": "status",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": "Comma-separated statuses",
                },
                OWNER_PARAM,
                {"name": "limit", "in": "query", "schema": {"type": "integer", "default": 100}},
                {"name": "offset", "in": "query", "schema": {"type": "integer", "default": 0}},
            ],
            "responses": {
                "200": json_response(
                    {
                        "type": "object",
                        "properties": {
                            "sessions": {"type": "array", "items": SESSION},
                            "total": {"type": "integer"},
                        },
                    },
                    "A page of sessions",
                ),
                **ERRORS,
            },
        },
        "post": {
            "operationId": "create_from_params",
            "summary": "Create a session; waits until RUNNING, ERROR or max_wait_seconds",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/CreateSession"}}
                },
            },
            "responses": {
                "200": json_response(SESSION, "reuse_if_exists found this session"),
                "201": json_response(SESSION, "Created (with the status it has by then)"),
                **ERRORS,
                "409": ERROR,
                "429": ERROR,
                "503": ERROR,
            },
        },
    }

    @web.authenticated
    @authorized
    async def get(self) -> None:
        raw_status = self.get_query_argument("status", "")
        statuses = tuple(
            parse_enum(SessionStatus, s.strip().upper(), "status")
            for s in raw_status.split(",")
            if s.strip()
        )
        action = ListSessionsAction(
            caller=self.caller,
            match=self.get_query_argument("match", None) or None,
            statuses=statuses,
            owner_access_key=self.acting_for,
            limit=self.int_arg("limit", 100, minimum=1, maximum=1000),
            offset=self.int_arg("offset", 0, maximum=10**9),
        )
        result = await self.processors.list_sessions.wait_for_complete(action)
        self.write_json(
            {"sessions": [session_json(s) for s in result.sessions], "total": result.total}
        )

    @web.authenticated
    @authorized
    async def post(self) -> None:
        params = CreateSessionParams.from_json(self.json_body())
        action = CreateFromParamsAction(caller=self.caller, params=params)
        result = await self.processors.create_from_params.wait_for_complete(action)
        self.write_json(session_json(result.session), status=201 if result.created else 200)


class SessionHandler(SessionsAPIHandler):
    openapi = {
        "get": {
            "operationId": "get_session_info",
            "summary": "A session's information",
            "parameters": [REF_PARAM, OWNER_PARAM],
            "responses": {
                "200": json_response(SESSION, "The session"),
                **ERRORS,
                "404": ERROR,
            },
        },
        "delete": {
            "operationId": "destroy_session",
            "summary": "Destroy a session: CANCELLED at once while PENDING or SCHEDULED, "
            "else TERMINATING (202) and then TERMINATED",
            "parameters": [
                REF_PARAM,
                OWNER_PARAM,
                {"name": "forced", "in": "query", "schema": {"type": "boolean"}},
                {"name": "recursive", "in": "query", "schema": {"type": "boolean"}},
            ],
            "responses": {
                "200": json_response(SESSION, "Cancelled"),
                "202": json_response(SESSION, "Terminating"),
                **ERRORS,
                "404": ERROR,
                "409": ERROR,
            },
        },
        "patch": {
            "operationId": "modify_session",
            "summary": "Change a session's name, tag, priority or idle timeout; its resources "
            "only while it is PENDING (else 409 naming the status)",
            "parameters": [REF_PARAM, OWNER_PARAM],
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": SESSION_CHANGES}},
            },
            "responses": {
                "200": json_response(SESSION, "The session as changed"),
                **ERRORS,
                "404": ERROR,
                "409": ERROR,
            },
        },
    }

    @web.authenticated
    @authorized
    async def get(self, ref: str) -> None:
        action = GetSessionInfoAction(
            caller=self.caller,
            ref=ref,
            owner_access_key=self.acting_for,
        )
        session = await self.processors.get_session_info.wait_for_complete(action)
        self.write_json(session_json(session))

    @web.authenticated
    @authorized
    async def patch(self, ref: str) -> None:
        action = ModifySessionAction(
            caller=self.caller,
            ref=ref,
            owner_access_key=self.acting_for,
            changes=SessionChanges.from_json(self.json_body()),
        )
        session = await self.processors.modify_session.wait_for_complete(action)
        self.write_json(session_json(session))

    @web.authenticated
    @authorized
    async def delete(self, ref: str) -> None:
        action = DestroySessionAction(
            caller=self.caller,
            ref=ref,
            owner_access_key=self.acting_for,
            forced=self.bool_arg("forced"),
            recursive=self.bool_arg("recursive"),
        )
        result = await self.processors.destroy_session.wait_for_complete(action)
        self.write_json(session_json(result.session), status=200 if result.finished else 202)


class StatusHistoryHandler(SessionsAPIHandler):
    openapi = {
        "get": {
            "operationId": "get_status_history",
            "summary": "Every status transition of a session, oldest first",
            "parameters": [REF_PARAM, OWNER_PARAM],
            "responses": {
                "200": json_response(
                    {
                        "type": "object",
                        "properties": {
                            "session_id": {"type": "string"},
                            "history": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/StatusChange"},
                            },
                        },
                    },
                    "The history",
                ),
                **ERRORS,
                "404": ERROR,
            },
        },
    }

    @web.authenticated
    @authorized
    async def get(self, ref: str) -> None:
        action = GetStatusHistoryAction(
            caller=self.caller,
            ref=ref,
            owner_access_key=self.acting_for,
        )
        result = await self.processors.get_status_history.wait_for_complete(action)
        self.write_json(
            {"session_id": result.session.id, "history": [history_json(e) for e in result.history]}
        )


# --- rename, restart, transit-status (lifecycle-actions task) -------------------------------------


class RenameHandler(SessionsAPIHandler):
    openapi = {
        "post": {
            "operationId": "rename_session",
            "summary": "Rename a session (unique per owner among non-final sessions); the "
            "status history records it",
            "parameters": [REF_PARAM, OWNER_PARAM],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["name"],
                            "additionalProperties": False,
                            "properties": {"name": NAME_SCHEMA},
                        }
                    }
                },
            },
            "responses": {
                "200": json_response(SESSION, "The renamed session"),
                **ERRORS,
                "404": ERROR,
                "409": ERROR,
            },
        },
    }

    @web.authenticated
    @authorized
    async def post(self, ref: str) -> None:
        action = RenameSessionAction(
            caller=self.caller,
            ref=ref,
            owner_access_key=self.acting_for,
            name=parse_rename(self.json_body()),
        )
        session = await self.processors.rename_session.wait_for_complete(action)
        self.write_json(session_json(session))


class RestartHandler(SessionsAPIHandler):
    openapi = {
        "post": {
            "operationId": "restart_session",
            "summary": "Restart: RUNNING, RUNNING_DEGRADED or ERROR → RESTARTING (202), a new "
            "container and kernel with the same id and work volume; TERMINATED or CANCELLED → "
            "a new session from the same parameters and name (201, restarted_from)",
            "parameters": [REF_PARAM, OWNER_PARAM],
            "responses": {
                "201": json_response(SESSION, "The new session (the old one was final)"),
                "202": json_response(SESSION, "Restarting"),
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
    async def post(self, ref: str) -> None:
        action = RestartSessionAction(
            caller=self.caller,
            ref=ref,
            owner_access_key=self.acting_for,
        )
        result = await self.processors.restart_session.wait_for_complete(action)
        self.write_json(session_json(result.session), status=201 if result.created else 202)


class TransitStatusHandler(SessionsAPIHandler):
    """``sessions/transit-status``: listed before ``sessions/{ref}``, whose pattern matches it."""

    openapi = {
        "post": {
            "operationId": "check_and_transit_status",
            "summary": "Re-check sessions now as the sweeper does (deadlines, vanished "
            "containers) and answer their statuses",
            "parameters": [OWNER_PARAM],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["session_ids"],
                            "additionalProperties": False,
                            "properties": {
                                "session_ids": {
                                    "type": "array",
                                    "maxItems": MAX_TRANSIT_IDS,
                                    "items": {"type": "string"},
                                    "description": "Ids, or names of the caller's own sessions",
                                }
                            },
                        }
                    }
                },
            },
            "responses": {
                "200": json_response(
                    {
                        "type": "object",
                        "properties": {
                            "sessions": {"type": "array", "items": SESSION},
                            "total": {"type": "integer"},
                        },
                    },
                    "The sessions after the check, in the order asked",
                ),
                **ERRORS,
                "404": ERROR,
            },
        },
    }

    @web.authenticated
    @authorized
    async def post(self) -> None:
        action = CheckAndTransitStatusAction(
            caller=self.caller,
            refs=parse_transit_ids(self.json_body()),
            owner_access_key=self.acting_for,
        )
        result = await self.processors.check_and_transit_status.wait_for_complete(action)
        self.write_json(
            {"sessions": [session_json(s) for s in result.sessions], "total": result.total}
        )


class DependencyGraphHandler(SessionsAPIHandler):
    openapi = {
        "get": {
            "operationId": "get_dependency_graph",
            "summary": "The depends_on graph around a session, both directions, transitively",
            "parameters": [REF_PARAM, OWNER_PARAM],
            "responses": {
                "200": json_response(
                    {
                        "type": "object",
                        "properties": {
                            "session_id": {"type": "string"},
                            "nodes": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "id": {"type": "string"},
                                        "name": {"type": "string"},
                                        "status": {"type": "string"},
                                        "result": {"type": "string"},
                                    },
                                },
                            },
                            "edges": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "from": {"type": "string", "description": "the dependent"},
                                        "to": {"type": "string", "description": "its dependency"},
                                    },
                                },
                            },
                        },
                    },
                    "The graph",
                ),
                **ERRORS,
                "404": ERROR,
            },
        },
    }

    @web.authenticated
    @authorized
    async def get(self, ref: str) -> None:
        action = GetDependencyGraphAction(
            caller=self.caller,
            ref=ref,
            owner_access_key=self.acting_for,
        )
        graph = await self.processors.get_dependency_graph.wait_for_complete(action)
        self.write_json(
            {
                "session_id": graph.session_id,
                "nodes": [
                    {k: node[k] for k in ("id", "name", "status", "result")} for node in graph.nodes
                ],
                "edges": [{"from": a, "to": b} for a, b in graph.edges],
            }
        )
