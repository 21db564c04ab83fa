"""Scheduling over two real Docker engines (tests/engines.py: each in its own network namespace,
joined by veth, with its own socket, roots and iptables).

- agents registered through the admin API, scaling groups, and DELETE agents/{id};
- sessions pack (concentrated) or spread (dispersed) as the scaling group says;
- a session larger than any agent is refused at create, naming the largest agent; one that fits
  an agent but not its free capacity waits PENDING with the shortfall, and starts once capacity
  frees;
- a multi-node cluster of 3 over a Docker Swarm overlay network between the two engines, its
  kernels reaching each other by name;
- stopping one engine marks its agent LOST; when it is back its sessions are reconciled.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from jupyter_sessions.agents.base import LABEL_INSTALLATION

from . import engines as engine_control
from .conftest import Api
from .engines import Engine, engines  # noqa: F401 - the fixture

pytestmark = [pytest.mark.docker, pytest.mark.engines]
SMALL = {"cpu": 0.1, "mem": "128m"}


@pytest.fixture
def sessions_config(
    sessions_config: dict[str, Any],
    kernel_image: str,
    engines: list[Engine],  # noqa: F811
) -> dict[str, Any]:
    """The server's agents: engine 1 configured; engine 2 is registered by the tests."""
    sessions_config["default_image"] = kernel_image
    sessions_config["agents"] = [engines[0].agent_spec()]
    sessions_config["agent_heartbeat_interval"] = 1.0
    return sessions_config


@pytest.fixture
def engines_cleanup(
    engines: list[Engine],  # noqa: F811
    sessions_app: Any,
    jp_asyncio_loop: asyncio.AbstractEventLoop,
) -> Iterator[None]:
    """Remove what this test's installation left on the extra engines."""
    yield
    jp_asyncio_loop.run_until_complete(sessions_app.scheduler.stop())
    jp_asyncio_loop.run_until_complete(sessions_app.service.close())
    selector = {"label": f"{LABEL_INSTALLATION}={sessions_app.installation_id}"}
    for engine in engines:
        with contextlib.suppress(Exception):
            client = engine.client(timeout=30)
            for container in client.containers.list(all=True, filters=selector):
                container.remove(force=True)
            for volume in client.volumes.list(filters=selector):
                volume.remove(force=True)
            for network in client.networks.list(filters=selector):
                with contextlib.suppress(docker.errors.APIError):
                    network.remove()
            client.close()


async def until(api: Api, ref: str, check: Any, what: str, timeout: float = 120) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        answer = await api("GET", "sessions", ref)
        assert answer.code == 200, answer.body
        if check(answer.body):
            return dict(answer.body)
        assert loop.time() < deadline, (what, answer.body)
        await asyncio.sleep(0.3)


async def running(api: Api, ref: str) -> dict[str, Any]:
    return await until(api, ref, lambda s: s["status"] == "RUNNING", "RUNNING")


async def register(api: Api, engine: Engine, **extra: Any) -> dict[str, Any]:
    answer = await api("POST", "agents", body=engine.agent_spec(**extra))
    assert answer.code == 201, answer.body
    return dict(answer.body)


async def create(api: Api, **body: Any) -> dict[str, Any]:
    answer = await api("POST", "sessions", body={"enqueue_only": True, **body})
    assert answer.code == 201, answer.body
    return dict(answer.body)


def agent_of(session: dict[str, Any]) -> str:
    return str(session["kernels"][0]["agent"])


