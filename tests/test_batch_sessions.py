"""Batch sessions: startup_command runs once RUNNING; its exit ends the session with a result."""

from __future__ import annotations

import asyncio
from typing import Any

import docker
import pytest

from jupyter_sessions.agents.base import LABEL_SESSION

from .conftest import Api

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_cleanup")]


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], kernel_image: str) -> dict[str, Any]:
    sessions_config["default_image"] = kernel_image
    return sessions_config


async def wait_final(api: Api, ref: str, timeout: float = 90) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        answer = await api("GET", "sessions", ref)
        if answer.body["status"] in ("TERMINATED", "CANCELLED", "ERROR"):
            return dict(answer.body)
        assert loop.time() < deadline, answer.body
        await asyncio.sleep(0.3)


async def test_a_failing_batch_ends_terminated_with_failure_and_its_exit_code(
    api: Api, docker_client: docker.DockerClient, sessions_app: Any
) -> None:
    created = await api(
        "POST",
        "sessions",
        body={
            "name": "batch-fails",
            "type": "batch",
            "startup_command": "echo working; echo trouble >&2; exit 3",
            "enqueue_only": True,
        },
    )
    assert created.code == 201, created.body
    final = await wait_final(api, created.body["id"])
    assert final["status"] == "TERMINATED" and final["result"] == "FAILURE"
    assert final["exit_code"] == 3
    assert "exit code 3" in final["status_info"]
    stored = await sessions_app.repository.get(created.body["id"])
    output = stored.status_data["batch"]["output"]
    assert "working" in output and "trouble" in output
    logs = await api("GET", "sessions", created.body["id"], "logs")
    assert logs.code == 200 and "working" in logs.body and "trouble" in logs.body
    assert (await api("GET", "sessions", created.body["id"], "logs", tail="1")).body.strip() in (
        "working",
        "trouble",
    )
    selector = {"label": f"{LABEL_SESSION}={created.body['id']}"}
    assert docker_client.containers.list(all=True, filters=selector) == []
    history = await api("GET", "sessions", created.body["id"], "status-history")
    assert [h["to"] for h in history.body["history"]][-3:] == [
        "RUNNING",
        "TERMINATING",
        "TERMINATED",
    ]


async def test_a_succeeding_batch_ends_with_success(api: Api) -> None:
    created = await api(
        "POST",
        "sessions",
        body={
            "name": "batch-works",
            "type": "batch",
            "enqueue_only": True,
            "startup_command": "python3 -c 'import numpy; print(numpy.arange(3).sum())' > out.txt",
        },
    )
    final = await wait_final(api, created.body["id"])
    assert final["status"] == "TERMINATED" and final["result"] == "SUCCESS"
    assert final["exit_code"] == 0


async def test_a_batch_over_its_timeout_fails_with_the_reason(api: Api) -> None:
    created = await api(
        "POST",
        "sessions",
        body={
            "name": "batch-slow",
            "type": "batch",
            "startup_command": "sleep 300",
            "batch_timeout": 1,
            "enqueue_only": True,
        },
    )
    final = await wait_final(api, created.body["id"])
    assert final["status"] == "TERMINATED" and final["result"] == "FAILURE"
    assert "batch-timeout" in final["status_info"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"type": "batch"}, "startup_command"),
        ({"startup_command": "echo"}, "batch"),
        ({"type": "batch", "startup_command": "x", "batch_timeout": 0}, "batch_timeout"),
        ({"type": "batch", "startup_command": 5}, "startup_command"),
    ],
)
async def test_bad_batch_requests(api: Api, body: dict[str, Any], needle: str) -> None:
    answer = await api("POST", "sessions", body=body)
    assert answer.code == 400 and needle in answer.body["message"], answer.body
