"""The JSON shapes of the REST contract (DESIGN §4), made from the service's dataclasses.

One place, so the handlers, the event stream and the Python client agree on every field.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from .actions.info import AgentEntry, ImageEntry
from .repository.repository import HistoryEntry, KernelData, SessionData


def iso(value: datetime | None) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def kernel_json(kernel: KernelData) -> dict[str, Any]:
    return {
        "name": kernel.name,
        "role": kernel.cluster_role,
        "status": str(kernel.status),
        "agent": kernel.agent_id,
        "container_id": kernel.container_id,
    }


def session_json(session: SessionData) -> dict[str, Any]:
    return {
        "id": session.id,
        "name": session.name,
        "status": str(session.status),
        "status_info": session.status_info,
        "status_changed_at": iso(session.status_changed_at),
        "result": session.result,
        "exit_code": session.exit_code,
        "image": session.image,
        "type": session.type,
        "cluster_mode": session.cluster_mode,
        "cluster_size": session.cluster_size,
        "scaling_group": session.scaling_group,
        "resources": session.resources,
        "owner_access_key": session.owner_access_key,
        "created_at": iso(session.created_at),
        "terminated_at": iso(session.terminated_at),
        "kernels": [kernel_json(k) for k in session.kernels],
        "tag": session.tag,
        "priority": session.priority,
        "idle_timeout": session.idle_timeout,
        "restarted_from": session.restarted_from,
        "depends_on": list(session.depends_on),
    }


def history_json(entry: HistoryEntry) -> dict[str, Any]:
    return {
        "kernel": entry.kernel,
        "from": entry.from_status,
        "to": entry.to_status,
        "reason": entry.reason,
        "at": iso(entry.at),
    }


def image_json(image: ImageEntry) -> dict[str, Any]:
    return {
        "name": image.name,
        "present": image.present,
        "is_default": image.is_default,
        "agents": image.agents,
        "size": image.size,
        "labels": image.labels,
    }


def agent_json(agent: AgentEntry) -> dict[str, Any]:
    return {
        "id": agent.id,
        "kind": agent.kind,
        "url": agent.url,
        "scaling_group": agent.scaling_group,
        "status": agent.status,
        "status_info": agent.status_info,
        "capacity": agent.capacity,
        "last_seen": agent.last_seen,
    }
