"""Idle timeout and max lifetime: sessions end on their own with the reason (local agent)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from .conftest import Api


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    sessions_config["agents"] = [{"id": "local", "kind": "local", "root_dir": str(tmp_path / "l")}]
    sessions_config["sweep_interval"] = 0.5
    return sessions_config


async def keypair_with_policy(api: Api, name: str, **limits: Any) -> dict[str, str]:
    policy = await api("POST", "resource-policies", body={"name": name, **limits})
    assert policy.code == 201, policy.body
    keypair = await api("POST", "keypairs", body={"user": f"user-{name}", "resource_policy": name})
    assert keypair.code == 201, keypair.body
    return {"Authorization": f"Keypair {keypair.body['access_key']}:{keypair.body['secret_key']}"}


async def wait_status(
    api: Api, ref: str, wanted: str, headers: dict[str, str], timeout: float = 30
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        answer = await api("GET", "sessions", ref, headers=headers)
        if answer.body["status"] == wanted or loop.time() > deadline:
            return dict(answer.body)
        await asyncio.sleep(0.2)


async def test_an_idle_session_ends_and_activity_keeps_one_alive(api: Api) -> None:
    guest = await keypair_with_policy(api, "idle2", idle_timeout=2)
    idle = await api("POST", "sessions", headers=guest, body={"name": "idler"})
    busy = await api("POST", "sessions", headers=guest, body={"name": "worker"})
    assert idle.body["status"] == busy.body["status"] == "RUNNING", (idle.body, busy.body)
    loop = asyncio.get_running_loop()
    until = loop.time() + 4
    while loop.time() < until:  # activity every 0.5 s on one session only
        ran = await api(
            "POST",
            "sessions",
            "worker",
            "execute",
            headers=guest,
            body={"mode": "query", "code": "1"},
        )
        assert ran.code == 200, ran.body
        await asyncio.sleep(0.5)
    ended = await wait_status(api, idle.body["id"], "TERMINATED", guest)
    assert ended["status"] == "TERMINATED" and "idle-timeout" in ended["status_info"]
    still = await api("GET", "sessions", "worker", headers=guest)
    assert still.body["status"] == "RUNNING"


async def test_a_long_run_is_activity(api: Api) -> None:
    guest = await keypair_with_policy(api, "idle1", idle_timeout=1)
    created = await api("POST", "sessions", headers=guest, body={"name": "sleeper"})
    run = await api(
        "POST",
        "sessions",
        "sleeper",
        "execute",
        headers=guest,
        body={
            "mode": "query",
            "code": "import time; time.sleep(3); 'ok'",
            "options": {"flush_interval": 0.1},
        },
    )
    assert run.body["status"] == "continued"
    result = run.body
    while result["status"] == "continued":
        result = (
            await api(
                "POST",
                "sessions",
                "sleeper",
                "execute",
                headers=guest,
                body={"mode": "continue", "run_id": run.body["run_id"]},
            )
        ).body
    # Idle limit 1 s, run 3 s: had the sweeper ended the session mid-run, continue would fail.
    assert result["status"] == "finished", result
    assert created.body["status"] == "RUNNING"


async def test_a_session_past_its_lifetime_ends(api: Api) -> None:
    guest = await keypair_with_policy(api, "short", max_session_lifetime=2)
    created = await api("POST", "sessions", headers=guest, body={"name": "mayfly"})
    assert created.body["status"] == "RUNNING", created.body
    ended = await wait_status(api, created.body["id"], "TERMINATED", guest)
    assert ended["status"] == "TERMINATED" and "lifetime-exceeded" in ended["status_info"]