@pytest.mark.usefixtures("engines_cleanup")
async def test_agents_register_and_sessions_pack_or_spread(
    api: Api,
    engines: list[Engine],  # noqa: F811
) -> None:
    second = await register(api, engines[1])
    assert second["status"] == "ALIVE" and second["capacity"]["cpu"] > 0, second
    listed = {a["id"]: a for a in (await api("GET", "agents")).body["agents"]}
    assert set(listed) == {"engine-1", "engine-2"}
    again = await api("POST", "agents", body=engines[1].agent_spec())
    assert again.code == 409
    groups = (await api("GET", "scaling-groups")).body["scaling_groups"]
    assert groups[0]["name"] == "default" and groups[0]["placement"] == "concentrated"
    assert groups[0]["agents"] == ["engine-1", "engine-2"]
    # Concentrated (the default): both sessions on one agent.
    packed = [await create(api, name=f"packed-{i}", resources=SMALL) for i in range(2)]
    packed = [await running(api, s["id"]) for s in packed]
    assert len({agent_of(s) for s in packed}) == 1, packed
    for session in packed:
        assert (await api("DELETE", "sessions", session["id"])).code == 202
    for session in packed:
        await until(api, session["id"], lambda s: s["status"] == "TERMINATED", "TERMINATED")
    # Dispersed: the scaling group's policy changes, and the next two go to different agents.
    changed = await api(
        "POST", "scaling-groups", body={"name": "default", "placement": "dispersed"}
    )
    assert changed.code == 200 and changed.body["placement"] == "dispersed", changed.body
    spread = [await create(api, name=f"spread-{i}", resources=SMALL) for i in range(2)]
    spread = [await running(api, s["id"]) for s in spread]
    assert {agent_of(s) for s in spread} == {"engine-1", "engine-2"}, spread
    # An agent holding a session can't be removed.
    busy = await api("DELETE", "agents", "engine-2")
    assert busy.code == 409 and "holds 1 session(s)" in busy.body["message"], busy.body
    # Each runs on its own engine, as its engine says.
    for session in spread:
        engine = engines[0] if agent_of(session) == "engine-1" else engines[1]
        client = engine.client()
        container = client.containers.get(session["kernels"][0]["container_id"])
        assert container.status == "running"
        client.close()
    for session in spread:
        assert (await api("DELETE", "sessions", session["id"])).code == 202
    for session in spread:
        await until(api, session["id"], lambda s: s["status"] == "TERMINATED", "TERMINATED")
    # A registered agent without sessions can be removed; a configured one can't.
    assert (await api("DELETE", "agents", "engine-2")).code == 204
    assert (await api("DELETE", "agents", "engine-1")).code == 409
    assert (await api("DELETE", "agents", "engine-9")).code == 404
    listed = {a["id"] for a in (await api("GET", "agents")).body["agents"]}
    assert listed == {"engine-1"}
    # A session may name a scaling group only once it exists.
    unknown = await api("POST", "sessions", body={"scaling_group": "gpu", "resources": SMALL})
    assert unknown.code == 400 and "scaling group 'gpu'" in unknown.body["message"]


@pytest.mark.usefixtures("engines_cleanup")
async def test_capacity_refuses_at_create_and_waits_with_the_shortfall(
    api: Api,
    engines: list[Engine],  # noqa: F811
) -> None:
    await register(api, engines[1], reserve={"cpu": 0.5})
    agents = {a["id"]: a for a in (await api("GET", "agents")).body["agents"]}
    cpus = {name: agent["capacity"]["cpu"] for name, agent in agents.items()}
    assert cpus["engine-2"] == cpus["engine-1"] - 0.5  # the engine's CPUs minus the reserve
    # Larger than any agent: refused at create, naming the largest agent.
    too_big = await api(
        "POST", "sessions", body={"resources": {"cpu": cpus["engine-1"] + 1, "mem": "128m"}}
    )
    assert too_big.code == 403, too_big.body
    assert "largest agent" in too_big.body["message"] and "engine-1" in too_big.body["message"]
    # Fill each agent but a quarter of a CPU.
    fill = {
        name: await create(api, name=f"fill-{name}", resources={"cpu": cpu - 0.25, "mem": "128m"})
        for name, cpu in cpus.items()
    }
    filled = {name: await running(api, s["id"]) for name, s in fill.items()}
    assert {agent_of(s) for s in filled.values()} == {"engine-1", "engine-2"}
    # Fits an agent, not its free capacity now: PENDING, with the shortfall named.
    waiting = await create(api, name="waits", resources={"cpu": 1, "mem": "128m"})
    held = await until(
        api,
        waiting["id"],
        lambda s: s["status_info"] == "no agent has 1 cpu free",
        "the shortfall",
    )
    assert held["status"] == "PENDING"
    # Freeing capacity schedules it.
    assert (await api("DELETE", "sessions", filled["engine-1"]["id"])).code == 202
    started = await running(api, waiting["id"])
    assert agent_of(started) == "engine-1"


