"""The run protocol over one kernel: query runs, their console, input, interrupt and completion.

A ``KernelChannel`` owns one jupyter_client connection to a session's kernel. One reader task per
ZMQ channel routes every message by its parent ``msg_id`` to the ``Run`` (or the pending request)
it answers, so runs, completions and interrupts share the connection without stealing each other's
replies. A ``Run`` buffers its console (bounded) until somebody takes it: a REST call that answers
``continued`` after the flush interval, or a WebSocket that forwards each item as it comes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from jupyter_client.asynchronous import AsyncKernelClient

from ..errors import AgentError, Conflict, Timeout

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
#: The statuses a run reports (Backend.AI's names).
RUNNING, CONTINUED, WAITING_INPUT, FINISHED, EXEC_TIMEOUT = (
    "running",
    "continued",
    "waiting-input",
    "finished",
    "exec-timeout",
)
ConsoleItem = list[Any]  # [type, data]


class Console:
    """Console items in order, adjacent text of one stream merged, bounded in bytes.

    Past the bound the oldest items are dropped and a ``log`` item says how much was lost, so a
    run nobody polls cannot eat the server's memory.
    """

    def __init__(self, max_bytes: int) -> None:
        self.items: list[ConsoleItem] = []
        self.size = 0
        self.max_bytes = max_bytes
        self.dropped = 0

    @staticmethod
    def _size(item: ConsoleItem) -> int:
        data = item[1]
        return len(data) if isinstance(data, str) else len(repr(data))

    def add(self, kind: str, data: Any) -> None:
        last = self.items[-1] if self.items else None
        if kind in ("stdout", "stderr") and last is not None and last[0] == kind:
            last[1] += data
            self.size += len(data)
        else:
            item = [kind, data]
            self.items.append(item)
            self.size += self._size(item)
        while self.size > self.max_bytes and len(self.items) > 1:
            dropped = self.items.pop(0)
            self.size -= self._size(dropped)
            self.dropped += self._size(dropped)
        # One stream that keeps growing (a loop printing to stdout) is one merged item: keep its
        # newest text only.
        if self.size > self.max_bytes and isinstance(self.items[0][1], str):
            excess = self.size - self.max_bytes
            self.items[0][1] = self.items[0][1][excess:]
            self.size -= excess
            self.dropped += excess

    def take(self) -> list[ConsoleItem]:
        """Everything buffered so far (the caller now owns it)."""
        items = self.items
        if self.dropped:
            items.insert(0, ["log", f"[{self.dropped} bytes of earlier output were dropped]"])
            self.dropped = 0
        self.items, self.size = [], 0
        return items


@dataclass
class Run:
    """One piece of code executing (or executed) in a kernel."""

    run_id: str
    msg_id: str
    console: Console
    deadline: float | None
    status: str = RUNNING
    exit_code: int | None = None
    input_prompt: dict[str, Any] | None = None
    reply_seen: bool = False
    idle_seen: bool = False
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def finished(self) -> bool:
        return self.status in (FINISHED, EXEC_TIMEOUT)

    def touch(self) -> None:
        self.changed.set()


@dataclass(frozen=True)
class RunSnapshot:
    """What a call answers: the status now, and the console items it takes with it."""

    run_id: str
    status: str
    exit_code: int | None
    console: list[ConsoleItem]
    options: dict[str, Any]


class KernelChannel:
    """A session kernel's connection, with routing of replies and the runs in flight."""

    def __init__(
        self,
        client: AsyncKernelClient,
        *,
        max_console_bytes: int = 8 * 2**20,
        log: logging.Logger | None = None,
    ) -> None:
        self.client = client
        self.max_console_bytes = max_console_bytes
        self.log = log or logging.getLogger(__name__)
        self._runs: dict[str, Run] = {}
        self._by_msg: dict[str, Run] = {}
        self._requests: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._readers: list[asyncio.Task[None]] = []
        #: Runs on one kernel are served first in, first out: one query submits at a time.
        self._submit = asyncio.Lock()

    def start(self) -> None:
        if self._readers:
            return
        loop = asyncio.get_running_loop()
        self._readers = [
            loop.create_task(self._read(self.client.get_iopub_msg, self._on_iopub)),
            loop.create_task(self._read(self.client.get_shell_msg, self._on_reply)),
            loop.create_task(self._read(self.client.get_control_msg, self._on_reply)),
            loop.create_task(self._read(self.client.get_stdin_msg, self._on_stdin)),
        ]

    def close(self) -> None:
        for task in self._readers:
            task.cancel()
        self._readers = []
        for future in self._requests.values():
            if not future.done():
                future.set_exception(AgentError("the kernel connection was closed"))
        for run in self._runs.values():
            run.touch()

    async def _read(
        self, get: Callable[..., Any], handle: Callable[[dict[str, Any]], None]
    ) -> None:
        while True:
            try:
                msg = await get(timeout=None)
            except asyncio.CancelledError:
                raise
            except Exception:  # a malformed or unsigned message: log it, keep reading
                self.log.warning("dropped an unreadable kernel message", exc_info=True)
                continue
            try:
                handle(msg)
            except Exception:
                self.log.exception("could not route a kernel message")

    # --- routing ---------------------------------------------------------------------------

    def _run_of(self, msg: dict[str, Any]) -> Run | None:
        return self._by_msg.get(msg.get("parent_header", {}).get("msg_id", ""))

    def _on_iopub(self, msg: dict[str, Any]) -> None:
        run = self._run_of(msg)
        if run is None:
            return
        kind, content = msg["msg_type"], msg["content"]
        if kind == "stream":
            run.console.add(
                "stderr" if content.get("name") == "stderr" else "stdout", content.get("text", "")
            )
        elif kind in ("display_data", "execute_result", "update_display_data"):
            run.console.add("media", content.get("data", {}))
        elif kind == "error":
            traceback = "\n".join(content.get("traceback", [])) or (
                f"{content.get('ename')}: {content.get('evalue')}"
            )
            run.console.add("stderr", ANSI.sub("", traceback) + "\n")
            run.exit_code = 1
        elif kind == "status" and content.get("execution_state") == "idle":
            run.idle_seen = True
            self._maybe_finish(run)
        run.touch()

    def _on_reply(self, msg: dict[str, Any]) -> None:
        parent = msg.get("parent_header", {}).get("msg_id", "")
        future = self._requests.pop(parent, None)
        if future is not None and not future.done():
            future.set_result(msg)
            return
        run = self._by_msg.get(parent)
        if run is not None and msg["msg_type"] == "execute_reply":
            run.reply_seen = True
            if run.exit_code is None or msg["content"].get("status") == "ok":
                run.exit_code = 0 if msg["content"].get("status") == "ok" else 1
            self._maybe_finish(run)
            run.touch()

    def _on_stdin(self, msg: dict[str, Any]) -> None:
        run = self._run_of(msg)
        if run is None or msg["msg_type"] != "input_request":
            return
        content = msg["content"]
        prompt = content.get("prompt", "")
        if prompt:
            run.console.add("stdout", prompt)
        run.input_prompt = {"is_password": bool(content.get("password", False)), "prompt": prompt}
        run.status = WAITING_INPUT
        run.touch()

    def _maybe_finish(self, run: Run) -> None:
        if run.reply_seen and run.idle_seen and not run.finished:
            run.status = FINISHED
            self._by_msg.pop(run.msg_id, None)

    # --- runs ---------------------------------------------------------------------------------

    def get_run(self, run_id: str) -> Run | None:
        return self._runs.get(run_id)

    async def submit(self, code: str, *, run_id: str | None, timeout: float | None) -> Run:
        """Send a query; finished runs nobody took are drained (forgotten) first."""
        async with self._submit:
            for old_id, old in list(self._runs.items()):
                if old.finished:
                    del self._runs[old_id]
            if run_id is not None and run_id in self._runs:
                raise Conflict(f"run {run_id!r} is still going; continue it or pick another id")
            run_id = run_id or uuid.uuid4().hex
            msg_id = self.client.execute(code, allow_stdin=True, stop_on_error=False)
            run = Run(
                run_id=run_id,
                msg_id=msg_id,
                console=Console(self.max_console_bytes),
                deadline=time.monotonic() + timeout if timeout else None,
            )
            self._runs[run_id] = run
            self._by_msg[msg_id] = run
            return run

    def send_input(self, run: Run, text: str) -> None:
        run.status = RUNNING
        run.input_prompt = None
        self.client.input(text)
        run.touch()

    async def wait(
        self, run: Run, flush_interval: float, *, any_output: bool = False
    ) -> RunSnapshot:
        """Wait until the run ends, asks for input, or ``flush_interval`` passes; take its output.

        With ``any_output`` (streaming) it also returns as soon as there is output to forward.
        """
        loop = asyncio.get_running_loop()
        until = loop.time() + flush_interval
        while not run.finished and run.status != WAITING_INPUT:
            if any_output and run.console.items:
                break
            if run.deadline is not None and time.monotonic() >= run.deadline:
                await self._time_out(run)
                break
            remaining = until - loop.time()
            if run.deadline is not None:
                remaining = min(remaining, run.deadline - time.monotonic())
            if remaining <= 0:
                break
            run.changed.clear()
            if run.finished or run.status == WAITING_INPUT:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.changed.wait(), remaining)
            if not self._readers:
                raise AgentError("the kernel connection was closed")
        return self.snapshot(run)

    def snapshot(self, run: Run) -> RunSnapshot:
        """The run's state now, taking its buffered console; a finished run is forgotten."""
        if run.finished:
            status = run.status
            self._runs.pop(run.run_id, None)
        elif run.status == WAITING_INPUT:
            status = WAITING_INPUT
        else:
            status = CONTINUED
        options = dict(run.input_prompt or {}) if status == WAITING_INPUT else {}
        exit_code = run.exit_code if run.finished else None
        return RunSnapshot(run.run_id, status, exit_code, run.console.take(), options)

    async def _time_out(self, run: Run) -> None:
        """Interrupt an overdue run; it reports exec-timeout with what it printed."""
        with contextlib.suppress(Timeout, AgentError):
            await self.interrupt(timeout=5)
        # Give the kernel a moment to unwind, so the traceback is not left for the next run.
        loop = asyncio.get_running_loop()
        until = loop.time() + 2
        while not (run.reply_seen and run.idle_seen) and loop.time() < until:
            run.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.changed.wait(), until - loop.time())
        run.status = EXEC_TIMEOUT
        run.exit_code = run.exit_code if run.exit_code not in (None, 0) else 1
        self._by_msg.pop(run.msg_id, None)

    async def _request(self, send: Callable[[], str], timeout: float) -> dict[str, Any]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        msg_id = send()
        self._requests[msg_id] = future
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            raise Timeout(f"the kernel did not answer within {timeout:g} s") from None
        finally:
            self._requests.pop(msg_id, None)

    async def interrupt(self, timeout: float = 10) -> None:
        """Interrupt whatever runs now, through the control channel (any agent, no signals)."""

        def send() -> str:
            msg = self.client.session.msg("interrupt_request", {})
            self.client.control_channel.send(msg)
            return str(msg["header"]["msg_id"])

        await self._request(send, timeout)

    async def complete(self, code: str, cursor_pos: int, timeout: float = 30) -> dict[str, Any]:
        reply = await self._request(lambda: self.client.complete(code, cursor_pos), timeout)
        content: dict[str, Any] = reply["content"]
        return content

    def busy(self) -> bool:
        return any(not run.finished for run in self._runs.values())


class RunStream:
    """A run followed as it happens (the WebSocket): output as it comes, input, cancel."""

    def __init__(self, channel: KernelChannel, run: Run) -> None:
        self.channel = channel
        self.run = run
        self._input_requested = asyncio.Event()

    async def next(self, heartbeat: float = 1.0) -> RunSnapshot:
        """The next batch of output, an input request, or the end (status finished/timeout).

        An input request is reported once; the next call waits until the input was sent.
        """
        if self._input_requested.is_set():
            while self.run.status == WAITING_INPUT:
                self.run.changed.clear()
                if self.run.status != WAITING_INPUT:
                    break
                await self.run.changed.wait()
            self._input_requested.clear()
        snapshot = await self.channel.wait(self.run, heartbeat, any_output=True)
        if snapshot.status == WAITING_INPUT:
            self._input_requested.set()
        return snapshot

    def send_input(self, text: str) -> None:
        if self.run.status != WAITING_INPUT:
            raise Conflict("the run is not waiting for input")
        self.channel.send_input(self.run, text)

    async def cancel(self) -> None:
        """Interrupt the run if it still goes (the client went away); forget it either way."""
        if not self.run.finished:
            with contextlib.suppress(Timeout, AgentError):
                await self.channel.interrupt(timeout=5)
