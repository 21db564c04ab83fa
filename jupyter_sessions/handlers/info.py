"""Catalog routes: the images sessions may use (agents: handlers/admin_agents.py)."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..actions.info import ListImagesAction
from ..serialize import image_json
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
