"""Direct access, where the admin allows it: preopened ports published on the engine's loopback
address and listed by direct-access-info (no proxy, no authentication: the admin's choice)."""

from __future__ import annotations

from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient

from .conftest import Api
from .test_services_docker import run

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_cleanup")]


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], kernel_image: str) -> dict[str, Any]:
    sessions_config["default_image"] = kernel_image
    sessions_config["service_direct_access"] = True
    return sessions_config


async def test_preopened_ports_are_published_for_direct_access(api: Api) -> None:
    created = await api(
        "POST",
        "sessions",
        body={"name": "direct", "preopen_ports": [8090], "max_wait_seconds": 120},
    )
    assert created.code == 201 and created.body["status"] == "RUNNING", created.body
    session_id = created.body["id"]
    await run(
        api,
        session_id,
        "import subprocess, socket, time\nopen('d.txt', 'w').write('direct')\n"
        "subprocess.Popen(['python3', '-m', 'http.server', '8090'], stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL)\nfor _ in range(100):\n    try:\n"
        "        socket.create_connection(('127.0.0.1', 8090)).close(); break\n"
        "    except OSError: time.sleep(0.1)",
    )
    info = await api("GET", "sessions", session_id, "direct-access-info")
    assert info.code == 200, info.body
    published = info.body["direct_ports"]["port-8090"]
    assert published["host"] == "127.0.0.1" and published["container_port"] == 8090
    response = await AsyncHTTPClient().fetch(
        f"http://{published['host']}:{published['port']}/d.txt", request_timeout=30
    )
    assert response.body == b"direct"
    assert set(info.body["direct_ports"]) == {"port-8090"}  # never the kernel's own ports
