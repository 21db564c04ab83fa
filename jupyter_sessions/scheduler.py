"""The scheduler: the pending queue, resource policies, agent capacity and ``depends_on``.

One pass takes the PENDING sessions oldest first. For each one it

1. checks its dependencies: it waits until every one is TERMINATED with result SUCCESS, and is
   CANCELLED (with the reason) as soon as one ends otherwise;
2. asks the repository to admit it: in one transaction, with the owner's keypair row and the
   candidate agents' rows locked, the owner's ``max_concurrent_sessions`` and
   ``total_resource_slots`` are checked against their sessions in ``OCCUPYING_STATUSES``, and the
   agents' free capacity (capacity minus what occupying sessions placed there use); a session that
   fits moves to SCHEDULED on the chosen agent in that same transaction, so neither two passes nor
   two managers sharing a PostgreSQL store can overshoot;
3. leaves a session that does not fit PENDING with ``status_info`` saying why.

Order is first in, first out per owner: once an owner's session waits for a limit or for
capacity, that owner's later sessions wait behind it (a session waiting for its dependencies holds
no one). Other owners' sessions are not held. The loop wakes when a session is queued, when one
ends (TERMINATED, CANCELLED, ERROR: capacity freed or a dependency decided), and otherwise every
``interval`` seconds. A second loop sweeps sessions past their status deadlines or whose
containers vanished.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal

from .agents.base import Agent, AgentInfo, AgentRegistry
from .repository.repository import (
    AdmissionDecision,
    AdmissionState,
    SessionData,
    SessionRepository,
)
from .service import SessionService
from .types import BYTE_SLOTS, ResourceSlot, SessionResult, SessionStatus

S = SessionStatus
#: Statuses whose arrival may let a waiting session start (or decide a dependency).
WAKING_STATUSES = frozenset({S.TERMINATED, S.CANCELLED, S.ERROR})
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


def footprint(session: SessionData) -> ResourceSlot:
    """What a session holds once started: its resources for each of its kernels."""
    per_kernel = ResourceSlot({k: Decimal(str(v)) for k, v in session.resources.items()})
    return per_kernel * max(1, len(session.kernels))


def admission_decision(
    state: AdmissionState, candidates: Sequence[tuple[str, ResourceSlot]]
) -> AdmissionDecision:
    """Where a PENDING session may start now, or why not (pure: runs inside the admission
    transaction on the state read under lock). ``candidates`` are (agent id, capacity) in the
    order agents are tried."""
    wanted = footprint(state.session)
    limit = state.max_concurrent_sessions
    if limit is not None and state.owner_sessions >= limit:
        return AdmissionDecision(None, f"max_concurrent_sessions {limit} reached")
    total = state.total_resource_slots
    if total.amounts:
        over = (state.owner_usage + wanted).exceeding(total)
        if over:
            return AdmissionDecision(
                None,
                f"total_resource_slots reached on {', '.join(over)}: "
                f"{format_slots(state.owner_usage, over)} in use of "
                f"{format_slots(total, over)}, {format_slots(wanted, over)} asked",
            )
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
    return AdmissionDecision(None, f"no agent has {format_slots(wanted, sorted(short))} free")


def dependency_verdict(
    session: SessionData, states: dict[str, tuple[str, str]]
) -> tuple[list[str], str | None]:
    """(dependencies still to finish, why the session must be cancelled or None)."""
    waiting: list[str] = []
    for dep in session.depends_on:
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


class FIFOScheduler:
    def __init__(
        self,
        service: SessionService,
        repository: SessionRepository,
        agents: AgentRegistry,
        *,
        interval: float = 2.0,
        sweep_interval: float = 10.0,
        log: logging.Logger | None = None,
    ) -> None:
        self.service = service
        self.repository = repository
        self.agents = agents
        self.interval = interval
        self.sweep_interval = sweep_interval
        self.log = log or logging.getLogger(__name__)
        self.wakeup = asyncio.Event()
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
        """One pass over the pending queue, oldest first."""
        pending = await self.repository.in_statuses([S.PENDING])
        if not pending:
            return
        states = await self.repository.dependency_states(d for s in pending for d in s.depends_on)
        reachable: dict[str, list[tuple[Agent, AgentInfo]]] = {}
        #: Owners whose queue is held this pass (first in, first out), with the reason.
        held: dict[str, str] = {}
        for session in pending:
            if self.service.is_busy(session.id):
                continue
            waiting, failed = dependency_verdict(session, states)
            if failed is not None:
                await self.service.cancel_pending(session.id, failed)
                continue
            if waiting:
                await self._note(session, f"waiting for dependencies: {', '.join(waiting)}")
                continue
            owner = session.owner_access_key
            if owner in held:
                await self._note(session, held[owner])
                continue
            group = session.scaling_group
            if group not in reachable:
                reachable[group] = await self.agents.reachable(group)
            agents = {agent.id: agent for agent, _info in reachable[group]}
            candidates = [(agent.id, info.capacity) for agent, info in reachable[group]]
            scheduled, decision = await self.repository.admit(
                session.id,
                list(agents),
                functools.partial(admission_decision, candidates=candidates),
            )
            if decision is None:
                continue  # no longer PENDING: destroyed, or another manager admitted it
            if scheduled is not None and decision.agent_id is not None:
                self.service.announce(scheduled)
                self.service.start(scheduled, agents[decision.agent_id])
            elif decision.holds_owner:
                held[owner] = self._held_reason(decision.reason)

    @staticmethod
    def _held_reason(reason: str) -> str:
        """What an owner's later sessions wait for when an earlier one waits for ``reason``."""
        if reason.startswith("max_concurrent_sessions"):
            return reason  # as true of every later session
        return f"waiting behind an earlier session of the same owner ({reason})"

    async def _note(self, session: SessionData, info: str) -> None:
        if session.status_info != info:
            await self.repository.set_pending_info(session.id, info)
