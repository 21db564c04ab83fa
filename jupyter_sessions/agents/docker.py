"""The Docker agent: kernels in hardened containers on one Docker engine (socket or remote URL).

Every docker SDK call runs in a thread (``asyncio.to_thread``). Engine errors are mapped by status
code to the project's error tree: an engine that does not answer is AgentUnavailable (503), anything
else it refuses is AgentError (502) with the engine's message.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import io
import json
import logging
import os
import re
import shlex
import shutil
import signal as signal_module
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlparse

import docker
import docker.errors
import requests.exceptions
from docker.models.containers import Container

from ..errors import AgentError, AgentUnavailable, InvalidRequest
from ..mounts import docker_mounts
from ..types import ResourceSlot
from . import docker_files, local_files
from .base import (
    LABEL_INSTALLATION,
    LABEL_KERNEL,
    LABEL_SESSION,
    Agent,
    AgentInfo,
    ExecProcess,
    ImageInfo,
    KernelHandle,
    KernelListing,
    KernelSpec,
)
from .docker_cluster import ensure_cluster_network

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
#: The name of a commit's scratch container: unlabelled (a commit would carry labels into the
#: image), so a server killed mid-commit finds the leftovers by name and session id.
SCRATCH_NAME = re.compile(r"^jsess-([0-9a-f-]{36})-commit-[0-9a-f]{8}$")
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


async def _to_thread_to_the_end(func: Callable[[], T]) -> T:
    """``asyncio.to_thread``, except that cancelling waits for the thread before it propagates."""
    task = asyncio.ensure_future(asyncio.to_thread(func))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(BaseException):
            await task
        raise


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
    kernels_outlive_server = True

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
        helper_image: str = "",
        host_firewall: str = "auto",
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
        if host_firewall not in HOST_FIREWALL_MODES:
            raise ValueError(f"host_firewall must be one of {', '.join(HOST_FIREWALL_MODES)}")
        #: How the host-port rule is applied: "auto" (iptables here when this host runs the
        #: bridge, else through the engine), "direct", "engine" or "off".
        self.host_firewall = host_firewall
        #: Image of the short-lived helper container that applies the rule through the engine.
        self.helper_image = helper_image
        #: Whether the rule holds, and what GET agents says about it (empty: no network yet).
        self.host_ports_closed = False
        self.host_ports_status = ""
        #: Names of the scratch containers commits are building now: never removed as leftovers.
        self.scratch_in_use: set[str] = set()

    # --- plumbing ------------------------------------------------------------------------

    @property
    def network_name(self) -> str:
        return f"jupyter-sessions-{self.installation_id}"

    def _docker(self) -> docker.DockerClient:
        if self._client is None:
            try:
                self._client = docker.DockerClient(base_url=self.url, timeout=int(self.timeout))
            except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
                # The client asks the engine its version at once: an engine that is down (a
                # LOST agent) must be a 503 for its sessions, not an error of the whole sweep.
                raise AgentUnavailable(
                    f"Docker engine of agent {self.id} unreachable: {exc}"
                ) from None
        return self._client

    def client(self) -> docker.DockerClient:
        """The SDK client, for work kept in modules of its own (docker_logs, docker_commit);
        blocking: call it from threads only."""
        return self._docker()

    async def call(self, func: Callable[[], T], what: str) -> T:
        """``_call`` for those modules: a blocking SDK call in a thread, errors mapped."""
        return await self._call(func, what)

    async def _call(self, func: Callable[[], T], what: str) -> T:
        """Run a blocking SDK call in a thread and map engine failures by status code.

        A cancelled caller still waits for the call to end: the thread can't be stopped, and what
        it creates after the caller gave up would be left behind with nobody to remove it.
        """
        try:
            return await _to_thread_to_the_end(func)
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
            detail=f"Docker {raw.get('ServerVersion', '?')} at {self.url}{self._host_ports_note()}",
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
                found = self._find_network(client)
                if found is None:
                    found = client.networks.create(
                        self.network_name,
                        driver="bridge",
                        options={
                            "com.docker.network.bridge.enable_icc": "false",
                            # Named, so the host-port rule can name it (at most 15 characters).
                            BRIDGE_NAME_OPTION: bridge_interface(self.installation_id),
                        },
                        labels={LABEL_INSTALLATION: self.installation_id},
                    )
                return bridge_of(found.attrs, found.id or "")

            bridge = await self._call(ensure, "create network")
            await self._guard_host_ports(bridge)
            self._network = self.network_name
            return self._network

    async def create_kernel(self, spec: KernelSpec) -> KernelHandle:
        client = self._docker()
        binds = docker_mounts(spec.mounts, self.id, self.url)  # local engines only
        if spec.cluster:  # a network of the cluster's own (agents/docker_cluster.py)
            overlay = spec.cluster == "multi-node"
            network = await ensure_cluster_network(self, spec.session_id, overlay=overlay)
        else:
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
                working_dir=spec.working_dir or "/home/work",
                volumes={volume.name: {"bind": "/home/work", "mode": "rw"}},
                mounts=binds or None,
                ports={
                    f"{p}/tcp": (self.publish_ip, None)
                    for p in (*KERNEL_PORTS.values(), *spec.publish_ports)
                },
                network=network,
                hostname=spec.kernel_name if spec.cluster else None,
                networking_config=(
                    {network: client.api.create_endpoint_config(aliases=[spec.kernel_name])}
                    if spec.cluster
                    else None
                ),
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
                # A forced destroy may be removing it already: keep the original error.
                with contextlib.suppress(docker.errors.APIError):
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

    async def usage(self, container_ref: str) -> dict[str, Any] | None:
        client = self._docker()

        def read() -> dict[str, Any] | None:
            try:
                container = client.containers.get(container_ref)
            except docker.errors.NotFound:
                return None
            if container.status != "running":
                return None
            stats = container.stats(stream=False, one_shot=True)
            memory = stats.get("memory_stats") or {}
            cpu = (stats.get("cpu_stats") or {}).get("cpu_usage") or {}
            return {
                "cpu_seconds": round(int(cpu.get("total_usage", 0)) / 1e9, 3),
                "mem_bytes": int(memory.get("usage", 0)),
                "mem_limit": int(memory["limit"]) if memory.get("limit") else None,
                "pids": int((stats.get("pids_stats") or {}).get("current", 0)),
                # Bytes through the container's interfaces so far (usage.py samples these).
                "net_rx_bytes": sum(
                    int(n.get("rx_bytes", 0)) for n in (stats.get("networks") or {}).values()
                ),
                "net_tx_bytes": sum(
                    int(n.get("tx_bytes", 0)) for n in (stats.get("networks") or {}).values()
                ),
            }

        return await self._call(read, "read container usage")

    async def logs(self, container_ref: str, *, tail: int | None = None) -> str:
        client = self._docker()

        def read() -> str:
            try:
                container = client.containers.get(container_ref)
            except docker.errors.NotFound:
                return ""
            raw: bytes = container.logs(stdout=True, stderr=True, tail=tail or "all")
            return raw.decode("utf-8", "replace")

        return await self._call(read, "read container logs")

    async def service_endpoint(self, container_ref: str, port: int) -> tuple[str, int]:
        """The container's bridge address and the port itself (agents/docker_services.py)."""
        from .docker_services import check_local_engine, container_address

        check_local_engine(self.kernel_host)
        client, network = self._docker(), self.network_name
        host = await self._call(
            lambda: container_address(client, container_ref, network), "inspect the container"
        )
        return host, port

    async def published_ports(self, container_ref: str) -> dict[int, tuple[str, int]]:
        """Preopened ports published for direct access (agents/docker_services.py)."""
        from .docker_services import published_ports

        client, skip = self._docker(), set(KERNEL_PORTS.values())
        found = await self._call(
            lambda: published_ports(client, container_ref, skip), "inspect the container"
        )
        return {port: (self.kernel_host, host_port) for port, host_port in found.items()}

    async def exec(
        self, container_ref: str, argv: list[str], *, environ: Mapping[str, str] | None = None
    ) -> ExecProcess:
        client = self._docker()
        # setsid gives the command a process group of its own (so a signal reaches its children)
        # and records its pid; the user's argv follows as arguments, never inside a script.
        pidfile = f"/tmp/jsess-exec-{uuid.uuid4().hex}.pid"  # noqa: S108 - inside the container
        wrapped = ["setsid", "-w", "sh", "-c", 'echo $$ > "$0"; exec "$@"', pidfile, *argv]

        def create() -> str:
            created = client.api.exec_create(
                container_ref,
                wrapped,
                stdout=True,
                stderr=True,
                workdir="/home/work",
                user=self.container_user,
                environment=dict(environ) if environ else None,
            )
            return str(created["Id"])

        exec_id = await self._call(create, "start a command")

        async def signal(signum: int) -> None:
            name = signal_module.Signals(signum).name.removeprefix("SIG")

            def kill() -> None:
                killer = client.api.exec_create(
                    container_ref,
                    ["sh", "-c", 'kill -s "$1" -- -"$(cat "$0")"', pidfile, name],
                    user=self.container_user,
                )
                client.api.exec_start(killer["Id"])

            await self._call(kill, "signal a command")

        process = ExecProcess(signal)

        def pump() -> None:
            decoders = {
                "stdout": codecs.getincrementaldecoder("utf-8")("replace"),
                "stderr": codecs.getincrementaldecoder("utf-8")("replace"),
            }
            code = -1
            try:
                for out, err in client.api.exec_start(exec_id, stream=True, demux=True):
                    for stream, data in (("stdout", out), ("stderr", err)):
                        if data:
                            process.feed(stream, decoders[stream].decode(data))
                inspected = client.api.exec_inspect(exec_id)
                code = int(
                    inspected.get("ExitCode") if inspected.get("ExitCode") is not None else -1
                )
            except Exception as exc:  # the engine went away mid-command: say so in its output
                process.feed("stderr", f"\n[lost the command: {exc}]\n")
            finally:
                process.exited(code)

        threading.Thread(target=pump, name=f"jsess-exec-{exec_id[:12]}", daemon=True).start()
        return process

    # --- start-up reconciliation and the host-port rule -------------------------------------

    def _find_network(self, client: docker.DockerClient) -> Any:
        """The installation's network, or None (the engine's name filter matches substrings)."""
        for network in client.networks.list(names=[self.network_name]):
            if network.name == self.network_name:
                return network
        return None

    async def setup(self) -> None:
        """Re-apply the host-port rule to an existing network (a host reboot flushes rules).

        A missing network is not created here: it comes with the first kernel, so a server that
        never starts a session leaves nothing on the engine.
        """

        def existing() -> str | None:
            network = self._find_network(self._docker())
            return None if network is None else bridge_of(network.attrs, network.id or "")

        try:
            bridge = await self._call(existing, "inspect network")
        except (AgentError, AgentUnavailable) as exc:
            log.warning("agent %s: could not inspect the sessions' network: %s", self.id, exc)
            return
        if bridge is not None:
            async with self._lock:
                await self._guard_host_ports(bridge)
                self._network = self.network_name

    async def list_kernels(self) -> list[KernelListing]:
        selector = {"label": f"{LABEL_INSTALLATION}={self.installation_id}"}

        def listing() -> list[KernelListing]:
            found = []
            for container in self._docker().containers.list(
                all=True, filters=selector, ignore_removed=True
            ):
                labels = container.labels or {}
                running = container.status == "running"
                state = container.attrs.get("State") or {}
                ports = (container.attrs.get("NetworkSettings") or {}).get("Ports") or {}
                connection: dict[str, Any] = {}
                if running:
                    try:
                        connection = {
                            name: int(ports[f"{inner}/tcp"][0]["HostPort"])
                            for name, inner in KERNEL_PORTS.items()
                        }
                        connection["ip"] = self.kernel_host
                    except (KeyError, TypeError, IndexError, ValueError):
                        connection = {}
                found.append(
                    KernelListing(
                        session_id=labels.get(LABEL_SESSION),
                        kernel_name=labels.get(LABEL_KERNEL),
                        container_id=container.id or "",
                        running=running,
                        connection=connection,
                        state=(
                            "running"
                            if running
                            else f"{container.status} (exit code {state.get('ExitCode')})"
                        ),
                    )
                )
            return found

        return await self._call(listing, "list kernel containers")

    async def commit_leftovers(self) -> dict[str, str]:
        def listing() -> dict[str, str]:
            found = {}
            for container in self._docker().containers.list(
                all=True, filters={"name": "-commit-"}, ignore_removed=True
            ):
                match = SCRATCH_NAME.match(container.name or "")
                if match is not None and match.group(0) not in self.scratch_in_use:
                    found[match.group(0)] = match.group(1)
            return found

        return await self._call(listing, "list commit leftovers")

    async def remove_commit_leftover(self, name: str) -> None:
        client = self._docker()

        def remove() -> None:
            with contextlib.suppress(docker.errors.NotFound):
                client.containers.get(name).remove(force=True)

        await self._call(remove, "remove a commit leftover")

    async def list_session_storage(self) -> list[str]:
        selector = {"label": f"{LABEL_INSTALLATION}={self.installation_id}"}

        def listing() -> list[str]:
            return [
                (volume.attrs.get("Labels") or {}).get(LABEL_SESSION) or ""
                for volume in self._docker().volumes.list(filters=selector)
            ]

        return [sid for sid in await self._call(listing, "list work volumes") if sid]

    async def remove_network(self) -> None:
        """Remove the sessions' network and its host-port rules (once no container uses it)."""

        def remove() -> str | None:
            network = self._find_network(self._docker())
            if network is None:
                return None
            bridge = bridge_of(network.attrs, network.id or "")
            network.remove()
            return bridge

        async with self._lock:
            bridge = await self._call(remove, "remove network")
            self._network = None
            if bridge is not None and self.host_firewall != "off":
                run = self._rule_runner(bridge)[0]
                if run is not None:
                    await asyncio.to_thread(
                        remove_host_rules, run, host_rule(bridge, self.installation_id)
                    )
            self.host_ports_closed, self.host_ports_status = False, ""
            self._info = None

    def _rule_runner(self, bridge: str) -> tuple[RuleRunner | None, str]:
        """How to run iptables for ``bridge`` (here or through the engine), or why it can't be."""
        if self.host_firewall == "off":
            return None, "disabled by configuration (host_firewall: off)"
        if self.host_firewall != "engine":
            direct_problem = direct_iptables_problem(bridge)
            if not direct_problem:
                return run_direct, ""
            if self.host_firewall == "direct":
                return None, direct_problem
            if not self.helper_image:
                return None, f"{direct_problem}, and no helper image to apply it through the engine"
        elif not self.helper_image:
            return None, "no helper image to apply it through the engine"
        return self._run_on_engine, ""

    def _run_on_engine(self, argv: list[str]) -> tuple[int, str]:
        """Run an iptables argv in the engine host's network namespace, with its own iptables.

        A short-lived container of the kernel image (no registry) with the host's network and
        NET_ADMIN chroots into the host's root file system, mounted read-only: the kernel image
        has no iptables, and the engine's host always has the one Docker itself uses.
        """
        try:
            output = self._docker().containers.run(
                self.helper_image,
                ["/usr/sbin/chroot", "/host", *argv],
                remove=True,
                user="0:0",
                network_mode="host",
                cap_drop=["ALL"],
                cap_add=["NET_ADMIN", "SYS_CHROOT"],
                security_opt=["no-new-privileges:true"],
                volumes={"/": {"bind": "/host", "mode": "ro"}},
                tmpfs={"/host/run": ""},  # legacy iptables' lock file must be writable
                environment={"PATH": SBIN_PATH},
                labels={LABEL_INSTALLATION: self.installation_id},
                stdout=True,
                stderr=True,
            )
        except docker.errors.ContainerError as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
            return int(exc.exit_status), stderr
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            return 125, f"the helper container failed: {exc}"
        text = output.decode(errors="replace") if isinstance(output, bytes) else ""
        return 0, text

    async def _guard_host_ports(self, bridge: str) -> None:
        """Refuse new connections from the sessions' bridge to the host; record when it can't."""
        run, problem = self._rule_runner(bridge)
        problems = [problem] if run is None else []
        if run is not None:
            rule = host_rule(bridge, self.installation_id)

            def apply() -> list[str]:
                if run is run_direct:
                    prune_stale_rules(run)
                return ensure_host_rules(run, rule)

            problems = await asyncio.to_thread(apply)
        how = "iptables on this host" if run is run_direct else "iptables through the engine"
        ipv4_failed = any(p.startswith("iptables:") for p in problems) or run is None
        self.host_ports_closed = not ipv4_failed
        if not problems:
            self.host_ports_status = f"host ports closed to sessions ({how}, bridge {bridge})"
        elif not ipv4_failed:
            self.host_ports_status = (
                f"host ports closed to sessions over IPv4 ({how}, bridge {bridge}); "
                f"IPv6: {'; '.join(problems)}"
            )
            log.warning("agent %s: %s", self.id, self.host_ports_status)
        else:
            self.host_ports_status = (
                f"WARNING: sessions CAN open connections to the host's ports (bridge {bridge}): "
                f"{'; '.join(problems)}"
            )
            log.error("agent %s: %s", self.id, self.host_ports_status)
        self._info = None

    def _host_ports_note(self) -> str:
        return f"; {self.host_ports_status}" if self.host_ports_status else ""

    # --- files: the helper runs in the container as its user (agents/docker_files.py) -------

    async def file_op(
        self, session_id: str, container_ref: str, op: str, args: dict[str, Any]
    ) -> Any:
        client, user = self._docker(), self.container_user
        return await self._call(
            lambda: docker_files.run_op(client, container_ref, user, op, args), f"files: {op}"
        )

    def file_stream(
        self, session_id: str, container_ref: str, op: str, args: dict[str, Any]
    ) -> AsyncIterator[bytes]:
        if op == "read":  # the engine's archive API, as docker cp (args["path"] is resolved)
            producer = docker_files.archive_read(
                self._docker(), container_ref, args["path"], args["offset"], args["length"]
            )
        else:
            producer = docker_files.stream_op(
                self._docker(), container_ref, self.container_user, op, args
            )
        return local_files.stream_from_thread(producer)

    async def file_upload(
        self,
        session_id: str,
        container_ref: str,
        args: dict[str, Any],
        events: AsyncIterator[tuple[str, Any]],
    ) -> Any:
        client, user, loop = self._docker(), self.container_user, asyncio.get_running_loop()
        pulled = local_files.pull_from_loop(events, loop)

        def upload() -> Any:
            # Closed in this thread, also when the upload stops early (see LocalAgent).
            with contextlib.closing(pulled):
                return docker_files.upload(client, container_ref, user, args, pulled)

        return await self._call(upload, "upload files")

    async def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await asyncio.to_thread(client.close)


