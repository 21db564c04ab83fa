"""The tables (SQLAlchemy 2 ORM). Alembic migrations in ``migrations/`` create exactly these.

Statuses are stored as their upper-case names; times are timezone-aware UTC. Status history is
append-only: one row per transition, never overwritten (Backend.AI's per-status map loses repeats).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A DateTime that always comes back aware in UTC (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        # PostgreSQL answers in the connection's TimeZone setting, which need not be UTC.
        return value.astimezone(UTC)


#: Session names are unique per owner among sessions that are not final; the repository recognises
#: this index by name when it refuses a row (a taken name is a Conflict, other violations are bugs).
ACTIVE_NAME_INDEX = "ix_sessions_owner_name_active"


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class MetaRow(Base):
    """Key/value facts about this installation (its id, first start)."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class ResourcePolicyRow(Base):
    __tablename__ = "resource_policies"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    max_concurrent_sessions: Mapped[int | None] = mapped_column(Integer)
    total_resource_slots: Mapped[dict[str, Any]] = mapped_column(default=dict)
    max_pending_sessions: Mapped[int | None] = mapped_column(Integer)
    max_session_resources: Mapped[dict[str, Any]] = mapped_column(default=dict)
    idle_timeout: Mapped[int | None] = mapped_column(Integer)
    max_session_lifetime: Mapped[int | None] = mapped_column(Integer)
    max_containers_per_session: Mapped[int | None] = mapped_column(Integer)
    storage_quota: Mapped[int | None] = mapped_column(Integer)
    max_images: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class KeypairRow(Base):
    __tablename__ = "keypairs"
    access_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    #: Stored (Backend.AI's HMAC signatures need the secret itself); never returned after creation.
    secret_key: Mapped[str] = mapped_column(String(128))
    user: Mapped[str] = mapped_column(String(128), index=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    is_owner: Mapped[bool] = mapped_column(Boolean, default=False)
    resource_policy: Mapped[str] = mapped_column(ForeignKey("resource_policies.name"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column()


class AgentRow(Base):
    """An agent as last seen: where containers run, and how much fits there."""

    __tablename__ = "agents"
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(Text, default="")
    scaling_group: Mapped[str] = mapped_column(String(64), default="default")
    status: Mapped[str] = mapped_column(String(16), default="ALIVE")
    status_info: Mapped[str] = mapped_column(Text, default="")
    capacity: Mapped[dict[str, Any]] = mapped_column(default=dict)
    first_seen: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    #: Registered through the admin API (kept across restarts), not from configuration.
    registered: Mapped[bool] = mapped_column(Boolean, default=False)
    #: How to reach it when registered: url, kernel_host, host_firewall, reserve (registry.py).
    spec: Mapped[dict[str, Any]] = mapped_column(default=dict)


class ScalingGroupRow(Base):
    """A set of agents with its scheduling policy (scheduler.py): ordering and placement."""

    __tablename__ = "scaling_groups"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    description: Mapped[str] = mapped_column(Text, default="")
    ordering: Mapped[str] = mapped_column(String(16), default="fifo")
    placement: Mapped[str] = mapped_column(String(16), default="concentrated")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class SessionRow(Base):
    __tablename__ = "sessions"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    owner_access_key: Mapped[str] = mapped_column(ForeignKey("keypairs.access_key"), index=True)
    status: Mapped[str] = mapped_column(String(20), index=True)
    status_info: Mapped[str] = mapped_column(Text, default="")
    status_data: Mapped[dict[str, Any]] = mapped_column(default=dict)
    status_changed_at: Mapped[datetime] = mapped_column(default=utcnow)
    result: Mapped[str] = mapped_column(String(12), default="UNDEFINED")
    exit_code: Mapped[int | None] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(16), default="interactive")
    image: Mapped[str] = mapped_column(Text)
    resources: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cluster_mode: Mapped[str] = mapped_column(String(16), default="single-node")
    cluster_size: Mapped[int] = mapped_column(Integer, default=1)
    scaling_group: Mapped[str] = mapped_column(String(64), default="default")
    tag: Mapped[str | None] = mapped_column(Text)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    #: The validated creation request, kept so a finished session can be run again by restart.
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    restarted_from: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    terminated_at: Mapped[datetime | None] = mapped_column()
    #: The session's own idle timeout in seconds (capped by its policy's); NULL: the policy's.
    idle_timeout: Mapped[int | None] = mapped_column(Integer)

    kernels: Mapped[list[KernelRow]] = relationship(
        back_populates="session", order_by="KernelRow.cluster_idx", lazy="selectin"
    )

    __table_args__ = (
        # Names are unique per owner among sessions that are not final (ERROR still holds its name).
        Index(
            ACTIVE_NAME_INDEX,
            "owner_access_key",
            "name",
            unique=True,
            sqlite_where=text("status NOT IN ('TERMINATED', 'CANCELLED')"),
            postgresql_where=text("status NOT IN ('TERMINATED', 'CANCELLED')"),
        ),
    )


class SessionDependencyRow(Base):
    __tablename__ = "session_dependencies"
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    depends_on: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True, index=True
    )


class KernelRow(Base):
    """One container of a session: ``main1`` or ``subN``."""

    __tablename__ = "kernels"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(16))
    cluster_role: Mapped[str] = mapped_column(String(8), default="main")
    cluster_idx: Mapped[int] = mapped_column(Integer, default=1)
    status: Mapped[str] = mapped_column(String(20))
    status_info: Mapped[str] = mapped_column(Text, default="")
    agent_id: Mapped[str | None] = mapped_column(String(64))
    container_id: Mapped[str | None] = mapped_column(String(80))
    #: Host-side ports and the session key, to re-attach after a server restart. Never returned.
    connection: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    terminated_at: Mapped[datetime | None] = mapped_column()

    session: Mapped[SessionRow] = relationship(back_populates="kernels")


