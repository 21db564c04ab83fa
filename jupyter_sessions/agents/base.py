"""The agent protocol: what the service asks of a place where kernels run, and the registry of them.

An agent turns a ``KernelSpec`` into a running kernel and hands back how to reach it over ZMQ
(``KernelHandle``). Agents know nothing of sessions' statuses, owners or the database.
"""

from __future__ import annotations

import abc
import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ..errors import AgentUnavailable, InvalidRequest, NotFound, PermissionDenied
from ..mounts import Mount
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
    #: Host folders bound into the container (resolved and checked: mounts.py).
    mounts: tuple[Mount, ...] = ()
    #: Where the kernel starts instead of the work directory (inside a mount), if set.
    working_dir: str | None = None
    #: A cluster's kernel: "single-node" or "multi-node" (its own network, reachable by its
    #: kernel name: cluster.py); "" for a single-container session.
    cluster: str = ""
    #: Ports published on the agent's address for direct access (preopened ports, when the
    #: admin allows it: services.py); the proxy never needs them.
    publish_ports: tuple[int, ...] = ()


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


@dataclass(frozen=True)
class KernelListing:
    """A kernel container of this installation found on an agent (reconciliation at start-up)."""

    #: From the container's labels; None for an installation's container of no session.
    session_id: str | None
    kernel_name: str | None
    container_id: str
    running: bool
    #: Where its ports are now, re-read from the engine (published host ports change when the
    #: engine restarts a container): ``ip`` and the ``*_port`` keys; empty when not running.
    connection: dict[str, Any] = field(default_factory=dict)
    #: What the engine says of it, e.g. "exited (137)".
    state: str = ""


class ExecProcess:
    """A command running inside a kernel's container: its output as it comes, and its exit.

    Agents feed it (``feed``/``exited``, from any thread through the loop); callers ``read`` chunks
    of ``("stdout" | "stderr", text)`` until None, then ``wait`` for the exit code.
    """

    def __init__(self, signal: Callable[[int], Awaitable[None]]) -> None:
        self._loop = asyncio.get_running_loop()
        self._chunks: asyncio.Queue[tuple[str, str] | None] = asyncio.Queue()
        self._exit: asyncio.Future[int] = self._loop.create_future()
        self._signal = signal

    def feed(self, stream: str, text: str) -> None:
        """Thread-safe: one chunk of output."""
        self._loop.call_soon_threadsafe(self._chunks.put_nowait, (stream, text))

    def exited(self, code: int) -> None:
        """Thread-safe: the command ended (after its last output)."""

        def finish() -> None:
            self._chunks.put_nowait(None)
            if not self._exit.done():
                self._exit.set_result(code)

        self._loop.call_soon_threadsafe(finish)

    async def read(self) -> tuple[str, str] | None:
        return await self._chunks.get()

    async def wait(self) -> int:
        return await self._exit

    async def signal(self, signum: int) -> None:
        """Signal the command's whole process group."""
        if not self._exit.done():
            await self._signal(signum)


