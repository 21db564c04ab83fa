"""Routes that judge or image a session: ``abusing-report``, ``commit`` (POST starts one, GET says
whether one is ongoing and what the last gave) and ``convert-to-image``. Commits and conversions
answer 202 with their background task (follow it at ``tasks/{id}`` or on ``events?task=``)."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..actions.observability import (
    CommitSessionAction,
    ConvertToImageAction,
    GetAbusingReportAction,
    GetCommitStatusAction,
)
from ..bgtasks import task_json
from .base import API_PREFIX, REF, SessionsAPIHandler
from .schema import ERROR, ERRORS, error_responses, json_response
from .sessions import OWNER_PARAM, REF_PARAM
from .tasks import TASK_SCHEMA

MORE_ERRORS = error_responses(404, 409)


class AbusingReportHandler(SessionsAPIHandler):
    openapi = {
        "get": {
            "operationId": "get_abusing_report",
            "summary": "Which abuse rules a running session breaks, with the evidence",
            "parameters": [REF_PARAM, OWNER_PARAM],
            "responses": {
                "200": json_response(
                    {
                        "type": "object",
                        "properties": {
                            "session_id": {"type": "string"},
                            "checked_at": {"type": "string", "format": "date-time"},
                            "abusing": {"type": "boolean"},
                            "findings": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "rule": {"type": "string"},
                                        "message": {"type": "string"},
                                        "evidence": {"type": "object"},
                                    },
                                },
                            },
                            "rules": {"type": "object"},
                            "samples": {"type": "integer"},
                            "processes_checked": {"type": "boolean"},
                        },
                    },
                    "The report",
                ),
                **ERRORS,
                **MORE_ERRORS,
            },
        },
    }

    @web.authenticated
    @authorized
    async def get(self, ref: str) -> None:
        report = await self.processors.get_abusing_report.wait_for_complete(
            GetAbusingReportAction(caller=self.caller, ref=ref, owner_access_key=self.acting_for)
        )
        self.write_json(report)


class CommitHandler(SessionsAPIHandler):
    openapi = {
        "post": {
            "operationId": "commit_session",
            "summary": "Commit the main container (with /home/work, without environ) to a "
            "tar.gz, as a background task",
            "parameters": [REF_PARAM, OWNER_PARAM],
            "responses": {
                "202": json_response(TASK_SCHEMA, "The task"),
                **ERRORS,
                **MORE_ERRORS,
                "502": ERROR,
            },
        },
        "get": {
            "operationId": "get_commit_status",
            "summary": "Whether a commit (or conversion) is ongoing, and the last one's details",
            "parameters": [REF_PARAM, OWNER_PARAM],
            "responses": {
                "200": json_response(
                    {
                        "type": "object",
                        "properties": {
                            "session_id": {"type": "string"},
                            "status": {"enum": ["ongoing", "ready"]},
                            "last": {"oneOf": [TASK_SCHEMA, {"type": "null"}]},
                        },
                    },
                    "The commit status",
                ),
                **ERRORS,
                "404": ERROR,
            },
        },
    }

    @web.authenticated
    @authorized
    async def post(self, ref: str) -> None:
        task = await self.processors.commit_session.wait_for_complete(
            CommitSessionAction(caller=self.caller, ref=ref, owner_access_key=self.acting_for)
        )
        self.write_json(task_json(task), status=202)

    @web.authenticated
    @authorized
    async def get(self, ref: str) -> None:
        status = await self.processors.get_commit_status.wait_for_complete(
            GetCommitStatusAction(caller=self.caller, ref=ref, owner_access_key=self.acting_for)
        )
        last = status["last"]
        self.write_json({**status, "last": task_json(last) if last is not None else None})


class ConvertHandler(SessionsAPIHandler):
    openapi = {
        "post": {
            "operationId": "convert_session_to_image",
            "summary": "Commit and tag as <prefix>/<owner>/<name>:<tag>, allowed to its owner "
            "(pushed to the configured registry, if any), as a background task",
            "parameters": [REF_PARAM, OWNER_PARAM],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["image_name"],
                            "additionalProperties": False,
                            "properties": {
                                "image_name": {
                                    "type": "string",
                                    "pattern": r"^[a-z0-9]+([._-][a-z0-9]+)*(:[\w][\w.-]*)?$",
                                    "default": "my-image",
                                    "description": "name or name:tag (default tag latest)",
                                },
                                "push": {"type": "boolean"},
                            },
                        }
                    }
                },
            },
            "responses": {
                "202": json_response(TASK_SCHEMA, "The task"),
                **ERRORS,
                **MORE_ERRORS,
                "429": ERROR,
            },
        },
    }

    @web.authenticated
    @authorized
    async def post(self, ref: str) -> None:
        name, tag, push = ConvertToImageAction.parse_body(self.json_body())
        task = await self.processors.convert_session_to_image.wait_for_complete(
            ConvertToImageAction(
                caller=self.caller,
                ref=ref,
                owner_access_key=self.acting_for,
                image_name=name,
                tag=tag,
                push=push,
            )
        )
        self.write_json(task_json(task), status=202)


image_handlers: list[tuple[str, type]] = [
    (rf"{API_PREFIX}/sessions/{REF}/abusing-report", AbusingReportHandler),
    (rf"{API_PREFIX}/sessions/{REF}/commit", CommitHandler),
    (rf"{API_PREFIX}/sessions/{REF}/convert-to-image", ConvertHandler),
]
