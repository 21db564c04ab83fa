"""Background tasks: long work (commits, conversions) off the request, persisted, cancellable.

A task is a row of ``background_tasks``: id, kind, status (pending, running, done, failed,
cancelled), progress ``{current, total, message}``, result or error. Every change of status or
progress is written to the store and published on the event hub as a ``task_progress`` event, so
``GET tasks/{id}`` and the SSE stream tell the same story. A task left running by a server that
stopped is marked failed at the next start (its work died with that server).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from .actions.observability import CancelTaskAction, GetTaskAction
from .errors import InvalidStatus, NotFound, SessionsError
from .events import Event, EventHub
from .identity import Caller
from .repository.db import Database
from .repository.orm import BackgroundTaskRow, utcnow

if TYPE_CHECKING:
    from .service import SessionService

PENDING, RUNNING, DONE, FAILED, CANCELLED = "pending", "running", "done", "failed", "cancelled"
FINAL_TASK_STATUSES = frozenset({DONE, FAILED, CANCELLED})
#: What a task's error says when the server stopped under it.
INTERRUPTED = "the server stopped while the task ran"


@dataclass(frozen=True)
class TaskData:
    id: str
    kind: str
    owner_access_key: str
    session_id: str | None
    status: str
    current: int
    total: int | None
    message: str
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: BackgroundTaskRow) -> TaskData:
        return cls(
            row.id,
            row.kind,
            row.owner_access_key,
            row.session_id,
            row.status,
            row.progress_current,
            row.progress_total,
            row.progress_message,
            row.result,
            row.error,
            row.created_at,
            row.updated_at,
        )

    @property
    def progress(self) -> dict[str, Any]:
        return {"current": self.current, "total": self.total, "message": self.message}


class Progress:
    """Handed to a task's work: report steps; each report is stored and published."""

    def __init__(self, tasks: TaskService, task_id: str, total: int | None) -> None:
        self._tasks = tasks
        self.task_id = task_id
        self.total = total
        self.current = 0

    async def step(self, message: str, current: int | None = None) -> None:
        """The next step (or step ``current``) has begun; ``message`` says which."""
        self.current = self.current + 1 if current is None else current
        await self._tasks._update(
            self.task_id, current=self.current, total=self.total, message=message
        )


Work = Callable[[Progress], Awaitable[dict[str, Any] | None]]


