"""Sessions on the local agent (subprocess kernels), as `auto` picks it when no engine answers."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from .conftest import Api


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    # "auto" with an engine address where nothing listens: a real "no Docker here" machine.
    sessions_config["docker_url"] = f"unix://{tmp_path}/no-docker.sock"
    return sessions_config


async def test_auto_without_docker_serves_sessions_on_the_local_agent(
    api: Api, sessions_app: Any
) -> None:
    agents = await api("GET", "agents")
    assert [(a["id"], a["kind"], a["status"]) for a in agents.body["agents"]] == [
        ("local", "local", "ALIVE")
    ]
    assert "no isolation" in agents.body["agents"][0]["status_info"]
    images = await api("GET", "images")
    assert [(i["name"], i["present"]) for i in images.body["images"]] == [("local", True)]

    created = await api("POST", "sessions", body={"name": "on-local", "max_wait_seconds": 60})
    assert created.code == 201 and created.body["status"] == "RUNNING", created.body
    assert created.body["image"] == "local"
    session_id = created.body["id"]
    result = await api(
        "POST",
        "sessions",
        "on-local",
        "execute",
        body={"mode": "query", "code": "import os; print(os.getcwd()); 6 * 7"},
    )
    assert result.code == 200 and result.body["status"] == "finished", result.body
    cwd = result.body["console"][0][1].strip()
    assert cwd.endswith(f"{session_id}/work")
    assert result.body["console"][1] == ["media", {"text/plain": "42"}]

    gone = await api("DELETE", "sessions", "on-local")
    assert gone.code == 202
    for _ in range(100):
        info = await api("GET", "sessions", session_id)
        if info.body["status"] == "TERMINATED":
            break
        await asyncio.sleep(0.1)
    assert info.body["status"] == "TERMINATED"
    assert not Path(cwd).exists()


async def test_docker_images_are_refused_on_the_local_agent(api: Api) -> None:
    answer = await api("POST", "sessions", body={"image": "jupyter-sessions/kernel:abc"})
    assert answer.code == 400 and "local" in answer.body["message"]


async def test_batch_mode_and_logs_on_the_local_agent(api: Api) -> None:
    created = await api("POST", "sessions", body={"name": "local-batch", "max_wait_seconds": 60})
    assert created.body["status"] == "RUNNING", created.body
    answers = [
        (
            await api(
                "POST",
                "sessions",
                "local-batch",
                "execute",
                body={
                    "mode": "batch",
                    "options": {"build": "echo made > f.txt", "exec": "cat f.txt; exit 4"},
                },
            )
        ).body
    ]
    while answers[-1]["status"] not in ("finished", "exec-timeout"):
        answers.append(
            (
                await api(
                    "POST",
                    "sessions",
                    "local-batch",
                    "execute",
                    body={"mode": "continue", "run_id": answers[0]["run_id"]},
                )
            ).body
        )
    assert [a["status"] for a in answers if a["status"] != "continued"] == [
        "build-finished",
        "finished",
    ]
    assert answers[-1]["exit_code"] == 4
    assert "made" in "".join(d for a in answers for k, d in a["console"] if k == "stdout")
    logs = await api("GET", "sessions", "local-batch", "logs")
    assert logs.code == 200 and "kernel main1 starting" in logs.body
    missing = await api("GET", "sessions", "local-batch", "logs", kernel="sub9")
    assert missing.code == 404


async def test_usage_on_the_local_agent(api: Api) -> None:
    created = await api("POST", "sessions", body={"name": "local-usage", "max_wait_seconds": 60})
    assert created.body["status"] == "RUNNING", created.body
    ran = await api(
        "POST",
        "sessions",
        "local-usage",
        "execute",
        body={"mode": "query", "code": "block = bytearray(100 * 2**20); len(block)"},
    )
    assert ran.body["status"] == "finished", ran.body
    usage = (await api("GET", "sessions", "local-usage", "usage")).body["kernels"][0]["usage"]
    assert usage["mem_bytes"] >= 100 * 2**20 and usage["cpu_seconds"] > 0
    assert usage["mem_limit"] is None
    await api("DELETE", "sessions", "local-usage", forced="true")
