"""The scheduler: the pending queue, its order, where sessions go, and what they wait for.

One pass reads the PENDING sessions and, once, a snapshot of what occupies each agent and each
owner (``SchedulingRepository.snapshot``). A pure function, ``plan_pass``, then decides in memory,
per scaling group:

1. **order** — higher ``priority`` first; within one priority the group's ``ordering``: ``fifo``
   (oldest first), ``lifo`` (newest first) or ``drf`` (dominant resource fairness: the owner whose
   largest share of the group's capacity is smallest goes next, recomputed after every placement);
2. **validators** — dependencies (wait, or cancel when one failed); the owner's
   ``max_concurrent_sessions`` and ``total_resource_slots`` (a session waiting on its owner's
   quota holds that owner's later sessions: the owner's queue is first in, first out, which also
   keeps the owner's own small sessions from starving a big one); agent capacity;
3. **placement** — among the agents where the session fits now, ``concentrated`` picks the one
   with the least left afterwards (packs, so whole agents stay free for big sessions) and
   ``dispersed`` the one with the most (spreads load).

**No head-of-line blocking.** A session that does not fit any agent's free capacity holds nobody:
later sessions, its owner's included, are still placed where they fit. So that the big session is
not starved in turn by a stream of small ones, once it has waited ``reserve_after`` seconds the
scheduler *reserves* one agent for it (the one whose capacity can hold it and which is closest to
having it free). Nothing else is placed on a reserved agent, so it drains as its sessions end and
the big session starts there; the other agents keep serving small sessions. One reservation per
scaling group at a time, for the first such session in queue order: when it starts, the next
waiting one gets its turn, so every big session starts eventually and the group never stops
serving small ones. A reservation is kept in memory by the leader and dropped when its session
leaves PENDING.

The plan only proposes: each placement is then admitted by ``SessionRepository.admit`` in one
transaction that locks the session, its owner's keypair and the agent and re-checks everything,
so two managers sharing PostgreSQL never overshoot. Waiting reasons are written in one batch, and
only when they changed. A session shape that fitted no agent is remembered for the rest of the
pass (capacity only shrinks within a pass), so a pass over 10,000 pending sessions costs a few
checks per session, not one transaction each (``benchmarks/scheduling_pass.py``).

The loop wakes when a session is queued or ends, and otherwise every ``interval`` seconds; a
second loop sweeps sessions past their status deadlines or whose containers vanished.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import logging
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from .agents.base import Agent, AgentInfo, AgentRegistry
from .cluster import cluster_kernels
from .repository.repository import (
    AdmissionDecision,
    AdmissionState,
    SessionData,
    SessionRepository,
)
from .repository.scheduling import GroupData, OwnerQuota, QueuedSession, SchedulingRepository
from .service import SessionService
from .types import BYTE_SLOTS, ResourceSlot, SessionResult, SessionStatus

S = SessionStatus
#: Statuses whose arrival may let a waiting session start (or decide a dependency).
WAKING_STATUSES = frozenset({S.TERMINATED, S.CANCELLED, S.ERROR})
ORDERINGS = ("fifo", "lifo", "drf")
PLACEMENTS = ("concentrated", "dispersed")
_UNITS = (("t", 2**40), ("g", 2**30), ("m", 2**20), ("k", 2**10))


def format_amount(slot: str, amount: Decimal) -> str:
    """``4 cpu``, ``512m mem``: byte slots in the largest binary unit that divides them."""
    if slot in BYTE_SLOTS and amount > 0:
        for suffix, size in _UNITS:
            if amount % size == 0:
                return f"{amount // size}{suffix} {slot}"
        return f"{amount} bytes {slot}"
    return f"{amount.normalize():f} {slot}"


def format_slots(slots: ResourceSlot, names: Sequence[str]) -> str:
    return ", ".join(format_amount(name, slots.get(name)) for name in names)


def per_kernel(session: SessionData) -> ResourceSlot:
    return ResourceSlot({k: Decimal(str(v)) for k, v in session.resources.items()})


def kernel_names(session: SessionData) -> tuple[str, ...]:
    return tuple(k.name for k in session.kernels) or ("main1",)


def footprint(session: SessionData) -> ResourceSlot:
    """What a session holds once started: its resources for each of its kernels."""
    return per_kernel(session) * max(1, len(session.kernels), session.cluster_size)


def is_multi_node(session: SessionData) -> bool:
    return session.cluster_size > 1 and session.cluster_mode == "multi-node"


def spread_kernels(
    names: Sequence[str],
    wanted: ResourceSlot,
    agents: Sequence[tuple[str, ResourceSlot, ResourceSlot]],
) -> dict[str, str] | None:
    """A multi-node cluster's kernels over (agent id, capacity, used): each kernel on the agent
    with the fewest of this cluster's kernels so far, then the most room (so they spread);
    None when some kernel fits nowhere."""
    used = {agent_id: taken for agent_id, _cap, taken in agents}
    count: dict[str, int] = {}
    placed: dict[str, str] = {}
    for name in names:
        fitting = [
            (agent_id, cap)
            for agent_id, cap, _used in agents
            if not (used[agent_id] + wanted).exceeding(cap)
        ]
        if not fitting:
            return None
        agent_id, _cap = min(
            fitting,
            key=lambda item: (
                count.get(item[0], 0),
                -_room(item[1], used[item[0]] + wanted),
                item[0],
            ),
        )
        placed[name] = agent_id
        used[agent_id] = used[agent_id] + wanted
        count[agent_id] = count.get(agent_id, 0) + 1
    return placed


def _no_spread(kernels: int, each: ResourceSlot) -> str:
    slots = sorted(each.amounts)
    return f"no agents have room for {kernels} kernels of {format_slots(each, slots)} each"


def _room(capacity: ResourceSlot, used: ResourceSlot) -> Decimal:
    """The smallest share of any slot left free (0..1)."""
    shares = [
        (amount - used.get(slot)) / amount
        for slot, amount in capacity.amounts.items()
        if amount > 0
    ]
    return min(shares, default=Decimal(0))


def policy_verdict(
    max_concurrent: int | None,
    total: ResourceSlot,
    sessions: int,
    usage: ResourceSlot,
    wanted: ResourceSlot,
) -> str | None:
    """Why the owner's resource policy makes a session wait now, or None."""
    if max_concurrent is not None and sessions >= max_concurrent:
        return f"max_concurrent_sessions {max_concurrent} reached"
    if total.amounts:
        over = (usage + wanted).exceeding(total)
        if over:
            return (
                f"total_resource_slots reached on {', '.join(over)}: "
                f"{format_slots(usage, over)} in use of "
                f"{format_slots(total, over)}, {format_slots(wanted, over)} asked"
            )
    return None


