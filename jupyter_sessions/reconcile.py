"""Reconciliation at start-up: the store and the agents agree again after the server was down.

Docker sessions keep running while the server is down, but the start and teardown tasks that were
in flight died with the old server. Before the scheduler starts, ``Reconciler.run`` walks every
session that is neither final nor PENDING (the scheduler takes those as usual) and every
container and work volume labelled with this installation:

- RUNNING / RUNNING_DEGRADED whose container runs: re-attached. The published host ports are
  re-read from the engine (they change when the engine restarts a container), stored, and the
  kernel must answer kernel_info: on its shell channel, or, when a long run the old server left
  behind keeps the shell busy, on its control channel. Otherwise ERROR with the reason. A lost sub
  kernel only degrades the session.
- A start in flight (SCHEDULED … CREATING, RESTARTING): a container whose kernel answers with the
  stored key is adopted (RUNNING; a batch session's command starts then, as it would have);
  otherwise whatever exists is removed and the session is ERROR ("the server stopped while the
  session was starting"). The work volume stays (ERROR keeps it). A session with a
  bootstrap_script is never adopted: the script may have run only in part.
- A RUNNING batch session: ERROR, since nobody holds its command's output and exit code any more.
- TERMINATING: the teardown is finished (TERMINATED).
- A container that vanished: ERROR ("container vanished while the server was down").
- Containers and volumes of this installation that no non-final session claims: removed. Another
  installation's are never listed, so never touched.
- Agents whose kernels die with the server (local): their sessions end with "the server stopped
  (local kernels die with it)": ERROR, or TERMINATED when they were terminating.

An agent that does not answer is left alone: its sessions meet their deadlines in the sweeper.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
from dataclasses import dataclass, field
from typing import Any

from .agents.base import Agent, KernelListing
from .errors import (
    AgentError,
    AgentUnavailable,
    InvalidStatus,
    NotFound,
    SessionsError,
    Timeout,
)
from .repository.repository import KernelData, SessionData
from .service import SessionService
from .types import ALIVE_STATUSES, TERMINAL_STATUSES, SessionStatus, SessionType

S = SessionStatus

#: Statuses of a start (or restart) whose task died with the old server.
STARTING_STATUSES = frozenset(
    {S.SCHEDULED, S.PREPARING, S.PULLING, S.PREPARED, S.CREATING, S.RESTARTING}
)
#: Of those, the ones whose container may already run a kernel worth adopting.
ADOPTABLE_STATUSES = frozenset({S.CREATING, S.RESTARTING})
#: Every status reconciliation looks at (ERROR only for what it claims).
RECONCILED_STATUSES = frozenset(set(SessionStatus) - TERMINAL_STATUSES - {S.PENDING})

REASON_STARTING = "the server stopped while the session was starting"
REASON_VANISHED = "container vanished while the server was down"
REASON_LOCAL = "the server stopped (local kernels die with it)"
REASON_BATCH = "the server stopped while the batch command ran (its output and exit code are lost)"
#: Seconds a surviving kernel has to answer kernel_info (a live one answers at once).
ATTACH_TIMEOUT = 30.0
#: Seconds a running session's kernel has to answer on its shell channel before its control
#: channel is asked instead (the shell of a kernel busy with a long run answers only after it).
SHELL_TIMEOUT = 10.0


@dataclass
class ReconcileReport:
    """What one pass did: session ids, and the containers and volumes it removed."""

    reattached: list[str] = field(default_factory=list)
    adopted: list[str] = field(default_factory=list)
    degraded: dict[str, str] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    terminated: list[str] = field(default_factory=list)
    removed_containers: list[str] = field(default_factory=list)
    removed_volumes: list[str] = field(default_factory=list)
    #: Agents that did not answer: their sessions were left as they were.
    unreachable: dict[str, str] = field(default_factory=dict)


class Reconciler:
    """One pass at start-up, before the scheduler runs (so no start or teardown races it)."""

    def __init__(
        self,
        service: SessionService,
        *,
        attach_timeout: float = ATTACH_TIMEOUT,
        shell_timeout: float = SHELL_TIMEOUT,
        log: logging.Logger | None = None,
    ) -> None:
        self.service = service
        self.repository = service.repository
        self.agents = service.agents
        self.connections = service.connections
        self.attach_timeout = attach_timeout
        self.shell_timeout = shell_timeout
        self.log = log or logging.getLogger(__name__)

    async def run(self) -> ReconcileReport:
        report = ReconcileReport()
        listings: dict[str, list[KernelListing]] = {}
        storage: dict[str, list[str]] = {}
        for agent in self.agents:
            await agent.setup()
            try:
                listings[agent.id] = await agent.list_kernels()
                storage[agent.id] = await agent.list_session_storage()
            except (AgentUnavailable, AgentError) as exc:
                report.unreachable[agent.id] = exc.message
                self.log.warning(
                    "reconciliation: agent %s does not answer, its sessions are left as they "
                    "are: %s",
                    agent.id,
                    exc.message,
                )
        sessions = await self.repository.in_statuses(RECONCILED_STATUSES)
        outcomes = await asyncio.gather(
            *(self._session(s, listings, report) for s in sessions if s.status is not S.ERROR),
            return_exceptions=True,
        )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                self.log.error("reconciliation of a session failed", exc_info=outcome)
        await self._remove_orphans(listings, storage, report)
        self.log.info(
            "reconciliation: %d re-attached, %d adopted, %d degraded, %d ERROR, %d terminated, "
            "%d containers and %d orphan volumes removed",
            len(report.reattached),
            len(report.adopted),
            len(report.degraded),
            len(report.failed),
            len(report.terminated),
            len(report.removed_containers),
            len(report.removed_volumes),
        )
        return report

    # --- one session ----------------------------------------------------------------------

    async def _session(
        self,
        session: SessionData,
        listings: dict[str, list[KernelListing]],
        report: ReconcileReport,
    ) -> None:
        main = session.main_kernel
        if main is None or main.agent_id is None:
            # Never placed: nothing of it can exist on any agent.
            if session.status is S.TERMINATING:
                await self._finish_teardown(session, report)
            else:
                await self._fail(session, REASON_STARTING, report)
            return
        try:
            agent = self.agents.get(main.agent_id)
        except NotFound:
            await self._fail(session, f"its agent {main.agent_id!r} is not configured", report)
            return
        if agent.id in report.unreachable:
            return
        if not agent.kernels_outlive_server:
            await self._ended_with_server(session, agent, report)
            return
        if session.status is S.TERMINATING:
            await self._finish_teardown(session, report)
            return
        found = {
            listing.kernel_name: listing
            for listing in listings.get(agent.id, [])
            if listing.session_id == session.id
        }
        if session.status in ALIVE_STATUSES and session.type == SessionType.BATCH:
            await self._fail(session, REASON_BATCH, report)
        elif session.status in ALIVE_STATUSES:
            await self._reattach(session, found, report)
        elif session.status in STARTING_STATUSES:
            await self._adopt_or_fail(session, agent, found, report)

    async def _reattach(
        self, session: SessionData, found: dict[str | None, KernelListing], report: ReconcileReport
    ) -> None:
        """A running session: every kernel must still run and answer."""
        problems = {
            k.name: await self._attach(k, found.get(k.name), busy_ok=True) for k in _live(session)
        }
        main = session.main_kernel
        assert main is not None
        if problems.get(main.name):
            await self._fail(session, problems[main.name] or "", report)
            return
        lost = {name: why for name, why in problems.items() if why}
        if lost and session.status is S.RUNNING:
            reason = "; ".join(f"{name}: {why}" for name, why in sorted(lost.items()))
            with contextlib.suppress(InvalidStatus):
                await self.service._transit(
                    session.id, S.RUNNING_DEGRADED, reason, expected={S.RUNNING}
                )
                report.degraded[session.id] = reason
            return
        report.reattached.append(session.id)
        self.log.info("reconciliation: session %s re-attached", session.id)

    async def _adopt_or_fail(
        self,
        session: SessionData,
        agent: Agent,
        found: dict[str | None, KernelListing],
        report: ReconcileReport,
    ) -> None:
        """A start in flight: adopt a kernel that answers, or remove what exists and fail."""
        reason = REASON_STARTING
        if session.params.get("bootstrap_script"):
            reason += " (its bootstrap_script may have run only in part)"
        elif session.status in ADOPTABLE_STATUSES:
            kernels = _live(session)
            problems = [await self._attach(k, found.get(k.name), busy_ok=False) for k in kernels]
            if kernels and not any(problems):
                with contextlib.suppress(InvalidStatus):
                    await self.service._transit(
                        session.id,
                        S.RUNNING,
                        "kernel ready (adopted after the server restarted)",
                        expected={session.status},
                    )
                    report.adopted.append(session.id)
                    if session.type == SessionType.BATCH:  # its command starts once RUNNING
                        self.service._background(self.service._run_batch_session(session.id))
                    return
        for kernel in session.kernels:
            self.connections.close(kernel.id)
            listing = found.get(kernel.name)
            if listing is not None:
                with contextlib.suppress(SessionsError):
                    await agent.destroy_kernel(listing.container_id, forced=True)
                    report.removed_containers.append(listing.container_id)
        await self._fail(session, reason, report)

    async def _attach(
        self, kernel: KernelData, listing: KernelListing | None, *, busy_ok: bool
    ) -> str | None:
        """Reconnect to a surviving kernel with its current ports; the problem, or None.

        ``busy_ok``: a running session's kernel may be busy with a run the old server started;
        a kernel being adopted must be ready (kernel_info and IOPub, as a start requires).
        """
        if listing is None:
            return REASON_VANISHED
        if not listing.running:
            return f"the kernel's container stopped while the server was down ({listing.state})"
        if not kernel.connection.get("key") or not listing.connection:
            return "the kernel's connection is unknown (the server stopped before storing it)"
        connection = {**kernel.connection, **listing.connection}
        self.connections.close(kernel.id)
        try:
            if busy_ok:
                await self._alive(kernel.id, connection)
            else:
                await self.connections.wait_ready(kernel.id, connection, self.attach_timeout)
        except SessionsError as exc:
            return f"the kernel did not answer after the server restarted: {exc.message}"
        except Exception as exc:
            self.connections.close(kernel.id)
            return f"could not reach the kernel after the server restarted: {exc}"
        await self.repository.set_kernel_placement(
            kernel.id, container_id=listing.container_id, connection=connection
        )
        return None

    async def _alive(self, kernel_id: str, connection: dict[str, Any]) -> None:
        """Return once the kernel answers kernel_info, idle (shell) or busy (control)."""
        try:
            shell = min(self.shell_timeout, self.attach_timeout)
            await self.connections.wait_ready(kernel_id, connection, shell)
            return
        except Timeout:
            pass
        # ipykernel answers on its control channel from a thread of its own, even mid-run.
        client = self.connections.client(kernel_id, connection)
        request = client.session.msg("kernel_info_request", {})
        client.control_channel.send(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.attach_timeout
        while (remaining := deadline - loop.time()) > 0:
            try:
                reply = await client.get_control_msg(timeout=remaining)
            except queue.Empty:
                break
            if reply["parent_header"].get("msg_id") == request["header"]["msg_id"]:
                return
        self.connections.close(kernel_id)
        raise Timeout(f"no answer within {shell + self.attach_timeout:g} s")

    async def _ended_with_server(
        self, session: SessionData, agent: Agent, report: ReconcileReport
    ) -> None:
        """An agent whose kernels died with the old server (local subprocesses)."""
        for kernel in session.kernels:
            self.connections.close(kernel.id)
            ref = kernel.container_id or agent.kernel_ref(session.id, kernel.name)
            with contextlib.suppress(SessionsError):
                await agent.destroy_kernel(ref, forced=True)  # nothing, unless it still runs
        if session.status is S.TERMINATING:
            await self._finish_teardown(session, report)
        else:
            await self._fail(session, REASON_LOCAL, report)

    async def _finish_teardown(self, session: SessionData, report: ReconcileReport) -> None:
        await self.service._teardown(session.id, forced=True)
        after = await self.repository.get(session.id)
        if after.status is S.TERMINATED:
            report.terminated.append(session.id)
        else:
            report.failed[session.id] = after.status_info

    async def _fail(self, session: SessionData, reason: str, report: ReconcileReport) -> None:
        with contextlib.suppress(InvalidStatus):
            await self.service._transit(session.id, S.ERROR, reason, expected={session.status})
            report.failed[session.id] = reason

    # --- orphans ------------------------------------------------------------------------------

    async def _remove_orphans(
        self,
        listings: dict[str, list[KernelListing]],
        storage: dict[str, list[str]],
        report: ReconcileReport,
    ) -> None:
        """Remove this installation's containers and volumes that no non-final session claims."""
        alive = await self.repository.in_statuses(set(SessionStatus) - TERMINAL_STATUSES)
        claimed_kernels = {(s.id, k.name) for s in alive for k in s.kernels}
        claimed_storage = {s.id for s in alive}
        for agent_id, found in listings.items():
            agent = self.agents.get(agent_id)
            for listing in found:
                if (listing.session_id, listing.kernel_name) in claimed_kernels:
                    continue
                if listing.container_id in report.removed_containers:
                    continue
                try:
                    await agent.destroy_kernel(listing.container_id, forced=True)
                except SessionsError as exc:
                    self.log.warning(
                        "reconciliation: could not remove orphan container %s: %s",
                        listing.container_id,
                        exc.message,
                    )
                    continue
                report.removed_containers.append(listing.container_id)
                self.log.info(
                    "reconciliation: removed orphan container %s (session %s)",
                    listing.container_id[:12],
                    listing.session_id,
                )
        for agent_id, session_ids in storage.items():
            agent = self.agents.get(agent_id)
            for session_id in session_ids:
                if session_id in claimed_storage:
                    continue
                try:
                    await agent.remove_session_storage(session_id)
                except SessionsError as exc:
                    self.log.warning(
                        "reconciliation: could not remove the orphan storage of session %s: %s",
                        session_id,
                        exc.message,
                    )
                    continue
                report.removed_volumes.append(session_id)
        for agent_id in listings:
            await self._remove_commit_leftovers(self.agents.get(agent_id), report)

    async def _remove_commit_leftovers(self, agent: Agent, report: ReconcileReport) -> None:
        """Scratch containers of commits a killed server left behind, for sessions of this
        installation (their names carry the session id; other installations' are not ours)."""
        try:
            leftovers = await agent.commit_leftovers()
            for name, session_id in leftovers.items():
                try:
                    await self.repository.get(session_id)
                except NotFound:
                    continue
                await agent.remove_commit_leftover(name)
                report.removed_containers.append(name)
                self.log.info("reconciliation: removed the commit leftover %s", name)
        except SessionsError as exc:
            self.log.warning(
                "reconciliation: could not remove commit leftovers on %s: %s", agent.id, exc.message
            )


def _live(session: SessionData) -> list[KernelData]:
    """The session's kernels that are not final (a cluster's ended kernels stay in its history)."""
    return [k for k in session.kernels if k.status not in TERMINAL_STATUSES]
