"""Cluster sessions on the main Docker engine: single-node clusters (kernels main1, sub1...
on a bridge of their own, reaching each other by name), ``POST sessions/cluster``, what create
refuses, per-kernel logs, a lost sub kernel degrading the session, and teardown."""

from __future__ import annotations

import asyncio
from typing import Any

import docker
import pytest

from .conftest import Api

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_cleanup")]
SMALL = {"cpu": 0.2, "mem": "192m"}


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], kernel_image: str) -> dict[str, Any]:
    sessions_config["default_image"] = kernel_image
    return sessions_config


async def run_code(api: Api, session: str, code: str) -> dict[str, Any]:
    """A query on main1, continued until it finishes; stdout and stderr joined."""
    answer = await api("POST", "sessions", session, "execute", body={"mode": "query", "code": code})
    assert answer.code == 200, answer.body
    result, console = answer.body, list(answer.body["console"])
    while result["status"] == "continued":
        body = {"mode": "continue", "run_id": result["run_id"]}
        answer = await api("POST", "sessions", session, "execute", body=body)
        assert answer.code == 200, answer.body
        result = answer.body
        console += result["console"]
    out = "".join(data for kind, data in console if kind == "stdout")
    err = "".join(data for kind, data in console if kind == "stderr")
    return {"status": result["status"], "stdout": out, "stderr": err}


async def status_of(api: Api, ref: str, wanted: str, timeout: float = 120) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        answer = await api("GET", "sessions", ref)
        assert answer.code == 200, answer.body
        if answer.body["status"] == wanted:
            return dict(answer.body)
        assert loop.time() < deadline, (wanted, answer.body)
        await asyncio.sleep(0.3)


REACH = """
import socket
print(socket.gethostname())
for name in ("sub1", "sub2"):
    with socket.create_connection((name, 5000), timeout=10):  # the sub kernel's shell port
        print(name, "reached")
"""


async def test_a_cluster_of_three_reaches_its_kernels_by_name(
    api: Api, docker_client: docker.DockerClient, sessions_app: Any
) -> None:
    body = {"name": "trio", "cluster_size": 3, "resources": SMALL, "max_wait_seconds": 150}
    answer = await api("POST", "sessions", "cluster", body=body)
    assert answer.code == 201, answer.body
    session = answer.body
    assert session["status"] == "RUNNING", session
    kernels = {k["name"]: k for k in session["kernels"]}
    assert sorted(kernels) == ["main1", "sub1", "sub2"]
    assert all(k["container_id"] and k["status"] == "RUNNING" for k in kernels.values())
    assert len({k["agent"] for k in kernels.values()}) == 1  # single-node
    # User interaction goes to main1, which reaches its subs by name on the cluster's network.
    ran = await run_code(api, session["id"], REACH)
    assert ran["stdout"].split("\n")[:3] == ["main1", "sub1 reached", "sub2 reached"], ran
    # Each kernel is its own container, with its own logs.
    for name, kernel in kernels.items():
        container = docker_client.containers.get(kernel["container_id"])
        assert container.attrs["Config"]["Hostname"] == name
        logs = await api("GET", "sessions", session["id"], "logs", kernel=name)
        assert logs.code == 200, (name, logs.body)
    network_name = f"jsess-{session['id']}-net"
    network = docker_client.networks.get(network_name)
    assert len(network.attrs["Containers"]) == 3
    # Losing a sub kernel degrades the session; main1 still answers.
    docker_client.containers.get(kernels["sub2"]["container_id"]).remove(force=True)
    degraded = await status_of(api, session["id"], "RUNNING_DEGRADED", timeout=60)
    assert "sub2" in degraded["status_info"]
    assert (await run_code(api, session["id"], "print(6 * 7)"))["stdout"] == "42\n"
    # Destroy removes every container and the cluster's network.
    assert (await api("DELETE", "sessions", session["id"])).code == 202
    await status_of(api, session["id"], "TERMINATED")
    for kernel in kernels.values():
        with pytest.raises(docker.errors.NotFound):
            docker_client.containers.get(kernel["container_id"])
    with pytest.raises(docker.errors.NotFound):
        docker_client.networks.get(network_name)


async def test_create_cluster_refuses_what_can_never_run(api: Api) -> None:
    one = await api("POST", "sessions", "cluster", body={"cluster_size": 1})
    assert one.code == 400 and "at least 2" in one.body["message"], one.body
    agents = (await api("GET", "agents")).body["agents"]
    cpu = agents[0]["capacity"]["cpu"]
    # Each kernel fits the agent, the whole single-node cluster does not: 403 naming the agent.
    huge = {"cluster_size": 3, "resources": {"cpu": cpu / 2, "mem": "128m"}}
    refused = await api("POST", "sessions", "cluster", body=huge)
    assert refused.code == 403, refused.body
    assert agents[0]["id"] in refused.body["message"], refused.body
    # A multi-node cluster needs two agents at least.
    multi = {"cluster_size": 2, "cluster_mode": "multi-node", "resources": SMALL}
    answer = await api("POST", "sessions", "cluster", body=multi)
    assert answer.code == 400 and "at least 2 agents" in answer.body["message"], answer.body
    too_many = await api("POST", "sessions", body={"cluster_size": 33})
    assert too_many.code == 400 and "cluster_size" in too_many.body["message"]


async def test_a_cluster_from_a_template(api: Api) -> None:
    template = {
        "name": "pair",
        "body": {"cluster_size": {"$param": "size"}, "resources": SMALL, "enqueue_only": True},
        "parameters": {"size": {"type": "integer", "default": 2}},
    }
    made = await api("POST", "templates", body=template)
    assert made.code == 201, made.body
    answer = await api(
        "POST", "sessions", "cluster", body={"template_id": made.body["id"], "name": "pair-1"}
    )
    assert answer.code == 201, answer.body
    assert [k["name"] for k in answer.body["kernels"]] == ["main1", "sub1"]
    single = await api(
        "POST",
        "sessions",
        "cluster",
        body={"template_id": made.body["id"], "parameters": {"size": 1}},
    )
    assert single.code == 400 and "cluster_size" in single.body["message"], single.body
    await status_of(api, answer.body["id"], "RUNNING")
    assert (await api("DELETE", "sessions", answer.body["id"])).code == 202
    await status_of(api, answer.body["id"], "TERMINATED")