# --- the host-port rule: sessions can't open connections to the engine host's own ports -------
#
# One rule per address family in the INPUT chain of the engine's host: new connections (or
# datagrams) arriving from the sessions' bridge for any of the host's own addresses (the bridge's
# gateway, the host's other interfaces and bridges) are rejected. Replies on connections the host
# opened (the manager's ZMQ through published ports) are ESTABLISHED and pass. Traffic between
# sessions never reaches INPUT: the bridge's icc=false drops it in FORWARD.

log = logging.getLogger(__name__)

#: The network option that names the bridge interface.
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
HOST_FIREWALL_MODES = ("auto", "direct", "engine", "off")
#: Marks our rules (followed by the installation id), so they are found and removed exactly.
RULE_COMMENT = "jupyter-sessions"
#: Where iptables lives (sbin is often not on a server's PATH).
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: Both families: a bridge carries IPv6 link-local traffic even without IPv6 networking.
IPTABLES = ("iptables", "ip6tables")

#: Runs one iptables argv (never through a shell) and returns its exit code and output.
RuleRunner = Callable[[list[str]], tuple[int, str]]


def bridge_interface(installation_id: str) -> str:
    """The bridge interface of an installation's network (Linux allows 15 characters)."""
    return f"jsess-{installation_id[:9]}"


