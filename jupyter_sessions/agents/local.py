"""The local agent: kernels as plain subprocesses of the server, one directory per session.

For one person's machine, development and Binder (no Docker engine there). It isolates nothing,
like Jupyter's own local kernels: a kernel runs as the server's user, sees the server's file system
and network, and can raise its own limits when the server runs as root.

Layout under ``root_dir`` (mode 0700), one directory per session (mode 0700)::

    <session id>/work               the kernel's cwd and HOME (the container's /home/work)
    <session id>/runtime            mode 0700: <kernel>.json (connection file, 0600), <kernel>.log

What is applied to a kernel, and what is not:

- Environment: clean. Only PATH (the server's, with the kernel Python's directory first), LANG,
  HOME=<work dir> and the spec's ``environ``; nothing else of the server's (no JUPYTER_TOKEN, no
  JPY_*, no secrets).
- Memory: RLIMIT_AS (soft = hard) of ``mem`` + ``AS_HEADROOM`` bytes when ``mem`` is set. It bounds
  *virtual* memory, not resident memory: an idle ipykernel already maps ~0.7 GiB (thread stacks and
  malloc arenas) while using ~50 MiB, hence the headroom. Libraries that start a thread per core
  (OpenBLAS, OpenMP) map more on many-core machines; set OPENBLAS_NUM_THREADS/OMP_NUM_THREADS in
  the session's environ there. An allocation past the limit raises MemoryError in the kernel.
- Core dumps: RLIMIT_CORE 0.
- CPU: not enforced. ``cpu`` counts against the agent's capacity only (affinity would pin every
  kernel on the same first cores, and nice limits nothing).
- Processes: RLIMIT_NPROC is per user (it would count the server's own processes), so none. Each
  kernel leads its own session and process group; destroy signals the whole group. A child that
  leaves the group (setsid, daemonizing) escapes it.

Limits are set by a tiny stdlib launcher (``python -I -S -c``) that calls setrlimit and then
execs the kernel: no ``preexec_fn``, which is unsafe in a threaded server. A kernel that exits
stays a zombie until ``destroy_kernel`` or ``close`` reaps it, on purpose: the unreaped leader
keeps its pid, so signalling its process group can never hit an unrelated process that reused it.

Kernels die with the server (``close``; after a SIGKILL, ipykernel's parent poller, given the
server's pid by the default argv); nothing survives a restart, so there is nothing to re-attach.
Blocking work (directories, files, fork/exec, removal) runs in threads.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import datetime
import json
import os
import platform
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..errors import AgentError, AgentUnavailable, InvalidRequest, InvalidStatus
from ..mounts import local_working_dir
from ..types import ResourceSlot
from . import local_files
from .base import Agent, AgentInfo, ExecProcess, ImageInfo, KernelHandle, KernelSpec

#: The one pseudo-image of this agent: the server's own Python environment.
LOCAL_IMAGE = "local"
#: Added to ``mem`` for RLIMIT_AS: the virtual memory an idle kernel maps beyond what it uses.
AS_HEADROOM = 2**30
#: Seconds between SIGTERM and SIGKILL in a non-forced destroy (Docker's stop uses 3 too).
STOP_GRACE = 3.0
#: Seconds a SIGKILLed kernel may take to exit before destroy reports an agent error.
KILL_WAIT = 10.0
#: What {connection_file} in ``kernel_argv`` is replaced with.
CONNECTION_PLACEHOLDER = "{connection_file}"

_PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
_KERNEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_POLL = 0.02

# Runs in the child between fork and the kernel: sets the limits, then becomes the kernel.
# argv: <RLIMIT_AS bytes, 0 = none> <kernel argv...>. Never lowers below or raises above the hard
# limit the server already has.
_LAUNCHER = """\
import os, resource, sys
limit = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
if limit > 0:
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
os.execvp(sys.argv[2], sys.argv[2:])
"""


def address_space_limit(mem: int) -> int:
    """The RLIMIT_AS a kernel gets for ``mem`` bytes of memory (0: no limit)."""
    return mem + AS_HEADROOM if mem > 0 else 0


def check_session_id(session_id: str) -> str:
    """The id if it is a canonical UUID string (so it is a safe single path component)."""
    try:
        canonical: str | None = str(uuid.UUID(session_id))
    except (ValueError, TypeError, AttributeError):
        canonical = None
    if canonical is None or canonical != session_id:
        raise InvalidRequest(f"local agent: {session_id!r} is not a session id (a UUID)")
    return session_id


def _check_kernel_name(kernel_name: str) -> str:
    if not isinstance(kernel_name, str) or not _KERNEL_NAME.match(kernel_name):
        raise InvalidRequest(f"local agent: {kernel_name!r} is not a kernel name")
    return kernel_name


def _free_ports(count: int, avoid: set[int]) -> list[int]:
    """Distinct free loopback ports: all bound at once (so distinct), none held by our kernels."""
    for _attempt in range(20):
        sockets = []
        try:
            for _ in range(count):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sockets.append(sock)
                sock.bind(("127.0.0.1", 0))
            ports = [s.getsockname()[1] for s in sockets]
        finally:
            for sock in sockets:
                sock.close()
        if not avoid.intersection(ports):
            return ports
    raise AgentError("local agent: found no free loopback ports")


def _total_memory() -> int:
    """Physical memory, capped by the server's cgroup limit (Binder pods have one)."""
    total = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    total = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError, IndexError):
        pass
    if not total:
        with contextlib.suppress(ValueError, OSError, AttributeError):
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        with contextlib.suppress(OSError, ValueError):
            limit = int(Path(limit_file).read_text().strip())
            if 0 < limit < total:
                total = limit
    return total


