"""Sessions on the real Docker engine: create → RUNNING, list, info, history, destroy, hardening."""

from __future__ import annotations

import asyncio
from typing import Any

import docker
import pytest

from jupyter_sessions.agents.base import LABEL_INSTALLATION, LABEL_KERNEL, LABEL_SESSION
from jupyter_sessions.agents.docker import container_name, volume_name

from .conftest import Api

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_cleanup")]


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], kernel_image: str) -> dict[str, Any]:
    sessions_config["default_image"] = kernel_image
    return sessions_config


async def wait_status(api: Api, ref: str, wanted: set[str], timeout: float = 60) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        answer = await api("GET", "sessions", ref)
        assert answer.code == 200, answer.body
        if answer.body["status"] in wanted or loop.time() > deadline:
            return answer.body
        await asyncio.sleep(0.2)


async def test_a_session_runs_a_real_kernel_and_is_gone_after_destroy(
    api: Api, docker_client: docker.DockerClient, sessions_app: Any
) -> None:
    answer = await api(
        "POST",
        "sessions",
        body={
            "name": "first-session",
            "resources": {"cpu": 0.5, "mem": "512m"},
            "tag": "smoke",
            "max_wait_seconds": 90,
        },
    )
    assert answer.code == 201, answer.body
    session = answer.body
    assert session["status"] == "RUNNING", session
    assert session["resources"] == {"cpu": 0.5, "mem": 512 * 2**20}
    assert session["tag"] == "smoke" and session["image"] == sessions_app.default_image
    [kernel] = session["kernels"]
    assert kernel["name"] == "main1" and kernel["status"] == "RUNNING"
    assert kernel["agent"] == "local-docker"

    container = docker_client.containers.get(kernel["container_id"])
    assert container.name == container_name(session["id"], "main1")
    assert container.labels[LABEL_SESSION] == session["id"]
    assert container.labels[LABEL_KERNEL] == "main1"
    assert container.labels[LABEL_INSTALLATION] == sessions_app.installation_id
    volume = docker_client.volumes.get(volume_name(session["id"]))

    # The kernel really answers: run code through the manager's own connection to it.
    stored_kernel = (await sessions_app.repository.get(session["id"])).kernels[0]
    client = sessions_app.connections.client(stored_kernel.id, stored_kernel.connection)
    outputs: list[dict[str, Any]] = []
    reply = await client.execute_interactive(
        "import os; print(os.getuid(), os.getcwd())", output_hook=outputs.append, timeout=30
    )
    assert reply["content"]["status"] == "ok"
    printed = "".join(m["content"].get("text", "") for m in outputs if m["msg_type"] == "stream")
    assert printed.split() == ["1000", "/home/work"]

    listed = await api("GET", "sessions")
    assert [s["id"] for s in listed.body["sessions"]] == [session["id"]]
    assert (await api("GET", "sessions", "first-session")).body["id"] == session["id"]
    assert (await api("GET", "sessions", match="first")).body["total"] == 1

    history = await api("GET", "sessions", "first-session", "status-history")
    assert [h["to"] for h in history.body["history"]] == [
        "PENDING",
        "SCHEDULED",
        "PREPARING",
        "PREPARED",
        "CREATING",
        "RUNNING",
    ]

    gone = await api("DELETE", "sessions", "first-session")
    assert gone.code == 202 and gone.body["status"] == "TERMINATING"
    final = await wait_status(api, session["id"], {"TERMINATED", "ERROR"})
    assert final["status"] == "TERMINATED", final
    assert final["terminated_at"]
    with pytest.raises(docker.errors.NotFound):
        container.reload()
    with pytest.raises(docker.errors.NotFound):
        volume.reload()
    history = await api("GET", "sessions", session["id"], "status-history")
    assert [h["to"] for h in history.body["history"]][-2:] == ["TERMINATING", "TERMINATED"]
    again = await api("DELETE", "sessions", session["id"])
    assert again.code == 409 and "TERMINATED" in again.body["message"]