@pytest.fixture
def swarm(engines: list[Engine]) -> Iterator[None]:  # noqa: F811
    """The two engines in one Docker Swarm: engine 1 manages, engine 2 joins over the veths."""
    manager, worker = engines[0].client(), engines[1].client()
    for client in (manager, worker):
        with contextlib.suppress(docker.errors.APIError):
            client.swarm.leave(force=True)
    manager.swarm.init(
        advertise_addr=engines[0].address,
        listen_addr=f"{engines[0].address}:2377",
        default_addr_pool=["10.213.0.0/16"],
        subnet_size=24,
    )
    token = manager.swarm.attrs["JoinTokens"]["Worker"]
    worker.swarm.join(
        remote_addrs=[f"{engines[0].address}:2377"],
        join_token=token,
        advertise_addr=engines[1].address,
        listen_addr=f"{engines[1].address}:2377",
    )
    try:
        yield
    finally:
        for client in (worker, manager):
            with contextlib.suppress(docker.errors.APIError):
                client.swarm.leave(force=True)
            client.close()


REACH = """
import socket
print(socket.gethostname())
for name in ("sub1", "sub2"):
    with socket.create_connection((name, 5000), timeout=10):  # the sub kernel's shell port
        print(name, "reached")
"""


@pytest.mark.usefixtures("engines_cleanup", "swarm")
async def test_a_multi_node_cluster_of_three_over_a_swarm_overlay(
    api: Api,
    engines: list[Engine],  # noqa: F811
) -> None:
    await register(api, engines[1])
    body = {
        "name": "spread-trio",
        "cluster_size": 3,
        "cluster_mode": "multi-node",
        "resources": SMALL,
        "max_wait_seconds": 150,
    }
    answer = await api("POST", "sessions", "cluster", body=body)
    assert answer.code == 201, answer.body
    session = await running(api, answer.body["id"])
    placed = {k["name"]: k["agent"] for k in session["kernels"]}
    assert set(placed.values()) == {"engine-1", "engine-2"}, placed
    code = {"mode": "query", "code": REACH}
    result = await api("POST", "sessions", session["id"], "execute", body=code)
    assert result.code == 200, result.body
    console = list(result.body["console"])
    while result.body["status"] == "continued":
        body = {"mode": "continue", "run_id": result.body["run_id"]}
        result = await api("POST", "sessions", session["id"], "execute", body=body)
        console += result.body["console"]
    out = "".join(data for kind, data in console if kind == "stdout")
    assert out.split("\n")[:3] == ["main1", "sub1 reached", "sub2 reached"], console
    assert (await api("DELETE", "sessions", session["id"])).code == 202
    await until(api, session["id"], lambda s: s["status"] == "TERMINATED", "TERMINATED")


@pytest.mark.usefixtures("engines_cleanup")
async def test_stopping_an_engine_marks_its_agent_lost_and_reconciles_its_sessions(
    api: Api,
    engines: list[Engine],  # noqa: F811
    sessions_app: Any,
) -> None:
    await register(api, engines[1])
    changed = await api(
        "POST", "scaling-groups", body={"name": "default", "placement": "dispersed"}
    )
    assert changed.code == 200
    sessions = [await create(api, name=f"keep-{i}", resources=SMALL) for i in range(2)]
    sessions = [await running(api, s["id"]) for s in sessions]
    on_two = next(s for s in sessions if agent_of(s) == "engine-2")
    on_one = next(s for s in sessions if agent_of(s) == "engine-1")
    engine_control.stop(engines[1])
    try:

        async def lost() -> bool:
            agents = {a["id"]: a for a in (await api("GET", "agents")).body["agents"]}
            return bool(agents["engine-2"]["status"] == "LOST")

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not await lost():
            assert loop.time() < deadline, "engine-2 was never marked LOST"
            await asyncio.sleep(0.5)
        # Its session stays as it was, saying why it may not answer.
        waiting = (await api("GET", "sessions", on_two["id"])).body
        assert waiting["status"] == "RUNNING", waiting
        assert waiting["status_info"].startswith("agent engine-2 is not answering since"), waiting
        # Nothing new goes to a lost agent.
        other = await create(api, name="while-lost", resources=SMALL)
        assert agent_of(await running(api, other["id"])) == "engine-1"
    finally:
        engine_control.start(engines[1])
    # Back: ALIVE again, and its session reconciled: the engine's stop ended its container, so
    # the session is ERROR with the reason (the agent's reconciliation or the sweeper, whichever
    # looks first).
    failed = await until(
        api, on_two["id"], lambda s: s["status"] == "ERROR", "reconciled", timeout=90
    )
    assert "stopped" in failed["status_info"] or "vanished" in failed["status_info"], failed
    agents = {a["id"]: a for a in (await api("GET", "agents")).body["agents"]}
    assert agents["engine-2"]["status"] == "ALIVE"
    # The other engine's session never noticed.
    assert (await api("GET", "sessions", on_one["id"])).body["status"] == "RUNNING"