def bridge_of(attrs: dict[str, Any], network_id: str) -> str:
    """A network's bridge interface: the name it was given, else Docker's ``br-<id>``."""
    return str((attrs.get("Options") or {}).get(BRIDGE_NAME_OPTION) or f"br-{network_id[:12]}")


def host_rule(bridge: str, installation_id: str) -> list[str]:
    """The INPUT rule (chain and match, without the command) for one bridge."""
    return [
        "INPUT",
        "-i",
        bridge,
        "-m",
        "conntrack",
        "--ctstate",
        "NEW",
        "-m",
        "comment",
        "--comment",
        f"{RULE_COMMENT} {installation_id}",
        "-j",
        "REJECT",
    ]


def ensure_host_rules(run: RuleRunner, rule: list[str]) -> list[str]:
    """Insert the rule first in INPUT for each family unless present; the problems, if any."""
    problems = []
    for binary in IPTABLES:
        if run([binary, "-w", "-C", *rule])[0] == 0:
            continue
        code, output = run([binary, "-w", "-I", *rule])
        if code != 0:
            problems.append(f"{binary}: {output.strip() or f'exit code {code}'}")
    return problems


def remove_host_rules(run: RuleRunner, rule: list[str]) -> None:
    for binary in IPTABLES:
        for _ in range(16):  # a duplicate, if two managers raced to insert it
            if run([binary, "-w", "-C", *rule])[0] != 0:
                break
            run([binary, "-w", "-D", *rule])


