"""Admin routes for agents and scaling groups (``jupyter_sessions:admin``).

``GET agents`` probes every agent now; ``POST agents`` registers a Docker engine (stored, made
again at every start); ``DELETE agents/{id}`` forgets a registered one that holds no session;
``GET/POST scaling-groups`` list groups and create or change one's ordering and placement.
"""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..actions.agents import (
    HOST_FIREWALL_MODES,
    ORDERINGS,
    PLACEMENTS,
    AgentSpec,
    ListScalingGroupsAction,
    PutScalingGroupAction,
    RegisterAgentAction,
    RemoveAgentAction,
    group_from_json,
)
from ..actions.info import ListAgentsAction
from ..serialize import agent_json
from .base import API_PREFIX, SessionsAPIHandler
from .schema import ERROR, ERRORS, json_response

AGENT_ID = r"(?P<agent_id>[^/]+)"
_AGENT = {"$ref": "#/components/schemas/Agent"}
GROUP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "description": {"type": "string"},
        "ordering": {"type": "string", "enum": list(ORDERINGS)},
        "placement": {"type": "string", "enum": list(PLACEMENTS)},
        "agents": {"type": "array", "items": {"type": "string"}},
    },
}


def _list_of(key: str, item: dict[str, Any], description: str) -> dict[str, Any]:
    return json_response(
        {
            "type": "object",
            "properties": {key: {"type": "array", "items": item}, "total": {"type": "integer"}},
        },
        description,
    )


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


class AdminAPIHandler(SessionsAPIHandler):
    auth_resource = "jupyter_sessions:admin"


class AgentsHandler(AdminAPIHandler):
    openapi = {
        "get": {
            "operationId": "list_agents",
            "summary": "The agents, probed now: ALIVE or LOST, and their capacity (what the "
            "engine reports minus the reserve kept for the host)",
            "responses": {"200": _list_of("agents", _AGENT, "Agents"), **ERRORS},
        },
        "post": {
            "operationId": "register_agent",
            "summary": "Register a Docker engine as an agent; it must answer now. Kept across "
            "restarts until DELETE agents/{id}",
            "requestBody": _body(
                {
                    "type": "object",
                    "required": ["id", "url"],
                    "additionalProperties": False,
                    "properties": {
                        "id": {"type": "string", "maxLength": 64},
                        "kind": {"type": "string", "enum": ["docker"]},
                        "url": {
                            "type": "string",
                            "description": "unix:///path/docker.sock or tcp://host:port",
                        },
                        "scaling_group": {"type": "string", "default": "default"},
                        "kernel_host": {
                            "type": "string",
                            "description": "The address the manager dials kernels at",
                        },
                        "host_firewall": {"type": "string", "enum": list(HOST_FIREWALL_MODES)},
                        "reserve": {"$ref": "#/components/schemas/Resources"},
                    },
                }
            ),
            "responses": {
                "201": json_response(_AGENT, "The registered agent"),
                **ERRORS,
                "404": ERROR,
                "409": ERROR,
                "503": ERROR,
            },
        },
    }

    @web.authenticated
    @authorized
    async def get(self) -> None:
        agents = await self.processors.list_agents.wait_for_complete(
            ListAgentsAction(caller=self.caller)
        )
        self.write_json({"agents": [agent_json(a) for a in agents], "total": len(agents)})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        spec = AgentSpec.from_json(self.json_body())
        agent = await self.processors.register_agent.wait_for_complete(
            RegisterAgentAction(caller=self.caller, spec=spec)
        )
        self.write_json(agent_json(agent), 201)


class AgentHandler(AdminAPIHandler):
    openapi = {
        "delete": {
            "operationId": "remove_agent",
            "summary": "Forget a registered agent; 409 while it holds sessions, or when it is "
            "configured (c.SessionsApp.agents) rather than registered",
            "parameters": [
                {"name": "agent_id", "in": "path", "required": True, "schema": {"type": "string"}}
            ],
            "responses": {
                "204": {"description": "Removed"},
                **ERRORS,
                "404": ERROR,
                "409": ERROR,
            },
        },
    }

    @web.authenticated
    @authorized
    async def delete(self, agent_id: str) -> None:
        await self.processors.remove_agent.wait_for_complete(
            RemoveAgentAction(caller=self.caller, agent_id=agent_id)
        )
        self.set_status(204)
        self.finish()


class ScalingGroupsHandler(AdminAPIHandler):
    openapi = {
        "get": {
            "operationId": "list_scaling_groups",
            "summary": "Scaling groups, their scheduling policy and their agents",
            "responses": {"200": _list_of("scaling_groups", GROUP_SCHEMA, "Groups"), **ERRORS},
        },
        "post": {
            "operationId": "put_scaling_group",
            "summary": "Create a scaling group, or change its ordering (fifo, lifo, drf) and "
            "placement (concentrated, dispersed)",
            "requestBody": _body(
                {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "maxLength": 64},
                        "description": {"type": "string"},
                        "ordering": {"type": "string", "enum": list(ORDERINGS)},
                        "placement": {"type": "string", "enum": list(PLACEMENTS)},
                    },
                }
            ),
            "responses": {"200": json_response(GROUP_SCHEMA, "The scaling group"), **ERRORS},
        },
    }

    @web.authenticated
    @authorized
    async def get(self) -> None:
        groups = await self.processors.list_scaling_groups.wait_for_complete(
            ListScalingGroupsAction(caller=self.caller)
        )
        self.write_json({"scaling_groups": groups, "total": len(groups)})

    @web.authenticated
    @authorized
    async def post(self) -> None:
        spec = group_from_json(self.json_body())
        group = await self.processors.put_scaling_group.wait_for_complete(
            PutScalingGroupAction(caller=self.caller, group=spec)
        )
        self.write_json(group)


admin_agent_handlers: list[tuple[str, type]] = [
    (rf"{API_PREFIX}/agents", AgentsHandler),
    (rf"{API_PREFIX}/agents/{AGENT_ID}", AgentHandler),
    (rf"{API_PREFIX}/scaling-groups", ScalingGroupsHandler),
]
