"""Events: the in-process hub, the owner-filtered streams opened on it, and the server's bus.

The hub fans status changes and task progress out to whoever listens. Subscribers get their own
bounded queue; a slow subscriber loses its oldest events rather than slowing the publisher. The
SSE route (``EventService``: each user sees only their own), the create call's wait and the
bridge to Jupyter's event logger (only when ``emit_server_events`` is on) all listen here.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from .actions.base import Action, SessionRefAction
from .errors import PermissionDenied

if TYPE_CHECKING:
    from .bgtasks import TaskService
    from .service import SessionService


@dataclass(frozen=True)
class Event:
    kind: str  # session_status | task_progress | service_status
    owner_access_key: str
    data: dict[str, Any]
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


class EventHub:
    def __init__(self, queue_size: int = 1000) -> None:
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._queue_size = queue_size

    def publish(self, event: Event) -> None:
        for queue in self._subscribers:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    @contextlib.contextmanager
    def subscribe(self) -> Any:
        queue: asyncio.Queue[Event] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    async def stream(self, accept: Callable[[Event], bool]) -> AsyncIterator[Event]:
        with self.subscribe() as queue:
            while True:
                event = await queue.get()
                if accept(event):
                    yield event


# --- the SSE stream: what a caller may see -------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SubscribeEventsAction(Action):
    """Open the caller's event stream, optionally narrowed to one session and/or one task."""

    operation: ClassVar[str] = "subscribe_events"
    session: str | None = None
    task: str | None = None
    #: An admin watching another key's events (non-admins get 403).
    owner_access_key: str | None = None

    def target(self) -> str | None:
        return self.session or self.task


class Subscription:
    """One listener's filtered view of the hub; ``next`` waits at most ``timeout`` seconds."""

    def __init__(self, hub: EventHub, accept: Callable[[Event], bool]) -> None:
        self._accept = accept
        self._context = hub.subscribe()
        self._queue: asyncio.Queue[Event] = self._context.__enter__()
        self._closed = False

    async def next(self, timeout: float) -> Event | None:
        """The next accepted event, or None when ``timeout`` passed without one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            try:
                event = await asyncio.wait_for(self._queue.get(), remaining)
            except TimeoutError:
                return None
            if self._accept(event):
                return event

    def close(self) -> None:
        """Stop listening (idempotent)."""
        if not self._closed:
            self._closed = True
            self._context.__exit__(None, None, None)


class EventService:
    """Opens event streams: each user sees only their own sessions' and tasks' events."""

    def __init__(self, service: SessionService, tasks: TaskService) -> None:
        self.service = service
        self.tasks = tasks

    async def subscribe_events(self, action: SubscribeEventsAction) -> Subscription:
        caller = action.caller
        owner = action.owner_access_key or caller.access_key
        if owner != caller.access_key and not caller.is_admin:
            raise PermissionDenied("only admins may watch another access key's events")
        session_id = task_id = None
        if action.session:
            found = await self.service._resolve(
                SessionRefAction(caller=caller, ref=action.session, owner_access_key=owner)
            )
            session_id, owner = found.id, found.owner_access_key
        if action.task:
            task = await self.tasks.find(action.task, caller)
            task_id, owner = task.id, task.owner_access_key

        def accept(event: Event) -> bool:
            if event.owner_access_key != owner:
                return False
            if session_id is not None and event.data.get("session_id") != session_id:
                return False
            return task_id is None or event.data.get("task_id") == task_id

        return Subscription(self.service.hub, accept)


def sse_frame(event: Event, event_id: int) -> bytes:
    """One Server-Sent Events frame (the data is one line of JSON)."""
    return f"id: {event_id}\nevent: {event.kind}\ndata: {json.dumps(event.data)}\n\n".encode()


# --- the server's event bus (jupyter_events), DESIGN §6 -----------------------------------------

SCHEMA_DIR = Path(__file__).parent / "event_schemas"
SCHEMA_BASE = "https://events.jupyter.org/jupyter_sessions"
SESSION_STATUS_SCHEMA = f"{SCHEMA_BASE}/session_status/v1"
TASK_PROGRESS_SCHEMA = f"{SCHEMA_BASE}/task_progress/v1"


def server_event(event: Event) -> tuple[str, dict[str, Any]] | None:
    """What goes to the server-wide bus: ids, statuses and counts only, never free text (a
    reason may quote a user's output) and never the owner's key."""
    data = event.data
    if event.kind == "session_status":
        return SESSION_STATUS_SCHEMA, {
            "session_id": str(data.get("session_id", "")),
            "status": str(data.get("status", "")),
        }
    if event.kind == "task_progress":
        progress = data.get("progress") or {}
        payload: dict[str, Any] = {
            "task_id": str(data.get("task_id", "")),
            "kind": str(data.get("kind", "")),
            "status": str(data.get("status", "")),
            "current": int(progress.get("current") or 0),
        }
        if data.get("session_id"):
            payload["session_id"] = str(data["session_id"])
        if progress.get("total") is not None:
            payload["total"] = int(progress["total"])
        return TASK_PROGRESS_SCHEMA, payload
    return None


class ServerEventBridge:
    """Copies hub events to the Jupyter server's event logger while ``enabled()`` says so."""

    def __init__(
        self,
        hub: EventHub,
        event_logger: Any,
        enabled: Callable[[], Awaitable[bool]],
        log: logging.Logger,
    ) -> None:
        self.hub = hub
        self.event_logger = event_logger
        self.enabled = enabled
        self.log = log
        self._task: asyncio.Task[None] | None = None

    def register_schemas(self) -> None:
        for path in sorted(SCHEMA_DIR.glob("*/v1.yaml")):
            self.event_logger.register_event_schema(path)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        async for event in self.hub.stream(lambda event: True):
            translated = server_event(event)
            if translated is None:
                continue
            try:
                if await self.enabled():
                    self.event_logger.emit(schema_id=translated[0], data=translated[1])
            except Exception:
                self.log.exception("could not emit a server event")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