async def test_the_container_is_hardened(api: Api, docker_client: docker.DockerClient) -> None:
    answer = await api(
        "POST",
        "sessions",
        body={"name": "hardened", "resources": {"cpu": 1, "mem": "256m"}, "max_wait_seconds": 90},
    )
    assert answer.code == 201 and answer.body["status"] == "RUNNING", answer.body
    container = docker_client.containers.get(answer.body["kernels"][0]["container_id"])
    host = container.attrs["HostConfig"]
    assert host["Privileged"] is False
    assert host["CapDrop"] == ["ALL"]
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert host["Init"] is True
    assert host["PidsLimit"] == 1024
    assert host["Memory"] == 256 * 2**20 and host["MemorySwap"] == 256 * 2**20
    assert host["NanoCpus"] == 1_000_000_000
    assert container.attrs["Config"]["User"] == "1000:1000"
    for bindings in container.attrs["NetworkSettings"]["Ports"].values():
        assert all(b["HostIp"] == "127.0.0.1" for b in bindings)
    network = docker_client.networks.get(next(iter(container.attrs["NetworkSettings"]["Networks"])))
    assert network.attrs["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    # No route to privilege inside: the kernel's user cannot become root.
    result = container.exec_run(["python3", "-c", "import os; os.setuid(0)"])
    assert result.exit_code != 0


async def test_enqueue_only_answers_at_once_and_names_stay_unique(api: Api) -> None:
    first = await api("POST", "sessions", body={"name": "queued-one", "enqueue_only": True})
    assert first.code == 201 and first.body["status"] in {
        "PENDING",
        "SCHEDULED",
        "PREPARING",
        "PREPARED",
        "CREATING",
        "RUNNING",
    }
    taken = await api("POST", "sessions", body={"name": "queued-one", "enqueue_only": True})
    assert taken.code == 409 and "queued-one" in taken.body["message"]
    reused = await api("POST", "sessions", body={"name": "queued-one", "reuse_if_exists": True})
    assert reused.code == 200 and reused.body["id"] == first.body["id"]
    running = await wait_status(api, "queued-one", {"RUNNING", "ERROR"})
    assert running["status"] == "RUNNING", running
    await api("DELETE", "sessions", "queued-one", forced="true")
    await wait_status(api, first.body["id"], {"TERMINATED"})


async def test_destroy_while_pending_cancels_at_once(api: Api, sessions_app: Any) -> None:
    await sessions_app.ensure_started()
    await sessions_app.scheduler.stop()  # hold the queue so the session stays PENDING
    answer = await api("POST", "sessions", body={"name": "never-runs", "enqueue_only": True})
    assert answer.body["status"] == "PENDING"
    cancelled = await api("DELETE", "sessions", "never-runs")
    assert cancelled.code == 200 and cancelled.body["status"] == "CANCELLED"
    assert cancelled.body["kernels"][0]["container_id"] is None
    # The name is free again once the session is final.
    again = await api("POST", "sessions", body={"name": "never-runs", "enqueue_only": True})
    assert again.code == 201


async def test_forced_destroy_during_creation_leaves_nothing_behind(
    api: Api, docker_client: docker.DockerClient, sessions_app: Any
) -> None:
    answer = await api("POST", "sessions", body={"name": "short-lived", "enqueue_only": True})
    session_id = answer.body["id"]
    await wait_status(api, session_id, {"CREATING", "RUNNING"}, timeout=30)
    gone = await api("DELETE", "sessions", session_id, forced="true")
    assert gone.code in (200, 202)
    final = await wait_status(api, session_id, {"TERMINATED", "CANCELLED"})
    assert final["status"] in {"TERMINATED", "CANCELLED"}
    await asyncio.sleep(1)  # let a start task that was mid-create finish its cleanup
    selector = {"label": f"{LABEL_SESSION}={session_id}"}
    for _ in range(50):
        if not docker_client.containers.list(all=True, filters=selector):
            break
        await asyncio.sleep(0.2)
    assert docker_client.containers.list(all=True, filters=selector) == []


async def test_a_vanished_container_moves_the_session_to_error(
    api: Api, docker_client: docker.DockerClient
) -> None:
    answer = await api("POST", "sessions", body={"name": "vanishing", "max_wait_seconds": 90})
    assert answer.body["status"] == "RUNNING", answer.body
    docker_client.containers.get(answer.body["kernels"][0]["container_id"]).remove(force=True)
    errored = await wait_status(api, "vanishing", {"ERROR"}, timeout=20)
    assert errored["status"] == "ERROR" and "vanished" in errored["status_info"]
    # ERROR is not final: it can still be destroyed, which cleans the volume.
    assert (await api("DELETE", "sessions", "vanishing")).code == 202
    assert (await wait_status(api, answer.body["id"], {"TERMINATED"}))["status"] == "TERMINATED"


async def test_images_lists_the_default_image_as_present(api: Api, kernel_image: str) -> None:
    answer = await api("GET", "images")
    assert answer.code == 200
    [image] = answer.body["images"]
    assert image["name"] == kernel_image and image["present"] and image["is_default"]
    assert image["agents"] == ["local-docker"]
