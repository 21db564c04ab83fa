"""Value types shared by every layer: statuses and their one transition map, resources, names.

Nothing here does I/O; these are the words the REST contract, the store and the agents share.
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from .errors import InvalidRequest, InvalidStatus


class SessionStatus(enum.StrEnum):
    PENDING = "PENDING"
    SCHEDULED = "SCHEDULED"
    PREPARING = "PREPARING"
    PULLING = "PULLING"
    PREPARED = "PREPARED"
    CREATING = "CREATING"
    RUNNING = "RUNNING"
    RESTARTING = "RESTARTING"
    RUNNING_DEGRADED = "RUNNING_DEGRADED"
    TERMINATING = "TERMINATING"
    TERMINATED = "TERMINATED"
    ERROR = "ERROR"
    CANCELLED = "CANCELLED"


S = SessionStatus

#: The one transition map. Backend.AI's, with its gaps closed: PREPARED→CREATING exists, ERROR may
#: be restarted or destroyed, and every pre-running status may be cancelled or fail.
TRANSITIONS: Mapping[SessionStatus, frozenset[SessionStatus]] = {
    S.PENDING: frozenset({S.SCHEDULED, S.ERROR, S.CANCELLED}),
    S.SCHEDULED: frozenset({S.PREPARING, S.PULLING, S.PREPARED, S.ERROR, S.CANCELLED}),
    S.PREPARING: frozenset({S.PULLING, S.PREPARED, S.TERMINATING, S.ERROR, S.CANCELLED}),
    S.PULLING: frozenset({S.PREPARED, S.TERMINATING, S.ERROR, S.CANCELLED}),
    S.PREPARED: frozenset({S.CREATING, S.TERMINATING, S.ERROR, S.CANCELLED}),
    S.CREATING: frozenset({S.RUNNING, S.TERMINATING, S.ERROR, S.CANCELLED}),
    S.RUNNING: frozenset({S.RESTARTING, S.RUNNING_DEGRADED, S.TERMINATING, S.TERMINATED, S.ERROR}),
    S.RESTARTING: frozenset({S.RUNNING, S.RUNNING_DEGRADED, S.TERMINATING, S.ERROR}),
    S.RUNNING_DEGRADED: frozenset({S.RUNNING, S.RESTARTING, S.TERMINATING, S.TERMINATED, S.ERROR}),
    S.TERMINATING: frozenset({S.TERMINATED, S.ERROR}),
    S.TERMINATED: frozenset(),
    S.ERROR: frozenset({S.RESTARTING, S.TERMINATING, S.TERMINATED}),
    S.CANCELLED: frozenset(),
}

#: Final: nothing follows. ERROR is deliberately not here (it can be restarted or destroyed).
TERMINAL_STATUSES = frozenset({S.TERMINATED, S.CANCELLED})
#: Statuses that hold (or may soon hold) a container, counted against quotas.
OCCUPYING_STATUSES = frozenset(set(SessionStatus) - {S.PENDING, S.TERMINATED, S.CANCELLED})
#: Statuses in which a session's kernel answers requests.
ALIVE_STATUSES = frozenset({S.RUNNING, S.RUNNING_DEGRADED})


def can_transit(current: SessionStatus, target: SessionStatus) -> bool:
    return target in TRANSITIONS[current]


def check_transition(current: SessionStatus, target: SessionStatus) -> None:
    """Raise InvalidStatus (409, naming the current status) for an illegal transition."""
    if not can_transit(current, target):
        raise InvalidStatus(
            f"cannot move a {current} session to {target}", status=str(current), target=str(target)
        )


class SessionType(enum.StrEnum):
    INTERACTIVE = "interactive"
    BATCH = "batch"


class ClusterMode(enum.StrEnum):
    SINGLE_NODE = "single-node"
    MULTI_NODE = "multi-node"


class SessionResult(enum.StrEnum):
    UNDEFINED = "UNDEFINED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"


E = TypeVar("E", bound=enum.Enum)


def parse_enum(cls: type[E], value: Any, field: str) -> E:
    """An enum member from a client's string, or a 400 that lists the accepted values."""
    try:
        return cls(value)
    except ValueError:
        allowed = ", ".join(str(m.value) for m in cls)
        raise InvalidRequest(f"{field} must be one of: {allowed}", field=field) from None


# --- resources ------------------------------------------------------------------------------

_BINARY_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40, "p": 2**50}
_AMOUNT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)
#: Slots whose amounts are byte sizes and so accept binary unit suffixes.
BYTE_SLOTS = frozenset({"mem", "shmem", "disk"})
KNOWN_SLOTS = frozenset({"cpu", "mem", "cuda.device"})


