"""Catalog routes: the images sessions may use (agents: handlers/admin_agents.py)."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..actions.info import ListImagesAction
from ..actions.observability import DeleteImageAction
from ..errors import InvalidRequest
from ..serialize import image_json
from .base import SessionsAPIHandler
from .schema import ERROR, error_responses

ERRORS = error_responses(401, 403)


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
        "delete": {
            "operationId": "delete_image",
            "summary": "Remove one of your images converted from a session (never a shared one); "
            "409 while a session that is not over uses it",
            "parameters": [
                {
                    "name": "name",
                    "in": "query",
                    "required": True,
                    "schema": {"type": "string"},
                    "description": "The full reference, as GET images names it",
                }
            ],
            "responses": {
                "200": {"description": "Removed", "content": {"application/json": {}}},
                "400": ERROR,
                "404": ERROR,
                "409": ERROR,
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

    @web.authenticated
    @authorized
    async def delete(self) -> None:
        name = self.get_query_argument("name", "")
        if not name or len(name) > 512:
            raise InvalidRequest("name (the image's full reference) is required", field="name")
        action = DeleteImageAction(caller=self.caller, name=name)
        self.write_json(await self.processors.delete_image.wait_for_complete(action))