def _cpu_count() -> Decimal:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota."""
    try:
        count = Decimal(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        count = Decimal(os.cpu_count() or 1)
    quota: Decimal | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        raw_quota, raw_period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if raw_quota != "max":
            quota = Decimal(raw_quota) / Decimal(raw_period)
    if quota is None:
        with contextlib.suppress(OSError, ValueError):
            raw = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
            period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
            if raw > 0 and period > 0:
                quota = Decimal(raw) / Decimal(period)
    if quota is not None and 0 < quota < count:
        count = quota
    return count


def _ensure_private_dir(path: Path) -> None:
    """Create a directory of ours with mode 0700; refuse a symlink in its place."""
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise AgentError(f"local agent: {path} is not a directory")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)


def _write_private(path: Path, payload: bytes) -> None:
    """Write a file readable by the server's user alone, never through a symlink."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, payload)
    finally:
        os.close(fd)


def _rmtree_onerror(func: Callable[..., Any], path: str, exc_info: Any) -> None:
    """Retry once after making the parent writable (a kernel may chmod its directories)."""
    parent = os.path.dirname(path)
    if not isinstance(exc_info[1], PermissionError) or os.path.islink(parent):
        raise exc_info[1]
    os.chmod(parent, 0o700)
    func(path)


@dataclass(eq=False)
class _Kernel:
    """One kernel process this agent started (or is starting)."""

    session_id: str
    kernel_name: str
    ports: list[int]
    container_id: str = ""
    spawn: asyncio.Future[subprocess.Popen[bytes]] | None = None
    proc: subprocess.Popen[bytes] | None = None
    stopping: bool = False
    stopped: asyncio.Event = field(default_factory=asyncio.Event)


