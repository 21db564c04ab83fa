"""Catalog routes: the images sessions may use, and the agents they run on."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..actions.info import ListAgentsAction, ListImagesAction
from ..serialize import agent_json, image_json
from .base import SessionsAPIHandler

ERRORS = {
    "401": {"$ref": "#/components/responses/Error"},
    "403": {"$ref": "#/components/responses/Error"},
}


class ImagesHandler(SessionsAPIHandler):
    openapi = {
        "get": {
            "operationId": "list_images",
            "summary": "The allowed images, and on which agents each is present",
            "responses": {
                "200": {
                    "description": "Images",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "images": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Image"},
                                    },
                                    "total": {"type": "integer"},
                                },
                            }
                        }
                    },
                },
                **ERRORS,
            },
        },
    }

    @web.authenticated
    @authorized
    async def get(self) -> None:
        images = await self.processors.list_images.wait_for_complete(
            ListImagesAction(caller=self.caller)
        )
        self.write_json({"images": [image_json(i) for i in images], "total": len(images)})


class AgentsHandler(SessionsAPIHandler):
    auth_resource = "jupyter_sessions:admin"
    openapi = {
        "get": {
            "operationId": "list_agents",
            "summary": "The configured agents, probed now: reachable or not, and their capacity",
            "responses": {
                "200": {
                    "description": "Agents",
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "properties": {
                                    "agents": {
                                        "type": "array",
                                        "items": {"$ref": "#/components/schemas/Agent"},
                                    },
                                    "total": {"type": "integer"},
                                },
                            }
                        }
                    },
                },
                **ERRORS,
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
