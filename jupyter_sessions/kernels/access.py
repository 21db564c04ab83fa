"""KernelAccessService: hands a session kernel's connection info to its owner (or an admin).

This is what a kernel provisioner running in another process (nbclient, ``jupyter console``)
asks for, through ``GET sessions/{ref}/kernels/{kernel}/connection``: with it, jupyter_client
talks ZMQ to the container's kernel directly. It is as powerful as ``execute``, so it follows the
same rules: the caller's own sessions (others are 404), admins any, audited like every action.

It also opens a kernel of the Jupyter server itself on a session (``POST
sessions/{ref}/jupyter-kernels``), for JupyterLab to open a notebook or console on a session's
kernel: the server's owner only, as the server's kernels are theirs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..actions.kernels import (
    GetKernelConnectionAction,
    JupyterKernelResult,
    KernelConnectionResult,
    OpenJupyterKernelAction,
)
from ..errors import InvalidRequest, InvalidStatus, NotFound, PermissionDenied
from ..types import ALIVE_STATUSES

if TYPE_CHECKING:
    from ..service import SessionService

#: The keys of a kernel's stored connection that jupyter_client needs (nothing else leaves).
CONNECTION_KEYS = (
    "ip",
    "transport",
    "shell_port",
    "iopub_port",
    "stdin_port",
    "control_port",
    "hb_port",
    "key",
    "signature_scheme",
)


class KernelAccessService:
    def __init__(self, service: SessionService) -> None:
        self.service = service
        #: The Jupyter server's kernel manager and its owner (``connect_server``, at start-up).
        self.jupyter_kernels: Any = None
        self.server_owner: str | None = None

    def connect_server(self, kernel_manager: Any, owner_access_key: str) -> None:
        """Where ``open_jupyter_kernel`` starts kernels, and whose they are."""
        self.jupyter_kernels = kernel_manager
        self.server_owner = owner_access_key

    async def get_kernel_connection(
        self, action: GetKernelConnectionAction
    ) -> KernelConnectionResult:
        session = await self.service._resolve(action)
        kernel = next((k for k in session.kernels if k.name == action.kernel), None)
        if kernel is None:
            raise NotFound(f"the session has no kernel {action.kernel!r}", field="kernel")
        if session.status not in ALIVE_STATUSES or not kernel.connection:
            raise InvalidStatus(
                f"the session is {session.status}; its kernel can be connected to only while "
                "it is RUNNING",
                status=str(session.status),
            )
        connection = {k: kernel.connection[k] for k in CONNECTION_KEYS if k in kernel.connection}
        # Someone is about to use the kernel: that is activity (idle timeouts).
        self.service.touch_activity(session.id)
        return KernelConnectionResult(
            session_id=session.id,
            session_name=session.name,
            status=session.status,
            kernel=kernel.name,
            container_id=kernel.container_id,
            connection=connection,
        )

    async def open_jupyter_kernel(self, action: OpenJupyterKernelAction) -> JupyterKernelResult:
        """Start a kernel of this server (``/api/kernels``) attached to the session's kernel:
        shutting it down detaches, the session keeps running (kernels/provisioner.py)."""
        from jupyter_client.kernelspec import NoSuchKernel

        from ..kernels.provisioner import ENV_SESSION
        from ..kernelspecs import DEFAULT_NAME

        session = await self.service._resolve(action)
        if self.jupyter_kernels is None or action.caller.access_key != self.server_owner:
            raise PermissionDenied(
                "the Jupyter server's kernels belong to its owner: only they may open one on a "
                "session (others use the session's execute API)"
            )
        if session.status not in ALIVE_STATUSES:
            raise InvalidStatus(
                f"the session is {session.status}; a kernel can be opened on it only while it is "
                "RUNNING",
                status=str(session.status),
            )
        try:
            kernel_id = await self.jupyter_kernels.start_kernel(
                kernel_name=DEFAULT_NAME, env={ENV_SESSION: session.id}
            )
        except NoSuchKernel:
            raise InvalidRequest(
                f"the kernelspec {DEFAULT_NAME} is not installed "
                "(c.SessionsApp.generate_kernelspecs is off)"
            ) from None
        except RuntimeError as exc:  # the provisioner's own message
            raise InvalidStatus(str(exc), status=str(session.status)) from None
        return JupyterKernelResult(str(kernel_id), DEFAULT_NAME, session.id)