def admission_decision(
    state: AdmissionState, candidates: Sequence[tuple[str, ResourceSlot]]
) -> AdmissionDecision:
    """Where a PENDING session may start now, or why not (pure: runs inside the admission
    transaction on the state read under lock). ``candidates`` are (agent id, capacity) in the
    order agents are tried."""
    wanted = footprint(state.session)
    reason = policy_verdict(
        state.max_concurrent_sessions,
        state.total_resource_slots,
        state.owner_sessions,
        state.owner_usage,
        wanted,
    )
    if reason is not None:
        return AdmissionDecision(None, reason)
    if is_multi_node(state.session):
        each = per_kernel(state.session)
        usage = [
            (agent_id, cap, state.agent_usage.get(agent_id, ResourceSlot({})))
            for agent_id, cap in candidates
        ]
        spread = spread_kernels(kernel_names(state.session), each, usage)
        if spread is None:
            reason = _no_spread(len(kernel_names(state.session)), each)
            return AdmissionDecision(None, reason, holds_owner=False)
        main = spread.get("main1") or next(iter(spread.values()))
        agents = ", ".join(sorted(set(spread.values())))
        return AdmissionDecision(main, f"placed on agents {agents}", kernel_agents=spread)
    short: set[str] = set()
    for agent_id, capacity in candidates:
        used = state.agent_usage.get(agent_id, ResourceSlot({}))
        over = (used + wanted).exceeding(capacity)
        if not over:
            return AdmissionDecision(agent_id, f"placed on agent {agent_id}")
        short.update(over)
    if not candidates:
        group = state.session.scaling_group
        return AdmissionDecision(None, f"no agent of scaling group {group!r} is reachable")
    return AdmissionDecision(
        None, f"no agent has {format_slots(wanted, sorted(short))} free", holds_owner=False
    )


