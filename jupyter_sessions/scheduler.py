"""The scheduler: takes PENDING sessions first in, first out and places them on agents.

This first cut places each pending session on the first reachable agent of its scaling group whose
capacity can hold it; quotas, dependencies and smarter placement join later. A second loop sweeps
sessions past their status deadlines or whose containers vanished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from .agents.base import AgentRegistry
from .repository.repository import SessionRepository
from .service import SessionService
from .types import ResourceSlot, SessionStatus


class FIFOScheduler:
    def __init__(
        self,
        service: SessionService,
        repository: SessionRepository,
        agents: AgentRegistry,
        *,
        interval: float = 2.0,
        sweep_interval: float = 10.0,
        log: logging.Logger | None = None,
    ) -> None:
        self.service = service
        self.repository = repository
        self.agents = agents
        self.interval = interval
        self.sweep_interval = sweep_interval
        self.log = log or logging.getLogger(__name__)
        self.wakeup = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        service.attach_scheduler_wakeup(self.wakeup)

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._run(self.schedule, self.interval, self.wakeup)),
            loop.create_task(self._run(self.service.sweep, self.sweep_interval, None)),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _run(
        self,
        tick: Callable[[], Awaitable[None]],
        interval: float,
        wakeup: asyncio.Event | None,
    ) -> None:
        while True:
            try:
                await tick()
            except Exception:
                self.log.exception("%s failed; retrying in %g s", tick.__name__, interval)
            if wakeup is None:
                await asyncio.sleep(interval)
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), interval)
            wakeup.clear()

    async def schedule(self) -> None:
        """One pass over the pending queue, oldest first."""
        for session in await self.repository.in_statuses([SessionStatus.PENDING]):
            if self.service.is_busy(session.id):
                continue
            wanted = ResourceSlot.parse(session.resources)
            for agent, info in await self.agents.reachable(session.scaling_group):
                if wanted.fits_in(info.capacity):
                    self.service.start(session, agent)
                    break
