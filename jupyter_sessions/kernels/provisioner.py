"""The kernel provisioner: a Jupyter kernel that runs inside a session's container.

``SessionProvisioner`` is registered under the entry point group
``jupyter_client.kernel_provisioners`` as ``jupyter-sessions``. A kernelspec naming it (see
kernelspecs.py) makes jupyter_client start a kernel by creating a session, or by attaching to an
existing session's kernel, and then talk ZMQ to that container's kernel directly with the
connection info the server hands over (ports on the agent's address, the session's key).

How it reaches the manager: inside the Jupyter server that runs the extension (its own
``/api/kernels``, and therefore gateway mode) it calls the extension's processors directly, as
the server's owner; anywhere else (nbclient, ``jupyter console``) it talks REST to the running
server through ``client.AsyncSessionsClient``, which finds the server by itself or takes
``url`` and ``token``.

The kernel's life maps to the session's: interrupt is the session's interrupt; restart is the
session's restart in place (new container and key, same work volume); shutdown destroys the
session only when this provisioner created it, and detaches from a session it attached to (the
kernel refuses Jupyter's shutdown request, see ``send_signal``), which keeps its kernel.
``get_provisioner_info``/``load_provisioner_info`` carry the session's id, so a kernel manager
made after a restart re-attaches to the same kernel (its current ports re-read).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
from dataclasses import dataclass
from typing import Any, Protocol, cast

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import Dict, Float, Unicode

from ..errors import InvalidStatus, NotFound, SessionsError

PROVISIONER_NAME = "jupyter-sessions"
#: Set in a kernel's launch environment (``env=``) to attach to that session's kernel.
ENV_SESSION = "JUPYTER_SESSIONS_SESSION"
#: Tag of sessions made for Jupyter kernels (how they are told apart in lists and the panel).
KERNEL_TAG = "jupyter-kernel"
ALIVE = frozenset({"RUNNING", "RUNNING_DEGRADED"})
FINAL = frozenset({"TERMINATED", "CANCELLED"})
#: Where waiting for a session to start ends: running, or failed, or ended.
SETTLED = ALIVE | FINAL | {"ERROR"}


@dataclass(frozen=True)
class SessionView:
    """What the provisioner needs of a session, however it was reached."""

    id: str
    name: str
    status: str
    status_info: str
    container_id: str | None

    @classmethod
    def of_json(cls, body: dict[str, Any]) -> SessionView:
        kernels: list[dict[str, Any]] = body.get("kernels") or []
        main = next((k for k in kernels if k.get("name") == "main1"), {})
        return cls(
            id=body["id"],
            name=body["name"],
            status=body["status"],
            status_info=body.get("status_info") or "",
            container_id=main.get("container_id"),
        )


class Backend(Protocol):
    """The manager, in this process or over REST."""

    #: The server's content root, when known here (in-process).
    root_dir: str | None

    async def can_mount(self) -> bool:
        """Whether the notebook's folder can be mounted (not with local agents alone)."""
        ...

    async def create(self, body: dict[str, Any]) -> SessionView: ...

    async def create_from_template(
        self, template_id: str, overrides: dict[str, Any]
    ) -> SessionView: ...

    async def get(self, ref: str) -> SessionView: ...

    async def wait_settled(self, session_id: str, timeout: float) -> SessionView:
        """The session once running, failed or ended, or as it is after ``timeout``."""
        ...

    async def connection(self, ref: str) -> tuple[SessionView, dict[str, Any]]: ...

    async def interrupt(self, ref: str) -> None: ...

    async def restart(self, ref: str) -> SessionView: ...

    async def destroy(self, ref: str) -> None: ...


