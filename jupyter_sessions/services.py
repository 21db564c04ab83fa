"""Services inside sessions: the catalog, validation, start/stop/list with health, proxy targets.

A service is a process inside a session's kernel container (or beside a local kernel) that listens
on a port and is reached through the proxy (``proxy.py``, ``handlers/proxy.py``). The catalog of a
session is the union of its image's label ``org.jupyter.sessions.services`` (e.g. ``jupyter``),
the server's config (``c.SessionsApp.services``; config wins on a name clash) and the session's
``preopen_ports`` (``port-<n>``: declared at create, run by the user). Nothing from a request
reaches a command line unchecked: arguments and environment must be declared by the catalog
entry and match its patterns, and every argv item stays one item (no shell).

Running services live in memory (``ServicesService._running``): what the proxy may reach is only
what this module registered, an address the agent gave for that session's container and a port
the catalog declared. A session that ends or restarts loses its services (its processes died with
the container). Status changes are published on the EventHub as ``service_status``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import signal
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .actions.services import (
    DirectAccessInfo,
    GetDirectAccessInfoAction,
    ListServicesAction,
    ServiceView,
    ShutdownServiceAction,
    StartServiceAction,
    StartServiceResult,
)
from .agents import stop_listener
from .agents.base import Agent, ExecProcess
from .errors import (
    AgentError,
    Conflict,
    InvalidRequest,
    InvalidStatus,
    NotFound,
    SessionsError,
    Timeout,
)
from .events import Event
from .proxy import ProxyLimits, ProxyTokens, TokenClaims, service_host_label
from .repository.repository import SessionData
from .types import SessionStatus

if TYPE_CHECKING:
    from .service import SessionService

LABEL_SERVICES = "org.jupyter.sessions.services"
#: The program that checks who holds a service's port inside its container, and stops it.
STOP_LISTENER = Path(stop_listener.__file__).read_text(encoding="utf-8")
PROTOCOLS = ("http", "ws", "tcp")
#: A DNS label once joined to the session id (``<id>-<name>``), so the host name stays valid.
SERVICE_NAME = re.compile(r"^[a-z](?:[a-z0-9-]{0,22}[a-z0-9])?$")
#: Ports of the kernel itself inside the container (agents/docker.py KERNEL_PORTS).
RESERVED_PORTS = frozenset(range(5000, 5005))
MIN_PORT, MAX_PORT = 1024, 65535
MAX_PREOPEN_PORTS = 8
#: Default pattern of a declared argument's or variable's value: one plain token.
DEFAULT_VALUE_PATTERN = r"[\w.,:/=@+%-]{0,256}"
MAX_VALUE_LENGTH = 4096
#: Seconds one readiness or health probe may take (always shorter than the readiness timeout).
PROBE_TIMEOUT = 3.0
#: Output of a service kept for diagnostics (its tail is shown when it fails to start).
SERVICE_OUTPUT_BYTES = 64 * 1024
#: Statuses whose session loses its services (the container is gone or being replaced).
ENDING_STATUSES = frozenset(
    {
        SessionStatus.TERMINATING,
        SessionStatus.TERMINATED,
        SessionStatus.CANCELLED,
        SessionStatus.ERROR,
        SessionStatus.RESTARTING,
    }
)

#: The built-in services declared by config (the image declares ``jupyter``).
DEFAULT_SERVICES: list[dict[str, Any]] = [
    {
        "name": "http",
        "protocol": "http",
        "port": 8000,
        "command": [
            "python3",
            "-m",
            "http.server",
            "{port}",
            "--bind",
            "0.0.0.0",
            "--directory",
            ".",
        ],
        "description": "static files of the work directory",
    },
]


@dataclass(frozen=True)
class ServiceSpec:
    """One catalog entry: how to start a service and what a request may add to it."""

    name: str
    protocol: str
    port: int
    #: argv with ``{port}`` and ``{base_url}`` placeholders; empty for a preopened port.
    command: tuple[str, ...]
    #: Option name → pattern its value must match in full ("" for a flag without value).
    arguments: Mapping[str, str] = field(default_factory=dict)
    #: Variable name → pattern its value must match in full.
    environ: Mapping[str, str] = field(default_factory=dict)
    #: Seconds to wait for the service to answer after it started.
    ready_timeout: float = 120.0
    description: str = ""
    source: str = "config"


def _check_pattern(pattern: Any, what: str) -> str:
    if not isinstance(pattern, str):
        raise InvalidRequest(f"{what} must be a regular expression string")
    try:
        re.compile(pattern)
    except re.error as exc:
        raise InvalidRequest(f"{what} is not a valid regular expression: {exc}") from None
    return pattern


def _patterns(raw: Any, what: str) -> dict[str, str]:
    """Declared arguments or variables: a list of names (default pattern) or name → pattern."""
    if raw is None:
        return {}
    if isinstance(raw, list):
        raw = {name: DEFAULT_VALUE_PATTERN for name in raw}
    if not isinstance(raw, Mapping):
        raise InvalidRequest(f"{what} must be a list of names or an object of patterns")
    return {str(name): _check_pattern(pattern, f"{what}.{name}") for name, pattern in raw.items()}


def check_port(port: Any, what: str = "port") -> int:
    if isinstance(port, bool) or not isinstance(port, int) or not MIN_PORT <= port <= MAX_PORT:
        raise InvalidRequest(f"{what} must be an integer from {MIN_PORT} to {MAX_PORT}", field=what)
    if port in RESERVED_PORTS:
        raise InvalidRequest(
            f"{what} {port} is reserved for the kernel (5000-5004)", field=what, port=port
        )
    return port


def parse_service(raw: Any, source: str) -> ServiceSpec:
    """One declared service, checked; raises InvalidRequest naming what is wrong."""
    if not isinstance(raw, Mapping):
        raise InvalidRequest(f"{source}: a service must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not SERVICE_NAME.match(name):
        raise InvalidRequest(f"{source}: service name {name!r} must match {SERVICE_NAME.pattern}")
    protocol = raw.get("protocol", "http")
    if protocol not in PROTOCOLS:
        raise InvalidRequest(f"{source}: service {name}: protocol must be one of {PROTOCOLS}")
    command = raw.get("command") or []
    if not isinstance(command, list) or not all(isinstance(c, str) for c in command):
        raise InvalidRequest(f"{source}: service {name}: command must be a list of strings")
    timeout = raw.get("ready_timeout", 120.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise InvalidRequest(f"{source}: service {name}: ready_timeout must be positive")
    return ServiceSpec(
        name=name,
        protocol=protocol,
        port=check_port(raw.get("port"), f"{source}: service {name}: port"),
        command=tuple(command),
        arguments=_patterns(raw.get("arguments"), f"{source}: service {name}: arguments"),
        environ=_patterns(raw.get("environ"), f"{source}: service {name}: environ"),
        ready_timeout=max(float(timeout), PROBE_TIMEOUT * 2),
        description=str(raw.get("description") or ""),
        source=source,
    )


def parse_catalog(raw: Any, source: str) -> dict[str, ServiceSpec]:
    """A list of declared services (a label's JSON text, or config), by name."""
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise InvalidRequest(f"{source}: not valid JSON: {exc}") from None
    if not isinstance(raw, list):
        raise InvalidRequest(f"{source}: services must be a list")
    specs = [parse_service(item, source) for item in raw]
    return {spec.name: spec for spec in specs}


def preopen_service(port: int) -> ServiceSpec:
    """A port declared at create: the user runs whatever listens there; the proxy may reach it."""
    return ServiceSpec(
        name=f"port-{port}",
        protocol="http",
        port=port,
        command=(),
        description=f"preopened port {port}",
        source="preopen",
    )


def parse_preopen_ports(raw: Any) -> tuple[int, ...]:
    """``preopen_ports`` of ``POST sessions``: distinct ports, at most ``MAX_PREOPEN_PORTS``."""
    if raw is None:
        return ()
    if not isinstance(raw, list) or len(raw) > MAX_PREOPEN_PORTS:
        raise InvalidRequest(
            f"preopen_ports must be a list of at most {MAX_PREOPEN_PORTS} ports",
            field="preopen_ports",
        )
    ports = [check_port(p, "preopen_ports") for p in raw]
    if len(set(ports)) != len(ports):
        raise InvalidRequest("preopen_ports lists a port twice", field="preopen_ports")
    return tuple(ports)


def build_argv(
    spec: ServiceSpec, port: int, base_url: str, arguments: Mapping[str, Any]
) -> list[str]:
    """The command with its placeholders filled and the request's declared arguments appended.

    Each argument becomes exactly one argv item (``name`` or ``name=value``), after its value
    matched the declared pattern in full: nothing is ever split or given to a shell.
    """
    argv = [
        item.replace("{port}", str(port)).replace("{base_url}", base_url) for item in spec.command
    ]
    for name, value in arguments.items():
        pattern = _declared(spec, spec.arguments, "argument", name)
        if value is True and pattern == "":
            argv.append(name)
            continue
        argv.append(f"{name}={_matching(value, pattern, 'argument', name)}")
    return argv


def check_environ(spec: ServiceSpec, environ: Mapping[str, Any]) -> dict[str, str]:
    return {
        name: _matching(value, _declared(spec, spec.environ, "variable", name), "variable", name)
        for name, value in environ.items()
    }


def _declared(spec: ServiceSpec, declared: Mapping[str, str], what: str, name: str) -> str:
    """The pattern the catalog entry declares for ``name``; InvalidRequest if it declares none."""
    field_name = "arguments" if what == "argument" else "environ"
    if name not in declared:
        allowed = ", ".join(sorted(declared)) or "none"
        raise InvalidRequest(
            f"{what} {name!r} is not declared by service {spec.name} (allowed: {allowed})",
            field=field_name,
        )
    return declared[name]


def _matching(value: Any, pattern: str, what: str, name: str) -> str:
    """``value`` if it is one line of text matching ``pattern`` in full."""
    if (
        not isinstance(value, str)
        or len(value) > MAX_VALUE_LENGTH
        or "\0" in value
        or "\n" in value
        or not re.fullmatch(pattern, value)
    ):
        field_name = "arguments" if what == "argument" else "environ"
        raise InvalidRequest(
            f"{what} {name!r}: the value does not match {pattern!r}", field=field_name
        )
    return value


async def probe(host: str, port: int, protocol: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Whether something answers at host:port (an HTTP service: any HTTP status line)."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    try:
        if protocol != "http":
            return True
        writer.write(b"HEAD / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        await asyncio.wait_for(writer.drain(), timeout)
        line = await asyncio.wait_for(reader.readline(), timeout)
        return line.startswith(b"HTTP/")
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


@dataclass
class RunningService:
    """A started (or preopened) service: where the proxy reaches it, and its process."""

    session_id: str
    owner_access_key: str
    spec: ServiceSpec
    host: str
    port: int
    base_url: str
    started_at: datetime
    process: ExecProcess | None = None
    output: OutputTail = field(default_factory=lambda: OutputTail(SERVICE_OUTPUT_BYTES))
    status: str = "starting"
    exit_code: int | None = None
    pump: asyncio.Task[None] | None = None
    #: The agent and container of a service found answering on its port after a server restart
    #: and taken over (no process handle): shutting it down asks the container to stop what
    #: listens there (agents/stop_listener.py).
    adopted_from: tuple[Agent, str] | None = None

    @property
    def knows_base_url(self) -> bool:
        """Whether the app was told its base URL (else the same-origin proxy strips it)."""
        return any("{base_url}" in item for item in self.spec.command)


@dataclass
class ServicesConfig:
    """The knobs of services and their URLs (from SessionsApp traitlets)."""

    services: list[dict[str, Any]] = field(default_factory=lambda: list(DEFAULT_SERVICES))
    #: "origin" (a host name per service) or "same-origin" (a path under the server's base URL).
    proxy_mode: str = "origin"
    #: Services' host names are ``<session id>-<service>.<domain>``.
    domain: str = "localhost"
    #: Port in service URLs; 0: the port the API request came in on (the server's own).
    url_port: int = 0
    #: The Jupyter server's base URL (same-origin paths hang under it).
    server_base_url: str = "/"
    #: Size and time limits of proxied traffic.
    limits: ProxyLimits = field(default_factory=ProxyLimits)
    #: Preopened ports are also published on the agent's address, unauthenticated.
    direct_access: bool = False


class ServicesService:
    """One coroutine per service action, plus the proxy's lookup of a target."""

    def __init__(
        self, sessions: SessionService, tokens: ProxyTokens, config: ServicesConfig
    ) -> None:
        self.sessions = sessions
        self.tokens = tokens
        self.config = config
        self.log: logging.Logger = sessions.log
        self.configured = {
            name: _with_source(spec, "config")
            for name, spec in parse_catalog(config.services, "c.SessionsApp.services").items()
        }
        self._running: dict[tuple[str, str], RunningService] = {}
        self._starting: dict[tuple[str, str], asyncio.Lock] = {}
        self._image_catalogs: dict[str, dict[str, ServiceSpec]] = {}
        self._listener: asyncio.Task[None] | None = None
        self._stopping: set[asyncio.Task[None]] = set()

    # --- the catalog ------------------------------------------------------------------------

    async def catalog(self, session: SessionData, agent: Agent | None) -> dict[str, ServiceSpec]:
        """The session's services: its image's label, then config, then its preopened ports."""
        specs: dict[str, ServiceSpec] = {}
        if agent is not None:
            specs.update(await self._image_catalog(session.image, agent))
        specs.update(self.configured)
        for port in session.params.get("preopen_ports") or ():
            spec = preopen_service(int(port))
            specs[spec.name] = spec
        return specs

    async def _image_catalog(self, image: str, agent: Agent) -> dict[str, ServiceSpec]:
        key = f"{agent.id}\0{image}"
        if key not in self._image_catalogs:
            labels: dict[str, str] = {}
            for info in await agent.list_images():
                if info.name == image:
                    labels = info.labels
                    break
            raw = labels.get(LABEL_SERVICES)
            try:
                found = parse_catalog(raw, f"image {image}") if raw else {}
            except InvalidRequest as exc:
                self.log.warning("ignoring the services label of %s: %s", image, exc.message)
                found = {}
            self._image_catalogs[key] = {k: _with_source(v, "image") for k, v in found.items()}
        return self._image_catalogs[key]

    def publish_ports(self, session: SessionData) -> tuple[int, ...]:
        """Ports the agent publishes at create: the preopened ones, if direct access is on."""
        if not self.config.direct_access:
            return ()
        return tuple(int(p) for p in session.params.get("preopen_ports") or ())

    # --- helpers ----------------------------------------------------------------------------

    async def _running_session(self, action: Any) -> tuple[SessionData, Agent, str]:
        session = await self.sessions._resolve(action)
        agent, ref = self.sessions.main_container(session, "services run")
        return session, agent, ref

    def _base_url(self, session_id: str, name: str) -> str:
        if self.config.proxy_mode == "same-origin":
            base = self.config.server_base_url.rstrip("/")
            return f"{base}/jupyter-sessions/proxy/{session_id}/{name}/"
        return "/"

    def service_url(self, session_id: str, name: str, scheme: str, request_port: int | None) -> str:
        """The service's URL on its own origin (or under the server, in same-origin mode)."""
        if self.config.proxy_mode == "same-origin":
            return self._base_url(session_id, name)
        port = self.config.url_port or request_port
        default = {"http": 80, "https": 443}.get(scheme)
        suffix = f":{port}" if port and port != default else ""
        return f"{scheme}://{service_host_label(session_id, name)}.{self.config.domain}{suffix}/"

    def _mint(self, session: SessionData, name: str, url: str) -> str:
        if self.config.proxy_mode == "same-origin":
            return url  # Jupyter's own authentication applies there
        token = self.tokens.mint(session.id, name, session.owner_access_key)
        separator = "&" if "?" in url else "?"
        return f"{url}{separator}{self.tokens.query_name}={token}"

    def _publish(self, running: RunningService, reason: str = "") -> None:
        self.sessions.hub.publish(
            Event(
                "service_status",
                running.owner_access_key,
                {
                    "session_id": running.session_id,
                    "service": running.spec.name,
                    "status": running.status,
                    "reason": reason,
                    "at": datetime.now(UTC).isoformat(),
                },
            )
        )

    def _set_status(self, running: RunningService, status: str, reason: str = "") -> None:
        if running.status != status:
            running.status = status
            self._publish(running, reason)

    def _view(self, spec: ServiceSpec, running: RunningService | None) -> ServiceView:
        return ServiceView(
            name=spec.name,
            protocol=spec.protocol,
            port=running.port if running else spec.port,
            source=spec.source,
            description=spec.description,
            status=running.status if running else "stopped",
            healthy=bool(running and running.status == "running"),
            started_at=running.started_at if running else None,
            exit_code=running.exit_code if running else None,
            arguments=sorted(spec.arguments),
            environ=sorted(spec.environ),
        )

    def _ensure_listener(self) -> None:
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._forget_ended())

    async def _forget_ended(self) -> None:
        """Drop the services of sessions that end or restart: their processes die with them."""
        async for event in self.sessions.hub.stream(lambda e: e.kind == "session_status"):
            with contextlib.suppress(ValueError):
                if SessionStatus(str(event.data.get("status"))) not in ENDING_STATUSES:
                    continue
            session_id = event.data.get("session_id")
            for key in [k for k in self._running if k[0] == session_id]:
                running = self._running.pop(key)
                self._publish_stopped(running, "the session ended or restarted")
                # A container's processes die with it; a local agent's do not: stop them.
                task = asyncio.get_running_loop().create_task(self._stop(running))
                self._stopping.add(task)
                task.add_done_callback(self._stopping.discard)

    def _publish_stopped(self, running: RunningService, reason: str) -> None:
        if running.status != "stopped":
            running.status = "stopped"
            self._publish(running, reason)

    async def close(self) -> None:
        """At server stop: stop listening; local services die with the server's process."""
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        if self._stopping:
            await asyncio.wait(self._stopping, timeout=15)

    # --- actions ----------------------------------------------------------------------------

    async def list_services(self, action: ListServicesAction) -> list[ServiceView]:
        """Every catalog entry, its status, and health re-checked now for what runs."""
        session = await self.sessions._resolve(action)
        kernel = session.main_kernel
        agent = (
            self.sessions.agents.get(kernel.agent_id)
            if kernel is not None and kernel.agent_id is not None
            else None
        )
        specs = await self.catalog(session, agent)
        address = await self._outliving_address(session, agent)
        views = []
        for name, spec in specs.items():
            running = self._running.get((session.id, name))
            if running is not None:
                await self._check_health(running)
            view = self._view(spec, running)
            if running is None and address and await probe(address, spec.port, "tcp", 1.0):
                # Something answers on its port that this server did not start: most likely
                # the service, started before a restart of this server (see docs/services.md).
                view = replace(view, status="unmanaged")
            views.append(view)
        return views

    async def _outliving_address(self, session: SessionData, agent: Agent | None) -> str:
        """The container's address where kernels outlive the server (Docker), else ""."""
        kernel = session.main_kernel
        if agent is None or kernel is None or not agent.kernels_outlive_server:
            return ""
        if session.status not in (SessionStatus.RUNNING, SessionStatus.RUNNING_DEGRADED):
            return ""
        ref = kernel.container_id or agent.kernel_ref(session.id, kernel.name)
        try:
            return (await agent.service_endpoint(ref, MIN_PORT))[0]
        except SessionsError:
            return ""

    async def _check_health(self, running: RunningService) -> None:
        if running.status == "starting":
            return
        if running.process is not None and running.exit_code is not None:
            self._set_status(running, "dead", f"exited with code {running.exit_code}")
            return
        alive = await probe(running.host, running.port, running.spec.protocol)
        if alive:
            self._set_status(running, "running", "answers")
        else:
            self._set_status(running, "unhealthy", "does not answer on its port")

    async def start_service(self, action: StartServiceAction) -> StartServiceResult:
        session, agent, ref = await self._running_session(action)
        specs = await self.catalog(session, agent)
        spec = specs.get(action.service)
        if spec is None:
            raise NotFound(
                f"no service {action.service!r} in this session (declared: "
                f"{', '.join(sorted(specs)) or 'none'})"
            )
        key = (session.id, spec.name)
        lock = self._starting.setdefault(key, asyncio.Lock())
        async with lock:
            existing = self._running.get(key)
            if existing is not None:
                await self._check_health(existing)
                if existing.status in ("running", "starting"):
                    raise Conflict(f"service {spec.name} already runs in this session")
                await self._stop(existing)
            running = await self._launch(session, agent, ref, spec, action)
        self._ensure_listener()
        url = self.service_url(session.id, spec.name, action.scheme, action.request_port)
        return StartServiceResult(self._view(spec, running), self._mint(session, spec.name, url))

    async def _launch(
        self,
        session: SessionData,
        agent: Agent,
        ref: str,
        spec: ServiceSpec,
        action: StartServiceAction,
    ) -> RunningService:
        port = spec.port if action.port is None else check_port(action.port)
        if spec.source == "preopen" and port != spec.port:
            raise InvalidRequest("a preopened port's service runs on that port", field="port")
        for (sid, _name), other in self._running.items():
            if sid == session.id and other.port == port:
                raise Conflict(f"port {port} is taken by service {other.spec.name}", port=port)
        # The local agent picks a free loopback port of its own; Docker keeps the declared one.
        host, picked = await agent.service_endpoint(ref, port)
        if spec.source != "preopen":  # a preopened port is the user's own choice: kept
            port = picked
        base_url = self._base_url(session.id, spec.name)
        argv = build_argv(spec, port, base_url, action.arguments)
        environ = {
            **(session.params.get("environ") or {}),
            **check_environ(spec, action.environ),
        }
        if spec.source != "preopen" and not argv:
            raise InvalidRequest(f"service {spec.name} declares no command")
        if spec.source == "preopen" and (action.arguments or action.environ):
            raise InvalidRequest("a preopened port takes no arguments or environment")
        taken = spec.source != "preopen" and await probe(host, port, "tcp")
        if taken and not (agent.kernels_outlive_server and port == spec.port):
            raise Conflict(f"port {port} is taken by another process of the session", port=port)
        if taken:
            holders = await self._in_container(agent, ref, "check", port)
            if holders.get("foreign") or not holders.get("ours"):
                raise Conflict(
                    f"port {port} is taken by another process of the session (not a service "
                    "this server started)",
                    port=port,
                )
        running = RunningService(
            session_id=session.id,
            owner_access_key=session.owner_access_key,
            spec=spec,
            host=host,
            port=port,
            base_url=base_url,
            started_at=datetime.now(UTC),
        )
        if taken:
            # This service, started by a server before it restarted (containers outlive the
            # server; this registry does not): take it over rather than refuse.
            running.adopted_from = (agent, ref)
            running.status = "running" if await probe(host, port, spec.protocol) else "unhealthy"
            self._running[(session.id, spec.name)] = running
            self._publish(running, "adopted: it was answering on its port already")
            return running
        if spec.source == "preopen":
            # The user's own app listens there (or will): registering it lets the proxy reach it.
            running.status = "running" if await probe(host, port, "http") else "unhealthy"
            self._running[(session.id, spec.name)] = running
            self._publish(running, "preopened port registered")
            return running
        running.process = await agent.exec(ref, argv, environ=environ)
        running.pump = asyncio.get_running_loop().create_task(self._pump(running))
        self._running[(session.id, spec.name)] = running
        self._publish(running, "starting")
        try:
            await self._wait_ready(running)
        except BaseException:
            self._running.pop((session.id, spec.name), None)
            await self._stop(running)
            self._publish(running, "did not start")
            raise
        self._set_status(running, "running", "answers")
        self.sessions.touch_activity(session.id)
        return running

    async def _pump(self, running: RunningService) -> None:
        """Keep the tail of the service's output and note its exit (nobody else reads it)."""
        process = running.process
        assert process is not None
        while (chunk := await process.read()) is not None:
            running.output.add(chunk[1])
        running.exit_code = await process.wait()
        if running.status not in ("stopped",):
            self._set_status(running, "dead", f"exited with code {running.exit_code}")

    async def _wait_ready(self, running: RunningService) -> None:
        """Poll the port until it answers, the process exits, or the readiness timeout passes."""
        deadline = time.monotonic() + running.spec.ready_timeout
        while True:
            if running.exit_code is not None:
                raise AgentError(
                    f"service {running.spec.name} exited with code {running.exit_code} before "
                    f"it answered{_tail(running.output)}"
                )
            if await probe(running.host, running.port, running.spec.protocol):
                return
            if time.monotonic() >= deadline:
                raise Timeout(
                    f"service {running.spec.name} did not answer on port {running.port} within "
                    f"{running.spec.ready_timeout:g} s{_tail(running.output)}"
                )
            await asyncio.sleep(0.25)

    async def _stop(self, running: RunningService) -> None:
        """TERM the service's process group, then KILL what is left after a grace period."""
        running.status = "stopped"
        process = running.process
        if process is not None and running.exit_code is None:
            with contextlib.suppress(SessionsError):
                await process.signal(signal.SIGTERM)
            if running.pump is not None:
                done, _ = await asyncio.wait({running.pump}, timeout=5)
                if not done:
                    with contextlib.suppress(SessionsError):
                        await process.signal(signal.SIGKILL)
        if running.pump is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(running.pump, 5)

    async def _in_container(self, agent: Agent, ref: str, operation: str, port: int) -> Any:
        """stop_listener's ``check`` or ``stop`` of ``port``, run in the container."""
        argv = ["python3", "-I", "-c", STOP_LISTENER, operation, str(port)]
        process = await agent.exec(ref, argv)
        output = []
        while (chunk := await process.read()) is not None:
            output.append(chunk[1])
        code = await process.wait()
        lines = "".join(output).strip().splitlines()
        try:
            answer = json.loads(lines[-1]) if code == 0 and lines else None
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            tail = "".join(output)[-300:]
            raise AgentError(f"could not {operation} what listens on port {port}: {tail}")
        return answer

    async def _stop_adopted(self, running: RunningService, agent: Agent, ref: str) -> None:
        """Stop an adopted service from inside its container: only a process group that an
        ``exec`` of ours started is signalled; anything else holding the port is reported."""
        answer = await self._in_container(agent, ref, "stop", running.port)
        if answer.get("foreign"):
            pids = ", ".join(str(pid) for pid in answer["foreign"])
            raise Conflict(
                f"port {running.port} is held by a process this server did not start (pid "
                f"{pids}): stop it inside the session",
                port=running.port,
            )

    async def shutdown_service(self, action: ShutdownServiceAction) -> ServiceView:
        session = await self.sessions._resolve(action)
        key = (session.id, action.service)
        running = self._running.get(key)
        if running is None:
            kernel = session.main_kernel
            agent = (
                self.sessions.agents.get(kernel.agent_id)
                if kernel is not None and kernel.agent_id
                else None
            )
            specs = await self.catalog(session, agent)
            if action.service not in specs:
                raise NotFound(f"no service {action.service!r} in this session")
            raise InvalidStatus(f"service {action.service} is not running")
        async with self._starting.setdefault(key, asyncio.Lock()):
            if running.adopted_from is not None:
                # May refuse (not a process of ours): the service then stays registered.
                await self._stop_adopted(running, *running.adopted_from)
            await self._stop(running)
            self._running.pop(key, None)
            self._publish(running, "shut down")
        return self._view(running.spec, running)

    async def get_direct_access_info(self, action: GetDirectAccessInfoAction) -> DirectAccessInfo:
        """Proxy URLs (with fresh tokens) of the session's running services."""
        session, agent, ref = await self._running_session(action)
        urls = {}
        for (sid, name), running in self._running.items():
            if sid == session.id:
                await self._check_health(running)
                url = self.service_url(sid, name, action.scheme, action.request_port)
                urls[name] = {
                    "url": self._mint(session, name, url),
                    "protocol": running.spec.protocol,
                    "status": running.status,
                }
        direct: dict[str, dict[str, Any]] = {}
        if self.config.direct_access:
            for port, (host, host_port) in (await agent.published_ports(ref)).items():
                direct[f"port-{port}"] = {"host": host, "port": host_port, "container_port": port}
        return DirectAccessInfo(
            session_id=session.id,
            proxy_mode=self.config.proxy_mode,
            services=urls,
            direct_ports=direct,
            token_ttl=self.tokens.ttl,
        )

    # --- the proxy's side -------------------------------------------------------------------

    def target_for_caller(
        self, session_id: str, name: str, access_key: str, is_admin: bool
    ) -> RunningService:
        """Same-origin mode: a registered service of a session the (Jupyter-authenticated)
        caller owns, or any for an admin; anything else is NotFound."""
        running = self._running.get((session_id, name))
        if (
            running is None
            or not (is_admin or access_key == running.owner_access_key)
            or running.status in ("stopped", "dead")
        ):
            raise NotFound("no such service here")
        self.sessions.touch_activity(session_id)
        return running

    def target(self, session_id: str, name: str, claims: TokenClaims) -> RunningService:
        """Where a proxied request for (session, service) goes: only a registered service of
        that session, for a credential minted for exactly it; anything else is NotFound."""
        running = self._running.get((session_id, name))
        if (
            running is None
            or claims.session_id != session_id
            or claims.service != name
            or claims.access_key != running.owner_access_key
            or running.status in ("stopped", "dead")
        ):
            raise NotFound("no such service here")
        self.sessions.touch_activity(session_id)
        return running


def services_from_app(app: Any) -> ServicesService:
    """The services of a SessionsApp, from its traitlets (a bad catalog stops the start-up)."""
    limits = dict(app.service_proxy_limits)
    unknown = set(limits) - set(ProxyLimits.__dataclass_fields__)
    if unknown:
        raise ValueError(f"SessionsApp.service_proxy_limits: unknown {', '.join(sorted(unknown))}")
    tokens = ProxyTokens(ttl=app.service_token_ttl, cookie_ttl=app.service_cookie_ttl)
    config = ServicesConfig(
        services=list(app.services),
        domain=app.service_domain.lower().strip("."),
        url_port=app.service_url_port,
        server_base_url=app.serverapp.base_url,
        proxy_mode=app.service_proxy_mode,
        direct_access=app.service_direct_access,
        limits=ProxyLimits(**limits),
    )
    try:
        return ServicesService(app.service, tokens, config)
    except InvalidRequest as exc:
        raise ValueError(f"SessionsApp: {exc.message}") from None


def _with_source(spec: ServiceSpec, source: str) -> ServiceSpec:
    return replace(spec, source=source)


class OutputTail:
    """The last ``limit`` characters of a service's output (stdout and stderr interleaved)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.text = ""

    def add(self, text: str) -> None:
        self.text = (self.text + text)[-self.limit :]


def _tail(output: OutputTail, limit: int = 2000) -> str:
    return f"; output: {output.text[-limit:]}" if output.text else ""
