"""Network hardening on the real engine: a session's container can't open connections to the host's
own ports (the bridge's gateway, the host's other addresses) nor to another session, while the
manager's own traffic to the kernels (published ports) keeps working."""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from typing import Any

import docker
import pytest

from jupyter_sessions.agents.base import LABEL_INSTALLATION
from jupyter_sessions.agents.docker import DockerAgent, bridge_interface

from .conftest import Api

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_cleanup")]
SMALL = {"cpu": 0.25, "mem": "256m"}

#: Runs inside a container: try each (host, port), print what happened as JSON.
PROBE = """
import json, socket
results = {}
for host, port in TARGETS:
    try:
        with socket.create_connection((host, port), timeout=3):
            results[f"{host}:{port}"] = "connected"
    except OSError as exc:
        results[f"{host}:{port}"] = type(exc).__name__
print("PROBE" + json.dumps(results))
"""


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], kernel_image: str) -> dict[str, Any]:
    sessions_config["default_image"] = kernel_image
    return sessions_config


class Listener:
    """A TCP server on the host that accepts and counts connections until closed."""

    def __init__(self, host: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.create_server((host, 0), family=family, dualstack_ipv6=host == "::")
        self.sock.settimeout(0.2)
        self.port = int(self.sock.getsockname()[1])
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listeners() -> Iterator[list[Listener]]:
    made: list[Listener] = []
    yield made
    for listener in made:
        listener.close()


def host_ipv4_addresses(own_bridge: str) -> list[str]:
    """The host's own IPv4 addresses but loopback (a container's loopback is its own), on its
    lasting interfaces and our bridge: other tests' bridges come and go while this one runs."""
    out = subprocess.run(["ip", "-j", "addr", "show"], capture_output=True, check=True, text=True)
    found = []
    for link in json.loads(out.stdout):
        name = link.get("ifname", "")
        if name.startswith(("br-", "jsess-", "veth")) and name != own_bridge:
            continue
        for addr in link.get("addr_info", []):
            if addr["family"] == "inet" and not addr["local"].startswith("127."):
                found.append(addr["local"])
    return found


def input_rules(binary: str = "iptables") -> str:
    return subprocess.run(
        [binary, "-S", "INPUT"], capture_output=True, check=True, text=True
    ).stdout


async def execute(api: Api, session: str, code: str) -> dict[str, Any]:
    """A query, continued until it finishes; the console of every answer joined."""
    answer = await api("POST", "sessions", session, "execute", body={"mode": "query", "code": code})
    assert answer.code == 200, answer.body
    result = answer.body
    console = list(result["console"])
    while result["status"] == "continued":
        answer = await api(
            "POST",
            "sessions",
            session,
            "execute",
            body={"mode": "continue", "run_id": result["run_id"]},
        )
        assert answer.code == 200, answer.body
        result = answer.body
        console += result["console"]
    return {**result, "console": console}


def probe_result(console: list[list[Any]]) -> dict[str, str]:
    stdout = "".join(data for kind, data in console if kind == "stdout")
    line = next(line for line in stdout.splitlines() if line.startswith("PROBE"))
    return dict(json.loads(line.removeprefix("PROBE")))


async def test_a_session_cannot_reach_the_host_or_another_session(
    api: Api,
    sessions_app: Any,
    docker_client: docker.DockerClient,
    kernel_image: str,
    listeners: list[Listener],
) -> None:
    first = await api(
        "POST", "sessions", body={"resources": SMALL, "name": "prober", "max_wait_seconds": 120}
    )
    second = await api(
        "POST", "sessions", body={"resources": SMALL, "name": "target", "max_wait_seconds": 120}
    )
    assert first.code == 201 and first.body["status"] == "RUNNING", first.body
    assert second.code == 201 and second.body["status"] == "RUNNING", second.body

    agent = sessions_app.registry.get("local-docker")
    bridge = bridge_interface(sessions_app.installation_id)
    network = docker_client.networks.get(agent.network_name)
    assert network.attrs["Options"]["com.docker.network.bridge.name"] == bridge
    gateway = network.attrs["IPAM"]["Config"][0]["Gateway"]
    target_container = docker_client.containers.get(second.body["kernels"][0]["container_id"])
    target_ip = target_container.attrs["NetworkSettings"]["Networks"][agent.network_name][
        "IPAddress"
    ]

    # Listeners on every host address (dual stack) and on the bridge's gateway alone.
    everywhere = Listener("::")
    on_gateway = Listener(gateway)
    listeners += [everywhere, on_gateway]
    host_targets = [(address, everywhere.port) for address in host_ipv4_addresses(bridge)]
    assert (gateway, everywhere.port) in host_targets
    assert len(host_targets) >= 2, host_targets  # the gateway and the host's own interfaces
    targets = [*host_targets, (gateway, on_gateway.port), (target_ip, 5000)]

    # The host itself reaches its listeners (the probe's refusals are not the listeners' fault).
    for host, port in [*host_targets, (gateway, on_gateway.port)]:
        with socket.create_connection((host, port), timeout=5):
            pass

    # A container on another network (Docker's default bridge) reaches them too: what refuses
    # the session is the rule on its own bridge, not the host's general policy.
    control = docker_client.containers.run(
        kernel_image,
        ["python3", "-c", f"TARGETS = {host_targets!r}\n{PROBE}"],
        network="bridge",
        remove=True,
        labels={LABEL_INSTALLATION: sessions_app.installation_id},
    ).decode()
    seen_by_control = json.loads(control.strip().removeprefix("PROBE"))
    assert set(seen_by_control.values()) == {"connected"}, seen_by_control

    before = everywhere.accepted + on_gateway.accepted
    result = await execute(api, first.body["id"], f"TARGETS = {targets!r}\n{PROBE}")
    assert result["status"] == "finished", result
    seen = probe_result(result["console"])
    assert len(seen) == len(targets), seen
    assert "connected" not in seen.values(), seen
    for host, port in [*host_targets, (gateway, on_gateway.port)]:
        assert seen[f"{host}:{port}"] == "ConnectionRefusedError", seen  # REJECT, at once
    # Between sessions icc=false drops the packets: the connection times out.
    assert seen[f"{target_ip}:5000"] in ("TimeoutError", "ConnectionRefusedError"), seen
    assert everywhere.accepted + on_gateway.accepted == before

    # The manager's own traffic (ZMQ over the published ports) still works, both ways.
    after = await execute(api, first.body["id"], "1 + 1")
    assert after["status"] == "finished" and ["media", {"text/plain": "2"}] in after["console"]

    # The rule is in place for both families, and GET agents says so.
    assert f"-i {bridge} -m conntrack --ctstate NEW" in input_rules()
    assert f"-i {bridge} -m conntrack --ctstate NEW" in input_rules("ip6tables")
    agents = await api("GET", "agents")
    [entry] = agents.body["agents"]
    assert "host ports closed to sessions (iptables on this host" in entry["status_info"], entry

    # Removing the network removes its rules.
    for session in (first.body["id"], second.body["id"]):
        assert (await api("DELETE", "sessions", session, forced="true")).code == 202
    await wait_terminated(api, [first.body["id"], second.body["id"]])
    await agent.remove_network()
    assert bridge not in input_rules() and bridge not in input_rules("ip6tables")
    assert not docker_client.networks.list(names=[agent.network_name])


async def wait_terminated(api: Api, session_ids: list[str], timeout: float = 90) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for session_id in session_ids:
        while True:
            body = (await api("GET", "sessions", session_id)).body
            if body["status"] == "TERMINATED":
                break
            assert loop.time() < deadline, body
            await asyncio.sleep(0.2)


def make_network(docker_client: docker.DockerClient, agent: DockerAgent) -> Any:
    return docker_client.networks.create(
        agent.network_name,
        driver="bridge",
        options={
            "com.docker.network.bridge.enable_icc": "false",
            "com.docker.network.bridge.name": bridge_interface(agent.installation_id),
        },
        labels={LABEL_INSTALLATION: agent.installation_id},
    )


async def test_the_rule_is_applied_through_the_engine_when_asked(
    docker_client: docker.DockerClient, kernel_image: str
) -> None:
    """The path for a manager that is not root or not on the engine's host: a helper container
    of the kernel image, with the host's network, runs the host's own iptables."""
    agent = DockerAgent(
        "engine-path",
        installation_id=secrets.token_hex(6),
        helper_image=kernel_image,
        host_firewall="engine",
    )
    bridge = bridge_interface(agent.installation_id)
    network = make_network(docker_client, agent)
    try:
        assert bridge not in input_rules()
        await agent.setup()
        assert agent.host_ports_closed, agent.host_ports_status
        assert "through the engine" in (await agent.info()).detail
        rules = input_rules()
        assert f"-i {bridge} -m conntrack --ctstate NEW" in rules
        assert f'--comment "jupyter-sessions {agent.installation_id}"' in rules
        assert bridge in input_rules("ip6tables")
        await agent.setup()  # idempotent: checked before inserted
        assert input_rules().count(f"-i {bridge} ") == 1
        await agent.remove_network()
        assert bridge not in input_rules() and bridge not in input_rules("ip6tables")
        # The helpers removed themselves.
        selector = {"label": f"{LABEL_INSTALLATION}={agent.installation_id}"}
        assert docker_client.containers.list(all=True, filters=selector) == []
    finally:
        await agent.close()
        if docker_client.networks.list(names=[agent.network_name]):
            network.remove()


async def test_when_the_rule_cannot_be_applied_get_agents_says_so(
    api: Api, sessions_app: Any, docker_client: docker.DockerClient
) -> None:
    assert (await api("GET", "agents")).code == 200  # the server has started
    agent = sessions_app.registry.get("local-docker")
    agent.host_firewall = "engine"
    agent.helper_image = "jupyter-sessions/absent:nowhere"  # the helper cannot run
    make_network(docker_client, agent)
    await agent.setup()
    assert not agent.host_ports_closed
    [entry] = (await api("GET", "agents")).body["agents"]
    assert "WARNING: sessions CAN open connections to the host's ports" in entry["status_info"]
    assert bridge_interface(sessions_app.installation_id) not in input_rules()
