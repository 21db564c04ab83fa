"""The networks of cluster sessions on Docker engines.

A single-node cluster gets a bridge network of its own on its agent (``jsess-<id>-net``),
inter-container traffic allowed, each container reachable by its kernel name (``main1``,
``sub1``...) as host name and network alias. The bridge is named (``jsc`` + a hash of the session
id) so the host-port rule can name it too: cluster containers can't open connections to the
engine host's own ports, like single-container sessions.

A multi-node cluster gets an attachable Swarm overlay network of the same name, created on an
agent whose engine is a Swarm manager; containers on the other engines (Swarm workers or managers
of the same Swarm) attach to it by name. Their traffic to the outside leaves through the engine's
``docker_gwbridge``, which gets the host-port rule as well.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TYPE_CHECKING

import docker

from ..errors import InvalidRequest
from .base import LABEL_INSTALLATION, LABEL_SESSION

if TYPE_CHECKING:
    from .docker import DockerAgent

BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
GWBRIDGE = "docker_gwbridge"


def cluster_network_name(session_id: str) -> str:
    return f"jsess-{session_id}-net"


def cluster_bridge(session_id: str) -> str:
    """At most 15 characters (an interface name), stable for the session."""
    return "jsc" + hashlib.sha256(session_id.encode()).hexdigest()[:11]


async def ensure_cluster_network(agent: DockerAgent, session_id: str, *, overlay: bool) -> str:
    """The cluster's network on ``agent``: its own bridge (made here), or the overlay (made on a
    Swarm manager by ``ensure_overlay``; a worker sees it once a container attaches)."""
    from .docker import bridge_of

    name = cluster_network_name(session_id)
    if overlay:
        await _guard(agent, GWBRIDGE)
        return name
    client = agent._docker()
    labels = {LABEL_INSTALLATION: agent.installation_id, LABEL_SESSION: session_id}

    def ensure() -> str:
        try:
            network = client.networks.get(name)
        except docker.errors.NotFound:
            network = client.networks.create(
                name,
                driver="bridge",
                options={
                    "com.docker.network.bridge.enable_icc": "true",
                    BRIDGE_NAME_OPTION: cluster_bridge(session_id),
                },
                labels=labels,
            )
        return bridge_of(network.attrs, network.id or "")

    bridge = await agent._call(ensure, "create the cluster network")
    await _guard(agent, bridge)
    return name


async def ensure_overlay(agents: list[DockerAgent], session_id: str) -> None:
    """Create the cluster's attachable overlay on the first of ``agents`` that manages a Swarm;
    400 naming what is missing when none does."""
    name = cluster_network_name(session_id)
    for agent in agents:
        client = agent._docker()

        def create(client: docker.DockerClient = client, agent: DockerAgent = agent) -> bool:
            swarm = client.info().get("Swarm") or {}
            if not swarm.get("ControlAvailable"):
                return False
            try:
                client.networks.get(name)
            except docker.errors.NotFound:
                client.networks.create(
                    name,
                    driver="overlay",
                    attachable=True,
                    labels={LABEL_INSTALLATION: agent.installation_id, LABEL_SESSION: session_id},
                )
            return True

        if await agent._call(create, "create the cluster's overlay network"):
            return
    raise InvalidRequest(
        "multi-node clusters need their agents' engines in one Docker Swarm with a manager among "
        f"them (docker swarm init / join); agents {', '.join(a.id for a in agents)} have none"
    )


async def remove_cluster_network(agent: DockerAgent, session_id: str) -> None:
    """Remove the cluster's network from ``agent`` (and its bridge's host-port rule); gone is
    fine, and so is an overlay still used by another engine's containers (removed by the last)."""
    from .docker import host_rule, remove_host_rules

    name = cluster_network_name(session_id)

    def remove() -> str | None:
        try:
            network = agent._docker().networks.get(name)
        except docker.errors.NotFound:
            return None
        overlay = network.attrs.get("Driver") == "overlay"
        try:
            network.remove()
        except docker.errors.APIError:
            if overlay:
                return None
            raise
        return None if overlay else cluster_bridge(session_id)

    bridge = await agent._call(remove, "remove the cluster network")
    if bridge is not None and agent.host_firewall != "off":
        run = agent._rule_runner(bridge)[0]
        if run is not None:
            await asyncio.to_thread(
                remove_host_rules, run, host_rule(bridge, agent.installation_id)
            )


async def _guard(agent: DockerAgent, bridge: str) -> None:
    """The host-port rule for a cluster's bridge (see agents/docker.py); logged when it can't."""
    from .docker import ensure_host_rules, host_rule, log

    if agent.host_firewall == "off":
        return
    run, problem = agent._rule_runner(bridge)
    if run is None:
        log.error("cluster bridge %s: host ports stay open to sessions: %s", bridge, problem)
        return
    problems = await asyncio.to_thread(
        ensure_host_rules, run, host_rule(bridge, agent.installation_id)
    )
    if problems:
        log.error("cluster bridge %s: %s", bridge, "; ".join(problems))
