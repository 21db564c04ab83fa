"""Action processors: every action runs through one, which times it and tells its monitors.

A processor wraps one service coroutine. Monitors see each action before and after it runs: the
audit monitor records caller, action, target, outcome and duration, written to the database by a
background task so the request never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from .actions.base import Action
from .agents.registry import AgentService
from .cluster import ClusterService
from .errors import SessionsError
from .files import FileService
from .kernels.access import KernelAccessService
from .proxy import ProxyTokens
from .repository.orm import utcnow
from .repository.repository import AuditEntry, SessionRepository
from .services import ServicesConfig, ServicesService
from .templates import TemplateService

if TYPE_CHECKING:
    from .service import SessionService

A = TypeVar("A", bound=Action)
R = TypeVar("R")


@dataclass(frozen=True)
class Outcome:
    success: bool
    error: BaseException | None
    duration_s: float


class ActionMonitor(Protocol):
    async def prepare(self, action: Action) -> None: ...

    async def done(self, action: Action, outcome: Outcome) -> None: ...


class ActionProcessor(Generic[A, R]):
    """Runs one kind of action and reports it to the monitors."""

    def __init__(self, func: Callable[[A], Awaitable[R]], monitors: list[ActionMonitor]) -> None:
        self._func = func
        self._monitors = monitors

    async def wait_for_complete(self, action: A) -> R:
        for monitor in self._monitors:
            await monitor.prepare(action)
        started = time.perf_counter()
        error: BaseException | None = None
        try:
            return await self._func(action)
        except BaseException as exc:
            error = exc
            raise
        finally:
            outcome = Outcome(error is None, error, time.perf_counter() - started)
            for monitor in self._monitors:
                await monitor.done(action, outcome)


class AuditMonitor:
    """Queues an audit entry per action; a background task writes them in batches."""

    def __init__(self, repository: SessionRepository, log: logging.Logger) -> None:
        self._repository = repository
        self._queue: asyncio.Queue[AuditEntry] = asyncio.Queue(maxsize=10_000)
        self._queued = asyncio.Event()
        self._writing = asyncio.Lock()
        self._log = log
        self._task: asyncio.Task[None] | None = None

    async def prepare(self, action: Action) -> None:
        return None

    async def done(self, action: Action, outcome: Outcome) -> None:
        if outcome.error is None:
            result, error = "success", None
        elif isinstance(outcome.error, SessionsError):
            result, error = "failure", f"{outcome.error.reason}: {outcome.error.message}"
        elif isinstance(outcome.error, asyncio.CancelledError):
            result, error = "cancelled", None
        else:
            result, error = "error", type(outcome.error).__name__
        entry = AuditEntry(
            at=utcnow(),
            access_key=action.caller.access_key,
            action=action.operation,
            target=action.target(),
            outcome=result,
            error=error,
            duration_ms=round(outcome.duration_s * 1000),
        )
        try:
            self._queue.put_nowait(entry)
            self._queued.set()
        except asyncio.QueueFull:
            self._log.warning("audit queue full; dropped an entry for %s", action.operation)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._writer())

    async def _writer(self) -> None:
        while True:
            await self._queued.wait()
            try:
                await self._write_queued()
            except Exception:
                self._log.exception("could not write audit entries")

    async def _write_queued(self) -> None:
        # Entries leave the queue only under the lock, together with their write: so once a
        # flush holds the lock, every entry queued before it is either written or in its batch.
        async with self._writing:
            self._queued.clear()
            while not self._queue.empty():
                batch: list[AuditEntry] = []
                while not self._queue.empty() and len(batch) < 500:
                    batch.append(self._queue.get_nowait())
                await self._repository.write_audit(batch)

    async def flush(self) -> None:
        """Write what is queued now (at shutdown, and before the audit log is read)."""
        await self._write_queued()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self.flush()


class SessionProcessors:
    """One processor per action of the session service, all sharing the same monitors."""

    def __init__(self, service: SessionService, monitors: list[ActionMonitor]) -> None:
        def proc(func: Callable[[A], Awaitable[R]]) -> ActionProcessor[A, R]:
            return ActionProcessor(func, monitors)

        self.create_from_params = proc(service.create_from_params)
        self.list_sessions = proc(service.list_sessions)
        self.get_session_info = proc(service.get_session_info)
        self.get_status_history = proc(service.get_status_history)
        self.get_dependency_graph = proc(service.get_dependency_graph)
        self.destroy_session = proc(service.destroy_session)
        self.list_images = proc(service.list_images)
        # Agents and scaling groups (agents/registry.py).
        agents = AgentService.for_service(service)
        self.list_agents = proc(agents.list_agents)
        self.register_agent = proc(agents.register_agent)
        self.remove_agent = proc(agents.remove_agent)
        self.list_scaling_groups = proc(agents.list_scaling_groups)
        self.put_scaling_group = proc(agents.put_scaling_group)
        self.create_cluster = proc(ClusterService(service).create_cluster)
        self.execute = proc(service.execute)
        self.execute_stream = proc(service.execute_stream)
        self.interrupt = proc(service.interrupt)
        self.complete = proc(service.complete)
        # Logs, usage, abuse, commits and images, tasks, events (observability.py).
        obs = service.observability
        assert obs is not None, "SessionsApp sets service.observability before the processors"
        self.get_container_logs = proc(obs.logs.get_container_logs)
        self.follow_container_logs = proc(obs.logs.follow_container_logs)
        self.get_usage = proc(obs.get_usage)
        self.get_abusing_report = proc(obs.abuse.get_abusing_report)
        self.commit_session = proc(obs.commits.commit_session)
        self.get_commit_status = proc(obs.commits.get_commit_status)
        self.convert_session_to_image = proc(obs.commits.convert_session_to_image)
        self.delete_image = proc(obs.commits.delete_image)
        self.get_task = proc(obs.tasks.get_task)
        self.cancel_task = proc(obs.tasks.cancel_task)
        self.subscribe_events = proc(obs.events.subscribe_events)
        # modify, rename, restart, transit-status and templates (lifecycle-actions task)
        self.modify_session = proc(service.modify_session)
        self.rename_session = proc(service.rename_session)
        self.restart_session = proc(service.restart_session)
        self.check_and_transit_status = proc(service.check_and_transit_status)
        templates = TemplateService(service)
        self.list_templates = proc(templates.list_templates)
        self.get_template = proc(templates.get_template)
        self.create_template = proc(templates.create_template)
        self.modify_template = proc(templates.modify_template)
        self.delete_template = proc(templates.delete_template)
        self.create_from_template = proc(templates.create_from_template)
        # Kernel provisioners: a session kernel's connection info, Jupyter kernels on sessions
        # (kernels/access.py; the app connects it to the server's kernel manager).
        self.kernel_access = KernelAccessService(service)
        self.get_kernel_connection = proc(self.kernel_access.get_kernel_connection)
        self.open_jupyter_kernel = proc(self.kernel_access.open_jupyter_kernel)
        # Services inside sessions (services.py; the app configures them, else the defaults).
        services = service.services or ServicesService(service, ProxyTokens(), ServicesConfig())
        service.services = services
        self.list_services = proc(services.list_services)
        self.start_service = proc(services.start_service)
        self.shutdown_service = proc(services.shutdown_service)
        self.get_direct_access_info = proc(services.get_direct_access_info)
        # Files in sessions' work directories (files.py; the app configures it, else defaults).
        files = service.files or FileService(service)
        service.files = files
        self.list_files = proc(files.list_files)
        self.upload_files = proc(files.upload_files)
        self.download_file = proc(files.download_file)
        self.download_files = proc(files.download_files)
        self.delete_file = proc(files.delete_file)
        self.move_file = proc(files.move_file)
        self.make_dir = proc(files.make_dir)
