"""AgentService: agents registered through the admin API, scaling groups, and the heartbeat.

Agents come from ``c.SessionsApp.agents`` (configured: they come back with the configuration) or
from ``POST agents`` (registered: stored, and made again at every start). Each has a capacity read
from its engine (CPUs, memory) minus a reserve kept for the host (``reserve`` of the agent, else
``c.SessionsApp.agent_reserve``). The heartbeat probes every agent each ``heartbeat_interval``
seconds and records what it said (``GET agents``): an agent that stops answering is marked LOST
(the scheduler places nothing there: it is not reachable) and its sessions are left as they are,
their ``status_info`` saying so; when it answers again it is marked ALIVE and its sessions are
reconciled against what the engine holds now (``AgentReconciler``: re-attach running kernels, fail
those whose container stopped or vanished, remove orphans), exactly as at start-up but for that
one agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..actions.agents import (
    AgentSpec,
    ListScalingGroupsAction,
    PutScalingGroupAction,
    RegisterAgentAction,
    RemoveAgentAction,
)
from ..actions.base import Action
from ..actions.info import AgentEntry, ListAgentsAction
from ..errors import AgentUnavailable, Conflict, InvalidRequest, NotFound, PermissionDenied
from ..reconcile import RECONCILED_STATUSES, Reconciler, ReconcileReport
from ..repository.scheduling import GroupData, RegisteredAgent, SchedulingRepository
from ..service import SessionService
from ..types import ResourceSlot, SessionStatus
from .base import Agent, AgentInfo
from .docker import DockerAgent

ALIVE, LOST = "ALIVE", "LOST"

#: Makes a Docker agent from a registered spec (app.py knows the installation and its defaults).
AgentFactory = Callable[[AgentSpec], Agent]


@dataclass
class _Seen:
    status: str = ALIVE
    reconciling: asyncio.Task[None] | None = None
    reports: list[ReconcileReport] = field(default_factory=list)


def _lost_note(agent_id: str) -> str:
    """The start of the note a LOST agent's sessions carry (replaced when it answers again)."""
    return f"agent {agent_id} is not answering"


class AgentReconciler(Reconciler):
    """The start-up reconciliation, for one agent that answers again while the server runs."""

    async def run_for(self, agent: Agent) -> ReconcileReport:
        report = ReconcileReport()
        await agent.setup()
        try:
            listings = {agent.id: await agent.list_kernels()}
            storage = {agent.id: await agent.list_session_storage()}
        except (AgentUnavailable, Conflict, InvalidRequest) as exc:
            report.unreachable[agent.id] = exc.message
            return report
        for session in await self.repository.in_statuses(RECONCILED_STATUSES):
            main = session.main_kernel
            if main is None or main.agent_id != agent.id or session.status is SessionStatus.ERROR:
                continue
            if self.service.is_busy(session.id):
                continue  # its start task is still running and decides for itself
            try:
                await self._session(session, listings, report)
            except Exception:
                self.log.exception("reconciliation of session %s failed", session.id)
        await self._remove_orphans(listings, storage, report)
        return report


