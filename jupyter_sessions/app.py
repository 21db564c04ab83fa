"""SessionsApp: the Jupyter Server extension. Configuration, wiring of the layers, background loops.

Everything configurable is a traitlet here (``c.SessionsApp.<name>``) with its help text; the
layers below receive plain values. The store is migrated when the extension loads; agents, the
owner's keypair, the scheduler and the audit writer start once the event loop runs.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
from pathlib import Path
from typing import Any

from jupyter_core.paths import jupyter_data_dir
from jupyter_server.extension.application import ExtensionApp
from traitlets import Dict, Float, Int, List, TraitError, Unicode, Union, default, validate

from .agents.base import Agent, AgentRegistry
from .agents.docker import DockerAgent
from .agents.local import LOCAL_IMAGE, LocalAgent
from .errors import AgentUnavailable, InvalidRequest
from .events import EventHub
from .handlers import default_handlers
from .identity import IdentityResolver
from .kernels.connection import KernelConnections
from .processors import AuditMonitor, SessionProcessors
from .reconcile import Reconciler
from .repository import Database, SessionRepository
from .scheduler import FIFOScheduler
from .service import ServiceConfig, SessionService
from .types import ResourceSlot, SessionStatus

DEFAULT_DEADLINES = {
    "SCHEDULED": 60,
    "PREPARING": 300,
    "PULLING": 900,
    "PREPARED": 60,
    "CREATING": 120,
    "RESTARTING": 180,
    "TERMINATING": 120,
}


def _default_image_tag() -> str:
    from .images import image_tag

    return image_tag()


class SessionsApp(ExtensionApp):
    """Managed compute sessions: containers hosting Jupyter kernels, behind a REST API."""

    name = "jupyter_sessions"
    load_other_extensions = True

    db_url = Unicode(
        "",
        config=True,
        help="""SQLAlchemy URL of the session store. Empty: a SQLite file (WAL) at
        <jupyter data dir>/jupyter_sessions/sessions.db, readable by the server's user alone.
        Only SQLite is tested so far; PostgreSQL support is planned and not yet tested.""",
    )
    agents = Union(
        [Unicode(), List(Dict())],
        default_value="auto",
        config=True,
        help="""Where kernels run. "auto": the local Docker engine when one answers at start-up,
        else the local agent (subprocess kernels, NO isolation, image "local"); which one is said
        loudly in the log and in GET agents. Or a list of agents, each
        {"id": "docker-1", "kind": "docker", "url": "unix:///var/run/docker.sock",
        "scaling_group": "default", "kernel_host": "127.0.0.1", "host_firewall": "auto"} or
        {"id": "local", "kind": "local", "root_dir": "..."}; an explicitly configured agent never
        falls back to another. host_firewall says how sessions are kept off the engine host's own
        ports: "auto" (iptables on this host when the server is root beside the engine's bridge,
        else through a short-lived helper container of the default image), "direct", "engine" or
        "off"; GET agents says whether the rule holds.""",
    )
    docker_url = Unicode(
        config=True,
        help="""The Docker engine that agents "auto" probes. Default: $DOCKER_HOST, else
        unix:///var/run/docker.sock.""",
    )
    default_image = Unicode(
        config=True,
        help="""Image of sessions that name none. Default: the image built by
        `jupyter-sessions build-image`, tagged by a hash of its recipe.""",
    )
    allowed_images = List(
        Unicode(),
        config=True,
        help="""Images sessions may use (exact names with tags). Default: the default image only.
        Anything else is refused with 400 naming these.""",
    )
    default_resources = Dict(
        {"cpu": 1, "mem": "1g"},
        config=True,
        help="""Resources of a session for the slots its request leaves out, e.g.
        {"cpu": 1, "mem": "1g"}. Memory takes binary k/m/g suffixes.""",
    )
    max_session_resources = Dict(
        {},
        config=True,
        help="""Largest resources one session may ask for, slot by slot, e.g. {"cpu": 4,
        "mem": "8g"}; more is refused with 403. Empty: only the largest agent's capacity limits.""",
    )
    deadlines = Dict(
        DEFAULT_DEADLINES,
        config=True,
        help="""Seconds a session may stay in each transitional status (SCHEDULED, PREPARING,
        PULLING, PREPARED, CREATING, RESTARTING, TERMINATING) before it moves to ERROR (or
        TERMINATED when it was terminating). PENDING has no deadline.""",
    )
    owner_name = Unicode(
        config=True,
        help="""User name of the server's owner, to whom requests authenticated by Jupyter's own
        token or login cookie belong. Default: $JUPYTERHUB_USER, else the OS user.""",
    )
    scheduler_interval = Float(
        2.0, config=True, help="Seconds between passes of the scheduler over the pending queue."
    )
    sweep_interval = Float(
        10.0,
        config=True,
        help="Seconds between sweeps for sessions past their deadline or whose container vanished.",
    )
    execute_flush_interval = Float(
        2.0,
        config=True,
        help="""Seconds an execute call waits for a run before answering "continued" with the
        output so far (the client then calls again with mode "continue"). A request may set
        options.flush_interval.""",
    )
    execute_timeout = Float(
        0.0,
        config=True,
        help="""Seconds a run may take before it is interrupted and answers "exec-timeout"; 0 for
        no limit. A request may set options.timeout.""",
    )
    execute_max_console_bytes = Int(
        8 * 2**20,
        config=True,
        help="""Output one run may buffer while nobody polls it; past this the oldest output is
        dropped and a "log" item says how much.""",
    )
    container_pids_limit = Int(
        1024, config=True, help="Most processes one session container may run (Docker pids limit)."
    )

    @default("default_image")
    def _default_default_image(self) -> str:
        return _default_image_tag()

    @default("allowed_images")
    def _default_allowed_images(self) -> list[str]:
        return [self.default_image]

    @default("docker_url")
    def _default_docker_url(self) -> str:
        return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"

    @default("owner_name")
    def _default_owner_name(self) -> str:
        return os.environ.get("JUPYTERHUB_USER") or getpass.getuser()

    @validate("agents")
    def _validate_agents(self, proposal: dict[str, Any]) -> Any:
        """Accept "auto", a list of agent objects, or that list as JSON (the command line)."""
        value = proposal["value"]
        if isinstance(value, str) and value != "auto":
            try:
                value = json.loads(value)
            except ValueError:
                raise TraitError('agents must be "auto" or a JSON list of agent objects') from None
        if value == "auto":
            return value
        if not isinstance(value, list) or not all(isinstance(a, dict) for a in value):
            raise TraitError('agents must be "auto" or a list of agent objects')
        for spec in value:
            if spec.get("kind", "docker") not in ("docker", "local"):
                raise TraitError(f"agents: unknown agent kind {spec.get('kind')!r}")
            if spec.get("kind", "docker") == "docker" and not spec.get("id"):
                raise TraitError("agents: every Docker agent needs an id")
        return value

    @validate("deadlines")
    def _validate_deadlines(self, proposal: dict[str, Any]) -> dict[str, Any]:
        value = proposal["value"]
        for status, seconds in value.items():
            SessionStatus(status)
            if not isinstance(seconds, int | float) or seconds <= 0:
                raise ValueError(f"deadline of {status} must be a positive number of seconds")
        return value

    # --- wiring -----------------------------------------------------------------------------

    def _database_url(self) -> str:
        if self.db_url:
            return self.db_url
        path = Path(jupyter_data_dir()) / "jupyter_sessions" / "sessions.db"
        return f"sqlite:///{path}"

    def initialize_settings(self) -> None:
        try:
            default_resources = ResourceSlot.parse(self.default_resources, "default_resources")
            max_resources = ResourceSlot.parse(self.max_session_resources, "max_session_resources")
        except InvalidRequest as exc:
            raise ValueError(f"SessionsApp: {exc.message}") from None
        self.database = Database(self._database_url())
        self.database.migrate()
        self.repository = SessionRepository(self.database)
        self.hub = EventHub()
        self.identity = IdentityResolver()
        self.connections = KernelConnections(max_console_bytes=self.execute_max_console_bytes)
        self.registry = AgentRegistry([], log=self.log)
        deadlines = {SessionStatus(k): float(v) for k, v in self.deadlines.items()}
        self.service = SessionService(
            self.repository,
            self.registry,
            self.connections,
            self.hub,
            ServiceConfig(
                default_image=self.default_image,
                allowed_images=list(self.allowed_images),
                default_resources=default_resources,
                max_session_resources=max_resources,
                deadlines=deadlines,
                flush_interval=self.execute_flush_interval,
                execute_timeout=self.execute_timeout,
            ),
            log=self.log,
        )
        self.audit = AuditMonitor(self.repository, self.log)
        self.processors = SessionProcessors(self.service, [self.audit])
        self.scheduler = FIFOScheduler(
            self.service,
            self.repository,
            self.registry,
            interval=self.scheduler_interval,
            sweep_interval=self.sweep_interval,
            log=self.log,
        )
        # Keypairs, resource policies, audit log; keypair users as guests of the server.
        from .accounts import AccountProcessors, AccountService
        from .identity import install_keypair_auth
        from .repository.accounts import AccountRepository

        self.accounts = AccountRepository(self.database)
        self.account_service = AccountService(
            self.accounts, read_audit=self.repository.audit_log, flush_audit=self.audit.flush
        )
        self.account_processors = AccountProcessors(self.account_service, [self.audit])
        install_keypair_auth(self.serverapp, self.settings, self.accounts.credentials)
        self._started: asyncio.Future[None] | None = None
        self.log.info("jupyter_sessions: store at %s", self.database.url.render_as_string())

    def initialize_handlers(self) -> None:
        self.handlers.extend(default_handlers)

    async def _start_jupyter_server_extension(self, serverapp: Any) -> None:
        await self.ensure_started()

    async def ensure_started(self) -> None:
        """Start what needs the event loop, once (at server start, or at the first request)."""
        if self._started is None:
            self._started = asyncio.get_running_loop().create_future()
            try:
                await self._start()
            except Exception as exc:
                # Every later request answers 503 with the cause (logged once, with traceback).
                self.log.exception("jupyter_sessions failed to start")
                failure = AgentUnavailable(
                    f"the sessions extension failed to start: {type(exc).__name__}: {exc}"
                )
                self._started.set_exception(failure)
                raise failure from None
            self._started.set_result(None)
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        installation_id = await self.repository.installation_id()
        self.installation_id = installation_id
        owner = await self.repository.ensure_owner_keypair(self.owner_name)
        self.identity.set_owner(owner)
        agents = await self._make_agents(installation_id)
        for agent in agents:
            self.registry.add(agent)
        if agents and all(a.kind == LocalAgent.kind for a in agents):
            self._use_local_image()
        # Sessions outlive a server stop: agree with the agents before anything is scheduled.
        await Reconciler(self.service, log=self.log).run()
        await self.service.refresh_agents()
        self.audit.start()
        self.scheduler.start()

    def _local_root(self) -> Path:
        root = Path(jupyter_data_dir()) / "jupyter_sessions" / "local"
        root.parent.mkdir(parents=True, exist_ok=True)
        return root

    def _use_local_image(self) -> None:
        """Local agents offer one pseudo-image; unless configured otherwise, sessions use it."""
        configured = self.config.get("SessionsApp", {})
        if "default_image" not in configured:
            self.service.config.default_image = LOCAL_IMAGE
        if "allowed_images" not in configured:
            self.service.config.allowed_images = [self.service.config.default_image]

    async def _make_agents(self, installation_id: str) -> list[Agent]:
        if self.agents == "auto":
            docker = DockerAgent(
                "local-docker",
                installation_id=installation_id,
                url=self.docker_url,
                pids_limit=self.container_pids_limit,
                helper_image=self.default_image,
            )
            info = await docker.info()
            if info.reachable:
                self.log.warning(
                    "jupyter_sessions: agent 'auto' → the local Docker engine (%s)", info.detail
                )
                return [docker]
            await docker.close()
            self.log.warning(
                "jupyter_sessions: agent 'auto' found no Docker engine (%s) → LOCAL subprocess "
                "kernels in %s: NO ISOLATION (fine for one person's machine, not for others)",
                info.detail,
                self._local_root(),
            )
            return [
                LocalAgent("local", installation_id=installation_id, root_dir=self._local_root())
            ]
        agents: list[Agent] = []
        for spec in self.agents:
            kind = spec.get("kind", "docker")
            if kind == "local":
                agents.append(
                    LocalAgent(
                        spec.get("id", "local"),
                        installation_id=installation_id,
                        root_dir=Path(spec.get("root_dir") or self._local_root()),
                        scaling_group=spec.get("scaling_group", "default"),
                    )
                )
                continue
            if kind != "docker":
                raise ValueError(f"SessionsApp.agents: unknown agent kind {kind!r}")
            agents.append(
                DockerAgent(
                    spec["id"],
                    installation_id=installation_id,
                    url=spec.get("url", "unix:///var/run/docker.sock"),
                    scaling_group=spec.get("scaling_group", "default"),
                    kernel_host=spec.get("kernel_host"),
                    pids_limit=self.container_pids_limit,
                    helper_image=self.default_image,
                    host_firewall=spec.get("host_firewall", "auto"),
                )
            )
        return agents

    async def stop_extension(self) -> None:
        if self._started is None:
            self.database.close()
            return
        await self.scheduler.stop()
        await self.service.close()
        await self.audit.stop()
        self.connections.close_all()
        await self.registry.close()
        self.database.close()
