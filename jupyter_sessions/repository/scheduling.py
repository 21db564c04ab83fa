"""SchedulingRepository: what the scheduler reads once per pass, scaling groups, registered agents.

A pass reads one ``Snapshot`` (usage per agent and per owner of every session in
``OCCUPYING_STATUSES``, the owners' policy limits, the scaling groups' policies) instead of one
transaction per pending session; admissions still go through ``SessionRepository.admit``, which
re-checks under lock. Agents registered through the admin API and scaling groups live here too.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, cast

from sqlalchemy import CursorResult, bindparam, select, update
from sqlalchemy.orm import Session

from ..errors import Conflict, NotFound
from ..types import OCCUPYING_STATUSES, ResourceSlot, SessionStatus
from .db import Database
from .orm import (
    AgentRow,
    KernelRow,
    KeypairRow,
    ResourcePolicyRow,
    ScalingGroupRow,
    SessionDependencyRow,
    SessionRow,
    utcnow,
)

DEFAULT_GROUP = "default"


@dataclass
class OwnerQuota:
    """An owner's policy limits and what their occupying sessions hold (grows during a pass)."""

    max_concurrent_sessions: int | None = None
    total_resource_slots: ResourceSlot = field(default_factory=lambda: ResourceSlot({}))
    sessions: int = 0
    usage: ResourceSlot = field(default_factory=lambda: ResourceSlot({}))


@dataclass(frozen=True)
class GroupData:
    """A scaling group and its scheduling policy."""

    name: str
    description: str = ""
    ordering: str = "fifo"
    placement: str = "concentrated"
    created_at: datetime | None = None


@dataclass(frozen=True)
class Snapshot:
    now: datetime
    agent_usage: dict[str, ResourceSlot]
    owners: dict[str, OwnerQuota]
    groups: dict[str, GroupData]


@dataclass(frozen=True)
class QueuedSession:
    """A PENDING session as the scheduler's plan needs it (read without ORM objects: a pass
    may read 10,000 of them)."""

    id: str
    owner: str
    priority: int
    created_at: datetime
    since: datetime
    status_info: str
    resources: ResourceSlot
    cluster_mode: str
    cluster_size: int
    scaling_group: str
    depends_on: tuple[str, ...]


@dataclass(frozen=True)
class RegisteredAgent:
    id: str
    kind: str
    scaling_group: str
    spec: dict[str, Any]


def _slot(raw: Mapping[str, Any] | None, times: int = 1) -> ResourceSlot:
    return ResourceSlot({k: Decimal(str(v)) * times for k, v in (raw or {}).items()})


def _group(row: ScalingGroupRow) -> GroupData:
    return GroupData(row.name, row.description, row.ordering, row.placement, row.created_at)


class SchedulingRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def snapshot(self, owners: Iterable[str]) -> Snapshot:
        """Usage by agent and by owner (of ``owners``), their limits, and the groups: one read."""
        wanted = set(owners)
        occupying = [str(s) for s in OCCUPYING_STATUSES]

        def work(db: Session) -> Snapshot:
            agent_usage: dict[str, ResourceSlot] = {}
            totals: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
            placed = db.execute(
                select(KernelRow.agent_id, SessionRow.resources)
                .join(SessionRow, KernelRow.session_id == SessionRow.id)
                .where(KernelRow.agent_id.is_not(None), SessionRow.status.in_(occupying))
            ).all()
            for agent_id, resources in placed:
                for slot, amount in (resources or {}).items():
                    totals[agent_id][slot] += Decimal(str(amount))
            agent_usage = {a: ResourceSlot(dict(t)) for a, t in totals.items()}
            quotas: dict[str, OwnerQuota] = {}
            limits = db.execute(
                select(
                    KeypairRow.access_key,
                    ResourcePolicyRow.max_concurrent_sessions,
                    ResourcePolicyRow.total_resource_slots,
                ).join(ResourcePolicyRow, KeypairRow.resource_policy == ResourcePolicyRow.name)
            ).all()
            for access_key, max_concurrent, total in limits:
                if access_key in wanted:
                    quotas[access_key] = OwnerQuota(max_concurrent, _slot(total))
            held = db.execute(
                select(
                    SessionRow.owner_access_key, SessionRow.resources, SessionRow.cluster_size
                ).where(SessionRow.status.in_(occupying))
            ).all()
            for owner, resources, size in held:
                quota = quotas.get(owner)
                if quota is not None:
                    quota.sessions += 1
                    quota.usage = quota.usage + _slot(resources, max(1, size))
            groups = {r.name: _group(r) for r in db.scalars(select(ScalingGroupRow))}
            return Snapshot(utcnow(), agent_usage, quotas, groups)

        return await self.db.run(work)

    async def pending_queue(self) -> list[QueuedSession]:
        """Every PENDING session, oldest first, with its dependencies: two plain queries."""
        pending = str(SessionStatus.PENDING)

        def work(db: Session) -> list[QueuedSession]:
            rows = db.execute(
                select(
                    SessionRow.id,
                    SessionRow.owner_access_key,
                    SessionRow.priority,
                    SessionRow.created_at,
                    SessionRow.status_changed_at,
                    SessionRow.status_info,
                    SessionRow.resources,
                    SessionRow.cluster_mode,
                    SessionRow.cluster_size,
                    SessionRow.scaling_group,
                )
                .where(SessionRow.status == pending)
                .order_by(SessionRow.created_at, SessionRow.id)
            ).all()
            deps: dict[str, list[str]] = defaultdict(list)
            for session_id, dep in db.execute(
                select(SessionDependencyRow.session_id, SessionDependencyRow.depends_on)
                .join(SessionRow, SessionRow.id == SessionDependencyRow.session_id)
                .where(SessionRow.status == pending)
            ):
                deps[session_id].append(dep)
            return [
                QueuedSession(
                    id=r.id,
                    owner=r.owner_access_key,
                    priority=r.priority,
                    created_at=r.created_at,
                    since=r.status_changed_at,
                    status_info=r.status_info,
                    resources=_slot(r.resources),
                    cluster_mode=r.cluster_mode,
                    cluster_size=r.cluster_size,
                    scaling_group=r.scaling_group,
                    depends_on=tuple(deps.get(r.id, ())),
                )
                for r in rows
            ]

        return await self.db.run(work)

    async def set_pending_infos(self, reasons: Mapping[str, str]) -> None:
        """Say what PENDING sessions wait for, in one transaction (no transition, no history)."""

        statement = (
            update(SessionRow)
            .where(
                SessionRow.id == bindparam("sid"),
                SessionRow.status == str(SessionStatus.PENDING),
            )
            .values(status_info=bindparam("info"))
        )

        def work(db: Session) -> None:
            rows = [{"sid": sid, "info": info} for sid, info in reasons.items()]
            # One executemany on the connection: a first pass may note 10,000 reasons.
            db.connection().execute(statement, rows)

        await self.db.run(work)

    # --- scaling groups ----------------------------------------------------------------------

    async def list_groups(self) -> list[GroupData]:
        def work(db: Session) -> list[GroupData]:
            rows = db.scalars(select(ScalingGroupRow).order_by(ScalingGroupRow.name)).all()
            found = [_group(r) for r in rows]
            if not any(g.name == DEFAULT_GROUP for g in found):
                found.insert(0, GroupData(DEFAULT_GROUP, "every agent not configured otherwise"))
            return found

        return await self.db.run(work)

    async def get_group(self, name: str) -> GroupData | None:
        def work(db: Session) -> GroupData | None:
            row = db.get(ScalingGroupRow, name)
            if row is None:
                return GroupData(DEFAULT_GROUP) if name == DEFAULT_GROUP else None
            return _group(row)

        return await self.db.run(work)

    async def put_group(self, group: GroupData) -> GroupData:
        """Create a scaling group, or change its policy (same name)."""

        def work(db: Session) -> GroupData:
            row = db.get(ScalingGroupRow, group.name, with_for_update=True)
            if row is None:
                row = ScalingGroupRow(name=group.name, created_at=utcnow())
                db.add(row)
            row.description = group.description
            row.ordering = group.ordering
            row.placement = group.placement
            db.flush()
            return _group(row)

        return await self.db.run(work)

    # --- agents registered through the admin API --------------------------------------------

    async def register_agent(self, agent: RegisteredAgent) -> None:
        def work(db: Session) -> None:
            row = db.get(AgentRow, agent.id, with_for_update=True)
            if row is not None and (row.registered or row.status != "REMOVED"):
                raise Conflict(f"agent {agent.id!r} exists", field="id")
            if row is None:
                row = AgentRow(id=agent.id)
                db.add(row)
            row.kind, row.url = agent.kind, str(agent.spec.get("url", ""))
            row.scaling_group = agent.scaling_group
            row.status, row.status_info = "ALIVE", "registered"
            row.registered, row.spec = True, dict(agent.spec)
            row.last_seen = utcnow()

        await self.db.run(work)

    async def registered_agents(self) -> list[RegisteredAgent]:
        def work(db: Session) -> list[RegisteredAgent]:
            rows = db.scalars(
                select(AgentRow).where(AgentRow.registered.is_(True)).order_by(AgentRow.id)
            ).all()
            return [RegisteredAgent(r.id, r.kind, r.scaling_group, dict(r.spec)) for r in rows]

        return await self.db.run(work)

    async def remove_agent(self, agent_id: str) -> None:
        """Forget a registered agent (configured ones come back with the configuration)."""

        def work(db: Session) -> None:
            row = db.get(AgentRow, agent_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no agent {agent_id!r}")
            row.registered = False
            row.status, row.status_info = "REMOVED", "removed through the admin API"

        await self.db.run(work)

    async def note_sessions_on_agent(
        self, agent_id: str, note: str, *, replacing: str | None = None
    ) -> int:
        """Set ``status_info`` of the live sessions whose main kernel is on the agent (no
        transition); with ``replacing``, only of those whose note starts with it. Answers how
        many changed."""
        live = [str(s) for s in OCCUPYING_STATUSES - {SessionStatus.ERROR}]  # keep ERROR's reason

        def work(db: Session) -> int:
            on_agent = select(KernelRow.session_id).where(
                KernelRow.agent_id == agent_id, KernelRow.cluster_role == "main"
            )
            statement = (
                update(SessionRow)
                .where(SessionRow.id.in_(on_agent), SessionRow.status.in_(live))
                .values(status_info=note)
            )
            if replacing is not None:
                statement = statement.where(SessionRow.status_info.startswith(replacing))
            changed = cast(CursorResult[Any], db.execute(statement))
            return int(changed.rowcount or 0)

        return await self.db.run(work)

    async def sessions_on_agent(self, agent_id: str) -> list[str]:
        """Ids of the non-final sessions with a kernel placed on the agent."""
        final = [str(SessionStatus.TERMINATED), str(SessionStatus.CANCELLED)]

        def work(db: Session) -> list[str]:
            return list(
                db.scalars(
                    select(SessionRow.id)
                    .join(KernelRow, KernelRow.session_id == SessionRow.id)
                    .where(KernelRow.agent_id == agent_id, SessionRow.status.not_in(final))
                    .distinct()
                )
            )

        return await self.db.run(work)