class StatusHistoryRow(Base):
    """Append-only log of every status transition of a session or one of its kernels."""

    __tablename__ = "status_history"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), index=True
    )
    kernel: Mapped[str | None] = mapped_column(String(16))
    from_status: Mapped[str | None] = mapped_column(String(20))
    to_status: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str] = mapped_column(Text, default="")
    at: Mapped[datetime] = mapped_column(default=utcnow)


class TemplateRow(Base):
    __tablename__ = "templates"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    owner_access_key: Mapped[str] = mapped_column(ForeignKey("keypairs.access_key"), index=True)
    #: Admins' templates are visible to everyone, users' to themselves.
    is_shared: Mapped[bool] = mapped_column(Boolean, default=False)
    body: Mapped[dict[str, Any]] = mapped_column(default=dict)
    parameters: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class AuditLogRow(Base):
    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    access_key: Mapped[str | None] = mapped_column(String(64), index=True)
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str | None] = mapped_column(Text)
    outcome: Mapped[str] = mapped_column(String(16))
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[int] = mapped_column(Integer)


class BackgroundTaskRow(Base):
    __tablename__ = "background_tasks"
    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    owner_access_key: Mapped[str] = mapped_column(ForeignKey("keypairs.access_key"), index=True)
    session_id: Mapped[str | None] = mapped_column(String(36), index=True)
    status: Mapped[str] = mapped_column(String(12), default="pending")
    progress_current: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    progress_message: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class KernelLogRow(Base):
    """The tail of a kernel's own output, kept at teardown so logs remain after destroy."""

    __tablename__ = "kernel_logs"
    session_id: Mapped[str] = mapped_column(
        ForeignKey("sessions.id", ondelete="CASCADE"), primary_key=True
    )
    kernel: Mapped[str] = mapped_column(String(16), primary_key=True)
    text: Mapped[str] = mapped_column(Text, default="")
    #: Bytes of older output left out (only the last ``kept_log_bytes`` are kept).
    dropped_bytes: Mapped[int] = mapped_column(Integer, default=0)
    saved_at: Mapped[datetime] = mapped_column(default=utcnow)


class UserImageRow(Base):
    """An image converted from a session: its owner's alone (allowed to them, counted against
    their policy's ``max_images``); a name is never given to a second owner."""

    __tablename__ = "user_images"
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    owner_access_key: Mapped[str] = mapped_column(ForeignKey("keypairs.access_key"), index=True)
    session_id: Mapped[str | None] = mapped_column(String(36))
    image_id: Mapped[str] = mapped_column(String(80), default="")
    agent_id: Mapped[str | None] = mapped_column(String(64))
    pushed_to: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