def dependency_verdict(
    session: SessionData, states: Mapping[str, tuple[str, str]]
) -> tuple[list[str], str | None]:
    """(dependencies still to finish, why the session must be cancelled or None)."""
    return _dependencies(session.depends_on, states)


def _dependencies(
    depends_on: Sequence[str], states: Mapping[str, tuple[str, str]]
) -> tuple[list[str], str | None]:
    waiting: list[str] = []
    for dep in depends_on:
        state = states.get(dep)
        if state is None:
            return waiting, f"dependency {dep} no longer exists"
        status, result = state
        if status == S.TERMINATED and result == SessionResult.SUCCESS:
            continue
        if status == S.TERMINATED:
            return waiting, f"dependency {dep} ended TERMINATED with result {result}"
        if status in (S.CANCELLED, S.ERROR):
            return waiting, f"dependency {dep} ended {status}"
        waiting.append(dep)
    return waiting, None


# --- the plan of one pass (pure) ------------------------------------------------------------


@dataclass
class AgentState:
    """One reachable agent during a pass: its capacity and what is placed there (grows)."""

    id: str
    capacity: ResourceSlot
    used: ResourceSlot = field(default_factory=lambda: ResourceSlot({}))
    #: The session this agent is reserved for (see "No head-of-line blocking").
    reserved_for: str | None = None

    def fits(self, wanted: ResourceSlot) -> bool:
        return not (self.used + wanted).exceeding(self.capacity)

    def left_after(self, wanted: ResourceSlot) -> Decimal:
        """The smallest share of any slot left free once ``wanted`` is placed (0..1)."""
        return _room(self.capacity, self.used + wanted)


@dataclass(frozen=True)
class Pending:
    """What the planner needs of a PENDING session."""

    id: str
    owner: str
    priority: int
    created_at: datetime
    #: Since when it waits (PENDING's own start).
    since: datetime
    wanted: ResourceSlot
    scaling_group: str = "default"
    depends_on: tuple[str, ...] = ()
    #: A multi-node cluster's kernels, each asking ``each`` (None: all on one agent).
    spread: tuple[str, ...] | None = None
    each: ResourceSlot = field(default_factory=lambda: ResourceSlot({}))

    @classmethod
    def of(cls, queued: QueuedSession) -> Pending:
        size = max(1, queued.cluster_size)
        multi = size > 1 and queued.cluster_mode == "multi-node"
        return cls(
            id=queued.id,
            owner=queued.owner,
            priority=queued.priority,
            created_at=queued.created_at,
            since=queued.since,
            wanted=queued.resources * size,
            scaling_group=queued.scaling_group,
            depends_on=queued.depends_on,
            spread=tuple(k.name for k in cluster_kernels(size)) if multi else None,
            each=queued.resources,
        )


@dataclass
class Plan:
    """What one pass decided: placements to admit (in order), reasons to note, cancellations."""

    placements: list[tuple[str, str]] = field(default_factory=list)
    #: Multi-node clusters: session → kernel name → agent.
    kernel_agents: dict[str, dict[str, str]] = field(default_factory=dict)
    waits: dict[str, str] = field(default_factory=dict)
    cancels: dict[str, str] = field(default_factory=dict)
    #: Agent id → the session it is reserved for, after this pass.
    reservations: dict[str, str] = field(default_factory=dict)


def _dominant_share(usage: ResourceSlot, total: ResourceSlot) -> Decimal:
    return max(
        (usage.get(slot) / amount for slot, amount in total.amounts.items() if amount > 0),
        default=Decimal(0),
    )