class InProcessBackend:
    """The extension of this very server: its processors, as the server's owner (kernels
    started through ``/api/kernels`` belong to the owner: Jupyter's kernels have no user)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.root_dir: str | None = str(app.serverapp.root_dir)

    async def _caller(self) -> Any:
        await self.app.ensure_started()
        return self.app.identity.owner

    async def can_mount(self) -> bool:
        """Docker agents bind the folder; local agents start the kernel in it, but can't make
        it read-only."""
        await self._caller()
        return any(a.kind == "docker" for a in self.app.registry) or not self.app.mount_read_only

    @staticmethod
    def _view(session: Any) -> SessionView:
        main = session.main_kernel
        return SessionView(
            id=session.id,
            name=session.name,
            status=str(session.status),
            status_info=session.status_info or "",
            container_id=main.container_id if main is not None else None,
        )

    async def create(self, body: dict[str, Any]) -> SessionView:
        from ..actions.lifecycle import CreateFromParamsAction, CreateSessionParams

        action = CreateFromParamsAction(
            caller=await self._caller(), params=CreateSessionParams.from_json(body)
        )
        result = await self.app.processors.create_from_params.wait_for_complete(action)
        return self._view(result.session)

    async def create_from_template(
        self, template_id: str, overrides: dict[str, Any]
    ) -> SessionView:
        from ..actions.templates import CreateFromTemplateAction, FromTemplateRequest

        request = FromTemplateRequest.from_json({"template_id": template_id, **overrides})
        action = CreateFromTemplateAction(caller=await self._caller(), request=request)
        result = await self.app.processors.create_from_template.wait_for_complete(action)
        return self._view(result.session)

    async def get(self, ref: str) -> SessionView:
        from ..actions.lifecycle import GetSessionInfoAction

        action = GetSessionInfoAction(caller=await self._caller(), ref=ref)
        return self._view(await self.app.processors.get_session_info.wait_for_complete(action))

    async def wait_settled(self, session_id: str, timeout: float) -> SessionView:
        await self._caller()
        return self._view(await self.app.service.wait_settled(session_id, timeout))

    async def connection(self, ref: str) -> tuple[SessionView, dict[str, Any]]:
        from ..actions.kernels import GetKernelConnectionAction

        action = GetKernelConnectionAction(caller=await self._caller(), ref=ref)
        result = await self.app.processors.get_kernel_connection.wait_for_complete(action)
        view = SessionView(
            result.session_id,
            result.session_name,
            str(result.status),
            "",
            result.container_id,
        )
        return view, dict(result.connection)

    async def interrupt(self, ref: str) -> None:
        from ..actions.execution import InterruptAction

        action = InterruptAction(caller=await self._caller(), ref=ref)
        await self.app.processors.interrupt.wait_for_complete(action)

    async def restart(self, ref: str) -> SessionView:
        from ..actions.lifecycle import RestartSessionAction

        action = RestartSessionAction(caller=await self._caller(), ref=ref)
        result = await self.app.processors.restart_session.wait_for_complete(action)
        return self._view(result.session)

    async def destroy(self, ref: str) -> None:
        from ..actions.lifecycle import DestroySessionAction

        action = DestroySessionAction(caller=await self._caller(), ref=ref)
        await self.app.processors.destroy_session.wait_for_complete(action)


class RestBackend:
    """A running server reached over HTTP (``client.AsyncSessionsClient``)."""

    root_dir: str | None = None

    def __init__(self, url: str | None, token: str | None) -> None:
        from ..client import AsyncSessionsClient

        self.client = AsyncSessionsClient(url, token=token)

    async def can_mount(self) -> bool:
        return True  # the server decides, and says why not

    async def create(self, body: dict[str, Any]) -> SessionView:
        return SessionView.of_json(await self.client.create_session(**body))

    async def create_from_template(
        self, template_id: str, overrides: dict[str, Any]
    ) -> SessionView:
        return SessionView.of_json(await self.client.create_from_template(template_id, **overrides))

    async def get(self, ref: str) -> SessionView:
        return SessionView.of_json(await self.client.get_session(ref))

    async def wait_settled(self, session_id: str, timeout: float) -> SessionView:
        from ..errors import Timeout

        try:
            body = await self.client.wait_for(session_id, SETTLED, timeout=timeout)
        except Timeout:
            body = await self.client.get_session(session_id)
        return SessionView.of_json(body)

    async def connection(self, ref: str) -> tuple[SessionView, dict[str, Any]]:
        body = await self.client.kernel_connection(ref)
        view = SessionView(
            body["session_id"], body["session_name"], body["status"], "", body["container_id"]
        )
        return view, dict(body["connection"])

    async def interrupt(self, ref: str) -> None:
        await self.client.interrupt(ref)

    async def restart(self, ref: str) -> SessionView:
        return SessionView.of_json(await self.client.restart_session(ref))

    async def destroy(self, ref: str) -> None:
        await self.client.destroy_session(ref)


def find_sessions_app(obj: Any) -> Any:
    """The SessionsApp of the Jupyter server that owns this kernel manager, if there is one."""
    seen = 0
    while obj is not None and seen < 10:
        web_app = getattr(obj, "web_app", None)
        if web_app is not None:
            return web_app.settings.get("jupyter_sessions")
        obj, seen = getattr(obj, "parent", None), seen + 1
    return None


class SessionProvisioner(KernelProvisionerBase):
    """A Jupyter kernel in a session container (configure with the kernelspec's
    ``metadata.kernel_provisioner.config``, or ``c.SessionProvisioner.*``)."""

    image = Unicode(
        "",
        config=True,
        help="Image of the session made for the kernel; empty: the server's default image.",
    )
    template = Unicode(
        "", config=True, help="Id of a session template to make the kernel's session from."
    )
    session = Unicode(
        "",
        config=True,
        help=f"""Attach to this existing session's kernel (id or name) instead of making a
        session; a launch environment variable {ENV_SESSION} does the same.""",
    )
    resources = Dict({}, config=True, help='Resources of a made session, e.g. {"cpu": 1}.')
    mount = Unicode(
        "folder",
        config=True,
        help="""What of the server's content root a made session mounts (Docker agents on the
        server's host only): "folder", the notebook's folder, where the kernel then starts (so
        open('data.csv') beside the notebook works); "root", the whole content root, the kernel
        starting in the notebook's folder inside it; "none".""",
    )
    url = Unicode(
        "",
        config=True,
        help="""Base URL of the Jupyter server to ask, out of its process. Empty: the server
        this kernel manager belongs to, else $JUPYTER_SESSIONS_URL, else the running servers'
        runtime files (client.find_server).""",
    )
    token = Unicode("", config=True, help="Token for url (else $JUPYTER_SESSIONS_TOKEN).")
    start_timeout = Float(
        300.0, config=True, help="Seconds a kernel's session may take to become RUNNING."
    )

    #: The session the kernel lives in, whether this provisioner made it, and its container.
    session_id: str | None = None
    session_name: str = ""
    created: bool = False
    container_id: str | None = None
    _backend: Backend | None = None
    _launched: bool = False
    _shutting_down: bool = False
    _cwd: str | None = None
    _attach: str = ""

    # --- how to reach the manager -------------------------------------------------------

    def backend(self) -> Backend:
        if self._backend is None:
            app = None if self.url else find_sessions_app(self.parent)
            if app is not None:
                self._backend = InProcessBackend(app)
            else:
                self._backend = RestBackend(self.url or None, self.token or None)
        return self._backend

    # --- launching ----------------------------------------------------------------------

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        explicit_env = dict(kwargs.get("env") or {})
        kwargs = await super().pre_launch(**kwargs)
        self._cwd = kwargs.get("cwd") or None
        self._attach = self.session or explicit_env.get(ENV_SESSION, "")
        kwargs["cmd"] = []  # nothing runs here: the kernel is the container's
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        backend = self.backend()
        first = self.session_id is None
        try:
            view = await self._start_or_restart(backend)
            view = await self._wait_running(backend, view)
            view, connection = await backend.connection(view.id)
        except BaseException as exc:
            if first and self.created and self.session_id is not None:
                # Jupyter forgets a kernel that failed to start: leave no session behind.
                with contextlib.suppress(Exception):
                    await backend.destroy(self.session_id)
                self.session_id = None
            if isinstance(exc, SessionsError):
                raise RuntimeError(
                    f"jupyter_sessions: the kernel's session: {exc.message}"
                ) from None
            raise
        self._adopt(view, connection)
        return self.connection_info

    async def _start_or_restart(self, backend: Backend) -> SessionView:
        if self.session_id is None:
            if self._attach:
                view = await backend.get(self._attach)
                self.created = False
                self.log.info("kernel %s attaches to session %s", self.kernel_id, view.name)
            else:
                view = await self._create(backend)
                self.created = True
                self.log.info("kernel %s runs in new session %s", self.kernel_id, view.name)
            self.session_id, self.session_name = view.id, view.name
            return view
        # A restart (the user's, or Jupyter's restarter after the kernel died).
        view = await backend.get(self.session_id)
        if view.status in FINAL:
            raise RuntimeError(f"jupyter_sessions: session {view.name} has ended ({view.status})")
        stale = view.status in ALIVE and view.container_id == self.container_id
        if stale or view.status == "ERROR":
            try:
                return await backend.restart(self.session_id)
            except InvalidStatus:  # the sweeper moved it meanwhile (to ERROR): once more
                return await backend.restart(self.session_id)
        return view  # already restarted by someone else, or on its way: attach to it

    async def _create(self, backend: Backend) -> SessionView:
        body: dict[str, Any] = {
            "name": f"kernel-{self.kernel_id}",
            "tag": KERNEL_TAG,
            "enqueue_only": True,
        }
        mounts = await self._mounts(backend)
        if mounts:
            body["mounts"] = mounts
        if self.template:
            return await backend.create_from_template(self.template, body)
        if self.image:
            body["image"] = self.image
        if self.resources:
            body["resources"] = dict(self.resources)
        return await backend.create(body)

    async def _mounts(self, backend: Backend) -> list[dict[str, Any]]:
        """The notebook's folder (or the content root) as a mount, per ``mount``."""
        if self.mount == "none" or not self._cwd:
            return []
        if not await backend.can_mount():
            self.log.info("local agents and read-only mounts: the kernel's session mounts nothing")
            return []
        return await asyncio.to_thread(self._mount_of, self._cwd, backend.root_dir)

    def _mount_of(self, cwd: str, root_dir: str | None) -> list[dict[str, Any]]:
        """(Blocking: resolves paths.) The server checks again, against its own root."""
        cwd = os.path.realpath(cwd)
        if self.mount == "root" and root_dir:
            root = os.path.realpath(root_dir)
            relative = os.path.relpath(cwd, root)
            if not relative.startswith(".."):
                return [{"source": root, "working_dir": relative}]
        return [{"source": cwd, "working_dir": "."}]

    async def _wait_running(self, backend: Backend, view: SessionView) -> SessionView:
        if view.status not in SETTLED:
            view = await backend.wait_settled(view.id, self.start_timeout)
        if view.status in ALIVE:
            return view
        if view.status in SETTLED:
            raise RuntimeError(
                f"jupyter_sessions: session {view.name} is {view.status}: {view.status_info}"
            )
        raise RuntimeError(
            f"jupyter_sessions: session {view.name} is still {view.status} after "
            f"{self.start_timeout:g} s ({view.status_info})"
        )

    def _adopt(self, view: SessionView, connection: dict[str, Any]) -> None:
        key = connection.get("key", "")
        self.container_id = view.container_id
        info = {**connection, "key": key.encode() if isinstance(key, str) else key}
        self.connection_info = cast(KernelConnectionInfo, info)
        self._launched = True
        self._shutting_down = False

    # --- the kernel's life ----------------------------------------------------------------

    @property
    def has_process(self) -> bool:
        return self._launched

    async def poll(self) -> int | None:
        """None while the session's kernel is the one this manager talks to and runs."""
        if not self._launched or self.session_id is None:
            return 0
        if self._shutting_down:
            return 0  # the kernel was asked to shut down: it ends with its own reply
        try:
            view = await self.backend().get(self.session_id)
        except NotFound:
            return 0
        except Exception:
            return None  # the manager is out of reach for now: say nothing rash
        if view.status in ALIVE and view.container_id == self.container_id:
            return None
        return 1  # ended, failed, or restarted by someone else (other ports and key)

    async def wait(self) -> int | None:
        return await self.poll()

    async def send_signal(self, signum: int) -> None:
        """SIGINT is the session's interrupt; other signals have no meaning for a container
        kernel (its end goes through shutdown or kill, mapped to the session's actions).

        Jupyter interrupts first when it shuts a kernel down (or restarts it). A session this
        provisioner attached to is not its to stop: the kernel manager then forgets the
        session's key, so the kernel refuses the shutdown request that follows (a bad
        signature), and nothing of the session's work is interrupted.
        """
        if signum != signal.SIGINT or self.session_id is None:
            return
        if not self.created and getattr(self.parent, "shutting_down", False):
            forget_key(self.parent)
            return
        try:
            await self.backend().interrupt(self.session_id)
        except Exception as exc:
            # A kernel that has died, or the server stopping after the extension has stopped.
            self.log.info("jupyter_sessions: interrupt of %s: %s", self.session_name, exc)

    async def kill(self, restart: bool = False) -> None:
        self._shutting_down = True

    async def terminate(self, restart: bool = False) -> None:
        self._shutting_down = True

    async def shutdown_requested(self, restart: bool = False) -> None:
        self._shutting_down = True

    async def cleanup(self, restart: bool = False) -> None:
        """After a shutdown: destroy the session this provisioner made; one it attached to
        keeps running, its kernel untouched (see ``send_signal``). A restart keeps both."""
        if restart or self.session_id is None:
            return
        backend, ref = self.backend(), self.session_id
        try:
            if self.created:
                await backend.destroy(ref)
        except (NotFound, InvalidStatus):
            pass  # already gone, or already on its way
        except Exception as exc:
            # E.g. at server stop: Jupyter shuts kernels down after the extensions stopped, so
            # the session outlives the server like any Docker session (reconciled at start).
            self.log.warning("jupyter_sessions: session %s after shutdown: %s", ref, exc)
        self._launched = False
        self.session_id = None
        close = getattr(getattr(backend, "client", None), "aclose", None)
        if close is not None:
            await close()
            self._backend = None

    # --- persistence ------------------------------------------------------------------------

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        key = self.connection_info.get("key", b"")
        info["connection_info"] = {
            **self.connection_info,
            "key": key.decode() if isinstance(key, bytes) else key,
        }
        info["jupyter_sessions"] = {
            "session_id": self.session_id,
            "session_name": self.session_name,
            "created": self.created,
            "container_id": self.container_id,
        }
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        """Re-attach to the saved session's kernel; its ports and key are read again, as an
        engine restart or a session restart changes them."""
        await super().load_provisioner_info(provisioner_info)
        saved = provisioner_info.get("jupyter_sessions") or {}
        self.session_id = saved.get("session_id")
        self.session_name = saved.get("session_name", "")
        self.created = bool(saved.get("created"))
        if self.session_id is None:
            return
        try:
            view, connection = await self.backend().connection(self.session_id)
        except SessionsError as exc:
            name = self.session_name or self.session_id
            raise RuntimeError(
                f"jupyter_sessions: can't re-attach to session {name}: {exc.message}"
            ) from None
        self._adopt(view, connection)

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return min(recommended, 2.0)

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        return max(recommended, self.start_timeout)


