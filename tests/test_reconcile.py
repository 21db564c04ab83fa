"""Reconciliation at start-up, on the real engine and with real servers killed with SIGKILL.

In-process tests stop the server's scheduler (and so its sweeper), leave the store and the engine
the way a server killed at that moment would, and run one reconciliation pass. The end-to-end
tests run real `jupyter server` processes, kill one with SIGKILL in the middle of a creation and
start another on the same store.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import docker.errors
import pytest
import requests

from jupyter_sessions.agents.base import LABEL_INSTALLATION, LABEL_KERNEL, LABEL_SESSION, KernelSpec
from jupyter_sessions.agents.docker import DockerAgent, container_name, volume_name
from jupyter_sessions.reconcile import (
    REASON_LOCAL,
    REASON_STARTING,
    REASON_VANISHED,
    Reconciler,
)
from jupyter_sessions.types import ResourceSlot, SessionStatus

from .conftest import Api

S = SessionStatus
#: Small sessions: the agent's capacity (2 cores here) must hold every one of them at once.
SMALL = {"cpu": 0.25, "mem": "256m"}
FINAL_OR_SETTLED = {"RUNNING", "RUNNING_DEGRADED", "ERROR", "TERMINATED", "CANCELLED"}
BUSY_CODE = "import time\nfor _ in range(600):\n    time.sleep(1)"
TRANSITIONAL = {"SCHEDULED", "PREPARING", "PULLING", "PREPARED", "CREATING", "RESTARTING"}


# --- helpers ------------------------------------------------------------------------------------


async def execute(api: Api, session: str, code: str) -> dict[str, Any]:
    answer = await api("POST", "sessions", session, "execute", body={"mode": "query", "code": code})
    assert answer.code == 200, answer.body
    result = answer.body
    while result["status"] == "continued":
        answer = await api(
            "POST",
            "sessions",
            session,
            "execute",
            body={"mode": "continue", "run_id": result["run_id"]},
        )
        result = answer.body
    return dict(result)


async def wait_all(api: Api, ids: list[str], wanted: set[str], timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    for session_id in ids:
        while True:
            body = (await api("GET", "sessions", session_id)).body
            if body["status"] in wanted:
                break
            assert time.monotonic() < deadline, body
            await asyncio.sleep(0.2)


async def walk_to(sessions_app: Any, session_id: str, path: list[SessionStatus]) -> None:
    """Move a PENDING session (scheduler stopped) along ``path`` as a start task would."""
    repository = sessions_app.repository
    for status in path:
        await repository.transit(session_id, status, f"test: {status}")
        if status is S.SCHEDULED:
            kernel = (await repository.get(session_id)).kernels[0]
            await repository.set_kernel_placement(kernel.id, agent_id="local-docker")


def labelled(installation: str, session_id: str | None = None) -> dict[str, str]:
    labels = {LABEL_INSTALLATION: installation}
    if session_id is not None:
        labels |= {LABEL_SESSION: session_id, LABEL_KERNEL: "main1"}
    return labels


def gone(docker_client: docker.DockerClient, container_ref: str) -> bool:
    try:
        docker_client.containers.get(container_ref)
    except docker.errors.NotFound:
        return True
    return False


def volume_exists(docker_client: docker.DockerClient, name: str) -> bool:
    try:
        docker_client.volumes.get(name)
    except docker.errors.NotFound:
        return False
    return True


@pytest.fixture
def foreign(docker_client: docker.DockerClient, kernel_image: str) -> Iterator[dict[str, Any]]:
    """A container and a volume of ANOTHER installation: reconciliation must leave them be."""
    installation = "foreign" + secrets.token_hex(3)
    session_id = str(uuid.uuid4())
    container = docker_client.containers.create(
        kernel_image,
        ["sleep", "600"],
        name=container_name(session_id, "main1"),
        labels=labelled(installation, session_id),
    )
    volume = docker_client.volumes.create(
        volume_name(session_id), labels=labelled(installation, session_id)
    )
    yield {"container": container.id, "volume": volume.name}
    container.remove(force=True)
    volume.remove(force=True)


# --- in-process: one pass over every case -----------------------------------------------------


@pytest.fixture
def docker_sessions_config(sessions_config: dict[str, Any], kernel_image: str) -> dict[str, Any]:
    sessions_config["default_image"] = kernel_image
    return sessions_config


@pytest.mark.docker
@pytest.mark.usefixtures("docker_cleanup", "docker_sessions_config")
async def test_one_pass_reattaches_fails_finishes_and_removes_orphans(
    api: Api,
    sessions_app: Any,
    docker_client: docker.DockerClient,
    kernel_image: str,
    foreign: dict[str, Any],
) -> None:
    repository = sessions_app.repository
    ids = {}
    for name in ("keep", "vanish", "ending"):
        answer = await api(
            "POST", "sessions", body={"resources": SMALL, "name": name, "enqueue_only": True}
        )
        assert answer.code == 201, answer.body
        ids[name] = answer.body["id"]
    await wait_all(api, list(ids.values()), FINAL_OR_SETTLED)
    await execute(api, "keep", "x = 41")
    # A long run the old server started: the kernel's shell stays busy across the restart.
    busy = await api(
        "POST", "sessions", "keep", "execute", body={"mode": "query", "code": BUSY_CODE}
    )
    assert busy.code == 200 and busy.body["status"] == "continued", busy.body
    await sessions_app.scheduler.stop()  # no scheduler, no sweeper: nothing but the pass acts
    installation = sessions_app.installation_id

    # keep: the old server's connection is gone and the stored ports are stale.
    keep = (await repository.get(ids["keep"])).kernels[0]
    sessions_app.connections.close(keep.id)
    stale = {**keep.connection, **{k: 1 for k in keep.connection if k.endswith("_port")}}
    await repository.set_kernel_placement(keep.id, connection=stale)
    # vanish: its container was removed while the server was down.
    vanish = (await repository.get(ids["vanish"])).kernels[0]
    docker_client.containers.get(vanish.container_id).remove(force=True)
    # ending: destroyed just before the server died (its teardown task died with it).
    ending = (await repository.get(ids["ending"])).kernels[0]
    await repository.transit(ids["ending"], S.TERMINATING, "user-requested")
    # placed: its start task died before any container existed.
    placed = (
        await api(
            "POST", "sessions", body={"resources": SMALL, "name": "placed", "enqueue_only": True}
        )
    ).body
    await walk_to(sessions_app, placed["id"], [S.SCHEDULED, S.PREPARING, S.PREPARED])
    # stopped: RUNNING, but its container exited while the server was down.
    stopped = (
        await api(
            "POST", "sessions", body={"resources": SMALL, "name": "stopped", "enqueue_only": True}
        )
    ).body
    await walk_to(sessions_app, stopped["id"], [S.SCHEDULED, S.PREPARING, S.PREPARED, S.CREATING])
    exited = docker_client.containers.create(
        kernel_image, ["true"], labels=labelled(installation, stopped["id"])
    )
    stopped_kernel = (await repository.get(stopped["id"])).kernels[0]
    await repository.set_kernel_placement(
        stopped_kernel.id, container_id=exited.id, connection={"key": "k", "ip": "127.0.0.1"}
    )
    await repository.transit(stopped["id"], S.RUNNING, "kernel ready")
    # Orphans of this installation: a container and a volume no session claims.
    orphan_session = str(uuid.uuid4())
    orphan = docker_client.containers.create(
        kernel_image, ["sleep", "600"], labels=labelled(installation, orphan_session)
    )
    orphan_volume = docker_client.volumes.create(
        volume_name(orphan_session), labels=labelled(installation, orphan_session)
    )

    # Scratch containers of commits (unlabelled, named after the session): one a killed server
    # left for "keep", one a commit is building now, and one of a session not in this store.
    def scratch(session_id: str) -> Any:
        name = f"jsess-{session_id}-commit-{secrets.token_hex(4)}"
        return docker_client.containers.create(kernel_image, ["true"], name=name)

    left_behind, in_use, not_ours = (
        scratch(ids["keep"]),
        scratch(ids["keep"]),
        scratch(orphan_session),
    )
    agent = sessions_app.registry.get(keep.agent_id)
    agent.scratch_in_use.add(in_use.name)

    report = await Reconciler(sessions_app.service, attach_timeout=60, shell_timeout=3).run()

    assert gone(docker_client, left_behind.id) and left_behind.name in report.removed_containers
    assert not gone(docker_client, in_use.id) and not gone(docker_client, not_ours.id)
    agent.scratch_in_use.discard(in_use.name)
    in_use.remove(force=True)
    not_ours.remove(force=True)

    statuses = {name: (await api("GET", "sessions", sid)).body for name, sid in ids.items()}
    assert statuses["keep"]["status"] == "RUNNING", statuses["keep"]
    assert report.reattached == [ids["keep"]]
    # The same kernel (its state survived), reached on the ports the engine publishes now; the
    # old run is interrupted through the new connection.
    assert (await api("POST", "sessions", "keep", "interrupt")).code in (200, 204)
    again = await execute(api, "keep", "x + 1")
    assert ["media", {"text/plain": "42"}] in again["console"], again
    container = docker_client.containers.get(keep.container_id)
    published = container.attrs["NetworkSettings"]["Ports"]["5000/tcp"][0]["HostPort"]
    stored = (await repository.get(ids["keep"])).kernels[0].connection
    assert stored["shell_port"] == int(published) and stored["key"] == keep.connection["key"]

    assert statuses["vanish"]["status"] == "ERROR"
    assert statuses["vanish"]["status_info"] == REASON_VANISHED

    assert statuses["ending"]["status"] == "TERMINATED"
    assert gone(docker_client, ending.container_id)
    assert not volume_exists(docker_client, volume_name(ids["ending"]))

    placed_now = (await api("GET", "sessions", placed["id"])).body
    assert placed_now["status"] == "ERROR" and placed_now["status_info"] == REASON_STARTING

    stopped_now = (await api("GET", "sessions", stopped["id"])).body
    assert stopped_now["status"] == "ERROR", stopped_now
    assert "stopped while the server was down" in stopped_now["status_info"]
    assert not gone(docker_client, exited.id)  # an ERROR session keeps its container

    assert gone(docker_client, orphan.id)
    assert not volume_exists(docker_client, orphan_volume.name)
    assert orphan.id in report.removed_containers and orphan_session in report.removed_volumes
    assert not gone(docker_client, foreign["container"])
    assert volume_exists(docker_client, foreign["volume"])

    history = (await api("GET", "sessions", ids["vanish"], "status-history")).body
    assert history["history"][-1]["from"] == "RUNNING", history
    assert history["history"][-1]["to"] == "ERROR", history
    assert history["history"][-1]["reason"] == REASON_VANISHED, history


@pytest.mark.docker
@pytest.mark.usefixtures("docker_cleanup", "docker_sessions_config")
async def test_a_start_in_flight_is_adopted_when_its_kernel_answers_else_removed(
    api: Api, sessions_app: Any, docker_client: docker.DockerClient
) -> None:
    assert (await api("GET", "agents")).code == 200
    await sessions_app.scheduler.stop()
    repository = sessions_app.repository
    agent = sessions_app.registry.get("local-docker")
    made = {}
    for name in ("adopted", "unknown"):
        body = (
            await api(
                "POST", "sessions", body={"resources": SMALL, "name": name, "enqueue_only": True}
            )
        ).body
        await walk_to(sessions_app, body["id"], [S.SCHEDULED, S.PREPARING, S.PREPARED, S.CREATING])
        session = await repository.get(body["id"])
        handle = await agent.create_kernel(
            KernelSpec(
                session_id=session.id,
                kernel_name="main1",
                image=session.image,
                resources=ResourceSlot.parse(session.resources),
                key=secrets.token_hex(32),
            )
        )
        made[name] = (session, handle)
    # "adopted": the old server stored its connection; "unknown": it died before it could.
    session, handle = made["adopted"]
    await repository.set_kernel_placement(
        session.kernels[0].id, container_id=handle.container_id, connection=handle.connection
    )

    report = await Reconciler(sessions_app.service, attach_timeout=90).run()

    adopted = (await api("GET", "sessions", "adopted")).body
    assert adopted["status"] == "RUNNING", adopted
    assert report.adopted == [adopted["id"]]
    result = await execute(api, "adopted", "1 + 1")
    assert ["media", {"text/plain": "2"}] in result["console"], result

    unknown_session, unknown_handle = made["unknown"]
    unknown = (await api("GET", "sessions", unknown_session.id)).body
    assert unknown["status"] == "ERROR" and unknown["status_info"] == REASON_STARTING
    assert gone(docker_client, unknown_handle.container_id)
    assert volume_exists(docker_client, volume_name(unknown_session.id))  # ERROR keeps it


# --- the local agent: its kernels die with the server -----------------------------------------


@pytest.fixture
def local_sessions_config(sessions_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    sessions_config["agents"] = [{"id": "local", "kind": "local", "root_dir": str(tmp_path / "k")}]
    return sessions_config


@pytest.mark.usefixtures("local_sessions_config")
async def test_local_sessions_end_with_the_server(api: Api, sessions_app: Any) -> None:
    running = await api(
        "POST", "sessions", body={"resources": SMALL, "name": "lives", "max_wait_seconds": 60}
    )
    ending = await api(
        "POST", "sessions", body={"resources": SMALL, "name": "ends", "max_wait_seconds": 60}
    )
    assert running.body["status"] == ending.body["status"] == "RUNNING", (running, ending)
    await sessions_app.scheduler.stop()
    await sessions_app.repository.transit(ending.body["id"], S.TERMINATING, "user-requested")
    pid = int(running.body["kernels"][0]["container_id"].split("-")[1])
    agent = sessions_app.registry.get("local")
    ending_dir = agent.session_dir(ending.body["id"])
    assert ending_dir.exists()

    await Reconciler(sessions_app.service).run()

    lives = (await api("GET", "sessions", "lives")).body
    assert lives["status"] == "ERROR" and lives["status_info"] == REASON_LOCAL
    ends = (await api("GET", "sessions", ending.body["id"])).body
    assert ends["status"] == "TERMINATED"
    assert not ending_dir.exists()
    assert not Path(f"/proc/{pid}").exists() or "Z" in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "gone"
    return next(line for line in status.splitlines() if line.startswith("State:"))


# --- end to end: real servers, SIGKILL -----------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A real `jupyter server` process with the extension on a store under ``root``."""

    def __init__(self, root: Path, *args: str) -> None:
        self.root = root
        self.token = secrets.token_hex(16)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}/jupyter-sessions/api"
        self.http = requests.Session()
        self.http.headers["Authorization"] = f"token {self.token}"
        self.log_path = root / f"server-{self.port}.log"
        command = [
            sys.executable,
            "-m",
            "jupyter_server",
            "--allow-root",
            "--no-browser",
            "--ip=127.0.0.1",
            f"--port={self.port}",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={root}",
            f"--SessionsApp.db_url=sqlite:///{root}/s.db",
            "--SessionsApp.scheduler_interval=0.5",
            "--SessionsApp.sweep_interval=1",
            *args,
        ]
        env = {**os.environ, "JUPYTER_DATA_DIR": str(root / "data")}
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.wait_ready()

    def wait_ready(self, timeout: float = 180) -> None:
        """GET agents answers once start-up (and so reconciliation) is done."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log()
            try:
                if self.http.get(f"{self.base}/agents", timeout=60).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise AssertionError(f"the server did not come up:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return self.http.request(method, f"{self.base}/{path}", timeout=180, **kwargs)

    def session(self, ref: str) -> dict[str, Any]:
        answer = self.call("GET", f"sessions/{ref}")
        assert answer.status_code == 200, answer.text
        return dict(answer.json())

    def execute(self, ref: str, code: str) -> dict[str, Any]:
        body: dict[str, Any] = {"mode": "query", "code": code}
        while True:
            answer = self.call("POST", f"sessions/{ref}/execute", json=body)
            assert answer.status_code == 200, answer.text
            result = dict(answer.json())
            if result["status"] != "continued":
                return result
            body = {"mode": "continue", "run_id": result["run_id"]}

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()
        self.http.close()


def installation_of(root: Path) -> str:
    with sqlite3.connect(root / "s.db") as db:
        row = db.execute("SELECT value FROM meta WHERE key = 'installation_id'").fetchone()
    return str(row[0])


def remove_installation(docker_client: docker.DockerClient, installation: str) -> None:
    """Everything the installation left on the engine: containers, volumes, network and rules."""
    selector = {"label": f"{LABEL_INSTALLATION}={installation}"}
    for container in docker_client.containers.list(all=True, filters=selector):
        container.remove(force=True)
    for volume in docker_client.volumes.list(filters=selector):
        volume.remove(force=True)


async def remove_network(installation: str) -> None:
    agent = DockerAgent("cleanup", installation_id=installation)
    try:
        await agent.remove_network()
    finally:
        await agent.close()


@pytest.mark.docker
async def test_a_server_killed_during_a_creation_leaves_no_orphan_and_nothing_stuck(
    tmp_path: Path,
    docker_client: docker.DockerClient,
    kernel_image: str,
    foreign: dict[str, Any],
) -> None:
    image = f"--SessionsApp.default_image={kernel_image}"
    first = Server(tmp_path, image)
    installation = installation_of(tmp_path)
    second: Server | None = None
    try:
        created = first.call(
            "POST",
            "sessions",
            json={"resources": SMALL, "name": "survivor", "max_wait_seconds": 120},
        )
        assert created.status_code == 201 and created.json()["status"] == "RUNNING", created.text
        survivor = created.json()["id"]
        assert first.execute(survivor, "x = 41")["status"] == "finished"

        # Kill the server while a second session is CREATING (retry if one slips past it).
        interrupted, seen = None, None
        for attempt in range(3):
            answer = first.call(
                "POST",
                "sessions",
                json={"resources": SMALL, "name": f"interrupted-{attempt}", "enqueue_only": True},
            )
            assert answer.status_code == 201, answer.text
            session_id = answer.json()["id"]
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                seen = first.session(session_id)["status"]
                if seen != "PENDING" and seen not in TRANSITIONAL - {"CREATING"}:
                    break
                time.sleep(0.01)
            if seen == "CREATING":
                interrupted = session_id
                break
        assert interrupted is not None, f"never caught a session in CREATING (last: {seen})"
        first.kill()

        # While it is down: a leftover of this installation that no session claims.
        orphan_session = str(uuid.uuid4())
        orphan = docker_client.containers.create(
            kernel_image, ["sleep", "600"], labels=labelled(installation, orphan_session)
        )
        orphan_volume = docker_client.volumes.create(
            volume_name(orphan_session), labels=labelled(installation, orphan_session)
        )

        second = Server(tmp_path, image)
        assert installation_of(tmp_path) == installation

        # The running session is RUNNING again, with its kernel (and its state).
        assert second.session(survivor)["status"] == "RUNNING"
        result = second.execute(survivor, "1 + 1")
        assert ["media", {"text/plain": "2"}] in result["console"], result
        result = second.execute(survivor, "x + 1")
        assert ["media", {"text/plain": "42"}] in result["console"], result

        # The interrupted one settled: adopted or failed, never stuck.
        after = second.session(interrupted)
        assert after["status"] in ("RUNNING", "ERROR"), after
        if after["status"] == "ERROR":
            assert after["status_info"].startswith(REASON_STARTING), after
        listed = second.call("GET", "sessions", params={"limit": 100}).json()["sessions"]
        assert not [s for s in listed if s["status"] in TRANSITIONAL], listed

        # No container of this installation that no non-final session claims.
        claims = {
            (s["id"], k["name"])
            for s in listed
            if s["status"] not in ("TERMINATED", "CANCELLED")
            for k in s["kernels"]
        }
        selector = {"label": f"{LABEL_INSTALLATION}={installation}"}
        for container in docker_client.containers.list(all=True, filters=selector):
            labels = container.labels
            assert (labels.get(LABEL_SESSION), labels.get(LABEL_KERNEL)) in claims, labels
        assert gone(docker_client, orphan.id)
        assert not volume_exists(docker_client, orphan_volume.name)
        # Another installation's container and volume survive.
        assert not gone(docker_client, foreign["container"])
        assert volume_exists(docker_client, foreign["volume"])

        for session in listed:
            if session["status"] not in ("TERMINATED", "CANCELLED"):
                second.call("DELETE", f"sessions/{session['id']}", params={"forced": "true"})
    finally:
        for server in (first, second):
            if server is not None:
                server.stop()
        remove_installation(docker_client, installation)
        await remove_network(installation)


async def test_local_kernels_die_with_a_killed_server_and_their_sessions_say_so(
    tmp_path: Path,
) -> None:
    agents = json.dumps([{"id": "local", "kind": "local", "root_dir": str(tmp_path / "kernels")}])
    first = Server(tmp_path, f"--SessionsApp.agents={agents}")
    second: Server | None = None
    try:
        created = first.call(
            "POST",
            "sessions",
            json={"resources": SMALL, "name": "local-one", "max_wait_seconds": 60},
        )
        assert created.status_code == 201 and created.json()["status"] == "RUNNING", created.text
        session = created.json()
        pid = int(session["kernels"][0]["container_id"].split("-")[1])
        assert Path(f"/proc/{pid}").exists()
        first.kill()
        # The kernel notices its parent is gone (ipykernel's parent poller) and exits.
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid):
            assert time.monotonic() < deadline, _proc_state(pid)
            time.sleep(0.2)

        second = Server(tmp_path, f"--SessionsApp.agents={agents}")
        after = second.session(session["id"])
        assert after["status"] == "ERROR" and after["status_info"] == REASON_LOCAL, after
    finally:
        for server in (first, second):
            if server is not None:
                server.stop()
