"""SessionService: one coroutine per action, the business logic of sessions.

The service validates what needs configuration or state, moves sessions through the transition
map (every move logged in the status history and published as an event), and drives agents to
start and tear down kernels. It never imports tornado; handlers reach it only through processors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import signal
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from .actions.base import SessionRefAction
from .actions.execution import (
    CompleteAction,
    CompleteResult,
    ExecuteAction,
    ExecuteRequest,
    ExecuteResult,
    GetUsageAction,
    InterruptAction,
)
from .actions.info import ImageEntry, ListImagesAction
from .actions.lifecycle import (
    CREATE_FIELDS,
    CheckAndTransitStatusAction,
    CreateFromParamsAction,
    CreateSessionParams,
    CreateSessionResult,
    DependencyGraph,
    DestroySessionAction,
    DestroySessionResult,
    GetDependencyGraphAction,
    GetSessionInfoAction,
    GetStatusHistoryAction,
    ListSessionsAction,
    ListSessionsResult,
    ModifySessionAction,
    RenameSessionAction,
    RestartSessionAction,
    RestartSessionResult,
    StatusHistoryResult,
)
from .agents.base import Agent, AgentRegistry, ExecProcess, KernelHandle, KernelSpec
from .cluster import (
    bring_up_subs,
    check_cluster,
    check_sub_kernels,
    cluster_kernels,
    kernel_cluster_mode,
    prepare_cluster,
    remove_cluster_networks,
)
from .errors import (
    AgentUnavailable,
    Conflict,
    InvalidRequest,
    InvalidStatus,
    NotFound,
    PermissionDenied,
    SessionsError,
    Timeout,
)
from .events import Event, EventHub
from .identity import Caller
from .kernels.batch import STEPS as BATCH_STEPS
from .kernels.batch import BatchRun
from .kernels.connection import KernelConnections
from .kernels.runs import (
    EXEC_TIMEOUT,
    FINISHED,
    WAITING_INPUT,
    Console,
    KernelChannel,
    Run,
    RunSnapshot,
    RunStream,
)
from .mounts import Mount, MountPolicy, stored_mounts, working_dir_of
from .repository.accounts import AccountRepository, ResourcePolicyData
from .repository.orm import utcnow
from .repository.repository import NewSession, Scope, SessionData, SessionRepository
from .types import (
    ALIVE_STATUSES,
    TERMINAL_STATUSES,
    ResourceSlot,
    SessionResult,
    SessionStatus,
    SessionType,
)

if TYPE_CHECKING:
    from .files import FileService
    from .observability import Observability
    from .services import ServicesService

S = SessionStatus
#: Statuses that end the wait of a create call that did not ask for ``enqueue_only``.
SETTLED_STATUSES = frozenset({S.RUNNING, S.RUNNING_DEGRADED, S.ERROR, S.TERMINATED, S.CANCELLED})
MIN_MEMORY = 64 * 2**20
#: Statuses a session is restarted from in place (a final one is run again as a new session).
RESTARTABLE_STATUSES = frozenset({S.RUNNING, S.RUNNING_DEGRADED, S.ERROR})
#: Stored creation parameters a re-run does not repeat: it runs now, waiting on nothing.
NOT_REPLAYED = frozenset({"depends_on", "owner_access_key", "reuse_if_exists", "max_wait_seconds"})
#: Output of a bootstrap_script kept while it runs, and how much of its tail status_info shows.
BOOTSTRAP_OUTPUT_BYTES = 64 * 1024
BOOTSTRAP_TAIL_CHARS = 2000
#: How much of a batch session's output the store keeps (its tail), readable after it ended.
BATCH_OUTPUT_BYTES = 256 * 1024


@dataclass
class ServiceConfig:
    """The knobs the service reads (set from SessionsApp traitlets)."""

    default_image: str
    allowed_images: list[str]
    default_resources: ResourceSlot
    max_session_resources: ResourceSlot
    #: Seconds a session may stay in each transitional status before it is moved to ERROR.
    deadlines: dict[SessionStatus, float] = field(default_factory=dict)
    #: Seconds an execute call waits for a run before answering ``continued``.
    flush_interval: float = 2.0
    #: Seconds a run may take before it is interrupted (``exec-timeout``); 0 means no limit.
    execute_timeout: float = 0.0
    #: Who may mount which folders of the content root (None: mounts are refused).
    mounts: MountPolicy | None = None


class SessionService:
    def __init__(
        self,
        repository: SessionRepository,
        agents: AgentRegistry,
        connections: KernelConnections,
        hub: EventHub,
        config: ServiceConfig,
        log: logging.Logger | None = None,
    ) -> None:
        self.repository = repository
        #: Resource policies, read at create (the scheduler reads them again under lock).
        self.accounts = AccountRepository(repository.db)
        self.agents = agents
        self.connections = connections
        self.hub = hub
        self.config = config
        self.log = log or logging.getLogger(__name__)
        #: Start and teardown tasks in flight, by session id (never two for one session).
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._others: set[asyncio.Task[None]] = set()
        self._teardown_locks: dict[str, asyncio.Lock] = {}
        #: Batch runs by session, then run id (query runs live in their KernelChannel).
        self._batches: dict[str, dict[str, BatchRun]] = {}
        #: Last execution (later also service and file) activity per session, for idle timeouts.
        self.last_activity: dict[str, datetime] = {}
        self._wake_scheduler: asyncio.Event | None = None
        #: Logs kept at teardown, owners' converted images (observability.py; set by the app).
        self.observability: Observability | None = None
        #: Services inside sessions and the proxy's targets (services.py; set by the app).
        self.services: ServicesService | None = None
        #: Files in sessions' work directories (files.py; set by the app, measured in sweeps).
        self.files: FileService | None = None

    def attach_scheduler_wakeup(self, wakeup: asyncio.Event) -> None:
        self._wake_scheduler = wakeup

    def wake_scheduler(self) -> None:
        """Ask for a scheduler pass now (an agent or a scaling group changed)."""
        if self._wake_scheduler is not None:
            self._wake_scheduler.set()

    # --- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _scope(caller: Caller, owner_access_key: str | None) -> Scope:
        """Non-admins see their own sessions; admins see any by id, or act for another key."""
        if owner_access_key and owner_access_key != caller.access_key:
            if not caller.is_admin:
                raise PermissionDenied("only admins may act for another access key")
            return Scope(owner_access_key)
        return Scope.everyone() if caller.is_admin else Scope(caller.access_key)

    async def _resolve(self, action: SessionRefAction) -> SessionData:
        scope = self._scope(action.caller, action.owner_access_key)
        name_owner = action.owner_access_key or action.caller.access_key
        return await self.repository.resolve(action.ref, scope, name_owner=name_owner)

    def main_container(self, session: SessionData, what: str) -> tuple[Agent, str]:
        """The agent and container of a RUNNING session's main kernel, for the actions that work
        on the container itself (files, services, commits); 409 naming ``what`` otherwise."""
        if session.status not in ALIVE_STATUSES:
            raise InvalidStatus(
                f"the session is {session.status}; {what} only while it is RUNNING",
                status=str(session.status),
            )
        kernel = session.main_kernel
        if kernel is None or kernel.agent_id is None:
            raise InvalidStatus("the session has no kernel placed on an agent")
        agent = self.agents.get(kernel.agent_id)
        return agent, kernel.container_id or agent.kernel_ref(session.id, kernel.name)

    async def _transit(
        self,
        session_id: str,
        target: SessionStatus,
        reason: str,
        *,
        expected: Iterable[SessionStatus] | None = None,
    ) -> SessionData:
        session = await self.repository.transit(session_id, target, reason, expected=expected)
        self.log.info("session %s (%s) → %s: %s", session.name, session.id, target, reason)
        self.hub.publish(
            Event(
                "session_status",
                session.owner_access_key,
                {
                    "session_id": session.id,
                    "status": str(target),
                    "reason": reason,
                    "at": session.status_changed_at.isoformat(),
                },
            )
        )
        return session

    def _spawn(self, session_id: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run the one start task of a session; ``is_busy`` is true while it runs."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks[session_id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._tasks.get(session_id) is done:
                del self._tasks[session_id]

        task.add_done_callback(forget)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run work that outlives the request (teardown), holding a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro)
        self._others.add(task)
        task.add_done_callback(self._others.discard)

    async def close(self) -> None:
        """Cancel start tasks and wait for teardowns (at server stop)."""
        for task in list(self._tasks.values()):
            task.cancel()
        pending = [*self._tasks.values(), *self._others]
        if pending:
            await asyncio.wait(pending, timeout=30)

    def _check_image(self, image: str) -> None:
        if image not in self.config.allowed_images:
            allowed = ", ".join(self.config.allowed_images) or "(none configured)"
            raise InvalidRequest(
                f"image {image!r} is not allowed; allowed images: {allowed}",
                field="image",
                allowed=self.config.allowed_images,
            )

    async def _check_resources(self, resources: ResourceSlot, scaling_group: str) -> None:
        if resources.get("cpu") <= 0:
            raise InvalidRequest("resources.cpu must be more than 0", field="resources.cpu")
        if resources.get("mem") < MIN_MEMORY:
            raise InvalidRequest("resources.mem must be at least 64m", field="resources.mem")
        over = resources.exceeding(self.config.max_session_resources)
        if over:
            raise PermissionDenied(
                f"resources exceed the per-session limit on {', '.join(over)}",
                limit=self.config.max_session_resources.to_json(),
            )
        await self.agents.check_fits(resources, scaling_group)

    @staticmethod
    def _check_policy(policy: ResourcePolicyData, resources: ResourceSlot, containers: int) -> None:
        """The per-session limits of the owner's resource policy (403 naming the limit)."""
        limit = policy.max_containers_per_session
        if limit is not None and containers > limit:
            raise PermissionDenied(
                f"cluster_size {containers} exceeds the resource policy's "
                f"max_containers_per_session {limit}",
                limit="max_containers_per_session",
                max_containers_per_session=limit,
            )
        over = resources.exceeding(ResourceSlot.parse(policy.max_session_resources))
        if over:
            raise PermissionDenied(
                f"resources exceed the resource policy's max_session_resources on "
                f"{', '.join(over)}",
                limit="max_session_resources",
                slots=over,
                max_session_resources=policy.max_session_resources,
            )

    async def _resolve_dependencies(self, owner: str, refs: Iterable[str]) -> tuple[str, ...]:
        """Ids of the owner's own sessions named in ``depends_on`` (404 for any other)."""
        ids: dict[str, None] = {}
        for ref in refs:
            try:
                found = await self.repository.resolve(ref, Scope(owner), name_owner=owner)
            except NotFound:
                raise NotFound(f"depends_on: no session {ref!r}", field="depends_on") from None
            ids[found.id] = None
        return tuple(ids)

    # --- actions -----------------------------------------------------------------------------

    async def create_from_params(self, action: CreateFromParamsAction) -> CreateSessionResult:
        params = action.params
        owner = await self._creating_owner(action)
        if params.reuse_if_exists and params.name:
            existing = await self.repository.find_active_by_name(owner, params.name)
            if existing is not None:
                return CreateSessionResult(existing, created=False)
        image = params.image or self.config.default_image
        if self.observability is None or image not in await self.observability.allowed_images(
            owner
        ):
            self._check_image(image)
        resources = params.resources.merged_over(self.config.default_resources)
        await self._check_resources(resources, params.scaling_group)
        self._check_policy(await self.accounts.policy_of(owner), resources, params.cluster_size)
        await check_cluster(
            self.agents, resources, params.cluster_mode, params.cluster_size, params.scaling_group
        )
        depends_on = await self._resolve_dependencies(owner, params.depends_on)
        mounts = await self._resolve_mounts(params.mounts, owner)
        new = NewSession(
            name=params.name or f"sess-{secrets.token_hex(4)}",
            owner_access_key=owner,
            image=image,
            type=str(params.type),
            resources=resources.to_json(),
            cluster_mode=str(params.cluster_mode),
            cluster_size=params.cluster_size,
            scaling_group=params.scaling_group,
            tag=params.tag,
            priority=0,
            # Kept to run the session again on restart; environ may hold secrets, so it stays
            # server-side (never returned, and never baked into committed images).
            params={
                "environ": params.environ,
                "startup_command": params.startup_command,
                "batch_timeout": params.batch_timeout,
                "bootstrap_script": params.bootstrap_script,
                "mounts": [m.to_json() for m in mounts],
                "preopen_ports": list(params.preopen_ports),
            },
            kernels=cluster_kernels(params.cluster_size),
            restarted_from=action.restarted_from,
            depends_on=depends_on,
        )
        with self.hub.subscribe() as events:
            session = await self.repository.create_session_within_policy(new)
            if self._wake_scheduler is not None:
                self._wake_scheduler.set()
            if not params.enqueue_only and params.max_wait_seconds > 0:
                session = await self._wait_settled(session, events, params.max_wait_seconds)
        return CreateSessionResult(session, created=True)

    async def _resolve_mounts(self, requested: tuple[Mount, ...], owner: str) -> tuple[Mount, ...]:
        """Mounts checked against the content root (mounts.py), off the loop: it reads disks."""
        if not requested:
            return ()
        if self.config.mounts is None:
            raise InvalidRequest("mounts are not available on this server", field="mounts")
        return await asyncio.to_thread(self.config.mounts.resolve, requested, owner)

    async def _creating_owner(self, action: CreateFromParamsAction) -> str:
        """Whose session this is: the caller's, or (admins only) an existing, active keypair's."""
        owner = action.params.owner_access_key
        if not owner or owner == action.caller.access_key:
            return action.caller.access_key
        if not action.caller.is_admin:
            raise PermissionDenied("only admins may create sessions for another access key")
        keypair = await self.accounts.get_keypair(owner)  # NotFound for an unknown key
        if keypair.revoked_at is not None:
            raise InvalidRequest(f"keypair {owner} is revoked", field="owner_access_key")
        return owner

    async def wait_settled(self, session_id: str, timeout: float) -> SessionData:
        """The session once it settles (running, failed or ended), or as it is after
        ``timeout`` seconds: woken by its status events, never by polling."""
        with self.hub.subscribe() as events:
            session = await self.repository.get(session_id)
            return await self._wait_settled(session, events, timeout)

    async def _wait_settled(
        self, session: SessionData, events: asyncio.Queue[Event], timeout: float
    ) -> SessionData:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while session.status not in SETTLED_STATUSES:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                event = await asyncio.wait_for(events.get(), remaining)
            except TimeoutError:
                break
            if event.kind == "session_status" and event.data.get("session_id") == session.id:
                session = await self.repository.get(session.id)
        return session

    async def list_sessions(self, action: ListSessionsAction) -> ListSessionsResult:
        caller = action.caller
        acting_for_another = action.owner_access_key not in (None, caller.access_key)
        if acting_for_another and not caller.is_admin:
            raise PermissionDenied("only admins may list another access key's sessions")
        scope = Scope(action.owner_access_key or caller.access_key)
        sessions, total = await self.repository.list_sessions(
            scope,
            statuses=action.statuses,
            match=action.match,
            limit=action.limit,
            offset=action.offset,
        )
        return ListSessionsResult(sessions, total)

    async def get_session_info(self, action: GetSessionInfoAction) -> SessionData:
        return await self._resolve(action)

    async def get_dependency_graph(self, action: GetDependencyGraphAction) -> DependencyGraph:
        """Both directions of ``depends_on`` around a session; only sessions the caller may see."""
        session = await self._resolve(action)
        nodes, edges = await self.repository.dependency_graph(session.id)
        if not action.caller.is_admin:
            visible = {n["id"] for n in nodes if n["owner_access_key"] == action.caller.access_key}
            nodes = [n for n in nodes if n["id"] in visible]
            edges = [(a, b) for a, b in edges if a in visible and b in visible]
        return DependencyGraph(session.id, nodes, edges)

    async def get_status_history(self, action: GetStatusHistoryAction) -> StatusHistoryResult:
        session = await self._resolve(action)
        return StatusHistoryResult(session, await self.repository.status_history(session.id))

    async def destroy_session(self, action: DestroySessionAction) -> DestroySessionResult:
        session = await self._resolve(action)
        if session.status in TERMINAL_STATUSES:
            raise InvalidStatus(
                f"the session is already {session.status}", status=str(session.status)
            )
        if action.recursive:
            # Dependents first, so each ends with this reason rather than "dependency ended".
            for dependent_id in await self.repository.dependents_of(session.id):
                with contextlib.suppress(InvalidStatus, NotFound):
                    await self._destroy_one(
                        await self.repository.get(dependent_id),
                        action.forced,
                        f"recursive destroy of {session.id}",
                    )
        reason = "force-terminated" if action.forced else "user-requested"
        return await self._destroy_one(session, action.forced, reason)

    async def _destroy_one(
        self, session: SessionData, forced: bool, reason: str
    ) -> DestroySessionResult:
        if session.status in (S.PENDING, S.SCHEDULED):
            try:
                session = await self._transit(
                    session.id, S.CANCELLED, reason, expected={S.PENDING, S.SCHEDULED}
                )
                return DestroySessionResult(session, finished=True)
            except InvalidStatus:
                # The scheduler moved it on (to PREPARING) meanwhile: terminate it instead.
                session = await self.repository.get(session.id)
                if session.status in TERMINAL_STATUSES:
                    return DestroySessionResult(session, finished=True)
        if session.status is not S.TERMINATING:
            session = await self._transit(session.id, S.TERMINATING, reason)
        # A start in flight notices TERMINATING when its container is up and removes it; forced
        # means: remove whatever exists now (and the start task removes what comes after).
        if forced or not self.is_busy(session.id):
            self._background(self._teardown(session.id, forced))
        return DestroySessionResult(session, finished=False)

    async def list_images(self, action: ListImagesAction) -> list[ImageEntry]:
        present: dict[str, tuple[list[str], int, dict[str, str]]] = {}
        for agent in self.agents:
            if not (await agent.info()).reachable:
                continue
            for image in await agent.list_images():
                agents, _size, _labels = present.setdefault(
                    image.name, ([], image.size, image.labels)
                )
                agents.append(agent.id)
        entries = []
        for name in self.config.allowed_images:
            agents, size, labels = present.get(name, ([], None, {}))
            entries.append(
                ImageEntry(
                    name=name,
                    present=bool(agents),
                    is_default=name == self.config.default_image,
                    agents=agents,
                    size=size,
                    labels=labels,
                )
            )
        if self.observability is not None:  # the caller's own converted images
            entries.extend(await self.observability.commits.image_entries(action.caller))
        return entries

    # --- execution ----------------------------------------------------------------------------

    async def _channel(self, action: SessionRefAction) -> tuple[SessionData, KernelChannel]:
        """The main kernel's channel of a session that can run code now."""
        session = await self._resolve(action)
        if session.status not in ALIVE_STATUSES:
            raise InvalidStatus(
                f"the session is {session.status}; code runs only in a RUNNING session",
                status=str(session.status),
            )
        kernel = session.main_kernel
        if kernel is None or not kernel.connection:
            raise InvalidStatus("the session has no kernel to run code in")
        self.touch_activity(session.id)
        return session, self.connections.channel(kernel.id, kernel.connection)

    async def _submit(self, channel: KernelChannel, request: ExecuteRequest) -> Run:
        timeout = request.timeout if request.timeout is not None else self.config.execute_timeout
        return await channel.submit(request.code, run_id=request.run_id, timeout=timeout or None)

    @staticmethod
    def _known_run(channel: KernelChannel, run_id: str | None) -> Run:
        run = channel.get_run(run_id or "")
        if run is None:
            raise NotFound(
                f"no run {run_id!r} in this session (finished runs are forgotten "
                "once their output was taken)"
            )
        return run

    def _batch_runs(self, session_id: str) -> dict[str, BatchRun]:
        return self._batches.setdefault(session_id, {})

    async def _execute_batch(self, session: SessionData, request: ExecuteRequest) -> RunSnapshot:
        runs = self._batch_runs(session.id)
        if request.mode == "batch":
            if request.run_id is not None and request.run_id in runs:
                raise Conflict(f"run {request.run_id!r} is still going; continue it")
            kernel = session.main_kernel
            assert kernel is not None and kernel.agent_id is not None
            agent = self.agents.get(kernel.agent_id)
            container = kernel.container_id or agent.kernel_ref(session.id, kernel.name)
            environ = session.params.get("environ", {})

            async def start(argv: list[str]) -> ExecProcess:
                return await agent.exec(container, argv, environ=environ)

            timeout = (
                request.timeout if request.timeout is not None else (self.config.execute_timeout)
            )
            run = BatchRun(
                {k: v for k, v in request.options.items() if k in BATCH_STEPS},
                start,
                run_id=request.run_id,
                timeout=timeout or None,
                max_console_bytes=self.connections.max_console_bytes,
            )
            runs[run.run_id] = run
        else:
            found = runs.get(request.run_id or "")
            if found is None:
                raise NotFound(f"no run {request.run_id!r} in this session")
            if request.mode == "input":
                raise InvalidStatus("batch commands do not read input")
            run = found
        snapshot = await run.wait(request.flush_interval or self.config.flush_interval)
        if snapshot.status in (FINISHED, EXEC_TIMEOUT):
            runs.pop(run.run_id, None)
        return snapshot

    async def execute(self, action: ExecuteAction) -> ExecuteResult:
        request = action.request
        session, channel = await self._channel(action)
        if request.mode == "batch" or request.run_id in self._batch_runs(session.id):
            snapshot = await self._execute_batch(session, request)
            return ExecuteResult(
                snapshot.run_id,
                snapshot.status,
                snapshot.exit_code,
                snapshot.console,
                snapshot.options,
            )
        if request.mode == "query":
            run = await self._submit(channel, request)
        else:
            run = self._known_run(channel, request.run_id)
            if request.mode == "input":
                if run.status != WAITING_INPUT:
                    raise InvalidStatus(f"run {run.run_id!r} is not waiting for input")
                channel.send_input(run, request.code)
        flush = request.flush_interval or self.config.flush_interval
        snapshot = await channel.wait(run, flush)
        return ExecuteResult(
            run_id=snapshot.run_id,
            status=snapshot.status,
            exit_code=snapshot.exit_code,
            console=snapshot.console,
            options=snapshot.options,
        )

    async def execute_stream(self, action: ExecuteAction) -> RunStream:
        """Start a query (or follow a known run) whose output goes out as it happens."""
        request = action.request
        if request.mode not in ("query", "continue"):
            raise InvalidRequest("a stream starts with mode query (or continue)", field="mode")
        _session, channel = await self._channel(action)
        if request.mode == "query":
            run = await self._submit(channel, request)
        else:
            run = self._known_run(channel, request.run_id)
        return RunStream(channel, run)

    async def get_usage(self, action: GetUsageAction) -> tuple[str, list[dict[str, Any]]]:
        """Each kernel's usage now; a kernel that is not running reports ``None`` figures."""
        session = await self._resolve(action)
        usages = []
        for kernel in session.kernels:
            figures: dict[str, Any] | None = None
            if kernel.agent_id is not None and session.status not in TERMINAL_STATUSES:
                agent = self.agents.get(kernel.agent_id)
                ref = kernel.container_id or agent.kernel_ref(session.id, kernel.name)
                figures = await agent.usage(ref)
            usages.append(
                {
                    "name": kernel.name,
                    "status": str(kernel.status),
                    "measured_at": utcnow(),
                    "usage": figures,
                }
            )
        return session.id, usages

    async def interrupt(self, action: InterruptAction) -> None:
        session, channel = await self._channel(action)
        for batch in self._batch_runs(session.id).values():
            await batch.interrupt()
        await channel.interrupt()

    async def complete(self, action: CompleteAction) -> CompleteResult:
        _session, channel = await self._channel(action)
        content = await channel.complete(action.code, action.cursor_pos)
        return CompleteResult(
            matches=list(content.get("matches", [])),
            cursor_start=int(content.get("cursor_start", action.cursor_pos)),
            cursor_end=int(content.get("cursor_end", action.cursor_pos)),
            metadata=dict(content.get("metadata", {})),
        )

    # --- the work behind the statuses (called by the scheduler and the sweeper) -------------

    def is_busy(self, session_id: str) -> bool:
        return session_id in self._tasks

    def start(self, session: SessionData, agent: Agent) -> None:
        """Start a PENDING session, or one the scheduler admitted (SCHEDULED), on ``agent``."""
        self._spawn(session.id, self._start(session, agent))

    def announce(self, session: SessionData) -> None:
        """Publish a transition made in a transaction of its own (the scheduler's admission)."""
        self.log.info(
            "session %s (%s) → %s: %s",
            session.name,
            session.id,
            session.status,
            session.status_info,
        )
        self.hub.publish(
            Event(
                "session_status",
                session.owner_access_key,
                {
                    "session_id": session.id,
                    "status": str(session.status),
                    "reason": session.status_info,
                    "at": session.status_changed_at.isoformat(),
                },
            )
        )

    async def cancel_pending(self, session_id: str, reason: str) -> None:
        """Cancel a session the scheduler gave up on (a dependency failed); gone is fine."""
        with contextlib.suppress(InvalidStatus):
            await self._transit(session_id, S.CANCELLED, reason, expected={S.PENDING})

    async def _start(self, session: SessionData, agent: Agent) -> None:
        kernel = session.main_kernel
        assert kernel is not None

        async def prepare() -> None:
            if session.status is S.PENDING:
                await self._transit(
                    session.id, S.SCHEDULED, f"placed on agent {agent.id}", expected={S.PENDING}
                )
                await self.repository.set_kernel_placement(kernel.id, agent_id=agent.id)
            await self._transit(session.id, S.PREPARING, "checking the image")
            if not await agent.has_image(session.image):
                raise InvalidRequest(f"image {session.image!r} is not present on agent {agent.id}")
            await self._transit(session.id, S.PREPARED, "image present")
            await self._transit(session.id, S.CREATING, "creating the container")

        await self._bring_up(session, agent, S.CREATING, prepare, verb="starting")

    async def _bring_up(
        self,
        session: SessionData,
        agent: Agent,
        phase: SessionStatus,
        prepare: Callable[[], Awaitable[None]],
        *,
        verb: str,
        failure_prefix: str = "",
        ready_prefix: str = "",
    ) -> None:
        """What start and restart share: their own preparation, then a new container, the kernel
        answering, the bootstrap script and RUNNING; and the one way their failures end."""
        kernel = session.main_kernel
        assert kernel is not None
        created = False
        try:
            await prepare()
            await prepare_cluster(self, session)
            handle = await self._create_kernel(session.id, kernel.name, agent)
            created = True
            await self.repository.set_kernel_placement(
                kernel.id, container_id=handle.container_id, connection=handle.connection
            )
            if (await self.repository.get(session.id)).status is not phase:
                raise InvalidStatus(f"the session left {phase} while its container started")
            timeout = self.config.deadlines.get(phase, 180.0)
            await self.connections.wait_ready(kernel.id, handle.connection, timeout)
            await bring_up_subs(self, session.id, agent)
            ready = await self._run_bootstrap(session.id, handle.container_id, agent, phase)
            await self._transit(session.id, S.RUNNING, ready_prefix + ready, expected={phase})
            if session.type == SessionType.BATCH:
                self._background(self._run_batch_session(session.id))
        except asyncio.CancelledError:
            raise
        except InvalidStatus:
            # Destroyed (or swept) meanwhile: whoever moved it decides; clean up if ending.
            current = await self.repository.get(session.id)
            if current.status is S.TERMINATING or (created and current.status in TERMINAL_STATUSES):
                await self._teardown(session.id, forced=True)
        except SessionsError as exc:
            if (await self.repository.get(session.id)).status is S.TERMINATING:
                # Destroyed mid-way: the engine's refusal is that destroy's doing; finish it.
                await self._teardown(session.id, forced=True)
            else:
                await self._fail(session.id, failure_prefix + exc.message)
        except Exception as exc:
            self.log.exception("%s session %s failed", verb, session.id)
            await self._fail(session.id, f"internal error while {verb}: {type(exc).__name__}")

    async def _run_batch_session(self, session_id: str) -> None:
        """Run a batch session's startup_command; its exit decides SUCCESS or FAILURE, then the
        session ends (TERMINATED) with its output kept in the store."""
        session = await self.repository.get(session_id)
        kernel = session.main_kernel
        assert kernel is not None and kernel.agent_id is not None
        command = str(session.params.get("startup_command") or "")
        timeout = session.params.get("batch_timeout")
        output = Console(BATCH_OUTPUT_BYTES)
        code: int | None = None
        problem = ""
        try:
            agent = self.agents.get(kernel.agent_id)
            process = await agent.exec(
                kernel.container_id or agent.kernel_ref(session.id, kernel.name),
                ["sh", "-c", command],
                environ=session.params.get("environ", {}),
            )

            async def collect() -> None:
                while (chunk := await process.read()) is not None:
                    output.add(*chunk)

            try:
                await asyncio.wait_for(collect(), timeout)
            except TimeoutError:
                problem = f"batch-timeout: still running after {timeout:g} s"
                await process.signal(signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(collect(), 10)
            code = await asyncio.wait_for(process.wait(), 30)
        except (SessionsError, TimeoutError) as exc:
            problem = problem or f"the startup command could not run: {exc}"
        result = SessionResult.SUCCESS if code == 0 and not problem else SessionResult.FAILURE
        text = "".join(str(data) for _kind, data in output.take())
        await self.repository.set_result(
            session_id, result, code, {"batch": {"output": text, "problem": problem}}
        )
        reason = problem or f"batch finished with exit code {code}"
        try:
            await self._transit(session_id, S.TERMINATING, reason, expected=ALIVE_STATUSES)
        except InvalidStatus:
            return  # destroyed meanwhile: that teardown finishes it
        await self._teardown(session_id, forced=True)

    async def _fail(self, session_id: str, reason: str) -> None:
        with contextlib.suppress(InvalidStatus):
            await self._transit(session_id, S.ERROR, reason)

    async def _teardown(self, session_id: str, forced: bool) -> None:
        """Remove a TERMINATING session's containers and work volume, then TERMINATED."""
        # One teardown per session at a time: a forced destroy and the start task it interrupted
        # may both get here.
        lock = self._teardown_locks.setdefault(session_id, asyncio.Lock())
        try:
            async with lock:
                await self._teardown_locked(session_id, forced)
        finally:
            if not lock.locked():
                self._teardown_locks.pop(session_id, None)

    async def _teardown_locked(self, session_id: str, forced: bool) -> None:
        session = await self.repository.get(session_id)
        self._batches.pop(session_id, None)
        self.last_activity.pop(session_id, None)
        if self.observability is not None:  # logs remain after destroy
            await self.observability.keep_logs(session)
        try:
            agent: Agent | None = None
            for kernel in session.kernels:
                self.connections.close(kernel.id)
                if kernel.agent_id is None:
                    continue
                agent = self.agents.get(kernel.agent_id)
                ref = kernel.container_id or agent.kernel_ref(session.id, kernel.name)
                await agent.destroy_kernel(ref, forced=forced)
            await remove_cluster_networks(self, session)
            if agent is not None:
                await agent.remove_session_storage(session.id)
        except SessionsError as exc:
            await self._fail(session_id, f"teardown failed: {exc.message}")
            return
        with contextlib.suppress(InvalidStatus):
            await self._transit(
                session_id,
                S.TERMINATED,
                session.status_info or "destroyed",
                expected={S.TERMINATING},
            )

    async def sweep(self) -> None:
        """Move sessions past their status deadline, or whose container vanished, to ERROR."""
        now = utcnow()
        watched = set(self.config.deadlines) | {S.RUNNING, S.RUNNING_DEGRADED}
        for session in await self.repository.in_statuses(watched):
            await self._recheck(session, now)
        if self.files is not None:  # storage against quotas, every storage_check_interval
            await self.files.check_storage()

    async def _recheck(self, session: SessionData, now: datetime) -> None:
        """One session as the sweeper sees it (also check_and_transit_status, on demand)."""
        limit = self.config.deadlines.get(session.status)
        if limit is not None and now - session.status_changed_at > timedelta(seconds=limit):
            if self.is_busy(session.id) and session.status is not S.TERMINATING:
                task = self._tasks.get(session.id)
                if task is not None:
                    task.cancel()
            target = S.TERMINATED if session.status is S.TERMINATING else S.ERROR
            with contextlib.suppress(InvalidStatus):
                await self._transit(
                    session.id,
                    target,
                    f"deadline: {session.status} for more than {limit:g} s",
                    expected={session.status},
                )
            return
        if session.status in (S.RUNNING, S.RUNNING_DEGRADED):
            await self._check_alive(session)
            await self._check_time_limits(session, now)

    def touch_activity(self, session_id: str) -> None:
        """Note activity (execution; services and files later) that keeps a session from idling."""
        self.last_activity[session_id] = utcnow()

    async def _check_time_limits(self, session: SessionData, now: datetime) -> None:
        """End a session idle past its idle timeout, or older than its policy's max lifetime.

        The session's own ``idle_timeout`` applies, capped by its policy's; a run in progress
        counts as activity. Batch sessions never idle (their command is their activity).
        """
        try:
            policy = await self.accounts.policy_of(session.owner_access_key)
        except NotFound:
            return
        lifetime = policy.max_session_lifetime
        if lifetime and now - session.created_at > timedelta(seconds=lifetime):
            await self._end(session, f"lifetime-exceeded: older than {lifetime} s")
            return
        limits = [t for t in (session.idle_timeout, policy.idle_timeout) if t]
        if not limits or session.type == SessionType.BATCH:
            return
        idle_limit = min(limits)
        kernel = session.main_kernel
        channel = self.connections.existing_channel(kernel.id) if kernel is not None else None
        if (channel is not None and channel.busy()) or self._batch_runs(session.id):
            self.touch_activity(session.id)
            return
        last = max(
            self.last_activity.get(session.id, session.status_changed_at), session.status_changed_at
        )
        if now - last > timedelta(seconds=idle_limit):
            await self._end(session, f"idle-timeout: no activity for {idle_limit} s")

    async def _end(self, session: SessionData, reason: str) -> None:
        """Terminate a session on the server's own initiative (timeouts), with the reason."""
        try:
            await self._transit(session.id, S.TERMINATING, reason, expected={session.status})
        except InvalidStatus:
            return
        self._background(self._teardown(session.id, forced=True))

    async def _check_alive(self, session: SessionData) -> None:
        kernel = session.main_kernel
        if kernel is None or kernel.agent_id is None or kernel.container_id is None:
            return
        try:
            agent = self.agents.get(kernel.agent_id)
            alive = await agent.kernel_exists(kernel.container_id)
        except (AgentUnavailable, SessionsError):
            return  # an unreachable engine is not a vanished container
        if not alive:
            self.connections.close(kernel.id)
            with contextlib.suppress(InvalidStatus):
                await self._transit(
                    session.id,
                    S.ERROR,
                    "the kernel's container vanished",
                    expected={session.status},
                )
        else:
            await check_sub_kernels(self, session)

    # --- modify, rename, restart, transit-status, bootstrap (lifecycle-actions task) ---------

    async def modify_session(self, action: ModifySessionAction) -> SessionData:
        """Tag, priority, idle timeout, name (as rename), and resources while still PENDING."""
        session = await self._resolve(action)
        values = dict(action.changes.values)
        if "resources" in values:
            if session.status is not S.PENDING:
                raise InvalidStatus(
                    f"resources can change only while the session is PENDING; "
                    f"it is {session.status}",
                    status=str(session.status),
                )
            # A partial change, merged over what the session asks for now; then every check a
            # create makes, so a modify never gets more than a create would.
            resources = values["resources"].merged_over(ResourceSlot.parse(session.resources))
            await self._check_resources(resources, session.scaling_group)
            policy = await self.accounts.policy_of(session.owner_access_key)
            self._check_policy(policy, resources, session.cluster_size)
            values["resources"] = resources.to_json()
        return await self.repository.modify_session(session.id, values)

    async def rename_session(self, action: RenameSessionAction) -> SessionData:
        """A new name, checked before anything is written and logged in the status history."""
        session = await self._resolve(action)
        return await self.repository.modify_session(session.id, {"name": action.name})

    async def restart_session(self, action: RestartSessionAction) -> RestartSessionResult:
        """In place (new container and kernel, same id and work volume), or run a final one
        again as a new session made from its stored parameters."""
        session = await self._resolve(action)
        if session.status in TERMINAL_STATUSES:
            again = await self._run_again(session, action.caller)
            return RestartSessionResult(again, created=True)
        if session.status not in RESTARTABLE_STATUSES:
            raise InvalidStatus(
                f"the session is {session.status}; a restart needs RUNNING, RUNNING_DEGRADED or "
                "ERROR (or TERMINATED or CANCELLED, to run it again as a new session)",
                status=str(session.status),
            )
        if self.is_busy(session.id):
            raise InvalidStatus(
                f"the session is {session.status} but its last start is still unwinding; "
                "try again in a moment",
                status=str(session.status),
            )
        agent = await self._restart_agent(session)
        session = await self._transit(
            session.id, S.RESTARTING, "user-requested restart", expected={session.status}
        )
        self._spawn(session.id, self._restart(session, agent))
        return RestartSessionResult(session, created=False)

    async def _restart_agent(self, session: SessionData) -> Agent:
        """The agent that holds the session's work volume; any reachable one if it has none."""
        kernel = session.main_kernel
        if kernel is not None and kernel.agent_id is not None:
            agent = self.agents.get(kernel.agent_id)
            info = await agent.info()
            if not info.reachable:
                raise AgentUnavailable(
                    f"agent {agent.id}, which holds this session's work volume, is not "
                    f"reachable: {info.detail}"
                )
            return agent
        reachable = await self.agents.reachable(session.scaling_group)
        if not reachable:
            raise AgentUnavailable(
                f"no agent of scaling group {session.scaling_group!r} is reachable"
            )
        return reachable[0][0]

    async def _restart(self, session: SessionData, agent: Agent) -> None:
        """RESTARTING → a new container and kernel (same id and work volume) → RUNNING."""
        kernel = session.main_kernel
        assert kernel is not None

        async def prepare() -> None:
            self.connections.close(kernel.id)
            if kernel.agent_id is not None:
                ref = kernel.container_id or agent.kernel_ref(session.id, kernel.name)
                if self.observability is not None:  # the old container's log stays readable
                    await self.observability.keep_logs(session, restarting=kernel.name)
                await agent.destroy_kernel(ref)  # the container only: the work volume stays
            await self.repository.set_kernel_placement(kernel.id, agent_id=agent.id)

        await self._bring_up(
            session,
            agent,
            S.RESTARTING,
            prepare,
            verb="restarting",
            failure_prefix="restart failed: ",
            ready_prefix="restarted: ",
        )

    async def _run_again(self, session: SessionData, caller: Caller) -> SessionData:
        """A new session from a final one's stored parameters and name (``restarted_from``).

        The body goes through the same validation and policy checks as ``POST sessions``, so
        running a session again never gets past what a create would be refused today.
        """
        body: dict[str, Any] = {
            "name": session.name,
            "image": session.image,
            "resources": session.resources,
            "type": session.type,
            "cluster_mode": session.cluster_mode,
            "cluster_size": session.cluster_size,
            "scaling_group": session.scaling_group,
            "tag": session.tag,
        }
        body.update(
            (key, value)
            for key, value in session.params.items()
            if key in CREATE_FIELDS and key not in NOT_REPLAYED and value is not None
        )
        body["enqueue_only"] = True  # answer at once with the new session
        params = CreateSessionParams.from_json(body)
        if caller.access_key != session.owner_access_key:
            # An admin runs another key's session again: it stays that key's (and its quota's).
            caller = Caller(access_key=session.owner_access_key, user=caller.user, is_admin=False)
        created = await self.create_from_params(
            CreateFromParamsAction(caller=caller, params=params, restarted_from=session.id)
        )
        return created.session

    async def check_and_transit_status(
        self, action: CheckAndTransitStatusAction
    ) -> ListSessionsResult:
        """Re-check now what the sweeper checks periodically; answer the statuses after it."""
        scope = self._scope(action.caller, action.owner_access_key)
        name_owner = action.owner_access_key or action.caller.access_key
        # Every ref is resolved (404 for another's or an unknown one) before anything moves.
        sessions = [
            await self.repository.resolve(ref, scope, name_owner=name_owner) for ref in action.refs
        ]
        now = utcnow()
        checked = []
        for session in sessions:
            await self._recheck(session, now)
            checked.append(await self.repository.get(session.id))
        return ListSessionsResult(checked, len(checked))

    async def _create_kernel(self, session_id: str, kernel_name: str, agent: Agent) -> KernelHandle:
        """Create a kernel's container from the session as stored now (a PATCH of a PENDING
        session's resources may have landed since the caller read it), with a fresh key."""
        session = await self.repository.get(session_id)
        spec = KernelSpec(
            session_id=session.id,
            kernel_name=kernel_name,
            image=session.image,
            resources=ResourceSlot({k: Decimal(str(v)) for k, v in session.resources.items()}),
            environ=session.params.get("environ", {}),
            key=secrets.token_hex(32),
            mounts=stored_mounts(session.params),
            working_dir=working_dir_of(stored_mounts(session.params)),
            cluster=kernel_cluster_mode(session),
            publish_ports=self.services.publish_ports(session) if self.services else (),
        )
        if spec.mounts:
            if self.config.mounts is None:
                raise InvalidRequest("mounts are not available on this server", field="mounts")
            await asyncio.to_thread(self.config.mounts.recheck, spec.mounts)
        return await agent.create_kernel(spec)

    async def _run_bootstrap(
        self, session_id: str, container_id: str, agent: Agent, phase: SessionStatus
    ) -> str:
        """Run the session's bootstrap_script, if any, in the work directory of its new kernel.

        The script is the user's own: one argv item of ``["sh", "-c", script]``, never part of
        a command line of ours. It must finish within what is left of ``phase``'s deadline; a
        non-zero exit (or running out of time) raises with the tail of its output. Answers the
        reason the session becomes RUNNING with.
        """
        session = await self.repository.get(session_id)
        script = session.params.get("bootstrap_script")
        if not script:
            return "kernel ready"
        limit = self.config.deadlines.get(phase)
        timeout = None
        if limit is not None:
            spent = (utcnow() - session.status_changed_at).total_seconds()
            timeout = max(limit - spent - 1.0, 1.0)
        output = Console(BOOTSTRAP_OUTPUT_BYTES)
        process = await agent.exec(
            container_id, ["sh", "-c", str(script)], environ=session.params.get("environ", {})
        )

        async def collect() -> int:
            while (chunk := await process.read()) is not None:
                output.add(*chunk)
            return await process.wait()

        try:
            code = await asyncio.wait_for(collect(), timeout)
        except TimeoutError:
            with contextlib.suppress(SessionsError):
                await process.signal(signal.SIGKILL)
            raise Timeout(
                f"bootstrap_script still running after {timeout:g} s (what is left of the "
                f"{phase} deadline){_tail(output)}"
            ) from None
        except asyncio.CancelledError:
            self._background(process.signal(signal.SIGKILL))  # swept: stop the script too
            raise
        if code != 0:
            raise InvalidRequest(f"bootstrap_script failed with exit code {code}{_tail(output)}")
        return "kernel ready, bootstrap_script done"


def _tail(output: Console, limit: int = BOOTSTRAP_TAIL_CHARS) -> str:
    """The last ``limit`` characters of a console (stdout and stderr interleaved)."""
    text = "".join(str(data) for _kind, data in output.take())
    if not text.strip():
        return " (no output)"
    if len(text) > limit:
        text = "…" + text[-limit:]
    return ": " + text.rstrip()
