"""Kernel actions: what a Jupyter kernel provisioner needs to hand a session's kernel to
jupyter_client (its connection info: ports on the agent's address and the per-session key)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from ..types import SessionStatus
from .base import SessionRefAction


@dataclass(frozen=True, kw_only=True)
class GetKernelConnectionAction(SessionRefAction):
    """The connection info of one kernel: owner or admin only (it lets its holder run code)."""

    operation: ClassVar[str] = "get_kernel_connection"
    kernel: str = "main1"


@dataclass(frozen=True)
class KernelConnectionResult:
    session_id: str
    session_name: str
    status: SessionStatus
    kernel: str
    container_id: str | None
    #: jupyter_client's connection info: ``ip``, ``transport``, ``*_port``, ``key``,
    #: ``signature_scheme``.
    connection: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "session_name": self.session_name,
            "status": str(self.status),
            "kernel": self.kernel,
            "container_id": self.container_id,
            "connection": self.connection,
        }


@dataclass(frozen=True, kw_only=True)
class OpenJupyterKernelAction(SessionRefAction):
    """A kernel of this Jupyter server attached to a session's kernel, for JupyterLab to open a
    notebook or console on (the server's owner only: the server's kernels are theirs)."""

    operation: ClassVar[str] = "open_jupyter_kernel"


@dataclass(frozen=True)
class JupyterKernelResult:
    kernel_id: str
    kernel_name: str
    session_id: str

    def to_json(self) -> dict[str, Any]:
        return {
            "kernel_id": self.kernel_id,
            "kernel_name": self.kernel_name,
            "session_id": self.session_id,
        }
