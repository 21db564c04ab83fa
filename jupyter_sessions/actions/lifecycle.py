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
from ..mounts import Mount, parse_mounts
from ..repository.repository import HistoryEntry, SessionData
from ..services import parse_preopen_ports
from ..types import (
    ClusterMode,
    ResourceSlot,
    SessionStatus,
    SessionType,
    is_session_id,
    parse_enum,
    validate_session_name,
)
from .agents import GROUP_NAME
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
NOT_BUILT_YET: frozenset[str] = frozenset()
MAX_WAIT_SECONDS_CAP = 600.0
#: Most containers one session may have (a policy's max_containers_per_session may lower it).
MAX_CLUSTER_SIZE = 32
#: Largest bootstrap_script, in UTF-8 bytes (it travels as one argv item to ``sh -c``).
MAX_BOOTSTRAP_BYTES = 64 * 1024


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


def _bootstrap_script(raw: Any) -> str | None:
    """The user's own shell script: run as one ``sh -c`` argument, so only size and NUL matter."""
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise InvalidRequest("bootstrap_script must be a string", field="bootstrap_script")
    try:
        size = len(raw.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidRequest(
            "bootstrap_script is not valid Unicode text", field="bootstrap_script"
        ) from None
    if size > MAX_BOOTSTRAP_BYTES:
        raise InvalidRequest(
            f"bootstrap_script is larger than {MAX_BOOTSTRAP_BYTES // 1024} KiB",
            field="bootstrap_script",
            limit=MAX_BOOTSTRAP_BYTES,
        )
    if "\0" in raw:
        raise InvalidRequest("bootstrap_script must not contain NUL", field="bootstrap_script")
    return raw


#: Most sessions one session may depend on.
MAX_DEPENDENCIES = 64


def _depends_on(raw: Any) -> tuple[str, ...]:
    """Session ids or names (resolved to the caller's own sessions by the service), each once."""
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise InvalidRequest(
            "depends_on must be a list of session ids or names", field="depends_on"
        )
    if len(raw) > MAX_DEPENDENCIES:
        raise InvalidRequest(
            f"depends_on lists more than {MAX_DEPENDENCIES} sessions", field="depends_on"
        )
    refs: dict[str, None] = {}
    for ref in raw:
        message = f"depends_on: {ref!r} is not a session id or name"
        if not isinstance(ref, str):
            raise InvalidRequest(message, field="depends_on")
        if not is_session_id(ref):
            try:
                validate_session_name(ref)
            except InvalidRequest:
                raise InvalidRequest(message, field="depends_on") from None
        refs[ref] = None
    return tuple(refs)


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
    #: Batch sessions: the user's own shell command, run once the session is RUNNING.
    startup_command: str | None = None
    batch_timeout: float | None = None
    #: Run in the work directory (``sh -c``) before the session becomes RUNNING.
    bootstrap_script: str | None = None
    #: Ids or names of the caller's sessions that must end with SUCCESS before this one starts.
    depends_on: tuple[str, ...] = ()
    #: Folders of the server's content root bound into the container (mounts.py).
    mounts: tuple[Mount, ...] = ()
    #: An admin creates the session for this keypair (its policy applies, it owns the session).
    owner_access_key: str | None = None
    #: Ports the proxy may reach from the start (services ``port-<n>``; services.py).
    preopen_ports: tuple[int, ...] = ()

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
        startup_command = _optional_str(body, "startup_command", 64 * 1024)
        if session_type is SessionType.BATCH and not startup_command:
            raise InvalidRequest("a batch session needs a startup_command", field="type")
        if session_type is not SessionType.BATCH and startup_command:
            raise InvalidRequest(
                "startup_command is for batch sessions (type batch)", field="startup_command"
            )
        batch_timeout = body.get("batch_timeout")
        if batch_timeout is not None and (
            isinstance(batch_timeout, bool)
            or not isinstance(batch_timeout, int | float)
            or not 0 < batch_timeout <= 30 * 24 * 3600
        ):
            raise InvalidRequest(
                "batch_timeout must be a positive number of seconds", field="batch_timeout"
            )
        cluster_mode = parse_enum(
            ClusterMode, body.get("cluster_mode", "single-node"), "cluster_mode"
        )
        cluster_size = body.get("cluster_size", 1)
        if (
            not isinstance(cluster_size, int)
            or isinstance(cluster_size, bool)
            or not 1 <= cluster_size <= MAX_CLUSTER_SIZE
        ):
            raise InvalidRequest(
                f"cluster_size must be an integer from 1 to {MAX_CLUSTER_SIZE}",
                field="cluster_size",
            )
        if cluster_size == 1 and cluster_mode is not ClusterMode.SINGLE_NODE:
            raise InvalidRequest(
                "cluster_mode multi-node needs cluster_size of at least 2", field="cluster_mode"
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
        if not isinstance(scaling_group, str) or not GROUP_NAME.match(scaling_group):
            raise InvalidRequest(
                "scaling_group must be a name of 1-64 letters, digits, '.', '_' or '-'",
                field="scaling_group",
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
            startup_command=startup_command,
            batch_timeout=float(batch_timeout) if batch_timeout is not None else None,
            bootstrap_script=_bootstrap_script(body.get("bootstrap_script")),
            depends_on=_depends_on(body.get("depends_on")),
            mounts=parse_mounts(body.get("mounts")),
            owner_access_key=_optional_str(body, "owner_access_key", 64),
            preopen_ports=parse_preopen_ports(body.get("preopen_ports")),
        )


@dataclass(frozen=True, kw_only=True)
class CreateFromParamsAction(Action):
    operation: ClassVar[str] = "create_from_params"
    params: CreateSessionParams
    #: Set by restart_session: the final session this one runs again.
    restarted_from: str | None = None

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


# --- modify, rename, restart, check_and_transit_status (lifecycle-actions task) ------------------

#: What ``PATCH sessions/{ref}`` may change (``resources`` only while PENDING).
MODIFY_FIELDS = frozenset({"name", "tag", "priority", "idle_timeout", "resources"})
#: Backend.AI's priority range; the scheduler does not order by priority yet.
MIN_PRIORITY, MAX_PRIORITY = 0, 100
MAX_IDLE_TIMEOUT = 366 * 24 * 3600
#: Most sessions one ``transit-status`` call re-checks.
MAX_TRANSIT_IDS = 100


def _check_fields(body: Any, allowed: frozenset[str], what: str) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidRequest("the request body must be a JSON object")
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(
            f"unknown fields: {', '.join(unknown)} ({what} takes {', '.join(sorted(allowed))})",
            fields=unknown,
        )
    return body


def _int_in(value: Any, field: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidRequest(f"{field} must be an integer from {low} to {high}", field=field)
    return value


@dataclass(frozen=True)
class SessionChanges:
    """A well-formed ``PATCH sessions/{ref}`` body: exactly the fields given, checked.

    ``tag`` and ``idle_timeout`` may be null (cleared); ``resources`` is partial and merged over
    the session's current resources by the service.
    """

    values: Mapping[str, Any]

    @classmethod
    def from_json(cls, body: Any) -> SessionChanges:
        body = _check_fields(body, MODIFY_FIELDS, "PATCH sessions/{ref}")
        if not body:
            raise InvalidRequest(
                f"nothing to change: give one of {', '.join(sorted(MODIFY_FIELDS))}"
            )
        values: dict[str, Any] = {}
        if "name" in body:
            values["name"] = validate_session_name(body["name"])
        if "tag" in body:
            values["tag"] = _optional_str(body, "tag", 256)
        if "priority" in body:
            values["priority"] = _int_in(body["priority"], "priority", MIN_PRIORITY, MAX_PRIORITY)
        if "idle_timeout" in body:
            raw = body["idle_timeout"]
            values["idle_timeout"] = (
                None if raw is None else _int_in(raw, "idle_timeout", 1, MAX_IDLE_TIMEOUT)
            )
        if "resources" in body:
            if not isinstance(body["resources"], Mapping) or not body["resources"]:
                raise InvalidRequest(
                    "resources must be a non-empty object like {'cpu': 2, 'mem': '4g'}",
                    field="resources",
                )
            values["resources"] = ResourceSlot.parse(body["resources"])
        return cls(values)


@dataclass(frozen=True, kw_only=True)
class ModifySessionAction(SessionRefAction):
    operation: ClassVar[str] = "modify_session"
    changes: SessionChanges


def parse_rename(body: Any) -> str:
    """The new name of a ``POST sessions/{ref}/rename`` body, validated like a create's."""
    body = _check_fields(body, frozenset({"name"}), "rename")
    if "name" not in body:
        raise InvalidRequest("name is required", field="name")
    return validate_session_name(body["name"])


@dataclass(frozen=True, kw_only=True)
class RenameSessionAction(SessionRefAction):
    operation: ClassVar[str] = "rename_session"
    name: str


@dataclass(frozen=True, kw_only=True)
class RestartSessionAction(SessionRefAction):
    operation: ClassVar[str] = "restart_session"


@dataclass(frozen=True)
class RestartSessionResult:
    session: SessionData
    #: True when a final session was run again as a new one (201); False: restarting (202).
    created: bool


def parse_transit_ids(body: Any) -> tuple[str, ...]:
    """The session refs of a ``POST sessions/transit-status`` body."""
    body = _check_fields(body, frozenset({"session_ids"}), "transit-status")
    refs = body.get("session_ids")
    if (
        not isinstance(refs, list)
        or not all(isinstance(r, str) and r for r in refs)
        or len(refs) > MAX_TRANSIT_IDS
    ):
        raise InvalidRequest(
            f"session_ids must be a list of at most {MAX_TRANSIT_IDS} session ids or names",
            field="session_ids",
        )
    return tuple(dict.fromkeys(refs))


@dataclass(frozen=True, kw_only=True)
class CheckAndTransitStatusAction(Action):
    operation: ClassVar[str] = "check_and_transit_status"
    refs: tuple[str, ...]
    owner_access_key: str | None = None

    def target(self) -> str | None:
        return ",".join(self.refs)[:1000] or None


@dataclass(frozen=True, kw_only=True)
class GetDependencyGraphAction(SessionRefAction):
    operation: ClassVar[str] = "get_dependency_graph"


@dataclass(frozen=True)
class DependencyGraph:
    session_id: str
    nodes: list[dict[str, Any]]
    edges: list[tuple[str, str]]
