"""The agent protocol: what the service asks of a place where kernels run, and the registry of them.

An agent turns a ``KernelSpec`` into a running kernel and hands back how to reach it over ZMQ
(``KernelHandle``). Agents know nothing of sessions' statuses, owners or the database.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..errors import AgentUnavailable, NotFound
from ..types import ResourceSlot

#: Labels on every container and volume, so a restarted manager finds its own (and only its own).
LABEL_INSTALLATION = "org.jupyter.sessions.installation"
LABEL_SESSION = "org.jupyter.sessions.session-id"
LABEL_KERNEL = "org.jupyter.sessions.kernel"


@dataclass(frozen=True)
class KernelSpec:
    """Everything an agent needs to start one kernel container."""

    session_id: str
    kernel_name: str
    image: str
    resources: ResourceSlot
    environ: Mapping[str, str] = field(default_factory=dict)
    #: The per-session key that signs ZMQ messages between the manager and the kernel.
    key: str = ""


@dataclass(frozen=True)
class KernelHandle:
    """Where a started kernel lives and how the manager reaches it (a jupyter_client connection)."""

    container_id: str
    connection: dict[str, Any]


@dataclass(frozen=True)
class AgentInfo:
    """What an agent reports about itself: reachable or not, and its capacity."""

    reachable: bool
    capacity: ResourceSlot
    detail: str = ""
    version: str = ""


@dataclass(frozen=True)
class ImageInfo:
    name: str
    id: str
    size: int
    labels: dict[str, str]
    created: str


class Agent(abc.ABC):
    """A place where kernels run. Every method is a coroutine; blocking work stays off the loop."""

    kind: str = "abstract"

    def __init__(self, agent_id: str, *, scaling_group: str = "default", url: str = "") -> None:
        self.id = agent_id
        self.scaling_group = scaling_group
        self.url = url

    @abc.abstractmethod
    async def info(self) -> AgentInfo:
        """Probe the agent; never raises (an unreachable agent says so)."""

    @abc.abstractmethod
    async def create_kernel(self, spec: KernelSpec) -> KernelHandle:
        """Start the kernel's container and return how to reach it (kernel not yet verified)."""

    @abc.abstractmethod
    def kernel_ref(self, session_id: str, kernel_name: str) -> str:
        """A name that finds the kernel's container before its id is known (forced destroy)."""

    @abc.abstractmethod
    async def destroy_kernel(self, container_ref: str, *, forced: bool = False) -> None:
        """Stop and remove a kernel's container; a container already gone is not an error."""

    @abc.abstractmethod
    async def has_image(self, image: str) -> bool:
        """Whether the image is present on this agent (no registry is ever asked)."""

    @abc.abstractmethod
    async def remove_session_storage(self, session_id: str) -> None:
        """Remove the session's work volume (at destroy)."""

    @abc.abstractmethod
    async def kernel_exists(self, container_id: str) -> bool:
        """Whether the kernel's container still exists and runs."""

    @abc.abstractmethod
    async def list_images(self) -> list[ImageInfo]:
        """Images present on this agent."""

    async def close(self) -> None:  # noqa: B027 - optional hook, most agents hold nothing
        """Release clients and connections."""


class AgentRegistry:
    """The configured agents by id; picks where a session may go."""

    def __init__(self, agents: list[Agent], log: logging.Logger | None = None) -> None:
        self._agents = {a.id: a for a in agents}
        self.log = log or logging.getLogger(__name__)

    def __iter__(self) -> Iterator[Agent]:
        return iter(self._agents.values())

    def __len__(self) -> int:
        return len(self._agents)

    def add(self, agent: Agent) -> None:
        self._agents[agent.id] = agent

    def get(self, agent_id: str) -> Agent:
        try:
            return self._agents[agent_id]
        except KeyError:
            raise NotFound(f"no agent {agent_id!r}") from None

    async def reachable(self, scaling_group: str = "default") -> list[tuple[Agent, AgentInfo]]:
        """Agents of a scaling group that answer now, with what they report."""
        found = []
        for agent in self._agents.values():
            if agent.scaling_group != scaling_group:
                continue
            info = await agent.info()
            if info.reachable:
                found.append((agent, info))
        return found

    async def largest_capacity(self, scaling_group: str = "default") -> ResourceSlot:
        """Slot by slot, the most any single reachable agent of the group offers."""
        best: dict[str, Decimal] = {}
        for _agent, info in await self.reachable(scaling_group):
            for slot, amount in info.capacity.amounts.items():
                best[slot] = max(best.get(slot, Decimal(0)), amount)
        if not best:
            raise AgentUnavailable(f"no agent of scaling group {scaling_group!r} is reachable")
        return ResourceSlot(best)

    async def close(self) -> None:
        for agent in self._agents.values():
            await agent.close()
