"""Extra Docker engines for the scheduling and cluster tests: two (or more) real dockerd's on this
machine, each in its own network namespace joined to the host by a veth pair.

Engine ``i`` (1, 2, ...):

- network namespace ``jse<i>``; its veth ``jse<i>n`` (inside) has 10.210.0.<10+i>/24, and its host
  end ``jse<i>h`` is a port of the host bridge ``jse-br0`` (10.210.0.1/24), so the host reaches
  every engine and the engines reach each other (Swarm) over that bridge. One iptables rule
  (``FORWARD -i jse-br0 -o jse-br0 -j ACCEPT``, commented) lets bridged traffic pass the host's
  FORWARD DROP; it is removed at teardown.
- its own dockerd: socket ``/run/jupyter-sessions-engines/e<i>.sock``, ``--data-root``
  ``/var/lib/jupyter-sessions-engines/e<i>`` (kept between runs: it caches the kernel image),
  ``--exec-root``, ``--pidfile``, ``--bip 10.211.<i>.1/24``, address pool 10.212.<16i>.0/20, and
  its own iptables (the namespace's). The main engine's bridge, pool, root and socket are never
  touched.
- the kernel image is loaded into it (``docker save`` | ``docker load``) unless its data root
  already holds it.

Teardown removes every container, volume and network on the extra engines (they are the tests'
alone), leaves any Swarm, stops the daemons, and deletes the veths, namespaces, bridge and rule.
``python -m tests.engines up|down`` does the same by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

BRIDGE = "jse-br0"
BRIDGE_ADDRESS = "10.210.0.1"
RUN_DIR = Path("/run/jupyter-sessions-engines")
DATA_DIR = Path("/var/lib/jupyter-sessions-engines")
RULE = ["FORWARD", "-i", BRIDGE, "-o", BRIDGE, "-m", "comment"]
RULE += ["--comment", "jupyter-sessions test engines", "-j", "ACCEPT"]


@dataclass(frozen=True)
class Engine:
    index: int

    @property
    def name(self) -> str:
        return f"jse{self.index}"

    @property
    def netns(self) -> str:
        return self.name

    @property
    def address(self) -> str:
        """Where the host (the manager) and the other engines reach this engine."""
        return f"10.210.0.{10 + self.index}"

    @property
    def socket(self) -> Path:
        return RUN_DIR / f"e{self.index}.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pidfile(self) -> Path:
        return RUN_DIR / f"e{self.index}.pid"

    @property
    def data_root(self) -> Path:
        return DATA_DIR / f"e{self.index}"

    @property
    def exec_root(self) -> Path:
        return RUN_DIR / f"e{self.index}-exec"

    @property
    def log(self) -> Path:
        return RUN_DIR / f"e{self.index}.log"

    def client(self, timeout: int = 120) -> docker.DockerClient:
        return docker.DockerClient(base_url=self.url, timeout=timeout)

    def agent_spec(self, **extra: object) -> dict[str, object]:
        """This engine as an entry of ``c.SessionsApp.agents`` (or a ``POST agents`` body)."""
        return {"id": f"engine-{self.index}", "kind": "docker", "url": self.url,
                "kernel_host": self.address, **extra}  # fmt: skip


def _run(*argv: str, check: bool = True, input: bytes | None = None) -> str:
    done = subprocess.run(argv, capture_output=True, input=input, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.decode(errors='replace').strip()}")
    return done.stdout.decode(errors="replace")


def _link_exists(name: str) -> bool:
    return subprocess.run(["ip", "link", "show", name], capture_output=True).returncode == 0


def _stop_daemon(engine: Engine, timeout: float = 30.0) -> None:
    try:
        pid = int(engine.pidfile.read_text().strip())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.2)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    engine.pidfile.unlink(missing_ok=True)


def _network(engines: list[Engine]) -> None:
    if not _link_exists(BRIDGE):
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{BRIDGE_ADDRESS}/24", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")
    if subprocess.run(["iptables", "-C", *RULE], capture_output=True).returncode != 0:
        _run("iptables", "-I", *RULE)
    for engine in engines:
        host_end, inner = f"{engine.name}h", f"{engine.name}n"
        if engine.netns not in _run("ip", "netns", "list"):
            _run("ip", "netns", "add", engine.netns)
        if not _link_exists(host_end):
            _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", inner)
            _run("ip", "link", "set", inner, "netns", engine.netns)
            _run("ip", "link", "set", host_end, "master", BRIDGE)
            _run("ip", "link", "set", host_end, "up")
            ns = ("ip", "netns", "exec", engine.netns)
            _run(*ns, "ip", "addr", "add", f"{engine.address}/24", "dev", inner)
            _run(*ns, "ip", "link", "set", inner, "up")
            _run(*ns, "ip", "link", "set", "lo", "up")
            _run(*ns, "ip", "route", "add", "default", "via", BRIDGE_ADDRESS)


def _start_daemon(engine: Engine) -> None:
    for path in (engine.data_root, engine.exec_root):
        path.mkdir(parents=True, exist_ok=True)
    if engine.socket.exists():
        engine.socket.unlink()
    pool = f"base=10.212.{16 * engine.index}.0/20,size=24"
    argv = [
        # nsenter, not `ip netns exec`: that remounts /sys and so hides the cgroup mounts.
        "nsenter", f"--net=/run/netns/{engine.netns}", "dockerd",
        "--host", engine.url,
        "--data-root", str(engine.data_root),
        "--exec-root", str(engine.exec_root),
        "--pidfile", str(engine.pidfile),
        "--bip", f"10.211.{engine.index}.1/24",
        "--default-address-pool", pool,
        "--userland-proxy=false",
        "--cgroup-parent", f"/{engine.name}",
        "--storage-driver", "overlay2",
    ]  # fmt: skip
    with engine.log.open("ab") as log:
        daemon = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and daemon.poll() is None:
        with contextlib.suppress(Exception):
            client = engine.client(timeout=5)
            client.ping()
            client.close()
            return
        time.sleep(0.5)
    tail = engine.log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"engine {engine.index} did not start (exit {daemon.poll()}):\n{tail}")


def _load_image(engine: Engine, image: str) -> None:
    """``docker save`` from the main engine piped into ``docker load`` on this one, unless its
    data root (kept between runs) already has it."""
    client = engine.client()
    try:
        client.images.get(image)
        return
    except docker.errors.ImageNotFound:
        pass
    finally:
        client.close()
    save = subprocess.Popen(["docker", "save", image], stdout=subprocess.PIPE)
    load = subprocess.run(
        ["docker", "-H", engine.url, "load"], stdin=save.stdout, capture_output=True, check=False
    )
    save.wait()
    if save.returncode != 0 or load.returncode != 0:
        raise RuntimeError(f"loading {image} into engine {engine.index}: {load.stderr.decode()}")


def _empty(engine: Engine) -> None:
    """Remove every container, volume and network on an extra engine, and leave any Swarm."""
    if not engine.socket.exists():
        return
    with contextlib.suppress(Exception):
        client = engine.client(timeout=30)
        for container in client.containers.list(all=True):
            with contextlib.suppress(Exception):
                container.remove(force=True)
        with contextlib.suppress(Exception):
            client.swarm.leave(force=True)
        for network in client.networks.list():
            if network.name not in ("bridge", "host", "none", "docker_gwbridge", "ingress"):
                with contextlib.suppress(Exception):
                    network.remove()
        with contextlib.suppress(Exception):
            client.volumes.prune()
        client.close()


def up(count: int = 2, image: str | None = None) -> list[Engine]:
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    engines = [Engine(i) for i in range(1, count + 1)]
    for engine in engines:
        _stop_daemon(engine)  # a daemon a killed run left behind
    _network(engines)
    for engine in engines:
        _start_daemon(engine)
        _empty(engine)
        if image:
            _load_image(engine, image)
    return engines


def down(engines: list[Engine]) -> None:
    for engine in engines:
        _empty(engine)
        _stop_daemon(engine)
    for engine in engines:
        if _link_exists(f"{engine.name}h"):
            _run("ip", "link", "del", f"{engine.name}h", check=False)
        _run("ip", "netns", "del", engine.netns, check=False)
    if _link_exists(BRIDGE):
        _run("ip", "link", "del", BRIDGE, check=False)
    while subprocess.run(["iptables", "-D", *RULE], capture_output=True).returncode == 0:
        pass


def stop(engine: Engine) -> None:
    """Stop one engine's daemon (the tests' "engine goes away"); ``start`` brings it back."""
    _stop_daemon(engine)


def start(engine: Engine) -> None:
    _start_daemon(engine)


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """One set of extra engines per machine: a second test run waits for the first."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    with (RUN_DIR / "lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def engines(kernel_image: str) -> Iterator[list[Engine]]:
    """Two extra Docker engines with the kernel image, each in its own network namespace."""
    with _lock():
        started = up(2, kernel_image)
        try:
            yield started
        finally:
            down(started)


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "up"
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    if command == "up":
        found = up(count, sys.argv[3] if len(sys.argv) > 3 else None)
        print("\n".join(f"{e.url} {e.address}" for e in found))
    else:
        down([Engine(i) for i in range(1, count + 1)])
