"""Routes of background tasks: ``GET tasks/{id}`` (progress, result or error) and
``DELETE tasks/{id}`` (cancel). A task is its owner's (and admins'); anyone else gets 404."""

from __future__ import annotations

from typing import Any

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..actions.observability import CancelTaskAction, GetTaskAction
from ..bgtasks import task_json
from .base import API_PREFIX, SessionsAPIHandler
from .schema import ERROR, ERRORS, json_response

TASK_ID = r"(?P<task_id>[^/]+)"
TASK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "kind": {"type": "string", "description": "commit or convert"},
        "session_id": {"type": ["string", "null"]},
        "status": {"enum": ["pending", "running", "done", "failed", "cancelled"]},
        "progress": {
            "type": "object",
            "properties": {
                "current": {"type": "integer"},
                "total": {"type": ["integer", "null"]},
                "message": {"type": "string"},
            },
        },
        "result": {"type": ["object", "null"]},
        "error": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
}
TASK_PARAM = {"name": "task_id", "in": "path", "required": True, "schema": {"type": "string"}}
NOT_FOUND = {"404": ERROR}


class TaskHandler(SessionsAPIHandler):
    openapi = {
        "get": {
            "operationId": "get_task",
            "summary": "A background task: status, progress, result or error",
            "parameters": [TASK_PARAM],
            "responses": {"200": json_response(TASK_SCHEMA, "The task"), **ERRORS, **NOT_FOUND},
        },
        "delete": {
            "operationId": "cancel_task",
            "summary": "Cancel a pending or running task (409 when it already ended)",
            "parameters": [TASK_PARAM],
            "responses": {
                "200": json_response(TASK_SCHEMA, "The task, cancelled"),
                **ERRORS,
                **NOT_FOUND,
                "409": ERROR,
            },
        },
    }

    @web.authenticated
    @authorized
    async def get(self, task_id: str) -> None:
        task = await self.processors.get_task.wait_for_complete(
            GetTaskAction(caller=self.caller, task_id=task_id)
        )
        self.write_json(task_json(task))

    @web.authenticated
    @authorized
    async def delete(self, task_id: str) -> None:
        task = await self.processors.cancel_task.wait_for_complete(
            CancelTaskAction(caller=self.caller, task_id=task_id)
        )
        self.write_json(task_json(task))


task_handlers: list[tuple[str, type]] = [(rf"{API_PREFIX}/tasks/{TASK_ID}", TaskHandler)]
