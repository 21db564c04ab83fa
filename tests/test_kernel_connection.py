"""The manager's kernel connection (kernels/connection.py) against a real local ipykernel.

Each ZMQ socket connects on its own, retrying while the kernel or Docker's port relay is not
ready. The fault injected here is a relay in front of the kernel's stdin port that drops every
connection for a while (what the relay of a published port does before the kernel listens): a
kernel reported ready before its stdin channel connected would lose the ``input_request`` of a
first run that calls ``input()``, and that run would wait forever.
"""

from __future__ import annotations

import asyncio
import contextlib

from jupyter_sessions.agents.local import LocalAgent
from jupyter_sessions.kernels.connection import KernelConnections
from jupyter_sessions.kernels.runs import WAITING_INPUT

from .test_local_agent import agent, make_spec  # noqa: F401 - the local agent fixture

#: How long the relay drops connections before it starts relaying.
REFUSING_SECONDS = 2.0


class SlowRelay:
    """A TCP relay to ``target`` that closes every connection until ``open_at``."""

    def __init__(self, target: int, open_at: float) -> None:
        self.target = target
        self.open_at = open_at
        self.dropped = 0
        self.server: asyncio.Server | None = None

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if asyncio.get_running_loop().time() < self.open_at:
            self.dropped += 1
            writer.close()
            return
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self.target)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_ready_waits_for_stdin_so_a_first_input_is_not_lost(
    agent: LocalAgent,  # noqa: F811 - the fixture imported above
) -> None:
    handle = await agent.create_kernel(make_spec())
    loop = asyncio.get_running_loop()
    relay = SlowRelay(int(handle.connection["stdin_port"]), loop.time() + REFUSING_SECONDS)
    connection = {**handle.connection, "stdin_port": await relay.start()}
    connections = KernelConnections()
    try:
        await connections.wait_ready("k", connection, timeout=60)
        assert relay.dropped > 0  # the stdin socket did retry while the relay dropped it
        channel = connections.channel("k", connection)
        run = await channel.submit("print(input('? ') * 2)", run_id=None, timeout=None)
        deadline = loop.time() + 30
        console = []
        while run.status != WAITING_INPUT:
            assert loop.time() < deadline, "the input request never arrived"
            console += (await channel.wait(run, 1.0)).console
        channel.send_input(run, "ab")
        while not run.finished:
            assert loop.time() < deadline, "the run never finished"
            console += (await channel.wait(run, 1.0)).console
        assert console == [["stdout", "? "], ["stdout", "abab\n"]], console
    finally:
        connections.close_all()
        relay.close()