class LocalAgent(Agent):
    """Kernels as subprocesses of the server in per-session directories, with rlimits."""

    kind = "local"

    def __init__(
        self,
        agent_id: str = "local",
        *,
        installation_id: str,
        root_dir: Path,
        scaling_group: str = "default",
        python: str = sys.executable,
        kernel_argv: list[str] | None = None,
    ) -> None:
        super().__init__(agent_id, scaling_group=scaling_group, url=f"local://{root_dir}")
        self.installation_id = installation_id
        self.root_dir = Path(root_dir)
        self.python = python
        #: The kernel's command; ``{connection_file}`` in an item becomes the connection file.
        self.kernel_argv = list(
            kernel_argv
            or [
                python,
                "-m",
                "ipykernel_launcher",
                "-f",
                CONNECTION_PLACEHOLDER,
                # The kernel exits when its parent (this server) is gone, even after a SIGKILL:
                # local kernels die with the server, as reconciliation at start-up assumes.
                f"--IPKernelApp.parent_handle={os.getpid()}",
            ]
        )
        self._kernels: list[_Kernel] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._capacity: ResourceSlot | None = None

    # --- paths -------------------------------------------------------------------------

    def session_dir(self, session_id: str) -> Path:
        return self.root_dir / check_session_id(session_id)

    def work_dir(self, session_id: str) -> Path:
        """The session's work directory (its kernels' cwd and HOME)."""
        return self.session_dir(session_id) / "work"

    def runtime_dir(self, session_id: str) -> Path:
        return self.session_dir(session_id) / "runtime"

    def log_path(self, session_id: str, kernel_name: str) -> Path:
        """Where the kernel's stdout and stderr go (its "container log")."""
        return self.runtime_dir(session_id) / f"{_check_kernel_name(kernel_name)}.log"

    # --- lookup ------------------------------------------------------------------------

    def _find(self, ref: str) -> _Kernel | None:
        """The kernel a container id or a ``kernel_ref`` names (the newest, for a name)."""
        for kernel in reversed(self._kernels):
            if ref in (kernel.container_id, self.kernel_ref(kernel.session_id, kernel.kernel_name)):
                return kernel
        return None

    def _used_ports(self) -> set[int]:
        return {port for kernel in self._kernels for port in kernel.ports}

    def _background(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- Agent ---------------------------------------------------------------------------

    async def info(self) -> AgentInfo:
        if self._closed:
            return AgentInfo(
                reachable=False, capacity=ResourceSlot({}), detail="local agent closed"
            )
        if self._capacity is None:
            cpu, mem = await asyncio.to_thread(lambda: (_cpu_count(), _total_memory()))
            self._capacity = ResourceSlot({"cpu": cpu, "mem": Decimal(mem)})
        return AgentInfo(
            reachable=True,
            capacity=self._capacity,
            detail=f"local subprocess kernels (no isolation), Python {self.python}",
            # The server's Python version, when kernels run on that very interpreter.
            version=platform.python_version() if self.python == sys.executable else "",
        )

    async def has_image(self, image: str) -> bool:
        return image == LOCAL_IMAGE

    async def list_images(self) -> list[ImageInfo]:
        return [
            ImageInfo(
                name=LOCAL_IMAGE,
                id=LOCAL_IMAGE,
                size=0,
                labels={
                    "org.jupyter.sessions.local": "true",
                    "org.jupyter.sessions.description": (
                        "the Jupyter server's own Python environment (no isolation)"
                    ),
                    "org.jupyter.sessions.python": self.python,
                },
                created="",
            )
        ]

    def kernel_ref(self, session_id: str, kernel_name: str) -> str:
        return f"local:{session_id}/{kernel_name}"

    async def create_kernel(self, spec: KernelSpec) -> KernelHandle:
        if self._closed:
            raise AgentUnavailable(f"agent {self.id} is closed")
        check_session_id(spec.session_id)
        _check_kernel_name(spec.kernel_name)
        if spec.image != LOCAL_IMAGE:
            raise InvalidRequest(
                f"image {spec.image!r} is not present on agent {self.id} "
                f"(local agents run {LOCAL_IMAGE!r}: the server's own Python)"
            )
        previous = self._find(self.kernel_ref(spec.session_id, spec.kernel_name))
        if previous is not None and previous.stopping:
            await previous.stopped.wait()  # a destroy in progress (a restart): let it finish
            previous = self._find(self.kernel_ref(spec.session_id, spec.kernel_name))
        if previous is not None:
            if previous.proc is None or _running(previous.proc):
                raise AgentError(
                    f"agent {self.id}: kernel {spec.kernel_name} of session {spec.session_id} "
                    "is already running"
                )
            await self._terminate(previous, forced=True)  # a dead one: reap what is left

        ports = _free_ports(len(_PORT_NAMES), self._used_ports())
        kernel = _Kernel(spec.session_id, spec.kernel_name, ports)
        self._kernels.append(kernel)  # findable by kernel_ref from now on
        kernel.spawn = asyncio.ensure_future(asyncio.to_thread(self._spawn, spec, ports))
        try:
            proc = await asyncio.shield(kernel.spawn)
        except BaseException as exc:
            # Spawning failed, or this call was cancelled while the thread may still start it.
            self._background(self._terminate(kernel, forced=True))
            if isinstance(exc, InvalidRequest | AgentError):
                raise
            if isinstance(exc, OSError | ValueError):
                raise AgentError(f"agent {self.id}: could not start the kernel: {exc}") from None
            raise
        kernel.proc = proc
        kernel.container_id = f"local-{proc.pid}-{secrets.token_hex(4)}"
        if kernel.stopping:  # destroyed while it was starting
            await kernel.stopped.wait()
            raise AgentError(f"agent {self.id}: the kernel was destroyed while it started")
        connection = {
            **dict(zip(_PORT_NAMES, ports, strict=True)),
            "ip": "127.0.0.1",
            "transport": "tcp",
            "key": spec.key,
            "signature_scheme": "hmac-sha256",
        }
        return KernelHandle(container_id=kernel.container_id, connection=connection)

    def _spawn(self, spec: KernelSpec, ports: list[int]) -> subprocess.Popen[bytes]:
        """Prepare the session's directories and files and start the kernel (in a thread)."""
        _ensure_private_dir(self.root_dir)
        session = self.session_dir(spec.session_id)
        _ensure_private_dir(session)
        work, runtime = session / "work", session / "runtime"
        _ensure_private_dir(work)
        _ensure_private_dir(runtime)
        connection_file = runtime / f"{spec.kernel_name}.json"
        connection = {
            **dict(zip(_PORT_NAMES, ports, strict=True)),
            "ip": "127.0.0.1",
            "transport": "tcp",
            "key": spec.key,
            "signature_scheme": "hmac-sha256",
            "kernel_name": "python3",
        }
        _write_private(connection_file, json.dumps(connection).encode())

        env = self._environment(work, spec.environ)

        argv = [a.replace(CONNECTION_PLACEHOLDER, str(connection_file)) for a in self.kernel_argv]
        if shutil.which(argv[0], path=env["PATH"]) is None:
            raise AgentError(f"agent {self.id}: kernel command {argv[0]!r} not found")
        limit = address_space_limit(int(spec.resources.get("mem")))
        launcher = [self.python, "-I", "-S", "-c", _LAUNCHER, str(limit), *argv]

        log_fd = os.open(
            runtime / f"{spec.kernel_name}.log",
            os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW,
            0o600,
        )
        try:
            started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
            os.write(log_fd, f"--- kernel {spec.kernel_name} starting at {started}\n".encode())
            return subprocess.Popen(  # an argv list, never a shell
                launcher,
                # A mount's working_dir (mounts.py): the host folder itself, no container here.
                cwd=local_working_dir(spec.mounts, self.id) or work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                close_fds=True,
                start_new_session=True,
            )
        finally:
            os.close(log_fd)

    def _environment(self, work: Path, environ: Mapping[str, str]) -> dict[str, str]:
        """A clean environment: PATH, LANG, HOME and the session's own; nothing of the server's."""
        path = os.environ.get("PATH") or os.defpath
        python_dir = os.path.dirname(self.python)
        if python_dir and python_dir not in path.split(os.pathsep):
            path = os.pathsep.join([python_dir, path])
        env = {"PATH": path, "LANG": os.environ.get("LANG") or "C.UTF-8", "HOME": str(work)}
        for name, value in environ.items():
            if not name or "=" in name or "\0" in name or "\0" in str(value):
                raise InvalidRequest(f"environ: {name!r} is not a valid environment variable")
            env[name] = str(value)
        return env

    async def usage(self, container_ref: str) -> dict[str, Any] | None:
        """From /proc: the kernel process's CPU time and resident memory (its children's are not
        counted); ``mem_limit`` is None: RLIMIT_AS caps virtual memory, not what is resident."""
        kernel = self._find(container_ref)
        if kernel is None or kernel.proc is None or not _running(kernel.proc):
            return None
        pid = kernel.proc.pid

        def read() -> dict[str, Any] | None:
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                return None
            fields = stat.rsplit(")", 1)[1].split()
            ticks = os.sysconf("SC_CLK_TCK")
            rss = next(
                (
                    int(line.split()[1]) * 1024
                    for line in status.splitlines()
                    if line.startswith("VmRSS:")
                ),
                0,
            )
            threads = next(
                (
                    int(line.split()[1])
                    for line in status.splitlines()
                    if line.startswith("Threads:")
                ),
                1,
            )
            return {
                "cpu_seconds": round((int(fields[11]) + int(fields[12])) / ticks, 3),
                "mem_bytes": rss,
                "mem_limit": None,
                "pids": threads,
            }

        return await asyncio.to_thread(read)

    async def logs(self, container_ref: str, *, tail: int | None = None) -> str:
        kernel = self._find(container_ref)
        if kernel is None:
            return ""
        path = self.log_path(kernel.session_id, kernel.kernel_name)

        def read() -> str:
            try:
                text = path.read_text("utf-8", "replace")
            except FileNotFoundError:
                return ""
            return "".join(text.splitlines(keepends=True)[-tail:]) if tail else text

        return await asyncio.to_thread(read)

    async def service_endpoint(self, container_ref: str, port: int) -> tuple[str, int]:
        """A free loopback port of its own: local services share the host's ports, so the
        declared one may be taken (the service's ``{port}`` is this one)."""
        kernel = self._find(container_ref)
        if kernel is None or kernel.proc is None or not _running(kernel.proc):
            raise InvalidStatus(f"agent {self.id}: no running kernel {container_ref!r}")
        return "127.0.0.1", _free_ports(1, self._used_ports())[0]

    async def exec(
        self, container_ref: str, argv: list[str], *, environ: Mapping[str, str] | None = None
    ) -> ExecProcess:
        kernel = self._find(container_ref)
        if kernel is None or kernel.proc is None or not _running(kernel.proc):
            raise InvalidStatus(f"agent {self.id}: no running kernel {container_ref!r}")
        work = self.work_dir(kernel.session_id)
        try:
            proc = await asyncio.create_subprocess_exec(  # an argv list, never a shell
                *argv,
                cwd=work,
                env=self._environment(work, environ or {}),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            raise AgentError(f"agent {self.id}: could not start {argv[0]!r}: {exc}") from None

        async def send_signal(signum: int) -> None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signum)

        process = ExecProcess(send_signal)

        async def pump(stream: asyncio.StreamReader, name: str) -> None:
            decoder = codecs.getincrementaldecoder("utf-8")("replace")
            while chunk := await stream.read(65536):
                process.feed(name, decoder.decode(chunk))

        async def run() -> None:
            assert proc.stdout is not None and proc.stderr is not None
            await asyncio.gather(pump(proc.stdout, "stdout"), pump(proc.stderr, "stderr"))
            process.exited(await proc.wait())

        self._background(run())
        return process

    async def destroy_kernel(self, container_ref: str, *, forced: bool = False) -> None:
        kernel = self._find(container_ref)
        if kernel is not None:
            await self._terminate(kernel, forced=forced)

    async def _terminate(self, kernel: _Kernel, *, forced: bool) -> None:
        """Stop the kernel's process group (SIGTERM, grace, SIGKILL), reap it and forget it."""
        if kernel.stopping:
            await kernel.stopped.wait()
            return
        kernel.stopping = True
        try:
            proc = kernel.proc
            if proc is None and kernel.spawn is not None:
                try:
                    proc = await asyncio.shield(kernel.spawn)
                except Exception:  # it never started: nothing to stop
                    proc = None
            if proc is not None:
                await self._stop_group(proc, forced=forced)
        finally:
            if kernel in self._kernels:
                self._kernels.remove(kernel)
            kernel.stopped.set()

    async def _stop_group(self, proc: subprocess.Popen[bytes], *, forced: bool) -> None:
        pgid = proc.pid  # the kernel leads its own session and process group
        if proc.returncode is not None:
            return  # already reaped: its pid may belong to someone else now
        if _running(proc):
            _signal_group(pgid, signal.SIGKILL if forced else signal.SIGTERM)
            if not forced:
                await _wait_exit(proc, STOP_GRACE)
        # The leader is unreaped (a zombie at worst), so the group id is still ours: kill what
        # is left of the group (children the kernel started), then reap the leader.
        _signal_group(pgid, signal.SIGKILL)
        if not await _wait_exit(proc, KILL_WAIT):
            raise AgentError(f"agent {self.id}: kernel process {pgid} did not exit after SIGKILL")
        proc.poll()

    async def kernel_exists(self, container_id: str) -> bool:
        kernel = self._find(container_id)
        return (
            kernel is not None
            and not kernel.stopping
            and kernel.proc is not None
            and _running(kernel.proc)
        )

    async def remove_session_storage(self, session_id: str) -> None:
        path = self.session_dir(session_id)
        if any(k.session_id == session_id and not k.stopping for k in self._kernels):
            raise AgentError(f"agent {self.id}: session {session_id} still has a running kernel")

        def remove() -> None:
            try:
                info = path.lstat()
            except FileNotFoundError:
                return
            if not stat.S_ISDIR(info.st_mode):
                path.unlink()  # a symlink or a file in its place: remove it, follow nothing
                return
            shutil.rmtree(path, onerror=_rmtree_onerror)

        try:
            await asyncio.to_thread(remove)
        except OSError as exc:
            raise AgentError(
                f"agent {self.id}: could not remove the storage of session {session_id}: {exc}"
            ) from None

    # --- files: plain files under the work directory, walked with openat (local_files.py) ----

    async def file_op(
        self, session_id: str, container_ref: str, op: str, args: dict[str, Any]
    ) -> Any:
        root = str(self.work_dir(session_id))
        return await asyncio.to_thread(local_files.in_process, local_files.answer, root, op, args)

    def file_stream(
        self, session_id: str, container_ref: str, op: str, args: dict[str, Any]
    ) -> AsyncIterator[bytes]:
        root = str(self.work_dir(session_id))
        return local_files.stream_from_thread(
            lambda sink: local_files.in_process(local_files.produce, root, op, args, sink)
        )

    async def file_upload(
        self,
        session_id: str,
        container_ref: str,
        args: dict[str, Any],
        events: AsyncIterator[tuple[str, Any]],
    ) -> Any:
        root, loop = str(self.work_dir(session_id)), asyncio.get_running_loop()
        pulled = local_files.pull_from_loop(events, loop)

        def receive() -> Any:
            # Closed in this thread, also when the upload stops early, so that the task pulling
            # from the request ends now and not at garbage collection.
            with contextlib.closing(pulled):
                return local_files.in_process(local_files.receive, root, args, pulled)

        return await asyncio.to_thread(receive)

    async def close(self) -> None:
        """Kill every kernel this agent started: local kernels die with the server."""
        self._closed = True
        await asyncio.gather(
            *(self._terminate(k, forced=False) for k in list(self._kernels)),
            return_exceptions=True,
        )
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _running(proc: subprocess.Popen[bytes]) -> bool:
    """Whether the leader runs, without reaping it (see the module docstring)."""
    if proc.returncode is not None:
        return False
    try:
        result = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False  # reaped by someone else
    return result is None


async def _wait_exit(proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Poll until the leader has exited (unreaped); False if it still runs after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while _running(proc):
        if loop.time() >= deadline:
            return False
        await asyncio.sleep(_POLL)
    return True


def _signal_group(pgid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