def prune_stale_rules(run: RuleRunner) -> None:
    """Drop our rules whose bridge no longer exists (its network was removed by other means)."""
    for binary in IPTABLES:
        code, output = run([binary, "-w", "-S", "INPUT"])
        if code != 0:
            continue
        for line in output.splitlines():
            if f"{RULE_COMMENT} " not in line or not line.startswith("-A INPUT "):
                continue
            try:
                parts = shlex.split(line)  # parsing iptables' own output, not running a shell
                bridge = parts[parts.index("-i") + 1]
            except (ValueError, IndexError):
                continue
            comment = parts[parts.index("--comment") + 1] if "--comment" in parts else ""
            if (
                comment.startswith(f"{RULE_COMMENT} ")
                and not Path("/sys/class/net", bridge).exists()
            ):
                run([binary, "-w", "-D", *parts[1:]])


def direct_iptables_problem(bridge: str) -> str:
    """Why iptables can't be run here for ``bridge`` (empty when it can)."""
    if os.geteuid() != 0:
        return "the server does not run as root"
    if shutil.which("iptables", path=SBIN_PATH) is None:
        return "no iptables on the server's host"
    if not Path("/sys/class/net", bridge).exists():
        return f"bridge {bridge} is not in the server's network namespace (a remote engine?)"
    return ""


def run_direct(argv: list[str]) -> tuple[int, str]:
    """Run an iptables argv on this host (root, no shell)."""
    binary = shutil.which(argv[0], path=SBIN_PATH)
    if binary is None:
        return 127, f"{argv[0]} not found"
    try:
        done = subprocess.run(
            [binary, *argv[1:]], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 126, str(exc)
    return done.returncode, done.stdout + done.stderr
