"""Cluster sessions: ``cluster_size`` > 1 kernels (``main1``, ``sub1``..``subN-1``) that reach
each other by those names.

- **single-node** (the default): every kernel on one agent, on a bridge network of the cluster's
  own (``agents/docker_cluster.py``); the agent must hold the whole cluster, so create refuses a
  cluster larger than the largest agent and the scheduler places ``resources * cluster_size``.
- **multi-node**: kernels spread over the group's agents (each must hold one kernel), joined by
  an attachable Docker Swarm overlay network: the engines must be in one Swarm, with a manager
  among the cluster's agents (docs/scaling.md).

User interaction (execute, files, services) goes to ``main1``; every kernel has its own container,
ZMQ connection, status and logs (``GET sessions/{ref}/logs?kernel=sub1``). The session's status
is its kernels' aggregate: losing ``main1`` is ERROR, losing a sub kernel RUNNING_DEGRADED.
The service calls this module at three points: before the first kernel is created
(``prepare_cluster``), after ``main1`` answers (``bring_up_subs``) and after teardown
(``remove_cluster_networks``). ``ClusterService.create_cluster`` serves ``POST sessions/cluster``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .actions.base import Action
from .actions.lifecycle import CreateFromParamsAction, CreateSessionParams, CreateSessionResult
from .actions.templates import FromTemplateRequest, instantiate
from .agents.base import Agent, AgentRegistry
from .agents.docker import DockerAgent
from .agents.docker_cluster import ensure_overlay, remove_cluster_network
from .errors import InvalidRequest, SessionsError
from .repository.repository import NewKernel, SessionData
from .types import ClusterMode, ResourceSlot, SessionStatus

if TYPE_CHECKING:
    from .service import SessionService

#: Most kernels one session may have (a policy's max_containers_per_session may say fewer).
MAX_CLUSTER_SIZE = 32


def cluster_kernels(size: int) -> tuple[NewKernel, ...]:
    """``main1``, then ``sub1``..``sub<size-1>``."""
    subs = tuple(NewKernel(f"sub{i}", "sub", i + 1) for i in range(1, size))
    return (NewKernel("main1", "main", 1), *subs)


def kernel_cluster_mode(session: SessionData) -> str:
    """What ``KernelSpec.cluster`` says for the session's kernels ("" for one container)."""
    return session.cluster_mode if session.cluster_size > 1 else ""


async def check_cluster(
    agents: AgentRegistry,
    resources: ResourceSlot,
    mode: ClusterMode,
    size: int,
    scaling_group: str,
) -> None:
    """At create: what a cluster can never get is refused now (400/403), naming why."""
    if size == 1:
        return
    if size > MAX_CLUSTER_SIZE:
        raise InvalidRequest(
            f"cluster_size must be at most {MAX_CLUSTER_SIZE}", field="cluster_size"
        )
    found = await agents.reachable(scaling_group)
    if any(not isinstance(agent, DockerAgent) for agent, _info in found):
        raise InvalidRequest(
            "clusters need Docker agents: the kernels of a cluster reach each other by name on "
            f"a network of their own, and scaling group {scaling_group!r} has other agents",
            field="cluster_size",
        )
    if mode is ClusterMode.SINGLE_NODE:
        await agents.check_fits(resources * size, scaling_group)
    elif len(found) < 2:
        raise InvalidRequest(
            f"a multi-node cluster needs at least 2 agents in scaling group {scaling_group!r}",
            field="cluster_mode",
        )


async def prepare_cluster(service: SessionService, session: SessionData) -> None:
    """Before the first kernel: a multi-node cluster's overlay network (single-node clusters get
    their bridge from the agent as their first kernel is created)."""
    if session.cluster_size < 2 or session.cluster_mode != ClusterMode.MULTI_NODE:
        return
    placed = {k.agent_id for k in session.kernels if k.agent_id}
    agents = [
        a for a in (service.agents.get(i) for i in sorted(placed)) if isinstance(a, DockerAgent)
    ]
    await ensure_overlay(agents, session.id)