class AgentService:
    """One coroutine per agent and scaling-group action, and the heartbeat loop."""

    _by_service: weakref.WeakKeyDictionary[SessionService, AgentService] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, service: SessionService, log: logging.Logger | None = None) -> None:
        self.service = service
        self.agents = service.agents
        self.repository = SchedulingRepository(service.repository.db)
        self.log = log or service.log
        self.factory: AgentFactory | None = None
        self.default_reserve = ResourceSlot({})
        self.heartbeat_interval = 10.0
        self._seen: dict[str, _Seen] = {}
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def for_service(cls, service: SessionService) -> AgentService:
        """The one AgentService of a SessionService (processors and app.py share it)."""
        found = cls._by_service.get(service)
        if found is None:
            found = cls._by_service[service] = cls(service)
        return found

    def configure(
        self,
        factory: AgentFactory,
        *,
        default_reserve: ResourceSlot,
        heartbeat_interval: float,
    ) -> None:
        self.factory = factory
        self.default_reserve = default_reserve
        self.heartbeat_interval = heartbeat_interval

    @staticmethod
    def _require_admin(action: Action) -> None:
        if not action.caller.is_admin:
            raise PermissionDenied(f"{action.operation} is for admins only")

    # --- start-up ------------------------------------------------------------------------------

    async def load(self) -> list[Agent]:
        """Scaling groups, and the agents registered through the API (made, not yet probed)."""
        for group in await self.repository.list_groups():
            self.agents.groups.add(group.name)
        made: list[Agent] = []
        for registered in await self.repository.registered_agents():
            spec = AgentSpec.from_json(registered.spec)
            made.append(self._make(spec))
        return made

    def apply_reserve(self, agent: Agent, reserve: ResourceSlot | None = None) -> None:
        agent.reserve = reserve if reserve and reserve.amounts else self.default_reserve

    def _make(self, spec: AgentSpec) -> Agent:
        if self.factory is None:
            raise AgentUnavailable("agents can't be registered before the server has started")
        agent = self.factory(spec)
        self.apply_reserve(agent, spec.reserve)
        return agent

    # --- the heartbeat -------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._beat())

    async def stop(self) -> None:
        tasks = [self._task] if self._task else []
        tasks += [s.reconciling for s in self._seen.values() if s.reconciling]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._task = None

    async def _beat(self) -> None:
        while True:
            try:
                await self.heartbeat()
            except Exception:
                self.log.exception("agent heartbeat failed")
            await asyncio.sleep(self.heartbeat_interval)

    async def heartbeat(self) -> None:
        """Probe every agent once; record it; mark LOST, or ALIVE again and reconcile."""
        for agent in list(self.agents):
            await self.probe(agent)

    async def probe(self, agent: Agent) -> AgentInfo:
        info = await agent.info()
        seen = self._seen.setdefault(agent.id, _Seen())
        status = ALIVE if info.reachable else LOST
        detail = info.detail
        effective = agent.after_reserve(info)
        if agent.reserve.amounts and info.reachable:
            detail += f"; reserve {agent.reserve.to_json()} kept for the host"
        await self.service.repository.upsert_agent(
            agent.id,
            kind=agent.kind,
            url=agent.url,
            scaling_group=agent.scaling_group,
            status=status,
            status_info=detail,
            capacity=effective.capacity.to_json(),
        )
        if status != seen.status:
            previous, seen.status = seen.status, status
            if status == LOST:
                self.log.warning("agent %s is LOST: %s", agent.id, info.detail)
                since = datetime.now(UTC).isoformat(timespec="seconds")
                await self.repository.note_sessions_on_agent(
                    agent.id, f"{_lost_note(agent.id)} since {since}: {info.detail}"
                )
            elif previous == LOST:
                self.log.warning("agent %s answers again: reconciling its sessions", agent.id)
                await self.repository.note_sessions_on_agent(
                    agent.id,
                    f"agent {agent.id} answers again; its sessions are reconciled",
                    replacing=_lost_note(agent.id),
                )
                seen.reconciling = asyncio.get_running_loop().create_task(
                    self._reconcile(agent, seen)
                )
        return effective

    async def _reconcile(self, agent: Agent, seen: _Seen) -> None:
        try:
            report = await AgentReconciler(self.service, log=self.log).run_for(agent)
            seen.reports.append(report)
            self.log.info(
                "agent %s reconciled: %d re-attached, %d ERROR, %d containers removed",
                agent.id,
                len(report.reattached),
                len(report.failed),
                len(report.removed_containers),
            )
        except Exception:
            self.log.exception("reconciling agent %s failed", agent.id)
        finally:
            seen.reconciling = None
            self.service.wake_scheduler()

    async def wait_reconciled(self, agent_id: str) -> None:
        """Wait for a reconciliation in flight (tests; a returning agent)."""
        seen = self._seen.get(agent_id)
        if seen is not None and seen.reconciling is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(seen.reconciling)

    # --- actions -------------------------------------------------------------------------------

    async def list_agents(self, action: ListAgentsAction) -> list[AgentEntry]:
        self._require_admin(action)
        await self.heartbeat()
        present = {a.id for a in self.agents}
        return [
            AgentEntry(
                a.id,
                a.kind,
                a.url,
                a.scaling_group,
                a.status,
                a.status_info,
                a.capacity,
                a.last_seen.isoformat(),
            )
            for a in await self.service.repository.list_agents()
            if a.id in present
        ]

    async def register_agent(self, action: RegisterAgentAction) -> AgentEntry:
        """Store and start using a Docker engine; it must answer now (503 otherwise)."""
        self._require_admin(action)
        spec = action.spec
        if spec.scaling_group not in self.agents.groups:
            raise NotFound(f"no scaling group {spec.scaling_group!r}", field="scaling_group")
        if any(a.id == spec.id for a in self.agents):
            raise Conflict(f"agent {spec.id!r} exists", field="id")
        agent = self._make(spec)
        info = await agent.info()
        if not info.reachable:
            await agent.close()
            raise AgentUnavailable(f"agent {spec.id!r} does not answer: {info.detail}")
        await self.repository.register_agent(
            RegisteredAgent(spec.id, agent.kind, spec.scaling_group, spec.to_json())
        )
        await agent.setup()
        self.agents.add(agent)
        await self.probe(agent)
        self.service.wake_scheduler()
        listed = await self.list_agents(ListAgentsAction(caller=action.caller))
        return next(e for e in listed if e.id == spec.id)

    async def remove_agent(self, action: RemoveAgentAction) -> None:
        """Forget a registered agent that holds no session (409 while one is there)."""
        self._require_admin(action)
        registered = {r.id for r in await self.repository.registered_agents()}
        if action.agent_id not in registered:
            if any(a.id == action.agent_id for a in self.agents):
                raise Conflict(
                    f"agent {action.agent_id!r} is configured (c.SessionsApp.agents); remove it "
                    "there"
                )
            raise NotFound(f"no agent {action.agent_id!r}")
        holding = await self.repository.sessions_on_agent(action.agent_id)
        if holding:
            raise Conflict(
                f"agent {action.agent_id!r} still holds {len(holding)} session(s); destroy them "
                "first",
                sessions=holding[:20],
            )
        await self.repository.remove_agent(action.agent_id)
        with contextlib.suppress(NotFound):
            agent = self.agents.remove(action.agent_id)
            await agent.close()
        self._seen.pop(action.agent_id, None)

    async def list_scaling_groups(self, action: ListScalingGroupsAction) -> list[dict[str, Any]]:
        self._require_admin(action)
        groups = {g.name: g for g in await self.repository.list_groups()}
        for name in self.agents.groups - set(groups):
            groups[name] = GroupData(name, "named by a configured agent")
        members: dict[str, list[str]] = {}
        for agent in self.agents:
            members.setdefault(agent.scaling_group, []).append(agent.id)
        return [
            {
                "name": g.name,
                "description": g.description,
                "ordering": g.ordering,
                "placement": g.placement,
                "agents": sorted(members.get(g.name, [])),
            }
            for g in sorted(groups.values(), key=lambda g: g.name)
        ]

    async def put_scaling_group(self, action: PutScalingGroupAction) -> dict[str, Any]:
        """Create a scaling group or change its ordering and placement."""
        self._require_admin(action)
        spec = action.group
        await self.repository.put_group(spec)
        self.agents.groups.add(spec.name)
        self.service.wake_scheduler()
        found = await self.list_scaling_groups(ListScalingGroupsAction(caller=action.caller))
        return next(g for g in found if g["name"] == spec.name)


def docker_agent_factory(
    installation_id: str, *, pids_limit: int, helper_image: str
) -> AgentFactory:
    """How app.py makes Docker agents from registered specs."""

    def make(spec: AgentSpec) -> Agent:
        return DockerAgent(
            spec.id,
            installation_id=installation_id,
            url=spec.url,
            scaling_group=spec.scaling_group,
            kernel_host=spec.kernel_host,
            pids_limit=pids_limit,
            helper_image=helper_image,
            host_firewall=spec.host_firewall,
        )

    return make
