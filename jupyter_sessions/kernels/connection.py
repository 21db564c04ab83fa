"""Connections from the manager to session kernels over ZMQ (jupyter_client), one per kernel.

The agent says where a kernel's ports are; this module dials them with the session's key and
keeps one client per kernel for the life of the session.
"""

from __future__ import annotations

import asyncio
import queue
from typing import Any

from jupyter_client.asynchronous import AsyncKernelClient

from ..errors import Timeout


class KernelConnections:
    """One AsyncKernelClient per kernel id."""

    def __init__(self) -> None:
        self._clients: dict[str, AsyncKernelClient] = {}

    def client(self, kernel_id: str, connection: dict[str, Any]) -> AsyncKernelClient:
        client = self._clients.get(kernel_id)
        if client is None:
            client = AsyncKernelClient()
            client.load_connection_info(connection)  # type: ignore[arg-type]
            client.start_channels()
            self._clients[kernel_id] = client
        return client

    async def wait_ready(self, kernel_id: str, connection: dict[str, Any], timeout: float) -> None:
        """Return once the kernel answers kernel_info; Timeout (504) if it does not in time."""
        client = self.client(kernel_id, connection)
        try:
            await asyncio.wait_for(self._kernel_info(client), timeout)
        except TimeoutError:
            self.close(kernel_id)
            raise Timeout(f"the kernel did not answer within {timeout:g} s") from None

    @staticmethod
    async def _kernel_info(client: AsyncKernelClient) -> None:
        # wait_for_ready() polls the heartbeat of a kernel it manages; ours is remote, so ask
        # kernel_info until a reply arrives (the first request can be lost while ZMQ connects).
        while True:
            msg_id = client.kernel_info()
            try:
                while True:
                    reply = await client.get_shell_msg(timeout=1.0)
                    if reply["parent_header"].get("msg_id") == msg_id:
                        return
            except queue.Empty:
                continue

    def close(self, kernel_id: str) -> None:
        client = self._clients.pop(kernel_id, None)
        if client is not None:
            client.stop_channels()

    def close_all(self) -> None:
        for kernel_id in list(self._clients):
            self.close(kernel_id)
