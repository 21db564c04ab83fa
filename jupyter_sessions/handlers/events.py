"""``GET events?session=&task=``: Server-Sent Events of the caller's own sessions and tasks.

Frames are ``event: session_status`` / ``task_progress`` with one line of JSON; a comment line
every ``KEEPALIVE_SECONDS`` keeps proxies from closing an idle stream and lets the server notice a
client that left. Written with TCP_NODELAY (DESIGN §7): each frame is small.
"""

from __future__ import annotations

import asyncio
import contextlib

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from ..events import SubscribeEventsAction, Subscription, sse_frame
from .base import API_PREFIX, SessionsAPIHandler
from .execute import _nodelay
from .schema import ERROR, ERRORS
from .sessions import OWNER_PARAM

KEEPALIVE_SECONDS = 15.0


class EventsHandler(SessionsAPIHandler):
    openapi = {
        "get": {
            "operationId": "subscribe_events",
            "summary": "Server-Sent Events: the caller's session statuses and task progress",
            "parameters": [
                {
                    "name": "session",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": "Only this session's events (an id or one of your names)",
                },
                {
                    "name": "task",
                    "in": "query",
                    "schema": {"type": "string"},
                    "description": "Only this task's events",
                },
                OWNER_PARAM,
            ],
            "responses": {
                "200": {
                    "description": "event: session_status {session_id, status, reason, at}; "
                    "event: task_progress {task_id, kind, session_id, status, progress, at}",
                    "content": {"text/event-stream": {}},
                },
                **ERRORS,
                "404": ERROR,
            },
        },
    }

    _stream_task: asyncio.Task[None] | None = None
    keepalive: float = KEEPALIVE_SECONDS

    @web.authenticated
    @authorized
    async def get(self) -> None:
        action = SubscribeEventsAction(
            caller=self.caller,
            session=self.get_query_argument("session", None) or None,
            task=self.get_query_argument("task", None) or None,
            owner_access_key=self.acting_for,
        )
        subscription = await self.processors.subscribe_events.wait_for_complete(action)
        self.set_header("Content-Type", "text/event-stream; charset=UTF-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")
        _nodelay(self)
        try:
            self._stream_task = asyncio.get_running_loop().create_task(self._stream(subscription))
            with contextlib.suppress(asyncio.CancelledError):
                await self._stream_task
        finally:
            subscription.close()  # also when the stream was cancelled before it began

    async def _stream(self, subscription: Subscription) -> None:
        sent = 0
        try:
            self.write(": connected\n\n")
            await self.flush()
            while True:
                event = await subscription.next(self.keepalive)
                if event is None:
                    self.write(": keep-alive\n\n")
                else:
                    sent += 1
                    self.write(sse_frame(event, sent))
                await self.flush()
        except StreamClosedError:
            return
        finally:
            subscription.close()

    def on_connection_close(self) -> None:
        if self._stream_task is not None:
            self._stream_task.cancel()

    def on_finish(self) -> None:
        self.on_connection_close()


event_handlers: list[tuple[str, type]] = [(rf"{API_PREFIX}/events", EventsHandler)]