class Agent(abc.ABC):
    """A place where kernels run. Every method is a coroutine; blocking work stays off the loop."""

    kind: str = "abstract"

    def __init__(self, agent_id: str, *, scaling_group: str = "default", url: str = "") -> None:
        self.id = agent_id
        self.scaling_group = scaling_group
        self.url = url
        #: Held back from what the engine reports, for the host's own needs (agents/registry.py).
        self.reserve = ResourceSlot({})

    def after_reserve(self, info: AgentInfo) -> AgentInfo:
        """``info`` with the reserve taken off its capacity (never below zero)."""
        if not self.reserve.amounts:
            return info
        capacity = {
            slot: max(Decimal(0), amount - self.reserve.get(slot))
            for slot, amount in info.capacity.amounts.items()
        }
        return AgentInfo(info.reachable, ResourceSlot(capacity), info.detail, info.version)

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

    @abc.abstractmethod
    async def usage(self, container_ref: str) -> dict[str, Any] | None:
        """What the kernel uses now: ``cpu_seconds`` (total so far), ``mem_bytes``, ``mem_limit``
        (None when unknown) and ``pids``; None when the kernel is gone."""

    @abc.abstractmethod
    async def logs(self, container_ref: str, *, tail: int | None = None) -> str:
        """The kernel container's own output (its last ``tail`` lines); "" when it is gone."""

    @abc.abstractmethod
    async def exec(
        self, container_ref: str, argv: list[str], *, environ: Mapping[str, str] | None = None
    ) -> ExecProcess:
        """Run ``argv`` (never through a shell of ours) in the kernel's work directory, as the
        kernel's user, in a process group of its own so it can be signalled as a whole."""

    async def service_endpoint(self, container_ref: str, port: int) -> tuple[str, int]:
        """Where the manager reaches a service of the kernel that listens on ``port`` (the
        service proxy's only targets; see services.py). An agent may pick another port."""
        raise InvalidRequest(f"agents of kind {self.kind!r} do not run services")

    async def published_ports(self, container_ref: str) -> dict[int, tuple[str, int]]:
        """Ports of the kernel published on the agent's host: {port: (host, host port)}."""
        return {}

    # --- reconciliation at start-up (reconcile.py) ----------------------------------------

    #: Whether kernels keep running while the server is down (Docker) or die with it (local).
    kernels_outlive_server: bool = False

    async def setup(self) -> None:  # noqa: B027 - optional hook
        """Re-establish at start-up what the agent's kernels share (never raises)."""

    async def list_kernels(self) -> list[KernelListing]:
        """This installation's kernel containers that exist on the agent now (running or not)."""
        return []

    async def list_session_storage(self) -> list[str]:
        """Ids of the sessions whose work storage of this installation exists on the agent."""
        return []

    async def commit_leftovers(self) -> dict[str, str]:
        """Scratch containers that commits left behind (a server killed mid-commit) and are not
        building now: name → session id."""
        return {}

    async def remove_commit_leftover(self, name: str) -> None:
        """Remove one of ``commit_leftovers`` (gone already is fine)."""
        raise InvalidRequest(f"{self.kind} agents make no commit containers")

    # --- files (files.py; agents/local_files.py does the work on every agent) -------------

    async def file_op(
        self, session_id: str, container_ref: str, op: str, args: dict[str, Any]
    ) -> Any:
        """One file operation with a JSON answer: list, stat, check, mkdir, delete, move, usage."""
        raise InvalidRequest(f"file operations are not available on {self.kind} agents")

    def file_stream(
        self, session_id: str, container_ref: str, op: str, args: dict[str, Any]
    ) -> AsyncIterator[bytes]:
        """The bytes of a ``read`` or an ``archive``, as they are produced."""
        raise InvalidRequest(f"file downloads are not available on {self.kind} agents")

    async def file_upload(
        self,
        session_id: str,
        container_ref: str,
        args: dict[str, Any],
        events: AsyncIterator[tuple[str, Any]],
    ) -> Any:
        """Write an upload's events; commit when they end, remove everything when they raise."""
        raise InvalidRequest(f"file uploads are not available on {self.kind} agents")

    async def close(self) -> None:  # noqa: B027 - optional hook, most agents hold nothing
        """Release clients and connections."""


class AgentRegistry:
    """The configured agents by id; picks where a session may go."""

    def __init__(self, agents: list[Agent], log: logging.Logger | None = None) -> None:
        self._agents = {a.id: a for a in agents}
        self.log = log or logging.getLogger(__name__)
        #: Scaling groups sessions may name: "default", those of agents, those made by admins.
        self.groups: set[str] = {"default", *(a.scaling_group for a in agents)}

    def __iter__(self) -> Iterator[Agent]:
        return iter(self._agents.values())

    def __len__(self) -> int:
        return len(self._agents)

    def add(self, agent: Agent) -> None:
        self._agents[agent.id] = agent
        self.groups.add(agent.scaling_group)

    def remove(self, agent_id: str) -> Agent:
        """Take an agent out (admin API); the caller closes it."""
        try:
            return self._agents.pop(agent_id)
        except KeyError:
            raise NotFound(f"no agent {agent_id!r}") from None

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
                found.append((agent, agent.after_reserve(info)))
        return found

    async def check_fits(self, wanted: ResourceSlot, scaling_group: str = "default") -> None:
        """Refuse (403) what no single reachable agent of the group could ever hold, naming the
        largest agent; 503 when none answers."""
        if scaling_group not in self.groups:
            raise InvalidRequest(f"no scaling group {scaling_group!r}", field="scaling_group")
        found = await self.reachable(scaling_group)
        if not found:
            raise AgentUnavailable(f"no agent of scaling group {scaling_group!r} is reachable")
        if any(not wanted.exceeding(info.capacity) for _agent, info in found):
            return

        def size(item: tuple[Agent, AgentInfo]) -> tuple[Decimal, ...]:
            return tuple(item[1].capacity.get(s) for s in sorted(wanted.amounts))

        agent, info = max(found, key=size)
        over = wanted.exceeding(info.capacity)
        shown = ", ".join(f"{info.capacity.get(s).normalize():f} {s}" for s in over)
        raise PermissionDenied(
            f"resources exceed what the largest agent offers on {', '.join(over)}: agent "
            f"{agent.id} of scaling group {scaling_group!r} has {shown}",
            largest_agent=agent.id,
            capacity=info.capacity.to_json(),
        )

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
