"""Batch runs: the clean, build and exec commands of a batch request, one after another.

Each command is the user's own shell command, run as ``["sh", "-c", command]`` inside the session
(never formatted into another command line) in the work directory of the main kernel. A call
answers ``clean-finished`` and ``build-finished`` as those steps end (the client continues), then
``finished`` with the exit code; a failed build skips exec and keeps its exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
import uuid
from collections.abc import Awaitable, Callable

from ..agents.base import ExecProcess
from .runs import CONTINUED, EXEC_TIMEOUT, FINISHED, Console, RunSnapshot

STEPS = ("clean", "build", "exec")
StartCommand = Callable[[list[str]], Awaitable[ExecProcess]]


class BatchRun:
    """The steps of one batch request, driven by a task; polled like a query run."""

    def __init__(
        self,
        commands: dict[str, str],
        start: StartCommand,
        *,
        run_id: str | None,
        timeout: float | None,
        max_console_bytes: int,
    ) -> None:
        self.run_id = run_id or uuid.uuid4().hex
        self.steps = [(step, commands[step]) for step in STEPS if commands.get(step)]
        self.console = Console(max_console_bytes)
        self.status = "running"
        self.exit_code: int | None = None
        self.deadline = time.monotonic() + timeout if timeout else None
        #: Step milestones (``clean-finished``, ``build-finished``) not yet reported to a caller.
        self.milestones: list[str] = []
        self.changed = asyncio.Event()
        self._start = start
        self._process: ExecProcess | None = None
        self._task = asyncio.get_running_loop().create_task(self._drive())

    @property
    def finished(self) -> bool:
        return self.status in (FINISHED, EXEC_TIMEOUT)

    async def _drive(self) -> None:
        try:
            for step, command in self.steps:
                self._process = await self._start(["sh", "-c", command])
                while (chunk := await self._process.read()) is not None:
                    self.console.add(*chunk)
                    self.changed.set()
                code = await self._process.wait()
                self.exit_code = code
                if step == "exec":
                    break
                self.milestones.append(f"{step}-finished")
                self.changed.set()
                if step == "build" and code != 0:
                    break  # a failed build skips exec; its exit code is the run's
        except Exception as exc:
            self.console.add("stderr", f"[the batch run failed: {exc}]\n")
            self.exit_code = self.exit_code if self.exit_code not in (None, 0) else 1
        finally:
            if self.status != EXEC_TIMEOUT:
                self.status = FINISHED
            self.changed.set()

    async def wait(self, flush_interval: float) -> RunSnapshot:
        """Until a step ends, the run ends, or ``flush_interval`` passes; take the output."""
        loop = asyncio.get_running_loop()
        until = loop.time() + flush_interval
        while not self.finished and not self.milestones:
            if self.deadline is not None and time.monotonic() >= self.deadline:
                await self._time_out()
                break
            remaining = until - loop.time()
            if self.deadline is not None:
                remaining = min(remaining, self.deadline - time.monotonic())
            if remaining <= 0:
                break
            self.changed.clear()
            if self.finished or self.milestones:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), remaining)
        if self.milestones:
            status = self.milestones.pop(0)
        elif self.finished:
            status = self.status
        else:
            status = CONTINUED
        exit_code = self.exit_code if status in (FINISHED, EXEC_TIMEOUT) else None
        return RunSnapshot(self.run_id, status, exit_code, self.console.take(), {})

    async def _time_out(self) -> None:
        self.status = EXEC_TIMEOUT
        if self._process is not None:
            with contextlib.suppress(Exception):
                await self._process.signal(signal.SIGKILL)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._task), 5)
        self.exit_code = self.exit_code if self.exit_code not in (None, 0) else 137

    async def interrupt(self) -> None:
        if self._process is not None and not self.finished:
            await self._process.signal(signal.SIGINT)