def forget_key(km: Any) -> None:
    """Make a kernel manager unable to command its kernel: it signs with a key of its own now,
    and the kernel drops what it sends (a new start or restart loads the real key again)."""
    km.session.key = secrets.token_hex(32).encode()


async def release_server_kernels(app: Any) -> None:
    """At server stop, before the extension stops (Jupyter shuts its kernels down only after
    its extensions have stopped, when no session can be reached any more).

    Sessions made for the server's kernels are destroyed now: their kernels end with the server.
    Sessions attached to are left alone: their kernel managers forget the session's key, so the
    shutdown request Jupyter sends next is refused by the kernel (a bad signature) and it keeps
    running. Never raises.
    """
    manager = getattr(app.serverapp, "kernel_manager", None)
    if manager is None:
        return
    for kernel_id in list(manager.list_kernel_ids()):
        try:
            km = manager.get_kernel(kernel_id)
            provisioner = getattr(km, "provisioner", None)
            if not isinstance(provisioner, SessionProvisioner) or provisioner.session_id is None:
                continue
            if provisioner.created:
                await provisioner.backend().destroy(provisioner.session_id)
            else:
                forget_key(km)
            provisioner.session_id = None  # nothing left for the shutdown to do
        except Exception as exc:
            app.log.warning("jupyter_sessions: kernel %s at server stop: %s", kernel_id, exc)
