"""Repositories: the only code that reads or writes the tables.

Every method takes or returns plain dataclasses (never live ORM rows), so nothing above this layer
touches a database session. Methods are synchronous units of work; the service runs them with
``Database.run`` off the event loop. Reads of sessions take a ``Scope``: a non-admin caller's
scope is their own access key, so another user's session is simply not found (404).
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import func, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import Conflict, InvalidStatus, NotFound, QuotaExceeded
from ..types import (
    OCCUPYING_STATUSES,
    TERMINAL_STATUSES,
    ResourceSlot,
    SessionStatus,
    check_transition,
    is_session_id,
)
from .db import Database
from .orm import (
    ACTIVE_NAME_INDEX,
    AgentRow,
    AuditLogRow,
    KernelRow,
    KeypairRow,
    MetaRow,
    ResourcePolicyRow,
    SessionDependencyRow,
    SessionRow,
    StatusHistoryRow,
    TemplateRow,
    utcnow,
)

DEFAULT_POLICY = "default"


@dataclass(frozen=True)
class Scope:
    """Whose sessions a query may see: one owner's, or (``owner=None``) everyone's."""

    owner: str | None

    @classmethod
    def everyone(cls) -> Scope:
        return cls(None)


@dataclass(frozen=True)
class KernelData:
    id: str
    session_id: str
    name: str
    cluster_role: str
    cluster_idx: int
    status: SessionStatus
    status_info: str
    agent_id: str | None
    container_id: str | None
    connection: dict[str, Any]
    created_at: datetime
    terminated_at: datetime | None

    @classmethod
    def of(cls, row: KernelRow) -> KernelData:
        return cls(
            id=row.id,
            session_id=row.session_id,
            name=row.name,
            cluster_role=row.cluster_role,
            cluster_idx=row.cluster_idx,
            status=SessionStatus(row.status),
            status_info=row.status_info,
            agent_id=row.agent_id,
            container_id=row.container_id,
            connection=dict(row.connection or {}),
            created_at=row.created_at,
            terminated_at=row.terminated_at,
        )


@dataclass(frozen=True)
class SessionData:
    id: str
    name: str
    owner_access_key: str
    status: SessionStatus
    status_info: str
    status_data: dict[str, Any]
    status_changed_at: datetime
    result: str
    exit_code: int | None
    type: str
    image: str
    resources: dict[str, Any]
    cluster_mode: str
    cluster_size: int
    scaling_group: str
    tag: str | None
    priority: int
    params: dict[str, Any]
    restarted_from: str | None
    created_at: datetime
    terminated_at: datetime | None
    kernels: tuple[KernelData, ...]
    depends_on: tuple[str, ...] = ()
    #: The session's own idle timeout (seconds), set by PATCH; None: its policy's applies.
    idle_timeout: int | None = None

    @property
    def main_kernel(self) -> KernelData | None:
        return next((k for k in self.kernels if k.cluster_role == "main"), None)

    @classmethod
    def of(cls, row: SessionRow, depends_on: Iterable[str] = ()) -> SessionData:
        return cls(
            id=row.id,
            name=row.name,
            owner_access_key=row.owner_access_key,
            status=SessionStatus(row.status),
            status_info=row.status_info,
            status_data=dict(row.status_data or {}),
            status_changed_at=row.status_changed_at,
            result=row.result,
            exit_code=row.exit_code,
            type=row.type,
            image=row.image,
            resources=dict(row.resources or {}),
            cluster_mode=row.cluster_mode,
            cluster_size=row.cluster_size,
            scaling_group=row.scaling_group,
            tag=row.tag,
            priority=row.priority,
            params=dict(row.params or {}),
            restarted_from=row.restarted_from,
            created_at=row.created_at,
            terminated_at=row.terminated_at,
            kernels=tuple(KernelData.of(k) for k in row.kernels),
            depends_on=tuple(depends_on),
            idle_timeout=row.idle_timeout,
        )


@dataclass(frozen=True)
class NewKernel:
    name: str
    cluster_role: str
    cluster_idx: int


@dataclass(frozen=True)
class NewSession:
    """A validated creation request, ready to be stored as PENDING."""

    name: str
    owner_access_key: str
    image: str
    type: str
    resources: dict[str, Any]
    cluster_mode: str
    cluster_size: int
    scaling_group: str
    tag: str | None
    priority: int
    params: dict[str, Any]
    kernels: tuple[NewKernel, ...]
    restarted_from: str | None = None
    depends_on: tuple[str, ...] = ()
    id: str = field(default_factory=lambda: str(uuid.uuid4()))


@dataclass(frozen=True)
class HistoryEntry:
    kernel: str | None
    from_status: str | None
    to_status: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class KeypairData:
    access_key: str
    user: str
    is_admin: bool
    is_owner: bool
    resource_policy: str
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class AgentData:
    id: str
    kind: str
    url: str
    scaling_group: str
    status: str
    status_info: str
    capacity: dict[str, Any]
    first_seen: datetime
    last_seen: datetime


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    access_key: str | None
    action: str
    target: str | None
    outcome: str
    error: str | None
    duration_ms: int


@dataclass(frozen=True)
class TemplateData:
    """A stored ``POST sessions`` body with its declared parameters (see templates.py)."""

    id: str
    name: str
    owner_access_key: str
    shared: bool
    body: dict[str, Any]
    parameters: dict[str, Any]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, row: TemplateRow) -> TemplateData:
        return cls(
            id=row.id,
            name=row.name,
            owner_access_key=row.owner_access_key,
            shared=row.is_shared,
            body=dict(row.body or {}),
            parameters=dict(row.parameters or {}),
            created_at=row.created_at,
            updated_at=row.updated_at,
        )


def _depends_on(db: Session, session_id: str) -> list[str]:
    return list(
        db.scalars(
            select(SessionDependencyRow.depends_on).where(
                SessionDependencyRow.session_id == session_id
            )
        )
    )


def _violates_active_name_index(exc: IntegrityError) -> bool:
    """Whether ``exc`` is the per-owner active name index refusing a row, on either backend.

    Other integrity errors (a reused id, an unknown owner) are bugs, not a taken name.
    PostgreSQL names the index in its diagnostics; SQLite names the indexed columns.
    """
    diag = getattr(exc.orig, "diag", None)
    constraint = getattr(diag, "constraint_name", None)
    if constraint is not None:
        return bool(constraint == ACTIVE_NAME_INDEX)
    return "UNIQUE constraint failed: sessions.owner_access_key, sessions.name" in str(exc.orig)


def _keypair(row: KeypairRow) -> KeypairData:
    return KeypairData(
        access_key=row.access_key,
        user=row.user,
        is_admin=row.is_admin,
        is_owner=row.is_owner,
        resource_policy=row.resource_policy,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


@dataclass(frozen=True)
class AdmissionState:
    """What the scheduler decides a PENDING session's start on, read under lock (scheduler task).

    Usage counts every session in ``OCCUPYING_STATUSES``: the owner's (for the policy) and, per
    candidate agent, those with a kernel placed there (for its free capacity).
    """

    session: SessionData
    max_concurrent_sessions: int | None
    total_resource_slots: ResourceSlot
    owner_sessions: int
    owner_usage: ResourceSlot
    agent_usage: Mapping[str, ResourceSlot]


@dataclass(frozen=True)
class AdmissionDecision:
    """Where a session starts (``agent_id``), or why it stays PENDING (``agent_id`` None)."""

    agent_id: str | None
    reason: str
    #: The owner's later sessions wait too (first in, first out per owner).
    holds_owner: bool = True
    #: A multi-node cluster's kernels by name → agent (others go to ``agent_id``).
    kernel_agents: Mapping[str, str] | None = None


def _slot(raw: Mapping[str, Any] | None, times: int = 1) -> ResourceSlot:
    """Stored resources (JSON numbers) as a ResourceSlot, ``times`` over."""
    return ResourceSlot({k: Decimal(str(v)) * times for k, v in (raw or {}).items()})


class SessionRepository:
    """Sessions, kernels and their history; plus the few small tables the foundation needs."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- installation and identity -------------------------------------------------------

    async def installation_id(self) -> str:
        """This installation's id, made on first start; labels every container it owns."""

        def work(db: Session) -> str:
            row = db.get(MetaRow, "installation_id")
            if row is None:
                row = MetaRow(key="installation_id", value=uuid.uuid4().hex[:12])
                db.add(row)
            return row.value

        return await self.db.run(work)

    async def ensure_owner_keypair(self, user: str) -> KeypairData:
        """The server owner's keypair (admin), made on first start; renamed if the user changed."""

        def work(db: Session) -> KeypairData:
            if db.get(ResourcePolicyRow, DEFAULT_POLICY) is None:
                db.add(ResourcePolicyRow(name=DEFAULT_POLICY))
                db.flush()
            row = db.scalars(select(KeypairRow).where(KeypairRow.is_owner.is_(True))).first()
            if row is None:
                row = KeypairRow(
                    access_key="AKOWNER" + secrets.token_hex(8).upper(),
                    secret_key=secrets.token_urlsafe(32),
                    user=user,
                    is_admin=True,
                    is_owner=True,
                    resource_policy=DEFAULT_POLICY,
                )
                db.add(row)
            row.user = user
            return _keypair(row)

        return await self.db.run(work)

    # --- sessions ------------------------------------------------------------------------

    async def create_session(
        self, new: NewSession, *, admit: Callable[[Session], None] | None = None
    ) -> SessionData:
        """Store a PENDING session with its kernels; a taken name is a Conflict (409).

        ``admit`` runs first in the same transaction and may refuse (a quota, atomically).
        """

        def work(db: Session) -> SessionData:
            if admit is not None:
                admit(db)
            now = utcnow()
            row = SessionRow(
                id=new.id,
                name=new.name,
                owner_access_key=new.owner_access_key,
                status=SessionStatus.PENDING,
                status_info="queued",
                status_changed_at=now,
                type=new.type,
                image=new.image,
                resources=new.resources,
                cluster_mode=new.cluster_mode,
                cluster_size=new.cluster_size,
                scaling_group=new.scaling_group,
                tag=new.tag,
                priority=new.priority,
                params=new.params,
                restarted_from=new.restarted_from,
                created_at=now,
            )
            db.add(row)
            for k in new.kernels:
                db.add(
                    KernelRow(
                        id=str(uuid.uuid4()),
                        session_id=new.id,
                        name=k.name,
                        cluster_role=k.cluster_role,
                        cluster_idx=k.cluster_idx,
                        status=SessionStatus.PENDING,
                        created_at=now,
                    )
                )
            if new.depends_on:
                # No relationship orders these inserts after the session's: flush it first.
                db.flush()
            for dep in new.depends_on:
                db.add(SessionDependencyRow(session_id=new.id, depends_on=dep))
            db.add(
                StatusHistoryRow(
                    session_id=new.id,
                    from_status=None,
                    to_status="PENDING",
                    reason="queued",
                    at=now,
                )
            )
            db.flush()
            db.refresh(row)
            return SessionData.of(row, new.depends_on)

        try:
            return await self.db.run(work)
        except IntegrityError as exc:
            if _violates_active_name_index(exc):
                raise Conflict(
                    f"a session named {new.name!r} already exists", field="name"
                ) from None
            raise

    async def find_active_by_name(self, owner: str, name: str) -> SessionData | None:
        def work(db: Session) -> SessionData | None:
            row = db.scalars(
                select(SessionRow).where(
                    SessionRow.owner_access_key == owner,
                    SessionRow.name == name,
                    SessionRow.status.not_in([str(s) for s in TERMINAL_STATUSES]),
                )
            ).first()
            return SessionData.of(row, _depends_on(db, row.id)) if row else None

        return await self.db.run(work)

    async def resolve(self, ref: str, scope: Scope, *, name_owner: str | None) -> SessionData:
        """A session by id (within scope) or by the name of one of ``name_owner``'s active ones."""

        def work(db: Session) -> SessionData:
            row: SessionRow | None = None
            if is_session_id(ref):
                row = db.get(SessionRow, str(uuid.UUID(ref)))
                if (
                    row is not None
                    and scope.owner is not None
                    and row.owner_access_key != scope.owner
                ):
                    row = None
            elif name_owner is not None:
                row = db.scalars(
                    select(SessionRow).where(
                        SessionRow.owner_access_key == name_owner,
                        SessionRow.name == ref,
                        SessionRow.status.not_in([str(s) for s in TERMINAL_STATUSES]),
                    )
                ).first()
            if row is None:
                raise NotFound(f"no session {ref!r}")
            return SessionData.of(row, _depends_on(db, row.id))

        return await self.db.run(work)

    async def get(self, session_id: str) -> SessionData:
        def work(db: Session) -> SessionData:
            row = db.get(SessionRow, session_id)
            if row is None:
                raise NotFound(f"no session {session_id!r}")
            return SessionData.of(row, _depends_on(db, row.id))

        return await self.db.run(work)

    async def list_sessions(
        self,
        scope: Scope,
        *,
        statuses: Sequence[SessionStatus] = (),
        match: str | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[list[SessionData], int]:
        """A page of sessions, newest first, and the total matching count."""

        def work(db: Session) -> tuple[list[SessionData], int]:
            query = select(SessionRow)
            if scope.owner is not None:
                query = query.where(SessionRow.owner_access_key == scope.owner)
            if statuses:
                query = query.where(SessionRow.status.in_([str(s) for s in statuses]))
            if match:
                # A prefix compared as text, not LIKE: no wildcards to escape, and case-sensitive
                # on both backends (SQLite's LIKE ignores ASCII case, PostgreSQL's does not).
                # Names are case-sensitive; ids are stored lower-case.
                size = len(match)
                query = query.where(
                    or_(
                        func.substr(SessionRow.name, 1, size) == match,
                        func.substr(SessionRow.id, 1, size) == match.lower(),
                    )
                )
            total = db.scalar(select(func.count()).select_from(query.subquery())) or 0
            rows = db.scalars(
                query.order_by(SessionRow.created_at.desc(), SessionRow.id)
                .limit(limit)
                .offset(offset)
            ).all()
            return [SessionData.of(r, _depends_on(db, r.id)) for r in rows], total

        return await self.db.run(work)

    async def in_statuses(self, statuses: Iterable[SessionStatus]) -> list[SessionData]:
        """Sessions in any of ``statuses``, oldest first (the scheduler's FIFO order)."""

        def work(db: Session) -> list[SessionData]:
            rows = db.scalars(
                select(SessionRow)
                .where(SessionRow.status.in_([str(s) for s in statuses]))
                .order_by(SessionRow.created_at, SessionRow.id)
            ).all()
            return [SessionData.of(r, _depends_on(db, r.id)) for r in rows]

        return await self.db.run(work)

    async def transit(
        self,
        session_id: str,
        target: SessionStatus,
        reason: str,
        *,
        expected: Iterable[SessionStatus] | None = None,
        kernels_too: bool = True,
        status_data: dict[str, Any] | None = None,
    ) -> SessionData:
        """Move a session (and, by default, its live kernels) to ``target``, checked and logged.

        ``expected`` narrows the allowed current statuses (a guard against races); an illegal
        or unexpected current status raises InvalidStatus naming it.
        """

        allowed = frozenset(expected) if expected is not None else None

        def work(db: Session) -> SessionData:
            # Lock the row until commit: where transactions run concurrently (PostgreSQL), two
            # racing transitions must not both read the same current status. SQLite has one
            # writer anyway and ignores FOR UPDATE.
            row = db.get(SessionRow, session_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no session {session_id!r}")
            current = SessionStatus(row.status)
            if allowed is not None and current not in allowed:
                raise InvalidStatus(
                    f"the session is {current}, not {' or '.join(sorted(allowed))}",
                    status=str(current),
                )
            check_transition(current, target)
            now = utcnow()
            row.status = target
            row.status_info = reason
            row.status_changed_at = now
            if status_data is not None:
                row.status_data = status_data
            if target in TERMINAL_STATUSES:
                row.terminated_at = now
            db.add(
                StatusHistoryRow(
                    session_id=session_id,
                    from_status=current,
                    to_status=target,
                    reason=reason,
                    at=now,
                )
            )
            if kernels_too:
                for kernel in row.kernels:
                    if SessionStatus(kernel.status) in TERMINAL_STATUSES:
                        continue
                    kernel.status = target
                    kernel.status_info = reason
                    if target in TERMINAL_STATUSES:
                        kernel.terminated_at = now
            db.flush()
            return SessionData.of(row, _depends_on(db, row.id))

        return await self.db.run(work)

    async def set_kernel_placement(
        self,
        kernel_id: str,
        *,
        agent_id: str | None = None,
        container_id: str | None = None,
        connection: dict[str, Any] | None = None,
    ) -> None:
        """Record where a kernel runs and how to reach it."""

        def work(db: Session) -> None:
            row = db.get(KernelRow, kernel_id)
            if row is None:
                raise NotFound(f"no kernel {kernel_id!r}")
            if agent_id is not None:
                row.agent_id = agent_id
            if container_id is not None:
                row.container_id = container_id
            if connection is not None:
                row.connection = connection

        await self.db.run(work)

    async def status_history(self, session_id: str) -> list[HistoryEntry]:
        def work(db: Session) -> list[HistoryEntry]:
            rows = db.scalars(
                select(StatusHistoryRow)
                .where(StatusHistoryRow.session_id == session_id)
                .order_by(StatusHistoryRow.id)
            ).all()
            return [
                HistoryEntry(r.kernel, r.from_status, r.to_status, r.reason, r.at) for r in rows
            ]

        return await self.db.run(work)

    # --- agents ------------------------------------------------------------------------------

    async def upsert_agent(
        self,
        agent_id: str,
        *,
        kind: str,
        url: str,
        scaling_group: str,
        status: str,
        status_info: str,
        capacity: dict[str, Any],
    ) -> None:
        def work(db: Session) -> None:
            row = db.get(AgentRow, agent_id)
            if row is None:
                row = AgentRow(id=agent_id)
                db.add(row)
            row.kind, row.url, row.scaling_group = kind, url, scaling_group
            row.status, row.status_info = status, status_info
            if capacity:
                row.capacity = capacity
            row.last_seen = utcnow()

        await self.db.run(work)

    async def list_agents(self) -> list[AgentData]:
        def work(db: Session) -> list[AgentData]:
            rows = db.scalars(select(AgentRow).order_by(AgentRow.id)).all()
            return [
                AgentData(
                    r.id,
                    r.kind,
                    r.url,
                    r.scaling_group,
                    r.status,
                    r.status_info,
                    dict(r.capacity or {}),
                    r.first_seen,
                    r.last_seen,
                )
                for r in rows
            ]

        return await self.db.run(work)

    # --- audit ----------------------------------------------------------------------------

    async def write_audit(self, entries: Sequence[AuditEntry]) -> None:
        def work(db: Session) -> None:
            db.add_all(
                AuditLogRow(
                    at=e.at,
                    access_key=e.access_key,
                    action=e.action,
                    target=e.target,
                    outcome=e.outcome,
                    error=e.error,
                    duration_ms=e.duration_ms,
                )
                for e in entries
            )

        await self.db.run(work)

    async def audit_log(self, limit: int = 100) -> list[AuditEntry]:
        def work(db: Session) -> list[AuditEntry]:
            rows = db.scalars(select(AuditLogRow).order_by(AuditLogRow.id.desc()).limit(limit))
            return [
                AuditEntry(
                    r.at, r.access_key, r.action, r.target, r.outcome, r.error, r.duration_ms
                )
                for r in rows
            ]

        return await self.db.run(work)

    # --- batch results (execution) ------------------------------------------------------------

    async def set_result(
        self,
        session_id: str,
        result: str,
        exit_code: int | None,
        status_data: dict[str, Any] | None = None,
    ) -> None:
        """Record how a batch session's command ended (merged into ``status_data``)."""

        def work(db: Session) -> None:
            row = db.get(SessionRow, session_id)
            if row is None:
                raise NotFound(f"no session {session_id!r}")
            row.result = str(result)
            row.exit_code = exit_code
            if status_data:
                row.status_data = {**(row.status_data or {}), **status_data}

        await self.db.run(work)

    # --- modify, rename and templates (lifecycle-actions task) ------------------------------

    #: Columns ``modify_session`` may change; ``resources`` only while the session is PENDING.
    MODIFIABLE = frozenset({"name", "tag", "priority", "idle_timeout", "resources"})

    async def modify_session(self, session_id: str, changes: Mapping[str, Any]) -> SessionData:
        """Change a session's name, tag, priority, idle timeout or (while PENDING) resources.

        One transaction on the locked row: every check (final status, resources only while
        PENDING, a name taken by another of the owner's active sessions) runs before anything
        is written, so a refused change leaves no trace. A new name appends a history row whose
        status is unchanged ("renamed from X to Y").
        """
        unknown = set(changes) - self.MODIFIABLE
        if unknown:
            raise ValueError(f"not modifiable: {sorted(unknown)}")

        def work(db: Session) -> SessionData:
            row = db.get(SessionRow, session_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no session {session_id!r}")
            current = SessionStatus(row.status)
            if current in TERMINAL_STATUSES:
                raise InvalidStatus(
                    f"the session is {current}: a final session cannot be changed",
                    status=str(current),
                )
            if "resources" in changes and current is not SessionStatus.PENDING:
                raise InvalidStatus(
                    f"resources can change only while the session is PENDING; it is {current}",
                    status=str(current),
                )
            new_name = changes.get("name")
            renamed = new_name is not None and new_name != row.name
            if renamed:
                taken = db.scalars(
                    select(SessionRow.id).where(
                        SessionRow.owner_access_key == row.owner_access_key,
                        SessionRow.name == new_name,
                        SessionRow.id != row.id,
                        SessionRow.status.not_in([str(s) for s in TERMINAL_STATUSES]),
                    )
                ).first()
                if taken is not None:
                    raise Conflict(f"a session named {new_name!r} already exists", field="name")
                db.add(
                    StatusHistoryRow(
                        session_id=session_id,
                        from_status=current,
                        to_status=current,
                        reason=f"renamed from {row.name} to {new_name}",
                        at=utcnow(),
                    )
                )
                row.name = str(new_name)
            for key in ("tag", "priority", "idle_timeout", "resources"):
                if key in changes:
                    setattr(row, key, changes[key])
            db.flush()
            return SessionData.of(row, _depends_on(db, row.id))

        try:
            return await self.db.run(work)
        except IntegrityError as exc:
            # A create that took the name after the check, in a concurrent transaction.
            if _violates_active_name_index(exc):
                raise Conflict(
                    f"a session named {changes.get('name')!r} already exists", field="name"
                ) from None
            raise

    async def create_template(
        self,
        *,
        name: str,
        owner_access_key: str,
        shared: bool,
        body: dict[str, Any],
        parameters: dict[str, Any],
    ) -> TemplateData:
        def work(db: Session) -> TemplateData:
            now = utcnow()
            row = TemplateRow(
                id=str(uuid.uuid4()),
                name=name,
                owner_access_key=owner_access_key,
                is_shared=shared,
                body=body,
                parameters=parameters,
                created_at=now,
                updated_at=now,
            )
            db.add(row)
            db.flush()
            return TemplateData.of(row)

        return await self.db.run(work)

    async def get_template(self, template_id: str) -> TemplateData:
        def work(db: Session) -> TemplateData:
            row = db.get(TemplateRow, template_id)
            if row is None:
                raise NotFound(f"no template {template_id!r}")
            return TemplateData.of(row)

        return await self.db.run(work)

    async def list_templates(self, visible_to: str | None) -> list[TemplateData]:
        """Templates, oldest first: all (``visible_to=None``), or one key's own and the shared."""

        def work(db: Session) -> list[TemplateData]:
            query = select(TemplateRow)
            if visible_to is not None:
                query = query.where(
                    or_(TemplateRow.owner_access_key == visible_to, TemplateRow.is_shared)
                )
            rows = db.scalars(query.order_by(TemplateRow.created_at, TemplateRow.id)).all()
            return [TemplateData.of(r) for r in rows]

        return await self.db.run(work)

    async def update_template(self, template_id: str, changes: Mapping[str, Any]) -> TemplateData:
        """Replace a template's name, shared flag, body or parameters (whole values)."""
        columns = {
            "name": "name",
            "shared": "is_shared",
            "body": "body",
            "parameters": "parameters",
        }

        def work(db: Session) -> TemplateData:
            row = db.get(TemplateRow, template_id, with_for_update=True)
            if row is None:
                raise NotFound(f"no template {template_id!r}")
            for key, value in changes.items():
                setattr(row, columns[key], value)
            row.updated_at = utcnow()
            db.flush()
            return TemplateData.of(row)

        return await self.db.run(work)

    async def delete_template(self, template_id: str) -> None:
        def work(db: Session) -> None:
            row = db.get(TemplateRow, template_id)
            if row is None:
                raise NotFound(f"no template {template_id!r}")
            db.delete(row)

        await self.db.run(work)

    # --- scheduling: policies, the pending queue, depends_on (scheduler task) -----------------

    async def create_session_within_policy(self, new: NewSession) -> SessionData:
        """Store a PENDING session unless its owner's ``max_pending_sessions`` is reached (429).

        The owner's keypair row is locked while PENDING sessions are counted and the new one is
        inserted, so racing creates of one owner can't both take the last place (PostgreSQL;
        SQLite has a single writer anyway).
        """

        def admit(db: Session) -> None:
            keypair = db.get(KeypairRow, new.owner_access_key, with_for_update=True)
            policy = db.get(ResourcePolicyRow, keypair.resource_policy) if keypair else None
            limit = policy.max_pending_sessions if policy is not None else None
            if limit is None:
                return
            pending = db.scalar(
                select(func.count())
                .select_from(SessionRow)
                .where(
                    SessionRow.owner_access_key == new.owner_access_key,
                    SessionRow.status == str(SessionStatus.PENDING),
                )
            )
            if (pending or 0) >= limit:
                raise QuotaExceeded(
                    f"max_pending_sessions {limit} reached: {pending} sessions are PENDING",
                    limit="max_pending_sessions",
                    max_pending_sessions=limit,
                )

        return await self.create_session(new, admit=admit)

    async def admit(
        self,
        session_id: str,
        agent_ids: Sequence[str],
        decide: Callable[[AdmissionState], AdmissionDecision],
    ) -> tuple[SessionData | None, AdmissionDecision | None]:
        """Decide a PENDING session's start and, if it fits, move it to SCHEDULED: one transaction.

        Locks, always in this order so two managers can't deadlock: the session row, its owner's
        keypair row (admissions of one owner queue there), then the candidate agents' rows in
        id order (admissions onto one agent queue there). Usage read after the locks includes
        every admission committed before, so neither two passes nor two managers overshoot a
        limit. Answers (the SCHEDULED session, the decision); (None, decision) when it waits,
        with ``status_info`` set to the reason; (None, None) when it is no longer PENDING.
        """
        occupying = [str(s) for s in OCCUPYING_STATUSES]

        def work(db: Session) -> tuple[SessionData | None, AdmissionDecision | None]:
            row = db.get(SessionRow, session_id, with_for_update=True)
            if row is None or row.status != SessionStatus.PENDING:
                return None, None
            owner = row.owner_access_key
            keypair = db.get(KeypairRow, owner, with_for_update=True)
            policy = db.get(ResourcePolicyRow, keypair.resource_policy) if keypair else None
            for agent_id in sorted(set(agent_ids)):
                db.get(AgentRow, agent_id, with_for_update=True)
            owner_rows = db.execute(
                select(SessionRow.resources, SessionRow.cluster_size).where(
                    SessionRow.owner_access_key == owner, SessionRow.status.in_(occupying)
                )
            ).all()
            agent_usage: dict[str, ResourceSlot] = {}
            for agent_id in agent_ids:
                placed = db.scalars(
                    select(SessionRow.resources)
                    .join(KernelRow, KernelRow.session_id == SessionRow.id)
                    .where(KernelRow.agent_id == agent_id, SessionRow.status.in_(occupying))
                ).all()
                agent_usage[agent_id] = ResourceSlot.sum(_slot(r) for r in placed)
            state = AdmissionState(
                session=SessionData.of(row, _depends_on(db, row.id)),
                max_concurrent_sessions=policy.max_concurrent_sessions if policy else None,
                total_resource_slots=_slot(policy.total_resource_slots if policy else None),
                owner_sessions=len(owner_rows),
                owner_usage=ResourceSlot.sum(_slot(r, n) for r, n in owner_rows),
                agent_usage=agent_usage,
            )
            decision = decide(state)
            if decision.agent_id is None:
                if row.status_info != decision.reason:
                    row.status_info = decision.reason
                return None, decision
            chosen = {decision.agent_id, *(decision.kernel_agents or {}).values()}
            if not chosen <= set(agent_usage):
                raise ValueError(f"admission chose agents {chosen}, not all candidates")
            check_transition(SessionStatus.PENDING, SessionStatus.SCHEDULED)
            now = utcnow()
            row.status = SessionStatus.SCHEDULED
            row.status_info = decision.reason
            row.status_changed_at = now
            db.add(
                StatusHistoryRow(
                    session_id=session_id,
                    from_status=SessionStatus.PENDING,
                    to_status=SessionStatus.SCHEDULED,
                    reason=decision.reason,
                    at=now,
                )
            )
            for kernel in row.kernels:
                kernel.status = SessionStatus.SCHEDULED
                kernel.status_info = decision.reason
                kernel.agent_id = (decision.kernel_agents or {}).get(kernel.name, decision.agent_id)
            db.flush()
            return SessionData.of(row, _depends_on(db, row.id)), decision

        return await self.db.run(work)

    async def set_pending_info(self, session_id: str, info: str) -> bool:
        """Say what a PENDING session waits for (``status_info``), without a transition.

        Answers whether it changed; a session that left PENDING meanwhile is left alone.
        """

        def work(db: Session) -> bool:
            row = db.get(SessionRow, session_id, with_for_update=True)
            if row is None or row.status != SessionStatus.PENDING or row.status_info == info:
                return False
            row.status_info = info
            return True

        return await self.db.run(work)

    async def dependency_states(self, session_ids: Iterable[str]) -> dict[str, tuple[str, str]]:
        """``(status, result)`` of each of these sessions that exists."""
        ids = sorted(set(session_ids))

        def work(db: Session) -> dict[str, tuple[str, str]]:
            if not ids:
                return {}
            rows = db.execute(
                select(SessionRow.id, SessionRow.status, SessionRow.result).where(
                    SessionRow.id.in_(ids)
                )
            ).all()
            return {r.id: (r.status, r.result) for r in rows}

        return await self.db.run(work)

    async def dependents_of(self, session_id: str) -> list[str]:
        """Ids of the sessions that depend on this one, transitively, that have not ended.

        Nearest first; each once (a session reached by two paths is listed at its nearest).
        """
        final = [str(s) for s in TERMINAL_STATUSES]

        def work(db: Session) -> list[str]:
            found: list[str] = []
            seen = {session_id}
            frontier = [session_id]
            while frontier:
                rows = db.scalars(
                    select(SessionDependencyRow.session_id)
                    .join(SessionRow, SessionRow.id == SessionDependencyRow.session_id)
                    .where(
                        SessionDependencyRow.depends_on.in_(frontier),
                        SessionRow.status.not_in(final),
                    )
                    .order_by(SessionRow.created_at, SessionRow.id)
                ).all()
                frontier = [r for r in dict.fromkeys(rows) if r not in seen]
                seen.update(frontier)
                found.extend(frontier)
            return found

        return await self.db.run(work)

    # --- dependency graph (observability) ----------------------------------------------------

    async def dependency_graph(
        self, session_id: str
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
        """The sessions this one depends on and those that depend on it, both transitively.

        Nodes are ``{id, name, status, result, owner_access_key}``; edges are
        ``(dependent, dependency)`` pairs. Every status counts (a finished dependency still is one).
        """

        def work(db: Session) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
            edges: set[tuple[str, str]] = set()
            seen = {session_id}
            for forward in (True, False):
                frontier = [session_id]
                while frontier:
                    column = (
                        SessionDependencyRow.session_id
                        if forward
                        else SessionDependencyRow.depends_on
                    )
                    rows = db.execute(
                        select(
                            SessionDependencyRow.session_id, SessionDependencyRow.depends_on
                        ).where(column.in_(frontier))
                    ).all()
                    edges.update((r.session_id, r.depends_on) for r in rows)
                    reached = [r.depends_on if forward else r.session_id for r in rows]
                    frontier = [r for r in dict.fromkeys(reached) if r not in seen]
                    seen.update(frontier)
            nodes = [
                {
                    "id": r.id,
                    "name": r.name,
                    "status": r.status,
                    "result": r.result,
                    "owner_access_key": r.owner_access_key,
                }
                for r in db.execute(
                    select(
                        SessionRow.id,
                        SessionRow.name,
                        SessionRow.status,
                        SessionRow.result,
                        SessionRow.owner_access_key,
                    )
                    .where(SessionRow.id.in_(sorted(seen)))
                    .order_by(SessionRow.created_at, SessionRow.id)
                ).all()
            ]
            return nodes, sorted(edges)

        return await self.db.run(work)