def order_pending(
    items: Sequence[Pending],
    ordering: str,
    owners: Mapping[str, OwnerQuota],
    total: ResourceSlot,
) -> Iterator[Pending]:
    """The order a group's pending sessions are considered in: priority first, then
    ``ordering``. DRF is lazy: an owner's share is recomputed after each of their sessions is
    considered, from ``owners`` as the caller updates it."""
    by_priority: dict[int, list[Pending]] = defaultdict(list)
    for item in items:
        by_priority[item.priority].append(item)
    for priority in sorted(by_priority, reverse=True):
        bucket = sorted(by_priority[priority], key=lambda p: (p.created_at, p.id))
        if ordering == "lifo":
            yield from reversed(bucket)
        elif ordering == "drf":
            yield from _drf(bucket, owners, total)
        else:
            yield from bucket


def _drf(
    bucket: list[Pending], owners: Mapping[str, OwnerQuota], total: ResourceSlot
) -> Iterator[Pending]:
    queues: dict[str, deque[Pending]] = defaultdict(deque)
    for item in bucket:
        queues[item.owner].append(item)

    def share(owner: str) -> Decimal:
        quota = owners.get(owner)
        return _dominant_share(quota.usage, total) if quota else Decimal(0)

    heap = [(share(o), q[0].created_at, o) for o, q in queues.items()]
    heapq.heapify(heap)
    while heap:
        _share, _at, owner = heapq.heappop(heap)
        queue = queues[owner]
        yield queue.popleft()
        if queue:
            heapq.heappush(heap, (share(owner), queue[0].created_at, owner))


def plan_pass(
    pending: Iterable[Pending],
    agents: Mapping[str, Sequence[AgentState]],
    owners: Mapping[str, OwnerQuota],
    groups: Mapping[str, GroupData],
    *,
    dependency_states: Mapping[str, tuple[str, str]] | None = None,
    now: datetime,
    reserve_after: float,
    reservations: Mapping[str, str] | None = None,
) -> Plan:
    """Decide one pass (pure; ``agents`` and ``owners`` are updated as sessions are placed).

    ``agents`` are the reachable agents by scaling group; ``reservations`` the agent → session
    reservations of the previous pass (kept while their session still waits).
    """
    plan = Plan()
    quotas = dict(owners)  # owners with no policy row get one here, so DRF sees their usage
    states = dependency_states or {}
    items = list(pending)
    waiting_ids = {p.id for p in items}
    kept = {a: s for a, s in (reservations or {}).items() if s in waiting_ids}
    by_group: dict[str, list[Pending]] = defaultdict(list)
    for item in items:
        by_group[item.scaling_group].append(item)
    for group, members in by_group.items():
        group_agents = list(agents.get(group, ()))
        for agent in group_agents:
            agent.reserved_for = kept.get(agent.id)
        reserved = {a.reserved_for for a in group_agents if a.reserved_for}
        policy = groups.get(group) or GroupData(group)
        total = ResourceSlot.sum(a.capacity for a in group_agents)
        held: dict[str, str] = {}
        #: Shapes that fitted no unreserved agent this pass, with the reason.
        no_fit: list[tuple[ResourceSlot, str]] = []
        for item in order_pending(members, policy.ordering, quotas, total):
            if item.depends_on:
                waiting, failed = _dependencies(item.depends_on, states)
                if failed is not None:
                    plan.cancels[item.id] = failed
                    continue
                if waiting:
                    plan.waits[item.id] = f"waiting for dependencies: {', '.join(waiting)}"
                    continue
            if item.owner in held:
                plan.waits[item.id] = held[item.owner]
                continue
            quota = quotas.setdefault(item.owner, OwnerQuota())
            reason = policy_verdict(
                quota.max_concurrent_sessions,
                quota.total_resource_slots,
                quota.sessions,
                quota.usage,
                item.wanted,
            )
            if reason is not None:
                plan.waits[item.id] = reason
                held[item.owner] = _held_reason(reason)
                continue
            if not group_agents:
                plan.waits[item.id] = f"no agent of scaling group {group!r} is reachable"
                continue
            if item.spread is not None:
                _spread(plan, item, group_agents, quota)
                continue
            mine = item.id in reserved
            if not mine:
                known = next((r for shape, r in no_fit if shape.fits_in(item.wanted)), None)
                if known is not None:
                    plan.waits[item.id] = _with_reservation(
                        item, known, group_agents, now, reserve_after
                    )
                    continue
            usable = [a for a in group_agents if a.reserved_for in (None, item.id)]
            fitting = [a for a in usable if a.fits(item.wanted)]
            if not fitting:
                short = sorted(
                    {s for a in usable for s in (a.used + item.wanted).exceeding(a.capacity)}
                )
                reason = f"no agent has {format_slots(item.wanted, short or ['cpu'])} free"
                if not mine:
                    no_fit.append((item.wanted, reason))
                plan.waits[item.id] = _with_reservation(
                    item, reason, group_agents, now, reserve_after
                )
                continue
            agent = _place(fitting, item.wanted, policy.placement)
            agent.used = agent.used + item.wanted
            if agent.reserved_for == item.id:
                agent.reserved_for = None
            quota.sessions += 1
            quota.usage = quota.usage + item.wanted
            plan.placements.append((item.id, agent.id))
        for agent in group_agents:
            if agent.reserved_for:
                plan.reservations[agent.id] = agent.reserved_for
    return plan


