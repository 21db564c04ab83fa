"""Agent and scaling-group actions (admin only): register, list and remove agents; list, create
and change scaling groups with their scheduling policy.

``from_json`` checks the shape of a body; whether an engine answers, a group exists or an agent
still holds sessions is for ``agents/registry.py``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import urlparse

from ..errors import InvalidRequest
from ..repository.scheduling import GroupData
from ..types import ResourceSlot
from .base import Action

#: Agent ids and scaling group names: what a label, a URL segment and a log line carry safely.
GROUP_NAME = re.compile(r"^[\w.-]{1,64}$", re.ASCII)
AGENT_ID = re.compile(r"^\w[\w.-]{0,63}$", re.ASCII)
ORDERINGS = ("fifo", "lifo", "drf")
PLACEMENTS = ("concentrated", "dispersed")
HOST_FIREWALL_MODES = ("auto", "direct", "engine", "off")
URL_SCHEMES = ("unix", "tcp", "http", "https", "ssh")
AGENT_FIELDS = frozenset(
    {"id", "kind", "url", "scaling_group", "kernel_host", "host_firewall", "reserve"}
)
GROUP_FIELDS = frozenset({"name", "description", "ordering", "placement"})


def _object(body: Any, known: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidRequest("the request body must be a JSON object")
    unknown = sorted(str(k) for k in set(body) - known)
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(unknown)}", fields=unknown)
    return body


def _choice(body: Mapping[str, Any], key: str, choices: tuple[str, ...]) -> str:
    value = body.get(key, choices[0])
    if value not in choices:
        raise InvalidRequest(f"{key} must be one of {', '.join(choices)}", field=key)
    return str(value)


@dataclass(frozen=True)
class AgentSpec:
    """How to reach a Docker engine registered as an agent."""

    id: str
    url: str
    scaling_group: str = "default"
    kernel_host: str | None = None
    host_firewall: str = "auto"
    reserve: ResourceSlot = field(default_factory=lambda: ResourceSlot({}))

    @classmethod
    def from_json(cls, body: Any) -> AgentSpec:
        body = _object(body, AGENT_FIELDS)
        agent_id = body.get("id")
        if not isinstance(agent_id, str) or not AGENT_ID.match(agent_id):
            raise InvalidRequest(
                "id must be 1-64 letters, digits, '_', '.' or '-', starting with a letter, digit "
                "or '_'",
                field="id",
            )
        if body.get("kind", "docker") != "docker":
            raise InvalidRequest("kind must be docker (local agents are configured)", field="kind")
        url = body.get("url")
        if not isinstance(url, str) or urlparse(url).scheme not in URL_SCHEMES or len(url) > 512:
            raise InvalidRequest(
                f"url must be a Docker engine URL ({', '.join(s + '://' for s in URL_SCHEMES)})",
                field="url",
            )
        group = body.get("scaling_group", "default")
        if not isinstance(group, str) or not GROUP_NAME.match(group):
            raise InvalidRequest(
                "scaling_group must be a scaling group's name", field="scaling_group"
            )
        kernel_host = body.get("kernel_host")
        if kernel_host is not None and (
            not isinstance(kernel_host, str) or not re.match(r"^[\w.:-]{1,253}$", kernel_host)
        ):
            raise InvalidRequest("kernel_host must be a host name or address", field="kernel_host")
        return cls(
            id=agent_id,
            url=url,
            scaling_group=group,
            kernel_host=kernel_host,
            host_firewall=_choice(body, "host_firewall", HOST_FIREWALL_MODES),
            reserve=ResourceSlot.parse(body.get("reserve"), "reserve"),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": "docker",
            "url": self.url,
            "scaling_group": self.scaling_group,
            "kernel_host": self.kernel_host,
            "host_firewall": self.host_firewall,
            "reserve": self.reserve.to_json(),
        }


@dataclass(frozen=True, kw_only=True)
class RegisterAgentAction(Action):
    operation: ClassVar[str] = "register_agent"
    spec: AgentSpec


@dataclass(frozen=True, kw_only=True)
class RemoveAgentAction(Action):
    operation: ClassVar[str] = "remove_agent"
    agent_id: str


@dataclass(frozen=True, kw_only=True)
class ListScalingGroupsAction(Action):
    operation: ClassVar[str] = "list_scaling_groups"


def group_from_json(body: Any) -> GroupData:
    """A well-formed ``POST scaling-groups`` body: a group's name and scheduling policy."""
    body = _object(body, GROUP_FIELDS)
    name = body.get("name")
    if not isinstance(name, str) or not GROUP_NAME.match(name):
        raise InvalidRequest("name must be 1-64 letters, digits, '.', '_' or '-'", field="name")
    description = body.get("description", "")
    if not isinstance(description, str) or len(description) > 1024:
        raise InvalidRequest("description must be text of at most 1024 characters")
    return GroupData(
        name=name,
        description=description,
        ordering=_choice(body, "ordering", ORDERINGS),
        placement=_choice(body, "placement", PLACEMENTS),
    )


@dataclass(frozen=True, kw_only=True)
class PutScalingGroupAction(Action):
    operation: ClassVar[str] = "put_scaling_group"
    group: GroupData