async def bring_up_subs(service: SessionService, session_id: str, main_agent: Agent) -> None:
    """Once ``main1`` answers: each sub kernel's container, on its agent, answering too.

    A container of the same name left by an earlier run (restart) is removed first.
    """
    session = await service.repository.get(session_id)
    timeout = service.config.deadlines.get(session.status, 180.0)
    for kernel in session.kernels:
        if kernel.cluster_role == "main":
            continue
        agent = service.agents.get(kernel.agent_id) if kernel.agent_id else main_agent
        service.connections.close(kernel.id)
        await agent.destroy_kernel(agent.kernel_ref(session.id, kernel.name), forced=True)
        handle = await service._create_kernel(session.id, kernel.name, agent)
        await service.repository.set_kernel_placement(
            kernel.id,
            agent_id=agent.id,
            container_id=handle.container_id,
            connection=handle.connection,
        )
        await service.connections.wait_ready(kernel.id, handle.connection, timeout)


async def remove_cluster_networks(service: SessionService, session: SessionData) -> None:
    """After its containers are gone: the cluster's network and work volume on every agent it
    used (a multi-node cluster has one on each)."""
    if session.cluster_size < 2:
        return
    for agent_id in sorted({k.agent_id for k in session.kernels if k.agent_id}):
        with contextlib.suppress(SessionsError):
            agent = service.agents.get(agent_id)
            if isinstance(agent, DockerAgent):
                await remove_cluster_network(agent, session.id)
            await agent.remove_session_storage(session.id)


async def check_sub_kernels(service: SessionService, session: SessionData) -> None:
    """The sweeper's look at a running cluster's sub kernels: one gone → RUNNING_DEGRADED."""
    if session.cluster_size < 2 or session.status is not SessionStatus.RUNNING:
        return
    lost = []
    for kernel in session.kernels:
        if kernel.cluster_role == "main" or not kernel.agent_id or not kernel.container_id:
            continue
        try:
            agent = service.agents.get(kernel.agent_id)
            if not await agent.kernel_exists(kernel.container_id):
                lost.append(kernel.name)
        except SessionsError:
            continue  # an agent that does not answer is not a lost kernel
    if lost:
        with contextlib.suppress(SessionsError):
            await service._transit(
                session.id,
                SessionStatus.RUNNING_DEGRADED,
                f"lost sub kernels: {', '.join(lost)}",
                expected={SessionStatus.RUNNING},
            )


# --- POST sessions/cluster ---------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class CreateClusterAction(Action):
    operation: ClassVar[str] = "create_cluster"
    #: A ``POST sessions`` body, or ``template_id`` (+ ``parameters``) with overrides.
    body: Mapping[str, Any]

    def target(self) -> str | None:
        return str(self.body.get("name") or self.body.get("template_id") or "") or None


class ClusterService:
    """``create_cluster``: exactly a create (from a body or a template), whose ``cluster_size``
    must be at least 2."""

    def __init__(self, service: SessionService) -> None:
        from .templates import TemplateService

        self.service = service
        self.templates = TemplateService(service)

    async def create_cluster(self, action: CreateClusterAction) -> CreateSessionResult:
        body = dict(action.body)
        if "template_id" in body:
            request = FromTemplateRequest.from_json(body)
            template = await self.templates._visible(request.template_id, action.caller)
            body = instantiate(template.body, template.parameters, request.parameters)
            body.update(request.overrides)
        params = CreateSessionParams.from_json(body)
        if params.cluster_size < 2:
            raise InvalidRequest(
                "create_cluster needs cluster_size of at least 2 (POST sessions makes one "
                "container)",
                field="cluster_size",
            )
        return await self.service.create_from_params(
            CreateFromParamsAction(caller=action.caller, params=params)
        )