def _spread(plan: Plan, item: Pending, agents: list[AgentState], quota: OwnerQuota) -> None:
    """Plan a multi-node cluster over the unreserved agents, or say why it waits."""
    usable = {a.id: a for a in agents if a.reserved_for in (None, item.id)}
    assert item.spread is not None
    spread = spread_kernels(
        item.spread, item.each, [(a.id, a.capacity, a.used) for a in usable.values()]
    )
    if spread is None:
        plan.waits[item.id] = _no_spread(len(item.spread), item.each)
        return
    for agent_id in spread.values():
        usable[agent_id].used = usable[agent_id].used + item.each
    quota.sessions += 1
    quota.usage = quota.usage + item.wanted
    plan.placements.append((item.id, spread.get("main1") or next(iter(spread.values()))))
    plan.kernel_agents[item.id] = spread


def _place(fitting: list[AgentState], wanted: ResourceSlot, placement: str) -> AgentState:
    """Concentrated: the agent left fullest; dispersed: the one left emptiest (ties by id)."""
    if placement == "dispersed":
        return max(fitting, key=lambda a: (a.left_after(wanted), _neg(a.id)))
    return min(fitting, key=lambda a: (a.left_after(wanted), a.id))


def _neg(text: str) -> tuple[int, ...]:
    return tuple(-ord(c) for c in text)


def _with_reservation(
    item: Pending,
    reason: str,
    agents: list[AgentState],
    now: datetime,
    reserve_after: float,
) -> str:
    """Reserve an agent for a session that waited for capacity long enough (see module doc):
    one reservation per scaling group at a time, for the first such session in queue order, so
    reservations never take a whole group away from the small sessions."""
    mine = next((a for a in agents if a.reserved_for == item.id), None)
    taken = any(a.reserved_for for a in agents)
    if mine is None and not taken and (now - item.since).total_seconds() >= reserve_after:
        could = [
            a for a in agents if a.reserved_for is None and not item.wanted.exceeding(a.capacity)
        ]
        if could:
            # The agent closest to having it free: the least of the session's slots in use.
            mine = min(could, key=lambda a: (-a.left_after(item.wanted), a.id))
            mine.reserved_for = item.id
    if mine is not None:
        return f"{reason}; agent {mine.id} is reserved for it and takes no other session"
    return reason


def _held_reason(reason: str) -> str:
    """What an owner's later sessions wait for when an earlier one waits for ``reason``."""
    if reason.startswith("max_concurrent_sessions"):
        return reason  # as true of every later session
    return f"waiting behind an earlier session of the same owner ({reason})"