def parse_amount(value: Any, field: str, *, bytes_unit: bool = False) -> Decimal:
    """Parse ``2``, ``"0.5"`` or (for byte slots) ``"4g"`` into a non-negative Decimal."""
    if isinstance(value, bool):
        raise InvalidRequest(f"{field} must be a number, not a boolean", field=field)
    if isinstance(value, int | float | Decimal):
        amount = Decimal(str(value))
    elif isinstance(value, str):
        match = _AMOUNT.match(value)
        if not match or (match.group(2) and not bytes_unit):
            unit_hint = " (units k, m, g, t: binary)" if bytes_unit else ""
            raise InvalidRequest(f"{field}: {value!r} is not an amount{unit_hint}", field=field)
        try:
            amount = Decimal(match.group(1)) * _BINARY_UNITS[match.group(2).lower()]
        except InvalidOperation:
            raise InvalidRequest(f"{field}: {value!r} is not an amount", field=field) from None
    else:
        raise InvalidRequest(f"{field} must be a number or a string", field=field)
    if not amount.is_finite() or amount < 0:
        raise InvalidRequest(f"{field} must be a finite, non-negative amount", field=field)
    if bytes_unit:
        amount = amount.to_integral_value()
    return amount


@dataclass(frozen=True)
class ResourceSlot:
    """Slot name → amount; compared slot by slot (a missing slot counts as zero)."""

    amounts: Mapping[str, Decimal]

    @classmethod
    def parse(cls, raw: Any, field: str = "resources") -> ResourceSlot:
        if raw is None:
            return cls({})
        if not isinstance(raw, Mapping):
            raise InvalidRequest(f"{field} must be an object like {{'cpu': 2, 'mem': '4g'}}")
        amounts: dict[str, Decimal] = {}
        for key, value in raw.items():
            if not isinstance(key, str) or key not in KNOWN_SLOTS:
                known = ", ".join(sorted(KNOWN_SLOTS))
                raise InvalidRequest(
                    f"{field}.{key}: unknown resource slot (known: {known})", field=f"{field}.{key}"
                )
            amounts[key] = parse_amount(value, f"{field}.{key}", bytes_unit=key in BYTE_SLOTS)
        return cls(amounts)

    def get(self, slot: str) -> Decimal:
        return self.amounts.get(slot, Decimal(0))

    def merged_over(self, defaults: ResourceSlot) -> ResourceSlot:
        """These amounts, with ``defaults`` filling the slots not given."""
        return ResourceSlot({**defaults.amounts, **self.amounts})

    def __add__(self, other: ResourceSlot) -> ResourceSlot:
        keys = set(self.amounts) | set(other.amounts)
        return ResourceSlot({k: self.get(k) + other.get(k) for k in keys})

    def __mul__(self, factor: int) -> ResourceSlot:
        return ResourceSlot({k: v * factor for k, v in self.amounts.items()})

    def fits_in(self, limit: ResourceSlot) -> bool:
        """True when every slot given in ``limit`` is at least this amount."""
        return all(self.get(slot) <= amount for slot, amount in limit.amounts.items())

    def exceeding(self, limit: ResourceSlot) -> list[str]:
        """Names of the slots (among those ``limit`` sets) where this asks for more."""
        return sorted(slot for slot, amount in limit.amounts.items() if self.get(slot) > amount)

    def to_json(self) -> dict[str, int | float]:
        """JSON numbers: integral amounts as ints (bytes stay exact), fractions as floats."""
        return {
            k: int(v) if v == v.to_integral_value() else float(v) for k, v in self.amounts.items()
        }

    @classmethod
    def sum(cls, slots: Iterable[ResourceSlot]) -> ResourceSlot:
        total = cls({})
        for slot in slots:
            total = total + slot
        return total


# --- names and ids --------------------------------------------------------------------------

#: Names that routes under ``sessions/`` use, so a session can't be named like them.
RESERVED_NAMES = frozenset({"transit-status", "from-template", "cluster"})
NAME_PATTERN = re.compile(r"^\w[\w.-]*\w$", re.ASCII)
_ID_LIKE = re.compile(
    r"^[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}$", re.IGNORECASE
)


def is_session_id(value: str) -> bool:
    return bool(_ID_LIKE.match(value))


def validate_session_name(name: Any) -> str:
    """4 to 64 characters of ``^\\w[\\w.-]*\\w$``, not shaped like an id."""
    if not isinstance(name, str):
        raise InvalidRequest("name must be a string", field="name")
    if not 4 <= len(name) <= 64 or not NAME_PATTERN.match(name):
        raise InvalidRequest(
            "name must be 4-64 characters of letters, digits, '_', '.', '-', "
            "starting and ending with a letter, digit or '_'",
            field="name",
        )
    if is_session_id(name):
        raise InvalidRequest("name must not look like a session id", field="name")
    if name in RESERVED_NAMES:
        raise InvalidRequest(f"{name!r} is reserved (a route has that name)", field="name")
    return name


def new_session_id() -> str:
    return str(uuid.uuid4())
