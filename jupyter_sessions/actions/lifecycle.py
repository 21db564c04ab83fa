"""Life-cycle actions: create, list, inspect, destroy sessions, and read their status history.

``CreateSessionParams.from_json`` checks the shape of a ``POST sessions`` body (types, unknown
fields, parameters whose feature is not built yet). Checks that need configuration or state (image
allowed, limits, capacity, name taken) belong to the service.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import InvalidRequest
from ..repository.repository import HistoryEntry, SessionData
from ..types import (
    ClusterMode,
    ResourceSlot,
    SessionStatus,
    SessionType,
    parse_enum,
    validate_session_name,
)
from .base import Action, SessionRefAction

#: Every field the REST contract names for ``POST sessions``.
CREATE_FIELDS = frozenset(
    {
        "name",
        "image",
        "resources",
        "type",
        "cluster_mode",
        "cluster_size",
        "bootstrap_script",
        "startup_command",
        "environ",
        "tag",
        "depends_on",
        "enqueue_only",
        "max_wait_seconds",
        "reuse_if_exists",
        "batch_timeout",
        "preopen_ports",
        "scaling_group",
        "mounts",
        "owner_access_key",
    }
)
#: Fields of the contract whose feature has not landed yet: refused by name, never ignored.
NOT_BUILT_YET = frozenset(
    {
        "bootstrap_script",
        "startup_command",
        "depends_on",
        "batch_timeout",
        "preopen_ports",
        "mounts",
        "owner_access_key",
    }
)
MAX_WAIT_SECONDS_CAP = 600.0


def _optional_str(body: Mapping[str, Any], key: str, max_len: int = 4096) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > max_len:
        raise InvalidRequest(f"{key} must be a string of at most {max_len} characters", field=key)
    return value


def _bool(body: Mapping[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    if not isinstance(value, bool):
        raise InvalidRequest(f"{key} must be true or false", field=key)
    return value


def _environ(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidRequest("environ must be an object of strings", field="environ")
    environ: dict[str, str] = {}
    for key, value in raw.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise InvalidRequest(f"environ: {key!r} is not a variable name", field="environ")
        if not isinstance(value, str) or "\0" in value:
            raise InvalidRequest(f"environ.{key} must be a string", field=f"environ.{key}")
        environ[key] = value
    return environ


@dataclass(frozen=True)
class CreateSessionParams:
    """A well-formed ``POST sessions`` body."""

    name: str | None
    image: str | None
    resources: ResourceSlot
    type: SessionType = SessionType.INTERACTIVE
    cluster_mode: ClusterMode = ClusterMode.SINGLE_NODE
    cluster_size: int = 1
    environ: dict[str, str] = field(default_factory=dict)
    tag: str | None = None
    scaling_group: str = "default"
    enqueue_only: bool = False
    max_wait_seconds: float = 30.0
    reuse_if_exists: bool = False

    @classmethod
    def from_json(cls, body: Any) -> CreateSessionParams:
        if not isinstance(body, Mapping):
            raise InvalidRequest("the request body must be a JSON object")
        unknown = sorted(set(body) - CREATE_FIELDS)
        if unknown:
            raise InvalidRequest(f"unknown fields: {', '.join(unknown)}", fields=unknown)
        pending = sorted(k for k in NOT_BUILT_YET if body.get(k) not in (None, [], {}, ""))
        if pending:
            raise InvalidRequest(f"not supported yet: {', '.join(pending)}", fields=pending)
        name = body.get("name")
        if name is not None:
            validate_session_name(name)
        image = _optional_str(body, "image", 512)
        session_type = parse_enum(SessionType, body.get("type", "interactive"), "type")
        if session_type is SessionType.BATCH:
            raise InvalidRequest(
                "type batch is not supported yet (it needs startup_command)", field="type"
            )
        cluster_mode = parse_enum(
            ClusterMode, body.get("cluster_mode", "single-node"), "cluster_mode"
        )
        cluster_size = body.get("cluster_size", 1)
        if not isinstance(cluster_size, int) or isinstance(cluster_size, bool) or cluster_size < 1:
            raise InvalidRequest("cluster_size must be a positive integer", field="cluster_size")
        if cluster_size != 1 or cluster_mode is not ClusterMode.SINGLE_NODE:
            raise InvalidRequest(
                "clusters are not supported yet: cluster_size must be 1", field="cluster_size"
            )
        max_wait = body.get("max_wait_seconds", 30)
        if (
            not isinstance(max_wait, int | float)
            or isinstance(max_wait, bool)
            or not 0 <= max_wait <= MAX_WAIT_SECONDS_CAP
        ):
            raise InvalidRequest(
                f"max_wait_seconds must be a number from 0 to {MAX_WAIT_SECONDS_CAP:g}",
                field="max_wait_seconds",
            )
        scaling_group = body.get("scaling_group") or "default"
        if scaling_group != "default":
            raise InvalidRequest(
                "only the scaling group 'default' exists yet", field="scaling_group"
            )
        return cls(
            name=name,
            image=image,
            resources=ResourceSlot.parse(body.get("resources")),
            type=session_type,
            cluster_mode=cluster_mode,
            cluster_size=cluster_size,
            environ=_environ(body.get("environ")),
            tag=_optional_str(body, "tag", 256),
            scaling_group=scaling_group,
            enqueue_only=_bool(body, "enqueue_only", False),
            max_wait_seconds=float(max_wait),
            reuse_if_exists=_bool(body, "reuse_if_exists", False),
        )


@dataclass(frozen=True, kw_only=True)
class CreateFromParamsAction(Action):
    operation: ClassVar[str] = "create_from_params"
    params: CreateSessionParams

    def target(self) -> str | None:
        return self.params.name


@dataclass(frozen=True)
class CreateSessionResult:
    session: SessionData
    #: False when ``reuse_if_exists`` found an existing session (answered 200, not 201).
    created: bool


@dataclass(frozen=True, kw_only=True)
class ListSessionsAction(Action):
    operation: ClassVar[str] = "match_sessions"
    match: str | None = None
    statuses: tuple[SessionStatus, ...] = ()
    owner_access_key: str | None = None
    limit: int = 100
    offset: int = 0


@dataclass(frozen=True)
class ListSessionsResult:
    sessions: list[SessionData]
    total: int


@dataclass(frozen=True, kw_only=True)
class GetSessionInfoAction(SessionRefAction):
    operation: ClassVar[str] = "get_session_info"


@dataclass(frozen=True, kw_only=True)
class GetStatusHistoryAction(SessionRefAction):
    operation: ClassVar[str] = "get_status_history"


@dataclass(frozen=True)
class StatusHistoryResult:
    session: SessionData
    history: list[HistoryEntry]


@dataclass(frozen=True, kw_only=True)
class DestroySessionAction(SessionRefAction):
    operation: ClassVar[str] = "destroy_session"
    forced: bool = False
    recursive: bool = False


@dataclass(frozen=True)
class DestroySessionResult:
    session: SessionData
    #: True when it ended at once (CANCELLED); False when teardown goes on (TERMINATING).
    finished: bool
