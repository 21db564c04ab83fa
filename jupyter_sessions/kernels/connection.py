"""Connections from the manager to session kernels over ZMQ (jupyter_client), one per kernel.

The agent says where a kernel's ports are; this module dials them with the session's key and
keeps one client per kernel for the life of the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
from typing import Any

import zmq
from jupyter_client.asynchronous import AsyncKernelClient

from ..errors import Timeout
from .runs import KernelChannel


class KernelConnections:
    """One AsyncKernelClient per kernel id, and the KernelChannel that routes its messages."""

    def __init__(self, *, max_console_bytes: int = 8 * 2**20) -> None:
        self._clients: dict[str, AsyncKernelClient] = {}
        self._channels: dict[str, KernelChannel] = {}
        self.max_console_bytes = max_console_bytes

    def client(self, kernel_id: str, connection: dict[str, Any]) -> AsyncKernelClient:
        client = self._clients.get(kernel_id)
        if client is None:
            client = AsyncKernelClient()
            client.load_connection_info(connection)  # type: ignore[arg-type]
            # The stdin socket queues messages only on completed connections, so it polls
            # writable once connected (``_stdin_connected``). It is made first, alone with that
            # option: on the heartbeat's blocking REQ socket it could block a stop forever.
            client.context.setsockopt(zmq.IMMEDIATE, 1)
            assert client.stdin_channel is not None  # made (and connecting) now
            client.context.setsockopt(zmq.IMMEDIATE, 0)
            client.start_channels()
            self._clients[kernel_id] = client
        return client

    def channel(self, kernel_id: str, connection: dict[str, Any]) -> KernelChannel:
        """The kernel's message router (started on first use, after the kernel is ready)."""
        channel = self._channels.get(kernel_id)
        if channel is None:
            channel = KernelChannel(
                self.client(kernel_id, connection), max_console_bytes=self.max_console_bytes
            )
            channel.start()
            self._channels[kernel_id] = channel
        return channel

    def existing_channel(self, kernel_id: str) -> KernelChannel | None:
        """The kernel's channel if one was opened (it never opens one)."""
        return self._channels.get(kernel_id)

    async def wait_ready(self, kernel_id: str, connection: dict[str, Any], timeout: float) -> None:
        """Return once the kernel answers kernel_info; Timeout (504) if it does not in time."""
        client = self.client(kernel_id, connection)
        try:
            await asyncio.wait_for(self._kernel_info(client), timeout)
            await asyncio.wait_for(self._stdin_connected(client), timeout)
        except TimeoutError:
            self.close(kernel_id)
            raise Timeout(f"the kernel did not answer within {timeout:g} s") from None

    @staticmethod
    async def _kernel_info(client: AsyncKernelClient) -> None:
        """Ask kernel_info until both the reply and its IOPub status arrive.

        A shell reply alone is not enough: IOPub is a SUB socket whose subscription reaches the
        kernel a little after it connects ("slow joiner"), and output published before then is
        lost for good, so the first run would never see its output or its idle status.
        """
        while True:
            msg_id = client.kernel_info()
            try:
                while True:
                    reply = await client.get_shell_msg(timeout=1.0)
                    if reply["parent_header"].get("msg_id") == msg_id:
                        break
                while True:
                    status = await client.get_iopub_msg(timeout=0.5)
                    if status["parent_header"].get("msg_id") == msg_id:
                        break
            except queue.Empty:
                continue
            # Drain what else IOPub holds from start-up, so no run sees it.
            with contextlib.suppress(queue.Empty):
                while True:
                    await client.get_iopub_msg(timeout=0.05)
            return

    @staticmethod
    async def _stdin_connected(client: AsyncKernelClient) -> None:
        """Return once the stdin channel is connected.

        Each socket connects on its own, retrying while the kernel (or Docker's port relay) is
        not ready, so shell answering says nothing of stdin. The kernel sends ``input_request``
        on stdin to the client's identity, and drops it if that client is not connected yet:
        a run that calls ``input()`` just after start would then wait for an answer forever.
        """
        socket = client.stdin_channel.socket
        while not await socket.poll(timeout=100, flags=zmq.POLLOUT):
            continue

    def close(self, kernel_id: str) -> None:
        channel = self._channels.pop(kernel_id, None)
        if channel is not None:
            channel.close()
        client = self._clients.pop(kernel_id, None)
        if client is not None:
            client.stop_channels()

    def close_all(self) -> None:
        for kernel_id in list(self._clients):
            self.close(kernel_id)
