"""Services in Docker kernels: where the manager reaches a port of a session's container.

The proxy dials the container's address on the installation's bridge network directly: service
ports are chosen when a service starts, and Docker can't publish a port after a container was
created. That address is read from the engine for that one container (never from a request),
so the proxy reaches that session's declared ports and nothing else: not other containers (a
session has only its own address), not the host. It works when the bridge is routable from the
manager, i.e. a local engine; for a remote engine the call says so.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import docker
import docker.errors

from ..errors import AgentError, InvalidStatus


def container_address(client: docker.DockerClient, container_ref: str, network: str) -> str:
    """The container's IPv4 address on ``network`` (blocking: run it in a thread)."""
    try:
        container = client.containers.get(container_ref)
    except docker.errors.NotFound:
        raise InvalidStatus("the session's container is gone") from None
    if container.status != "running":
        raise InvalidStatus(f"the session's container is {container.status}")
    networks: dict[str, Any] = (container.attrs.get("NetworkSettings") or {}).get("Networks") or {}
    address = (networks.get(network) or {}).get("IPAddress") or ""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        raise AgentError(f"the container has no address on network {network}") from None
    if parsed.is_loopback or parsed.is_unspecified or not parsed.is_private:
        raise AgentError(f"the container's address {address} is not a bridge address")
    return address


def check_local_engine(kernel_host: str) -> None:
    """Services are proxied to the bridge address, which only a local engine's host can reach."""
    if kernel_host not in ("127.0.0.1", "localhost", "::1"):
        raise AgentError(
            "services are proxied only for a local Docker engine: this agent's containers are "
            f"on {kernel_host}, whose bridge network the manager can't reach"
        )


def published_ports(
    client: docker.DockerClient, container_ref: str, skip: set[int]
) -> dict[int, int]:
    """Container port → host port of what the container publishes, but the ``skip`` ports."""
    try:
        container = client.containers.get(container_ref)
    except docker.errors.NotFound:
        raise InvalidStatus("the session's container is gone") from None
    ports: dict[str, Any] = (container.attrs.get("NetworkSettings") or {}).get("Ports") or {}
    found = {}
    for key, bindings in ports.items():
        number, _, proto = key.partition("/")
        if proto != "tcp" or not bindings or int(number) in skip:
            continue
        found[int(number)] = int(bindings[0]["HostPort"])
    return found
