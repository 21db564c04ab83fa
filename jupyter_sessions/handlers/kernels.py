"""Routes for kernel provisioners: a session kernel's connection info (owner or admin only)."""

from __future__ import annotations

from jupyter_server.auth.decorator import authorized
from tornado import web

from ..actions.kernels import GetKernelConnectionAction, OpenJupyterKernelAction
from .base import API_PREFIX, REF, SessionsAPIHandler
from .schema import ERROR, ERRORS, json_response
from .sessions import OWNER_PARAM, REF_PARAM

KERNEL_PARAM = {
    "name": "kernel",
    "in": "path",
    "required": True,
    "schema": {"type": "string", "pattern": r"^(main|sub)[0-9]{1,3}$"},
    "description": "The kernel of the session: main1, or sub1..subN of a cluster",
}
CONNECTION = {
    "type": "object",
    "properties": {
        "session_id": {"type": "string"},
        "session_name": {"type": "string"},
        "status": {"type": "string"},
        "kernel": {"type": "string"},
        "container_id": {"type": "string", "nullable": True},
        "connection": {
            "type": "object",
            "description": "jupyter_client connection info: ip, transport, shell_port, "
            "iopub_port, stdin_port, control_port, hb_port, key, signature_scheme",
        },
    },
}


class KernelConnectionHandler(SessionsAPIHandler):
    openapi = {
        "get": {
            "operationId": "get_kernel_connection",
            "summary": "A running session kernel's jupyter_client connection info (ports on the "
            "agent's address and the session's key): what a kernel provisioner in another "
            "process needs; as powerful as execute, so the session's owner or an admin only",
            "parameters": [REF_PARAM, KERNEL_PARAM, OWNER_PARAM],
            "responses": {
                "200": json_response(CONNECTION, "The connection info"),
                **ERRORS,
                "404": ERROR,
                "409": ERROR,
            },
        },
    }

    @web.authenticated
    @authorized("execute")
    async def get(self, ref: str, kernel: str) -> None:
        action = GetKernelConnectionAction(
            caller=self.caller,
            ref=ref,
            owner_access_key=self.acting_for,
            kernel=kernel,  # only ever compared: an unknown one is a 404 after the session's
        )
        result = await self.processors.get_kernel_connection.wait_for_complete(action)
        self.set_header("Cache-Control", "no-store")
        self.write_json(result.to_json())


class JupyterKernelsHandler(SessionsAPIHandler):
    openapi = {
        "post": {
            "operationId": "open_jupyter_kernel",
            "summary": "Start a kernel of this Jupyter server attached to the session's kernel, "
            "for JupyterLab to open a notebook or console on (/api/kernels/{kernel_id}); "
            "shutting it down detaches and the session keeps running. The server's owner only",
            "parameters": [REF_PARAM, OWNER_PARAM],
            "responses": {
                "201": json_response(
                    {
                        "type": "object",
                        "properties": {
                            "kernel_id": {"type": "string"},
                            "kernel_name": {"type": "string"},
                            "session_id": {"type": "string"},
                        },
                    },
                    "The Jupyter kernel",
                ),
                **ERRORS,
                "404": ERROR,
                "409": ERROR,
            },
        },
    }

    @web.authenticated
    @authorized("execute")
    async def post(self, ref: str) -> None:
        action = OpenJupyterKernelAction(
            caller=self.caller, ref=ref, owner_access_key=self.acting_for
        )
        result = await self.processors.open_jupyter_kernel.wait_for_complete(action)
        self.write_json(result.to_json(), status=201)


kernel_handlers: list[tuple[str, type]] = [
    (rf"{API_PREFIX}/sessions/{REF}/kernels/(?P<kernel>[^/]+)/connection", KernelConnectionHandler),
    (rf"{API_PREFIX}/sessions/{REF}/jupyter-kernels", JupyterKernelsHandler),
]
