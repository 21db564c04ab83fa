"""The Docker agent: kernels in hardened containers on one Docker engine (socket or remote URL).

Every docker SDK call runs in a thread (``asyncio.to_thread``). Engine errors are mapped by status
code to the project's error tree: an engine that does not answer is AgentUnavailable (503), anything
else it refuses is AgentError (502) with the engine's message.
"""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import urlparse

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container

from ..errors import AgentError, AgentUnavailable, InvalidRequest
from ..types import ResourceSlot
from .base import (
    LABEL_INSTALLATION,
    LABEL_KERNEL,
    LABEL_SESSION,
    Agent,
    AgentInfo,
    ImageInfo,
    KernelHandle,
    KernelSpec,
)

T = TypeVar("T")

#: ZMQ ports inside the container (fixed: the container has its own network namespace).
KERNEL_PORTS = {
    "shell_port": 5000,
    "iopub_port": 5001,
    "stdin_port": 5002,
    "control_port": 5003,
    "hb_port": 5004,
}
CONNECTION_FILE = "/tmp/connection.json"  # noqa: S108 - inside the container, owned by the kernel user
KERNEL_UID = 1000
_INFO_TTL = 5.0


def container_name(session_id: str, kernel_name: str) -> str:
    return f"jsess-{session_id}-{kernel_name}"


def volume_name(session_id: str) -> str:
    return f"jsess-{session_id}-work"