# --- the loop --------------------------------------------------------------------------------


class Scheduler:
    """Runs passes of the plan above, and the sweeper."""

    def __init__(
        self,
        service: SessionService,
        repository: SessionRepository,
        agents: AgentRegistry,
        *,
        interval: float = 2.0,
        sweep_interval: float = 10.0,
        reserve_after: float = 60.0,
        log: logging.Logger | None = None,
    ) -> None:
        self.service = service
        self.repository = repository
        self.scheduling = SchedulingRepository(repository.db)
        self.agents = agents
        self.interval = interval
        self.sweep_interval = sweep_interval
        self.reserve_after = reserve_after
        self.log = log or logging.getLogger(__name__)
        self.wakeup = asyncio.Event()
        self.reservations: dict[str, str] = {}
        self._tasks: list[asyncio.Task[None]] = []
        service.attach_scheduler_wakeup(self.wakeup)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(self.schedule, self.interval, self.wakeup)),
            loop.create_task(self._run(self.service.sweep, self.sweep_interval, None)),
            loop.create_task(self._wake_on_ends()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _run(
        self,
        tick: Callable[[], Awaitable[None]],
        interval: float,
        wakeup: asyncio.Event | None,
    ) -> None:
        while True:
            try:
                await tick()
            except Exception:
                self.log.exception("%s failed; retrying in %g s", tick.__name__, interval)
            if wakeup is None:
                await asyncio.sleep(interval)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), interval)
            wakeup.clear()

    async def _wake_on_ends(self) -> None:
        """Wake the pending queue when a session ends: capacity freed, or a dependency decided."""
        with self.service.hub.subscribe() as events:
            while True:
                event = await events.get()
                if event.kind == "session_status" and event.data.get("status") in WAKING_STATUSES:
                    self.wakeup.set()

    async def schedule(self) -> None:
        """One pass over the pending queue (see the module's docstring)."""
        sessions = [
            s for s in await self.scheduling.pending_queue() if not self.service.is_busy(s.id)
        ]
        if not sessions:
            self.reservations = {}
            return
        states = await self.repository.dependency_states(d for s in sessions for d in s.depends_on)
        snapshot = await self.scheduling.snapshot({s.owner for s in sessions})
        reachable: dict[str, list[tuple[Agent, AgentInfo]]] = {}
        for group in {s.scaling_group for s in sessions}:
            reachable[group] = await self.agents.reachable(group)
        states_by_group = {
            group: [
                AgentState(a.id, info.capacity, snapshot.agent_usage.get(a.id, ResourceSlot({})))
                for a, info in found
            ]
            for group, found in reachable.items()
        }
        plan = plan_pass(
            (Pending.of(s) for s in sessions),
            states_by_group,
            snapshot.owners,
            snapshot.groups,
            dependency_states=states,
            now=snapshot.now,
            reserve_after=self.reserve_after,
            reservations=self.reservations,
        )
        self.reservations = plan.reservations
        for session_id, reason in plan.cancels.items():
            await self.service.cancel_pending(session_id, reason)
        by_id = {s.id: s for s in sessions}
        changed = {
            sid: reason for sid, reason in plan.waits.items() if by_id[sid].status_info != reason
        }
        if changed:
            await self.scheduling.set_pending_infos(changed)
        agents = {a.id: (a, info) for found in reachable.values() for a, info in found}
        for session_id, agent_id in plan.placements:
            chosen = sorted({agent_id, *plan.kernel_agents.get(session_id, {}).values()})
            candidates = [(a, agents[a][1].capacity) for a in chosen]
            scheduled, decision = await self.repository.admit(
                session_id,
                chosen,
                functools.partial(admission_decision, candidates=candidates),
            )
            if scheduled is not None and decision is not None and decision.agent_id is not None:
                self.service.announce(scheduled)
                self.service.start(scheduled, agents[decision.agent_id][0])


#: The first scheduler's name, kept for the wiring in app.py.
FIFOScheduler = Scheduler
