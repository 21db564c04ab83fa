"""Account actions (admin only): keypairs, resource policies and the audit log.

``from_json`` checks the shape of a request body: types, unknown fields, ranges, resource slots
(``ResourceSlot.parse``, so a bad slot is a 400 naming it). Checks that need state (a policy
exists, a name is free, the owner's keypair) belong to the service and the repository.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import InvalidRequest
from ..repository.accounts import POLICY_LIMITS, SLOT_LIMITS, ResourcePolicyData
from ..repository.repository import DEFAULT_POLICY, AuditEntry, KeypairData
from ..types import ResourceSlot, parse_amount
from .base import Action

#: A keypair's user: a name as a hub or a directory would spell it (no spaces or control chars).
USER_PATTERN = re.compile(r"^\w[\w.@+-]{0,127}$")
POLICY_NAME_PATTERN = re.compile(r"^\w[\w.-]{0,63}$", re.ASCII)
KEYPAIR_FIELDS = frozenset({"user", "is_admin", "resource_policy"})
#: Most an integer limit may be: what a 32-bit column holds on every backend.
MAX_INT_LIMIT = 2**31 - 1
MAX_STORAGE_QUOTA = 2**63 - 1
#: The least each integer limit may be (``null`` always means unlimited).
INT_LIMIT_MINIMUM = {
    "max_concurrent_sessions": 0,
    "max_pending_sessions": 0,
    "idle_timeout": 1,
    "max_session_lifetime": 1,
    "max_containers_per_session": 1,
    "max_images": 0,
}


def _unknown_fields(body: Mapping[str, Any], known: frozenset[str] | set[str]) -> None:
    unknown = sorted(str(k) for k in set(body) - known)
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(unknown)}", fields=unknown)


def _object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidRequest("the request body must be a JSON object")
    return body


def policy_name(value: Any, field_name: str = "name") -> str:
    if not isinstance(value, str) or not POLICY_NAME_PATTERN.match(value):
        raise InvalidRequest(
            f"{field_name} must be 1-64 characters of letters, digits, '_', '.', '-', "
            "starting with a letter, digit or '_'",
            field=field_name,
        )
    return value


def _limit(key: str, value: Any) -> Any:
    """One limit in its stored form: slots as JSON amounts, sizes in bytes, counts as ints."""
    if key in SLOT_LIMITS:
        return ResourceSlot.parse(value, key).to_json()
    if value is None:
        return None
    if key == "storage_quota":
        amount = int(parse_amount(value, key, bytes_unit=True))
        if amount > MAX_STORAGE_QUOTA:
            raise InvalidRequest(f"{key} must be at most {MAX_STORAGE_QUOTA} bytes", field=key)
        return amount
    minimum = INT_LIMIT_MINIMUM[key]
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"{key} must be an integer or null (unlimited)", field=key)
    if not minimum <= value <= MAX_INT_LIMIT:
        raise InvalidRequest(
            f"{key} must be from {minimum} to {MAX_INT_LIMIT}, or null (unlimited)", field=key
        )
    return value


def parse_limits(body: Mapping[str, Any]) -> dict[str, Any]:
    """The policy limits present in ``body``, validated and normalised."""
    return {key: _limit(key, body[key]) for key in POLICY_LIMITS if key in body}


@dataclass(frozen=True)
class NewKeypairParams:
    """A well-formed ``POST keypairs`` body."""

    user: str
    is_admin: bool = False
    resource_policy: str = DEFAULT_POLICY

    @classmethod
    def from_json(cls, body: Any) -> NewKeypairParams:
        body = _object(body)
        _unknown_fields(body, KEYPAIR_FIELDS)
        user = body.get("user")
        if not isinstance(user, str) or not USER_PATTERN.match(user):
            raise InvalidRequest(
                "user is required: 1-128 characters of letters, digits, '_', '.', '@', '+', '-'",
                field="user",
            )
        is_admin = body.get("is_admin", False)
        if not isinstance(is_admin, bool):
            raise InvalidRequest("is_admin must be true or false", field="is_admin")
        policy = body.get("resource_policy")
        return cls(
            user=user,
            is_admin=is_admin,
            resource_policy=DEFAULT_POLICY
            if policy is None
            else policy_name(policy, "resource_policy"),
        )


@dataclass(frozen=True)
class NewPolicyParams:
    """A well-formed ``POST resource-policies`` body: a name and the limits it sets."""

    name: str
    limits: Mapping[str, Any]

    @classmethod
    def from_json(cls, body: Any) -> NewPolicyParams:
        body = _object(body)
        _unknown_fields(body, {"name", *POLICY_LIMITS})
        if "name" not in body:
            raise InvalidRequest("name is required", field="name")
        return cls(name=policy_name(body["name"]), limits=parse_limits(body))


@dataclass(frozen=True)
class PolicyChanges:
    """A well-formed ``PATCH resource-policies/{name}`` body: the limits to change."""

    changes: Mapping[str, Any]

    @classmethod
    def from_json(cls, body: Any, name: str) -> PolicyChanges:
        body = _object(body)
        _unknown_fields(body, {"name", *POLICY_LIMITS})
        if "name" in body and body["name"] != name:
            raise InvalidRequest("a resource policy cannot be renamed", field="name")
        changes = parse_limits(body)
        if not changes:
            known = ", ".join(POLICY_LIMITS)
            raise InvalidRequest(f"nothing to change: give one or more of {known}")
        return cls(changes)


# --- actions and results ----------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ListKeypairsAction(Action):
    operation: ClassVar[str] = "list_keypairs"


@dataclass(frozen=True)
class ListKeypairsResult:
    keypairs: list[KeypairData]
    total: int


@dataclass(frozen=True, kw_only=True)
class CreateKeypairAction(Action):
    operation: ClassVar[str] = "create_keypair"
    params: NewKeypairParams

    def target(self) -> str | None:
        return self.params.user


@dataclass(frozen=True)
class CreatedKeypair:
    """The new keypair and its secret: the only answer that ever carries a secret."""

    keypair: KeypairData
    secret_key: str = field(repr=False)


@dataclass(frozen=True, kw_only=True)
class RevokeKeypairAction(Action):
    operation: ClassVar[str] = "revoke_keypair"
    access_key: str

    def target(self) -> str | None:
        return self.access_key


@dataclass(frozen=True, kw_only=True)
class ListResourcePoliciesAction(Action):
    operation: ClassVar[str] = "list_resource_policies"


@dataclass(frozen=True)
class ListResourcePoliciesResult:
    policies: list[ResourcePolicyData]
    total: int


@dataclass(frozen=True, kw_only=True)
class GetResourcePolicyAction(Action):
    operation: ClassVar[str] = "get_resource_policy"
    name: str

    def target(self) -> str | None:
        return self.name


@dataclass(frozen=True, kw_only=True)
class CreateResourcePolicyAction(Action):
    operation: ClassVar[str] = "create_resource_policy"
    params: NewPolicyParams

    def target(self) -> str | None:
        return self.params.name


@dataclass(frozen=True, kw_only=True)
class ModifyResourcePolicyAction(Action):
    operation: ClassVar[str] = "modify_resource_policy"
    name: str
    changes: PolicyChanges

    def target(self) -> str | None:
        return self.name


@dataclass(frozen=True, kw_only=True)
class GetAuditLogAction(Action):
    operation: ClassVar[str] = "get_audit_log"
    limit: int = 100


@dataclass(frozen=True)
class AuditLogResult:
    entries: list[AuditEntry]
