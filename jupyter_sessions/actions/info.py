"""Catalog actions: the images sessions may use and the agents they may run on."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from .base import Action


@dataclass(frozen=True, kw_only=True)
class ListImagesAction(Action):
    operation: ClassVar[str] = "list_images"


@dataclass(frozen=True)
class ImageEntry:
    name: str
    present: bool
    is_default: bool
    agents: list[str]
    size: int | None
    labels: dict[str, str]


@dataclass(frozen=True, kw_only=True)
class ListAgentsAction(Action):
    operation: ClassVar[str] = "list_agents"


@dataclass(frozen=True)
class AgentEntry:
    id: str
    kind: str
    url: str
    scaling_group: str
    status: str
    status_info: str
    capacity: dict[str, Any]
    last_seen: str
