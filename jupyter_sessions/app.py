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
from traitlets import (
    Bool,
    Dict,
    Enum,
    Float,
    Int,
    List,
    TraitError,
    Unicode,
    Union,
    default,
    validate,
)

from .agents.base import Agent, AgentRegistry
from .agents.docker import DockerAgent
from .agents.local import LOCAL_IMAGE, LocalAgent
from .agents.registry import AgentService, docker_agent_factory
from .commits import CommitConfig
from .errors import AgentUnavailable, InvalidRequest
from .events import EventHub
from .files import FilesConfig, FileService
from .handlers import default_handlers
from .handlers.proxy import install_proxy_routes, proxy_context
from .identity import IdentityResolver
from .kernels.connection import KernelConnections
from .kernels.provisioner import release_server_kernels
from .kernelspecs import install_kernelspecs, register_kernel_dir
from .mounts import MountPolicy
from .observability import Observability, ObservabilityConfig
from .processors import AuditMonitor, SessionProcessors
from .reconcile import Reconciler
from .repository import Database, SessionRepository
from .scheduler import FIFOScheduler
from .service import ServiceConfig, SessionService
from .services import DEFAULT_SERVICES, services_from_app
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
        PostgreSQL (``postgresql+psycopg://user:password@host/db``) is the choice for scale;
        the repository and scheduler tests run on both.""",
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
    scheduler_reserve_after = Float(
        60.0,
        config=True,
        help="""Seconds a PENDING session may wait for agent capacity before the scheduler
        reserves an agent for it (nothing else is placed there until it starts), so that a stream
        of small sessions can't starve a big one.""",
    )
    agent_heartbeat_interval = Float(
        10.0,
        config=True,
        help="""Seconds between probes of every agent. An agent that does not answer is marked
        LOST (nothing is placed there); when it answers again its sessions are reconciled.""",
    )
    agent_reserve = Dict(
        {},
        config=True,
        help="""Resources kept back from what each agent's engine reports, for the host itself,
        e.g. {"cpu": 1, "mem": "2g"}. An agent's own "reserve" (in agents, or POST agents)
        replaces it.""",
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
    # --- files in sessions (files.py, docs/files.md) -------------------------------------------
    files_max_upload_size = Int(
        16 * 2**30,
        config=True,
        help="""Most bytes of files one upload request may carry (413 past it; a request whose
        Content-Length says more is refused before its body is read).""",
    )
    files_max_file_size = Int(
        16 * 2**30, config=True, help="Most bytes one uploaded file may have (413 past it)."
    )
    files_storage_check_interval = Float(
        600.0,
        config=True,
        help="""Seconds between measurements of running sessions' /home/work against their
        policy's storage_quota (logged when over; 0 turns it off). Uploads always measure first.""",
    )
    # --- services and their proxy (services.py, proxy.py, docs/services.md) ---------------------
    services = List(
        Dict(),
        default_value=DEFAULT_SERVICES,
        config=True,
        help="""Services every session may start, besides those its image's label
        org.jupyter.sessions.services declares (these win on a name clash): a list of
        {"name", "protocol": "http"|"ws"|"tcp", "port", "command": [argv with {port} and
        {base_url}], "arguments": {"--option": "value regex"}, "environ": {"NAME": "value regex"},
        "ready_timeout": seconds, "description"}. Default: "http", static files of the work
        directory (python3 -m http.server).""",
    )
    service_proxy_mode = Enum(
        ["origin", "same-origin"],
        default_value="origin",
        config=True,
        help="""How services are served. "origin" (default): each on its own host name
        (service_domain), so an app's JavaScript can't reach the Jupyter server's cookies or API.
        "same-origin": under {base_url}jupyter-sessions/proxy/<session id>/<service>/ on the
        server's own origin, for hosts that expose one name and port; a proxied app then shares
        the server's origin and can act as the user there (docs/services.md).""",
    )
    service_direct_access = Bool(
        False,
        config=True,
        help="""Also publish sessions' preopen_ports on the agent's address (127.0.0.1 for the
        local engine), listed by GET sessions/{ref}/direct-access-info. Direct access bypasses
        the proxy and its authentication: anyone who can reach that address reaches the port.""",
    )
    service_domain = Unicode(
        "localhost",
        config=True,
        help="""Services are served on their own origin, http://<session id>-<service>.<domain>.
        "localhost" works on one machine (browsers resolve *.localhost to loopback); a
        deployment uses a wildcard DNS name that reaches this server.""",
    )
    service_url_port = Int(
        0,
        config=True,
        help="""Port in service URLs; 0: the port the API request came in on (this server's).""",
    )
    service_token_ttl = Float(
        120.0,
        config=True,
        help="""Seconds a service URL's token stays valid (it is exchanged for a cookie of the
        service's host on first use).""",
    )
    service_cookie_ttl = Float(
        8 * 3600.0,
        config=True,
        help="Seconds the proxy's cookie for one service host stays valid.",
    )
    service_proxy_limits = Dict(
        {},
        config=True,
        help="""Limits of proxied traffic, any of: connect_timeout (s, 10), response_timeout (s
        until the service's response headers, 300), body_timeout (s for a whole response body,
        3600), max_request_body (bytes, 1 GiB), max_header_size (bytes, 64 KiB), max_ws_message
        (bytes, 64 MiB).""",
    )
    mount_target = Unicode(
        "/home/work/notebooks",
        config=True,
        help="""Where a mount of the content root (POST sessions "mounts", and the kernel
        provisioner's notebook folder) appears in the container when it names no target; under
        /home/work or /mnt.""",
    )
    mount_read_only = Bool(
        False,
        config=True,
        help="""Mount folders of the content root read-only (True), or read-write unless a mount
        asks read-only (False). Only the server's owner may mount, only paths under the
        server's root_dir (symlinks resolved), never system directories; bound into
        containers of local Docker engines only (the local agent, without containers, only
        starts the kernel in the folder, and refuses read-only).""",
    )
    generate_kernelspecs = Bool(
        True,
        config=True,
        help="""Write a kernelspec per allowed image (and per shared template) at start-up, so
        notebooks can pick a session kernel (kernels/provisioner.py). They are written to
        <jupyter data dir>/jupyter_sessions/kernels, which the server's KernelSpecManager
        reads; other processes see them with that folder's parent on JUPYTER_PATH.""",
    )

    # --- observability: logs, usage and abuse, commits and images, events (observability.py) --
    kept_log_bytes = Int(
        1 * 2**20,
        config=True,
        help="""Bytes of each kernel's output kept at destroy (its tail), so GET logs still
        answers after the session ended.""",
    )
    usage_sample_interval = Float(
        10.0,
        config=True,
        help="""Seconds between usage samples of each running session (CPU, memory, processes,
        network); 0 turns the sampler off. GET usage shows the series; abuse rules judge it.""",
    )
    usage_points = Int(
        60, config=True, help="Usage samples kept per session (the series GET usage shows)."
    )
    usage_disk_every = Int(
        6,
        config=True,
        help="""Measure the size of /home/work (a du in the kernel's work directory) every this
        many usage samples.""",
    )
    abuse_rules = Dict(
        {},
        config=True,
        help="""Rules of GET sessions/{ref}/abusing-report, over the defaults
        {"cpu_percent": 90, "cpu_sustained_seconds": 300, "mem_fraction": 0.95,
        "max_processes": 512, "process_names": ["xmrig", "minerd", ...]}; null turns a rule
        off. CPU is a percentage of one core, sustained over the usage samples.""",
    )
    commit_dir = Unicode(
        "",
        config=True,
        help="""Where commit_session writes its archives (<dir>/<session id>/<time>.tar.gz).
        Empty: <jupyter data dir>/jupyter_sessions/commits.""",
    )
    commit_keep = Int(
        5,
        config=True,
        help="""Commit archives kept per session in commit_dir: after each commit the older ones
        are removed (0 keeps them all).""",
    )
    image_prefix = Unicode(
        "jupyter-sessions",
        config=True,
        help="""First part of the names of images converted from sessions:
        [<image_registry>/]<image_prefix>/<owner's access key, lower case>/<name>:<tag>.""",
    )
    image_registry = Unicode(
        "",
        config=True,
        help="""host:port of a registry converted images are pushed to (unless a request says
        "push": false); empty: none. A failed push fails the conversion's task, never silently.
        The engine must trust the registry (127.0.0.0/8 ones are trusted over plain HTTP).""",
    )
    emit_server_events = Bool(
        None,
        allow_none=True,
        config=True,
        help="""Also send session status and task events to the Jupyter server's event bus
        (/api/events/subscribe, which reaches every user of the server). None (default): only
        while no keypair other than the owner's exists. Ids and statuses only, never reasons,
        owners or environments.""",
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
                mounts=MountPolicy(
                    root_dir=self.serverapp.root_dir if self.serverapp else os.getcwd(),
                    default_target=self.mount_target,
                    read_only=self.mount_read_only,
                ),
            ),
            log=self.log,
        )
        self.audit = AuditMonitor(self.repository, self.log)
        self.service.observability = self._make_observability()
        self.service.services = services_from_app(self)
        self.service.files = FileService(
            self.service,
            FilesConfig(
                max_upload_size=self.files_max_upload_size,
                max_file_size=self.files_max_file_size,
                storage_check_interval=self.files_storage_check_interval,
            ),
        )
        self.processors = SessionProcessors(self.service, [self.audit])
        self.scheduler = FIFOScheduler(
            self.service,
            self.repository,
            self.registry,
            interval=self.scheduler_interval,
            sweep_interval=self.sweep_interval,
            reserve_after=self.scheduler_reserve_after,
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
        if self.generate_kernelspecs:
            register_kernel_dir(self, jupyter_data_dir())
        self.log.info("jupyter_sessions: store at %s", self.database.url.render_as_string())

    def initialize_handlers(self) -> None:
        self.handlers.extend(default_handlers)
        # Service hosts (<session>-<service>.<domain>) go to the proxy before any other route.
        assert self.serverapp is not None
        install_proxy_routes(self.serverapp.web_app, proxy_context(self))

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
        if self.service.config.mounts is not None:
            self.service.config.mounts.owner_access_key = owner.access_key
        kernels = getattr(self.serverapp, "kernel_manager", None)  # Jupyter kernels on sessions
        self.processors.kernel_access.connect_server(kernels, owner.access_key)
        agents = await self._make_agents(installation_id)
        agents += await self._agents_and_groups(installation_id, agents)
        for agent in agents:
            self.registry.add(agent)
        if agents and all(a.kind == LocalAgent.kind for a in agents):
            self._use_local_image()
        # Sessions outlive a server stop: agree with the agents before anything is scheduled.
        await Reconciler(self.service, log=self.log).run()
        if self.generate_kernelspecs:  # after _use_local_image: specs name the images in use
            await install_kernelspecs(self, jupyter_data_dir())
        await self.agent_service.heartbeat()
        self.agent_service.start()
        self.audit.start()
        await self.service.observability.start()  # type: ignore[union-attr]
        self.scheduler.start()

    def _make_observability(self) -> Observability:
        commit_dir = self.commit_dir or str(
            Path(jupyter_data_dir()) / "jupyter_sessions" / "commits"
        )
        observability = Observability(
            self.service,
            ObservabilityConfig(
                commits=CommitConfig(
                    commit_dir=Path(commit_dir),
                    image_prefix=self.image_prefix,
                    registry=self.image_registry,
                    keep=self.commit_keep,
                ),
                kept_log_bytes=self.kept_log_bytes,
                usage_sample_interval=self.usage_sample_interval,
                usage_points=self.usage_points,
                usage_disk_every=self.usage_disk_every,
                abuse_rules=dict(self.abuse_rules),
            ),
            self.log,
        )
        observability.bridge_to(getattr(self.serverapp, "event_logger", None), self._emit_events)
        return observability

    async def _emit_events(self) -> bool:
        """DESIGN §6: the server-wide bus only when configured so, or while the server has one
        user (no keypair but the owner's)."""
        if self.emit_server_events is not None:
            return bool(self.emit_server_events)
        now = asyncio.get_running_loop().time()
        cached = getattr(self, "_single_user", None)
        if cached is None or now - cached[0] > 10:
            keypairs = await self.accounts.list_keypairs()
            cached = (now, all(k.is_owner for k in keypairs if k.revoked_at is None))
            self._single_user = cached
        return bool(cached[1])

    async def _agents_and_groups(
        self, installation_id: str, configured: list[Agent]
    ) -> list[Agent]:
        """Reserves of the configured agents; the agents registered through the API; the
        heartbeat's settings (agents/registry.py)."""
        self.agent_service = AgentService.for_service(self.service)
        self.agent_service.configure(
            docker_agent_factory(
                installation_id,
                pids_limit=self.container_pids_limit,
                helper_image=self.default_image,
            ),
            default_reserve=ResourceSlot.parse(self.agent_reserve, "agent_reserve"),
            heartbeat_interval=self.agent_heartbeat_interval,
        )
        specs = {s.get("id"): s for s in self.agents} if isinstance(self.agents, list) else {}
        for agent in configured:
            reserve = specs.get(agent.id, {}).get("reserve")
            self.agent_service.apply_reserve(agent, ResourceSlot.parse(reserve, "reserve"))
        return await self.agent_service.load()

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
        await release_server_kernels(self)  # while sessions can still be reached
        await self.scheduler.stop()
        await AgentService.for_service(self.service).stop()
        await self.service.close()
        if self.service.services is not None:
            await self.service.services.close()
        if self.service.observability is not None:
            await self.service.observability.stop()
        await self.audit.stop()
        self.connections.close_all()
        await self.registry.close()
        self.database.close()
