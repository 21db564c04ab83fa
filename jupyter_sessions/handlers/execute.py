"""Routes that run code: execute (REST and WebSocket stream), interrupt, complete.

Responses with small payloads go out without Nagle's delay: tornado leaves TCP_NODELAY off, which
costs ~40 ms per small message against a delayed ACK (DESIGN §7).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from jupyter_server.auth.decorator import authorized
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.base.websocket import WebSocketMixin
from jupyter_server.extension.handler import ExtensionHandlerMixin
from tornado import web
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClosedError, WebSocketHandler

from ..actions.execution import (
    CompleteAction,
    ExecuteAction,
    ExecuteRequest,
    ExecuteResult,
    GetContainerLogsAction,
    GetUsageAction,
    InterruptAction,
)
from ..actions.observability import FollowLogsAction
from ..errors import InvalidRequest, PermissionDenied, SessionsError, Unauthenticated
from ..kernels.runs import EXEC_TIMEOUT, FINISHED, WAITING_INPUT, RunSnapshot, RunStream
from ..serialize import iso
from .base import SessionsAPIHandler, SessionsHandlerMixin
from .schema import ERRORS, error_responses, json_response
from .sessions import OWNER_PARAM, REF_PARAM

EXECUTE_RESULT = {"$ref": "#/components/schemas/ExecuteResult"}
MORE_ERRORS = error_responses(404, 409, 504)


def result_json(result: ExecuteResult | RunSnapshot) -> dict[str, Any]:
    return {
        "run_id": result.run_id,
        "status": result.status,
        "exit_code": result.exit_code,
        "console": result.console,
        "options": result.options,
        "files": getattr(result, "files", []),
    }


def _nodelay(handler: web.RequestHandler) -> None:
    stream = getattr(handler.request.connection, "stream", None)
    if stream is not None:
        with contextlib.suppress(Exception):
            stream.set_nodelay(True)


class ExecuteHandler(SessionsAPIHandler):
    openapi = {
        "post": {
            "operationId": "execute_session",
            "summary": "Run code: mode query (in the kernel), batch (commands), input, continue",
            "parameters": [REF_PARAM, OWNER_PARAM],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {"schema": {"$ref": "#/components/schemas/ExecuteRequest"}}
                },
            },
            "responses": {
                "200": json_response(EXECUTE_RESULT, "The run's status and console so far"),
                **ERRORS,
                **MORE_ERRORS,
            },
        },
    }

    @web.authenticated
    @authorized
    async def post(self, ref: str) -> None:
        _nodelay(self)
        request = ExecuteRequest.from_json(self.json_body())
        action = ExecuteAction(
            caller=self.caller,
            ref=ref,
            request=request,
            owner_access_key=self.acting_for,
        )
        result = await self.processors.execute.wait_for_complete(action)
        self.write_json(result_json(result))


class InterruptHandler(SessionsAPIHandler):
    openapi = {
        "post": {
            "operationId": "interrupt",
            "summary": "Interrupt what runs in the session's kernel (KeyboardInterrupt)",
            "parameters": [REF_PARAM, OWNER_PARAM],
            "responses": {
                "200": json_response({"type": "object"}, "Interrupted"),
                **ERRORS,
                **MORE_ERRORS,
            },
        },
    }

    @web.authenticated
    @authorized
    async def post(self, ref: str) -> None:
        action = InterruptAction(
            caller=self.caller,
            ref=ref,
            owner_access_key=self.acting_for,
        )
        await self.processors.interrupt.wait_for_complete(action)
        self.write_json({"interrupted": True})


class CompleteHandler(SessionsAPIHandler):
    openapi = {
        "post": {
            "operationId": "complete",
            "summary": "Code completion from the kernel at cursor_pos",
            "parameters": [REF_PARAM, OWNER_PARAM],
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": {
                            "type": "object",
                            "required": ["code"],
                            "properties": {
                                "code": {"type": "string"},
                                "cursor_pos": {"type": "integer"},
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
                            "matches": {"type": "array", "items": {"type": "string"}},
                            "cursor_start": {"type": "integer"},
                            "cursor_end": {"type": "integer"},
                            "metadata": {"type": "object"},
                        },
                    },
                    "Completions",
                ),
                **ERRORS,
                **MORE_ERRORS,
            },
        },
    }

    @web.authenticated
    @authorized
    async def post(self, ref: str) -> None:
        _nodelay(self)
        code, cursor_pos = CompleteAction.parse(self.json_body())
        action = CompleteAction(
            caller=self.caller,
            ref=ref,
            code=code,
            cursor_pos=cursor_pos,
            owner_access_key=self.acting_for,
        )
        result = await self.processors.complete.wait_for_complete(action)
        self.write_json(
            {
                "matches": result.matches,
                "cursor_start": result.cursor_start,
                "cursor_end": result.cursor_end,
                "metadata": result.metadata,
            }
        )


class LogsHandler(SessionsAPIHandler):
    """A kernel's output as text; ``follow`` streams it live (chunked, flushed per batch of
    lines) until the kernel ends or the client leaves. Kept after destroy (logstore.py)."""

    openapi = {
        "get": {
            "operationId": "get_container_logs",
            "summary": "A kernel's own output as text; follow streams it live",
            "parameters": [
                REF_PARAM,
                OWNER_PARAM,
                {"name": "kernel", "in": "query", "schema": {"type": "string", "default": "main1"}},
                {
                    "name": "tail",
                    "in": "query",
                    "schema": {"type": "integer", "minimum": 1},
                    "description": "Only the last lines",
                },
                {
                    "name": "follow",
                    "in": "query",
                    "schema": {"type": "boolean", "default": False},
                    "description": "Keep the response open and stream new output as it comes",
                },
            ],
            "responses": {
                "200": {"description": "The log", "content": {"text/plain": {}}},
                **ERRORS,
                **MORE_ERRORS,
            },
        },
    }

    _follow: asyncio.Task[None] | None = None

    @web.authenticated
    @authorized
    async def get(self, ref: str) -> None:
        what: dict[str, Any] = {
            "caller": self.caller,
            "ref": ref,
            "owner_access_key": self.acting_for,
            "kernel": self.get_query_argument("kernel", "main1") or "main1",
            "tail": self.int_arg("tail", 0, minimum=0, maximum=1_000_000) or None,
        }
        if self.bool_arg("follow"):
            follow = FollowLogsAction(**what)
            chunks = await self.processors.follow_container_logs.wait_for_complete(follow)
            self.set_header("Content-Type", "text/plain; charset=UTF-8")
            self.set_header("Cache-Control", "no-cache")
            self.set_header("X-Accel-Buffering", "no")
            _nodelay(self)
            self._follow = asyncio.get_running_loop().create_task(self._stream(chunks))
            with contextlib.suppress(asyncio.CancelledError):
                await self._follow
            if not self.request.connection.stream.closed():
                self.finish()
            return
        action = GetContainerLogsAction(**what)
        text = await self.processors.get_container_logs.wait_for_complete(action)
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        self.finish(text)

    async def _stream(self, chunks: AsyncIterator[str]) -> None:
        try:
            await self.flush()  # the headers: the client knows the stream is open
            async for text in chunks:
                self.write(text)
                await self.flush()
        except StreamClosedError:
            return
        finally:
            await chunks.aclose()  # type: ignore[attr-defined]

    def on_connection_close(self) -> None:
        if self._follow is not None:
            self._follow.cancel()


class UsageHandler(SessionsAPIHandler):
    openapi = {
        "get": {
            "operationId": "get_usage",
            "summary": "What each kernel uses now, and the sampled series of the main kernel",
            "parameters": [REF_PARAM, OWNER_PARAM],
            "responses": {
                "200": json_response(
                    {
                        "type": "object",
                        "properties": {
                            "session_id": {"type": "string"},
                            "interval": {
                                "type": "number",
                                "description": "Seconds between samples",
                            },
                            "kernels": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "name": {"type": "string"},
                                        "status": {"type": "string"},
                                        "measured_at": {"type": "string", "format": "date-time"},
                                        "usage": {
                                            "type": ["object", "null"],
                                            "properties": {
                                                "cpu_seconds": {"type": "number"},
                                                "mem_bytes": {"type": "integer"},
                                                "mem_limit": {"type": ["integer", "null"]},
                                                "pids": {"type": "integer"},
                                                "net_rx_bytes": {"type": "integer"},
                                                "net_tx_bytes": {"type": "integer"},
                                            },
                                        },
                                    },
                                },
                            },
                            "series": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "properties": {
                                        "at": {"type": "string", "format": "date-time"},
                                        "cpu_seconds": {"type": "number"},
                                        "cpu_percent": {"type": ["number", "null"]},
                                        "mem_bytes": {"type": "integer"},
                                        "mem_limit": {"type": ["integer", "null"]},
                                        "pids": {"type": "integer"},
                                        "net_rx_bytes": {"type": ["integer", "null"]},
                                        "net_tx_bytes": {"type": ["integer", "null"]},
                                        "disk_bytes": {"type": ["integer", "null"]},
                                    },
                                },
                            },
                        },
                    },
                    "Usage per kernel and the main kernel's recent series",
                ),
                **ERRORS,
                **MORE_ERRORS,
            },
        },
    }

    @web.authenticated
    @authorized
    async def get(self, ref: str) -> None:
        action = GetUsageAction(
            caller=self.caller,
            ref=ref,
            owner_access_key=self.acting_for,
        )
        usage = await self.processors.get_usage.wait_for_complete(action)
        self.write_json(
            {
                **usage,
                "kernels": [{**k, "measured_at": iso(k["measured_at"])} for k in usage["kernels"]],
            }
        )


class ExecuteStreamHandler(
    SessionsHandlerMixin, WebSocketMixin, WebSocketHandler, ExtensionHandlerMixin, JupyterHandler
):
    """WebSocket: the first frame is an execute request (query); then one frame per console item
    (``[type, data]``), a ``waiting-input`` frame when the code asks (answer with
    ``{"mode": "input", "code": ...}``), and a final frame with the result. Closing the socket
    interrupts the run."""

    auth_resource = "jupyter_sessions:sessions"
    openapi: ClassVar[dict[str, dict[str, Any]]] = {
        "get": {
            "operationId": "execute_stream",
            "summary": "WebSocket: run code and receive its console items as they happen",
            "parameters": [REF_PARAM, OWNER_PARAM],
            "responses": {"101": {"description": "Switching protocols"}, **ERRORS, **MORE_ERRORS},
        },
    }

    run_stream: RunStream | None = None
    task: asyncio.Task[None] | None = None

    async def get(self, *args: Any, **kwargs: Any) -> None:
        # Authenticated and authorized before the upgrade, like every route.
        if self.current_user is None:
            raise Unauthenticated("authentication required: a Jupyter token or login cookie")
        if not self.authorizer.is_authorized(
            self, self.current_user, "execute", self.auth_resource
        ):
            raise PermissionDenied("not allowed to execute code in sessions")
        await self.sessions_app.ensure_started()
        self.ref = kwargs["ref"]
        self.owner_access_key = self.acting_for
        await super().get(*args, **kwargs)

    def open(self, *args: Any, **kwargs: Any) -> None:
        self.set_nodelay(True)
        super().open(*args, **kwargs)

    async def on_message(self, message: str | bytes) -> None:
        try:
            body = json.loads(message)
        except ValueError:
            await self._fail(InvalidRequest("a frame must be a JSON object"))
            return
        if self.run_stream is None and self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._serve(body))
            return
        try:
            request = ExecuteRequest.from_json({"run_id": "-", **body})
            if request.mode != "input" or self.run_stream is None:
                raise InvalidRequest("after the first frame only {mode: input, code} is accepted")
            self.run_stream.send_input(request.code)
        except SessionsError as error:
            await self._send({"error": error.to_json()})

    async def _serve(self, body: Any) -> None:
        try:
            request = ExecuteRequest.from_json(body)
            action = ExecuteAction(
                caller=self.caller,
                ref=self.ref,
                request=request,
                owner_access_key=self.owner_access_key,
            )
            self.run_stream = await self.processors.execute_stream.wait_for_complete(action)
            while True:
                snapshot = await self.run_stream.next()
                for item in snapshot.console:
                    await self._send(item)
                if snapshot.status == WAITING_INPUT:
                    await self._send(result_json(snapshot))
                elif snapshot.status in (FINISHED, EXEC_TIMEOUT):
                    await self._send(result_json(snapshot))
                    self.run_stream = None
                    self.close(1000, "finished")
                    return
        except SessionsError as error:
            await self._fail(error)
        except WebSocketClosedError:
            return

    async def _send(self, payload: Any) -> None:
        await self.write_message(json.dumps(payload))

    async def _fail(self, error: SessionsError) -> None:
        with contextlib.suppress(WebSocketClosedError):
            await self._send({"error": error.to_json(), "status": error.status_code})
        self.close(4000 + error.status_code, error.reason)

    def on_close(self) -> None:
        stream, self.run_stream = self.run_stream, None
        if stream is not None:
            asyncio.get_running_loop().create_task(stream.cancel())
        if self.task is not None and not self.task.done():
            self.task.cancel()
