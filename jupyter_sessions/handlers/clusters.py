"""``POST sessions/cluster`` (create_cluster): a session of ``cluster_size`` >= 2 kernels, from a
``POST sessions`` body or from a template (``template_id``, ``parameters`` and overrides)."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..cluster import CreateClusterAction
from ..errors import InvalidRequest
from ..serialize import session_json
from .base import SessionsAPIHandler
from .templates import FromTemplateHandler


class CreateClusterHandler(SessionsAPIHandler):
    """Listed before ``sessions/{ref}``, whose pattern matches it too."""

    openapi = {
        "post": {
            "operationId": "create_cluster",
            "summary": "Create a cluster session (cluster_size of at least 2: kernels main1, "
            "sub1... reaching each other by name): a POST sessions body, or template_id with "
            "parameters and overrides; then exactly as POST sessions",
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "properties": {
                                "template_id": {"type": "string"},
                                "parameters": {"type": "object"},
                                "cluster_size": {"type": "integer", "minimum": 2},
                                "cluster_mode": {
                                    "type": "string",
                                    "enum": ["single-node", "multi-node"],
                                },
                            },
                            "additionalProperties": True,
                            "description": "Any POST sessions field",
                        }
                    }
                },
            },
            # Exactly a create's answers (from a body or from a template).
            "responses": FromTemplateHandler.openapi["post"]["responses"],
        },
    }

    @web.authenticated
    @authorized
    async def post(self) -> None:
        body = self.json_body()
        if not isinstance(body, dict):
            raise InvalidRequest("the request body must be a JSON object")
        result = await self.processors.create_cluster.wait_for_complete(
            CreateClusterAction(caller=self.caller, body=body)
        )
        self.write_json(session_json(result.session), status=201 if result.created else 200)
