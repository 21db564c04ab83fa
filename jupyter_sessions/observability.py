"""The observability parts, made once per server and shared: background tasks, logs kept and
followed, the usage sampler and abuse rules, commits and images, and the event streams.

``SessionsApp`` builds one ``Observability`` from its traitlets and hands it to the service
(``service.observability``): the processors take their actions from it, the service's teardown
keeps logs through it, and create checks the owner's converted images through it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .abuse import AbuseService
from .actions.execution import GetUsageAction
from .bgtasks import TaskService
from .commits import CommitConfig, CommitService
from .events import EventService, ServerEventBridge
from .logstore import LogService
from .repository.repository import SessionData
from .usage import UsageSampler

if TYPE_CHECKING:
    from .service import SessionService


@dataclass(frozen=True)
class ObservabilityConfig:
    commits: CommitConfig
    kept_log_bytes: int = 1 * 2**20
    usage_sample_interval: float = 10.0
    usage_points: int = 60
    usage_disk_every: int = 6
    abuse_rules: Mapping[str, Any] = field(default_factory=dict)


class Observability:
    def __init__(
        self, service: SessionService, config: ObservabilityConfig, log: logging.Logger
    ) -> None:
        self.service = service
        self.config = config
        self.log = log
        self.tasks = TaskService.for_service(service)
        self.logs = LogService(service, config.kept_log_bytes)
        self.sampler = UsageSampler(
            service,
            interval=config.usage_sample_interval,
            points=config.usage_points,
            disk_every=config.usage_disk_every,
            log=log,
        )
        self.abuse = AbuseService(service, self.sampler, config.abuse_rules)
        self.commits = CommitService(service, self.tasks, config.commits)
        self.events = EventService(service, self.tasks)
        self.bridge: ServerEventBridge | None = None

    def bridge_to(self, event_logger: Any, enabled: Callable[[], Awaitable[bool]]) -> None:
        """Copy events to the Jupyter server's event logger (when ``enabled()`` says so)."""
        if event_logger is None:
            return
        self.bridge = ServerEventBridge(self.service.hub, event_logger, enabled, self.log)
        self.bridge.register_schemas()

    async def start(self) -> None:
        """At start-up, after reconciliation: fail tasks the last server left, start loops."""
        await self.tasks.fail_interrupted()
        self.sampler.start()
        if self.bridge is not None:
            self.bridge.start()

    async def stop(self) -> None:
        await self.sampler.stop()
        await self.tasks.close()
        if self.bridge is not None:
            await self.bridge.stop()

    # --- what the service asks -----------------------------------------------------------

    async def keep_logs(self, session: SessionData, *, restarting: str | None = None) -> None:
        """At teardown (or at a restart, of kernel ``restarting``), before the container goes;
        never in the way of the teardown or restart itself."""
        if restarting is None:
            self.sampler.forget(session.id)
        try:
            await self.logs.keep(session, only=restarting)
        except Exception:
            self.log.exception("could not keep the logs of session %s", session.id)

    async def allowed_images(self, owner_access_key: str) -> list[str]:
        return await self.commits.owner_images(owner_access_key)

    async def get_usage(self, action: GetUsageAction) -> dict[str, Any]:
        """The figures now (per kernel, as before) and the sampled series of the main kernel."""
        session_id, kernels = await self.service.get_usage(action)
        return {
            "session_id": session_id,
            "kernels": kernels,
            "interval": self.sampler.interval,
            "series": [p.to_json() for p in self.sampler.series(session_id)],
        }