class TaskService:
    """Runs, records and cancels background tasks; answers ``GET/DELETE tasks/{id}``."""

    def __init__(self, db: Database, hub: EventHub, log: logging.Logger | None = None) -> None:
        self.db = db
        self.hub = hub
        self.log = log or logging.getLogger(__name__)
        self._running: dict[str, asyncio.Task[None]] = {}

    @classmethod
    def for_service(cls, service: SessionService) -> TaskService:
        return cls(service.repository.db, service.hub, service.log)

    # --- running -------------------------------------------------------------------------

    async def submit(
        self,
        kind: str,
        owner_access_key: str,
        work: Work,
        *,
        session_id: str | None = None,
        total: int | None = None,
        message: str = "queued",
    ) -> TaskData:
        """Record a pending task and start its work; answers the task as recorded."""
        task_id = str(uuid.uuid4())

        def insert(db: Session) -> TaskData:
            now = utcnow()
            row = BackgroundTaskRow(
                id=task_id,
                kind=kind,
                owner_access_key=owner_access_key,
                session_id=session_id,
                status=PENDING,
                progress_current=0,
                progress_total=total,
                progress_message=message,
                created_at=now,
                updated_at=now,
            )
            db.add(row)
            db.flush()
            return TaskData.of(row)

        task = await self.db.run(insert)
        self._publish(task)
        runner = asyncio.get_running_loop().create_task(self._run(task_id, work, total))
        self._running[task_id] = runner
        runner.add_done_callback(lambda _done: self._running.pop(task_id, None))
        return task

    async def _run(self, task_id: str, work: Work, total: int | None) -> None:
        progress = Progress(self, task_id, total)
        try:
            await self._update(task_id, status=RUNNING, message="started")
            result = await work(progress)
        except asyncio.CancelledError:
            with contextlib.suppress(SessionsError):
                await self._update(task_id, status=CANCELLED, message="cancelled")
            return
        except SessionsError as exc:
            await self._update(task_id, status=FAILED, error=exc.message, message="failed")
            return
        except Exception as exc:
            self.log.exception("background task %s failed", task_id)
            await self._update(
                task_id,
                status=FAILED,
                error=f"internal error: {type(exc).__name__}",
                message="failed",
            )
            return
        await self._update(
            task_id,
            status=DONE,
            result=result or {},
            current=total if total is not None else progress.current,
            message="done",
        )

    async def _update(self, task_id: str, **changes: Any) -> TaskData:
        """Write a change (status, progress, result, error) and publish the task as it is now."""
        columns = {
            "status": "status",
            "current": "progress_current",
            "total": "progress_total",
            "message": "progress_message",
            "result": "result",
            "error": "error",
        }

        def work(db: Session) -> TaskData:
            row = db.get(BackgroundTaskRow, task_id)
            if row is None:
                raise NotFound(f"no task {task_id!r}")
            if row.status in FINAL_TASK_STATUSES:
                return TaskData.of(row)  # cancelled meanwhile: the end is already written
            for key, value in changes.items():
                setattr(row, columns[key], value)
            row.updated_at = utcnow()
            db.flush()
            return TaskData.of(row)

        task = await self.db.run(work)
        self._publish(task)
        return task

    def _publish(self, task: TaskData) -> None:
        data: dict[str, Any] = {
            "task_id": task.id,
            "kind": task.kind,
            "session_id": task.session_id,
            "status": task.status,
            "progress": task.progress,
            "at": task.updated_at.isoformat(),
        }
        if task.error:
            data["error"] = task.error
        self.hub.publish(Event("task_progress", task.owner_access_key, data))

    # --- reading and cancelling ----------------------------------------------------------

    async def get(self, task_id: str) -> TaskData:
        """A task as stored (no access check: callers are the service's own)."""

        def work(db: Session) -> TaskData:
            row = db.get(BackgroundTaskRow, task_id)
            if row is None:
                raise NotFound(f"no task {task_id!r}")
            return TaskData.of(row)

        return await self.db.run(work)

    async def find(self, task_id: str, caller: Caller) -> TaskData:
        """A task its owner (or an admin) may see; anyone else's is 404."""
        task = await self.get(task_id)
        if not caller.is_admin and task.owner_access_key != caller.access_key:
            raise NotFound(f"no task {task_id!r}")
        return task

    async def get_task(self, action: GetTaskAction) -> TaskData:
        return await self.find(action.task_id, action.caller)

    async def cancel_task(self, action: CancelTaskAction) -> TaskData:
        """Cancel a pending or running task (409 when it already ended)."""
        task = await self.find(action.task_id, action.caller)
        if task.status in FINAL_TASK_STATUSES:
            raise InvalidStatus(f"the task is already {task.status}", status=task.status)
        runner = self._running.get(task.id)
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await runner
        else:  # another manager's, or lost: record the cancel
            await self._update(task.id, status=CANCELLED, message="cancelled")
        return await self.find(task.id, action.caller)

    async def latest(self, session_id: str, kinds: tuple[str, ...]) -> TaskData | None:
        """The newest task of these kinds about a session."""

        def work(db: Session) -> TaskData | None:
            row = db.scalars(
                select(BackgroundTaskRow)
                .where(
                    BackgroundTaskRow.session_id == session_id,
                    BackgroundTaskRow.kind.in_(kinds),
                )
                .order_by(BackgroundTaskRow.created_at.desc())
                .limit(1)
            ).first()
            return TaskData.of(row) if row is not None else None

        return await self.db.run(work)

    async def fail_interrupted(self) -> int:
        """At start-up: tasks a stopped server left pending or running are failed."""

        def work(db: Session) -> int:
            done = db.execute(
                update(BackgroundTaskRow)
                .where(BackgroundTaskRow.status.in_((PENDING, RUNNING)))
                .values(status=FAILED, error=INTERRUPTED, updated_at=utcnow())
            )
            return int(getattr(done, "rowcount", 0) or 0)

        count = await self.db.run(work)
        if count:
            self.log.warning(
                "jupyter_sessions: %d background task(s) failed: %s", count, INTERRUPTED
            )
        return count

    async def close(self) -> None:
        """Cancel what runs (at server stop); each is recorded as cancelled."""
        running = list(self._running.values())
        for runner in running:
            runner.cancel()
        if running:
            await asyncio.wait(running, timeout=30)


def task_json(task: TaskData) -> dict[str, Any]:
    return {
        "id": task.id,
        "kind": task.kind,
        "session_id": task.session_id,
        "status": task.status,
        "progress": task.progress,
        "result": task.result,
        "error": task.error,
        "created_at": task.created_at.isoformat(),
        "updated_at": task.updated_at.isoformat(),
    }
