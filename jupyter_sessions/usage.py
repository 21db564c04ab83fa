"""The usage sampler: a small in-memory time series per running session (CPU, memory, processes,
network, disk of the work directory), read by ``GET usage`` and by the abuse rules.

Every ``usage_sample_interval`` seconds the sampler asks each running session's main kernel for
its figures (Docker's one-shot stats, or /proc for local kernels) and turns the CPU seconds into a
percentage of one core over the interval. The size of ``/home/work`` is measured less often (a
``du`` in the kernel's work directory, as the kernel's user). The series lives in memory: it is
about the last minutes, and a restarted server starts a new one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .errors import SessionsError
from .repository.orm import utcnow
from .repository.repository import SessionData
from .types import SessionStatus

if TYPE_CHECKING:
    from .service import SessionService

#: Bytes of ``du -sk`` output read at most (one line is expected).
DU_OUTPUT_LIMIT = 4096


@dataclass(frozen=True)
class UsagePoint:
    at: datetime
    cpu_seconds: float
    #: Percent of one core over the interval since the previous point (None for the first).
    cpu_percent: float | None
    mem_bytes: int
    mem_limit: int | None
    pids: int
    net_rx_bytes: int | None
    net_tx_bytes: int | None
    #: Size of the work directory at the last measurement (None: not measured yet).
    disk_bytes: int | None

    def to_json(self) -> dict[str, Any]:
        return {
            "at": self.at.isoformat(),
            "cpu_seconds": self.cpu_seconds,
            "cpu_percent": self.cpu_percent,
            "mem_bytes": self.mem_bytes,
            "mem_limit": self.mem_limit,
            "pids": self.pids,
            "net_rx_bytes": self.net_rx_bytes,
            "net_tx_bytes": self.net_tx_bytes,
            "disk_bytes": self.disk_bytes,
        }


@dataclass
class _Series:
    points: deque[UsagePoint]
    samples: int = 0
    disk_bytes: int | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class UsageSampler:
    """Samples every running session's main kernel on an interval; keeps ``points`` per session."""

    def __init__(
        self,
        service: SessionService,
        *,
        interval: float,
        points: int,
        disk_every: int,
        log: logging.Logger | None = None,
    ) -> None:
        self.service = service
        self.interval = interval
        self.points = points
        self.disk_every = max(disk_every, 1)
        self.log = log or logging.getLogger(__name__)
        self._series: dict[str, _Series] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None and self.interval > 0:
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                await self.sample_all()
            except Exception:
                self.log.exception("usage sampling failed")
            await asyncio.sleep(self.interval)

    async def sample_all(self) -> None:
        running = await self.service.repository.in_statuses(
            {SessionStatus.RUNNING, SessionStatus.RUNNING_DEGRADED}
        )
        alive = {s.id for s in running}
        for gone in set(self._series) - alive:
            del self._series[gone]
        # Concurrently: one slow engine answer must not stretch every session's interval.
        await asyncio.gather(*(self.sample(session) for session in running))

    async def sample(self, session: SessionData) -> UsagePoint | None:
        """Take one point for a session now (also on demand, by the abuse report).

        One sample of a session at a time, and none closer than half an interval to the last:
        CPU over a few milliseconds says nothing, and would break a sustained run."""
        kernel = session.main_kernel
        if kernel is None or kernel.agent_id is None:
            return None
        series = self._series.setdefault(session.id, _Series(deque(maxlen=self.points)))
        async with series.lock:
            if series.points and self.interval > 0:
                age = (utcnow() - series.points[-1].at).total_seconds()
                if age < self.interval / 2:
                    return series.points[-1]
            try:
                agent = self.service.agents.get(kernel.agent_id)
                ref = kernel.container_id or agent.kernel_ref(session.id, kernel.name)
                figures = await agent.usage(ref)
            except SessionsError:
                return None
            if figures is None:
                return None
            now = utcnow()  # when the figures were read (the du below takes its own time)
            if series.samples % self.disk_every == 0:
                series.disk_bytes = await self._disk(agent, ref, series.disk_bytes)
            series.samples += 1
            return self._append(series, now, figures)

    def _append(self, series: _Series, now: datetime, figures: dict[str, Any]) -> UsagePoint:
        cpu = float(figures.get("cpu_seconds", 0.0))
        percent = None
        if series.points:
            last = series.points[-1]
            elapsed = (now - last.at).total_seconds()
            if elapsed > 0:
                percent = round(max(cpu - last.cpu_seconds, 0.0) / elapsed * 100, 1)
        point = UsagePoint(
            at=now,
            cpu_seconds=cpu,
            cpu_percent=percent,
            mem_bytes=int(figures.get("mem_bytes", 0)),
            mem_limit=figures.get("mem_limit"),
            pids=int(figures.get("pids", 0)),
            net_rx_bytes=figures.get("net_rx_bytes"),
            net_tx_bytes=figures.get("net_tx_bytes"),
            disk_bytes=series.disk_bytes,
        )
        series.points.append(point)
        return point

    async def _disk(self, agent: Any, ref: str, previous: int | None) -> int | None:
        """``du -sk .`` in the work directory (an argv, as the kernel's user)."""
        try:
            process = await agent.exec(ref, ["du", "-sk", "."])
            output = ""
            while (chunk := await asyncio.wait_for(process.read(), 30)) is not None:
                if chunk[0] == "stdout" and len(output) < DU_OUTPUT_LIMIT:
                    output += chunk[1]
            await asyncio.wait_for(process.wait(), 30)
            return int(output.split()[0]) * 1024
        except (SessionsError, TimeoutError, ValueError, IndexError):
            return previous

    def series(self, session_id: str) -> list[UsagePoint]:
        found = self._series.get(session_id)
        return list(found.points) if found is not None else []

    def forget(self, session_id: str) -> None:
        """Drop a session's series (at teardown; the loop also drops ended sessions')."""
        self._series.pop(session_id, None)
