"""Kernel logs: read now, followed live, and kept after destroy.

At teardown the service hands each kernel to ``LogService.keep`` before its container goes: the
last ``kept_log_bytes`` of its output are saved in the ``kernel_logs`` table, so ``GET logs``
still answers once the session ended (and an ended batch session's command output, kept by the
service itself, answers when nothing else was kept).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from .actions.execution import GetContainerLogsAction
from .actions.observability import FollowLogsAction
from .agents.docker import DockerAgent
from .agents.docker_logs import follow_logs
from .errors import NotFound, SessionsError
from .repository.orm import KernelLogRow, utcnow
from .repository.repository import KernelData, SessionData
from .types import TERMINAL_STATUSES

if TYPE_CHECKING:
    from .service import SessionService

#: How often a followed log of an agent without a live stream (the local agent) is re-read.
POLL_INTERVAL = 0.5


def tail_lines(text: str, tail: int | None) -> str:
    if not tail:
        return text
    return "".join(text.splitlines(keepends=True)[-tail:])


class LogService:
    """``GET sessions/{ref}/logs`` (with ``follow``), and the logs kept at teardown."""

    def __init__(self, service: SessionService, kept_bytes: int) -> None:
        self.service = service
        self.kept_bytes = kept_bytes

    def _kernel(self, session: SessionData, name: str) -> KernelData:
        kernel = next((k for k in session.kernels if k.name == name), None)
        if kernel is None:
            names = ", ".join(k.name for k in session.kernels)
            raise NotFound(f"no kernel {name!r} in this session (it has {names})")
        return kernel

    async def get_container_logs(self, action: GetContainerLogsAction) -> str:
        session = await self.service._resolve(action)
        kernel = self._kernel(session, action.kernel)
        text = ""
        if kernel.agent_id is not None and session.status not in TERMINAL_STATUSES:
            agent = self.service.agents.get(kernel.agent_id)
            ref = kernel.container_id or agent.kernel_ref(session.id, kernel.name)
            text = await agent.logs(ref, tail=action.tail)
        # An ended batch session's main kernel answers with its command's output (what the user
        # ran), not the kernel process's own log kept at teardown.
        stored = str(session.status_data.get("batch", {}).get("output", ""))
        if not text and stored and kernel.cluster_role == "main":
            text = tail_lines(stored, action.tail)
        if not text:
            text = tail_lines(await self.kept(session.id, kernel.name), action.tail)
        return text

    async def follow_container_logs(self, action: FollowLogsAction) -> AsyncIterator[str]:
        """Resolve now (so a 404 is an answer, not a broken stream); the iterator then yields
        the tail and everything after it, until the kernel ends."""
        session = await self.service._resolve(action)
        kernel = self._kernel(session, action.kernel)
        if kernel.agent_id is None or session.status in TERMINAL_STATUSES:
            return self._once(
                await self.get_container_logs(
                    GetContainerLogsAction(
                        caller=action.caller,
                        ref=session.id,
                        owner_access_key=action.owner_access_key,
                        kernel=kernel.name,
                        tail=action.tail,
                    )
                )
            )
        agent = self.service.agents.get(kernel.agent_id)
        ref = kernel.container_id or agent.kernel_ref(session.id, kernel.name)
        if isinstance(agent, DockerAgent):
            return follow_logs(agent.client(), ref, tail=action.tail)
        return self._poll(session.id, kernel, ref, action.tail)

    @staticmethod
    async def _once(text: str) -> AsyncIterator[str]:
        if text:
            yield text

    async def _poll(
        self, session_id: str, kernel: KernelData, ref: str, tail: int | None
    ) -> AsyncIterator[str]:
        """Follow by re-reading (agents whose logs are files): new text as it appears."""
        assert kernel.agent_id is not None
        agent = self.service.agents.get(kernel.agent_id)
        seen = await agent.logs(ref)
        first = tail_lines(seen, tail)
        if first:
            yield first
        while True:
            await asyncio.sleep(POLL_INTERVAL)
            try:
                alive = await agent.kernel_exists(ref)
                text = await agent.logs(ref)
            except SessionsError:
                return
            if len(text) > len(seen) and text.startswith(seen):
                yield text[len(seen) :]
            seen = text or seen
            if not alive:
                return

    # --- kept after destroy --------------------------------------------------------------

    async def keep(self, session: SessionData, *, only: str | None = None) -> None:
        """Save the tail of each kernel's output (or kernel ``only``'s) before its container is
        removed: at teardown, and for Docker at a restart too (a new container starts a new
        log; the local agent's log file goes on across restarts, so it is kept once)."""
        for kernel in session.kernels:
            if kernel.agent_id is None or (only is not None and kernel.name != only):
                continue
            try:
                agent = self.service.agents.get(kernel.agent_id)
                if only is not None and not isinstance(agent, DockerAgent):
                    continue
                ref = kernel.container_id or agent.kernel_ref(session.id, kernel.name)
                text = await agent.logs(ref)
            except SessionsError as exc:
                self.service.log.warning("could not keep the logs of %s: %s", session.id, exc)
                continue
            if text:
                await self._save(session.id, kernel.name, text)

    async def _save(self, session_id: str, kernel: str, text: str) -> None:
        """Append to what earlier containers of the kernel left; keep the last bytes."""

        def work(db: Session) -> None:
            row = db.get(KernelLogRow, (session_id, kernel))
            if row is None:
                row = KernelLogRow(session_id=session_id, kernel=kernel, text="", dropped_bytes=0)
                db.add(row)
            raw = (row.text + text).encode()
            dropped = max(len(raw) - self.kept_bytes, 0)
            row.text = raw[dropped:].decode("utf-8", "ignore")
            row.dropped_bytes = (row.dropped_bytes or 0) + dropped
            row.saved_at = utcnow()

        await self.service.repository.db.run(work)

    async def kept(self, session_id: str, kernel: str) -> str:
        def work(db: Session) -> str:
            row = db.get(KernelLogRow, (session_id, kernel))
            return row.text if row is not None else ""

        return await self.service.repository.db.run(work)