def _connection_tar(connection: dict[str, Any]) -> bytes:
    """A tar holding the kernel's connection file, readable by the kernel's user alone."""
    payload = json.dumps(connection).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo(CONNECTION_FILE.rsplit("/", 1)[1])
        info.size, info.mode = len(payload), 0o600
        info.uid = info.gid = KERNEL_UID
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def _wait_gone(client: docker.DockerClient, container_ref: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client.containers.get(container_ref)
        except docker.errors.NotFound:
            return
        time.sleep(0.1)


class DockerAgent(Agent):
    """Kernels as containers on one Docker engine."""

    kind = "docker"

    def __init__(
        self,
        agent_id: str,
        *,
        installation_id: str,
        url: str = "unix:///var/run/docker.sock",
        scaling_group: str = "default",
        kernel_host: str | None = None,
        container_user: str = f"{KERNEL_UID}:{KERNEL_UID}",
        pids_limit: int = 1024,
        cap_add: list[str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(agent_id, scaling_group=scaling_group, url=url)
        self.installation_id = installation_id
        parsed = urlparse(url)
        #: The address the manager dials for kernel ports: loopback for a local engine.
        self.kernel_host = kernel_host or (
            parsed.hostname
            if parsed.scheme in ("tcp", "http", "https") and parsed.hostname
            else "127.0.0.1"
        )
        self.publish_ip = (
            "127.0.0.1" if self.kernel_host in ("127.0.0.1", "localhost") else "0.0.0.0"
        )
        self.container_user = container_user
        self.pids_limit = pids_limit
        self.cap_add = cap_add or []
        self.timeout = timeout
        self._client: docker.DockerClient | None = None
        self._network: str | None = None
        self._info: tuple[float, AgentInfo] | None = None
        self._lock = asyncio.Lock()

    # --- plumbing ------------------------------------------------------------------------

    @property
    def network_name(self) -> str:
        return f"jupyter-sessions-{self.installation_id}"

    def _docker(self) -> docker.DockerClient:
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.url, timeout=int(self.timeout))
        return self._client

    async def _call(self, func: Callable[[], T], what: str) -> T:
        """Run a blocking SDK call in a thread and map engine failures by status code."""
        try:
            return await asyncio.to_thread(func)
        except docker.errors.ImageNotFound as exc:
            raise InvalidRequest(
                f"{what}: image not present on agent {self.id}: {exc.explanation}"
            ) from None
        except docker.errors.APIError as exc:
            status = exc.status_code or 0
            message = (
                f"{what}: Docker engine of agent {self.id} answered {status}: {exc.explanation}"
            )
            if status >= 500 and "connection refused" in str(exc.explanation).lower():
                raise AgentUnavailable(message) from None
            raise AgentError(message) from None
        except (
            docker.errors.DockerException,
            requests.exceptions.RequestException,
            OSError,
        ) as exc:
            self._info = None
            raise AgentUnavailable(
                f"{what}: Docker engine of agent {self.id} unreachable: {exc}"
            ) from None

    # --- Agent ---------------------------------------------------------------------------

    async def info(self) -> AgentInfo:
        cached = self._info
        if cached is not None and time.monotonic() - cached[0] < _INFO_TTL:
            return cached[1]
        try:
            raw = await self._call(lambda: self._docker().info(), "info")
        except (AgentUnavailable, AgentError) as exc:
            self._client = None
            return AgentInfo(reachable=False, capacity=ResourceSlot({}), detail=str(exc))
        info = AgentInfo(
            reachable=True,
            capacity=ResourceSlot(
                {"cpu": Decimal(raw.get("NCPU", 0)), "mem": Decimal(raw.get("MemTotal", 0))}
            ),
            detail=f"Docker {raw.get('ServerVersion', '?')} at {self.url}",
            version=str(raw.get("ServerVersion", "")),
        )
        self._info = (time.monotonic(), info)
        return info

    async def _ensure_network(self) -> str:
        """One bridge shared by single-container sessions, inter-container traffic disabled."""
        async with self._lock:
            if self._network:
                return self._network
            client = self._docker()

            def ensure() -> str:
                found = client.networks.list(names=[self.network_name])
                if found:
                    return self.network_name
                client.networks.create(
                    self.network_name,
                    driver="bridge",
                    options={"com.docker.network.bridge.enable_icc": "false"},
                    labels={LABEL_INSTALLATION: self.installation_id},
                )
                return self.network_name

            self._network = await self._call(ensure, "create network")
            return self._network

    async def create_kernel(self, spec: KernelSpec) -> KernelHandle:
        client = self._docker()
        network = await self._ensure_network()
        labels = {
            LABEL_INSTALLATION: self.installation_id,
            LABEL_SESSION: spec.session_id,
            LABEL_KERNEL: spec.kernel_name,
        }
        inner = {
            **KERNEL_PORTS,
            "ip": "0.0.0.0",
            "transport": "tcp",
            "key": spec.key,
            "signature_scheme": "hmac-sha256",
            "kernel_name": "python3",
        }
        cpu = spec.resources.get("cpu")
        mem = int(spec.resources.get("mem"))

        def create() -> Container:
            volume = client.volumes.create(volume_name(spec.session_id), labels=labels)
            container = client.containers.create(
                spec.image,
                name=container_name(spec.session_id, spec.kernel_name),
                labels=labels,
                environment=dict(spec.environ),
                user=self.container_user,
                working_dir="/home/work",
                volumes={volume.name: {"bind": "/home/work", "mode": "rw"}},
                ports={f"{p}/tcp": (self.publish_ip, None) for p in KERNEL_PORTS.values()},
                network=network,
                init=True,
                cap_drop=["ALL"],
                cap_add=self.cap_add or None,
                security_opt=["no-new-privileges:true"],
                pids_limit=self.pids_limit,
                mem_limit=mem or None,
                memswap_limit=mem or None,  # equal to mem_limit: no swap
                nano_cpus=int(cpu * 1_000_000_000) or None,
                ipc_mode="private",
                detach=True,
            )
            try:
                container.put_archive("/tmp", _connection_tar(inner))  # noqa: S108
                container.start()
                container.reload()
            except BaseException:
                container.remove(force=True)
                raise
            return container

        container = await self._call(create, "create kernel container")
        ports = container.attrs["NetworkSettings"]["Ports"]
        try:
            outer = {
                name: int(ports[f"{inner_port}/tcp"][0]["HostPort"])
                for name, inner_port in KERNEL_PORTS.items()
            }
        except (KeyError, TypeError, IndexError):
            await self.destroy_kernel(container.id or "", forced=True)
            raise AgentError(
                f"agent {self.id}: the container's kernel ports were not published"
            ) from None
        connection = {
            **outer,
            "ip": self.kernel_host,
            "transport": "tcp",
            "key": spec.key,
            "signature_scheme": "hmac-sha256",
        }
        return KernelHandle(container_id=container.id or "", connection=connection)

    def kernel_ref(self, session_id: str, kernel_name: str) -> str:
        return container_name(session_id, kernel_name)

    async def has_image(self, image: str) -> bool:
        client = self._docker()

        def present() -> bool:
            try:
                client.images.get(image)
            except docker.errors.ImageNotFound:
                return False
            return True

        return await self._call(present, "inspect image")

    async def destroy_kernel(self, container_ref: str, *, forced: bool = False) -> None:
        client = self._docker()

        def destroy() -> None:
            try:
                container = client.containers.get(container_ref)
                if not forced:
                    container.stop(timeout=3)
                container.remove(force=True)
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                # Another removal (e.g. the engine's own, or a racing teardown) got there first.
                if exc.status_code != 409 or "in progress" not in str(exc.explanation):
                    raise
                _wait_gone(client, container_ref)

        await self._call(destroy, "remove kernel container")

    async def remove_session_storage(self, session_id: str) -> None:
        client = self._docker()

        def remove() -> None:
            try:
                client.volumes.get(volume_name(session_id)).remove(force=True)
            except docker.errors.NotFound:
                return

        await self._call(remove, "remove work volume")

    async def kernel_exists(self, container_id: str) -> bool:
        client = self._docker()

        def running() -> bool:
            try:
                return client.containers.get(container_id).status == "running"
            except docker.errors.NotFound:
                return False

        return await self._call(running, "inspect kernel container")

    async def list_images(self) -> list[ImageInfo]:
        client = self._docker()

        def images() -> list[ImageInfo]:
            found = []
            for image in client.images.list():
                for tag in image.tags:
                    found.append(
                        ImageInfo(
                            name=tag,
                            id=image.id or "",
                            size=int(image.attrs.get("Size", 0)),
                            labels=dict(image.labels or {}),
                            created=str(image.attrs.get("Created", "")),
                        )
                    )
            return found

        return await self._call(images, "list images")

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)
