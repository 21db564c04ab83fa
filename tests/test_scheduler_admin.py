"""The admin routes of agents and scaling groups, on the local agent: validation, what can't be
registered or removed, groups and their policies, priorities ordering a real queue, and the
reserve taken off an agent's capacity."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from .conftest import Api

SMALL = {"cpu": 0.1, "mem": "128m"}


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    sessions_config["agents"] = [
        {"id": "local", "kind": "local", "root_dir": str(tmp_path / "l"), "reserve": {"cpu": 0.5}}
    ]
    return sessions_config


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"url": "unix:///x.sock"}, "id"),
        ({"id": "../x", "url": "unix:///x.sock"}, "id"),
        ({"id": "a1", "url": "ftp://host"}, "url"),
        ({"id": "a1", "url": "unix:///x.sock", "kind": "local"}, "kind"),
        ({"id": "a1", "url": "unix:///x.sock", "host_firewall": "maybe"}, "host_firewall"),
        ({"id": "a1", "url": "unix:///x.sock", "reserve": {"gpu": 1}}, "reserve.gpu"),
        ({"id": "a1", "url": "unix:///x.sock", "colour": "red"}, "colour"),
    ],
)
async def test_bad_agent_bodies_are_400(api: Api, body: dict[str, Any], needle: str) -> None:
    answer = await api("POST", "agents", body=body)
    assert answer.code == 400, answer.body
    assert needle in answer.body["message"]


async def test_agents_that_cannot_be_registered_or_removed(api: Api, tmp_path: Path) -> None:
    nowhere = {"id": "ghost", "url": f"unix://{tmp_path}/no-engine.sock"}
    answer = await api("POST", "agents", body=nowhere)
    assert answer.code == 503 and "does not answer" in answer.body["message"], answer.body
    unknown_group = {**nowhere, "scaling_group": "gpu"}
    assert (await api("POST", "agents", body=unknown_group)).code == 404
    assert (await api("POST", "agents", body={**nowhere, "id": "local"})).code == 409
    assert (await api("DELETE", "agents", "local")).code == 409
    assert (await api("DELETE", "agents", "ghost")).code == 404
    agents = (await api("GET", "agents")).body["agents"]
    assert [a["id"] for a in agents] == ["local"]


async def test_the_reserve_is_kept_off_the_capacity(api: Api) -> None:
    import os

    agent = (await api("GET", "agents")).body["agents"][0]
    assert agent["capacity"]["cpu"] == pytest.approx((os.cpu_count() or 1) - 0.5)
    assert "reserve" in agent["status_info"]


async def test_scaling_groups_are_made_listed_and_changed(api: Api) -> None:
    groups = (await api("GET", "scaling-groups")).body
    assert groups["total"] == 1 and groups["scaling_groups"][0]["agents"] == ["local"]
    bad = await api("POST", "scaling-groups", body={"name": "gpu", "ordering": "random"})
    assert bad.code == 400 and "ordering" in bad.body["message"]
    bad = await api("POST", "scaling-groups", body={"name": "a b"})
    assert bad.code == 400 and "name" in bad.body["message"]
    made = await api(
        "POST", "scaling-groups", body={"name": "gpu", "ordering": "drf", "description": "GPUs"}
    )
    assert made.code == 200, made.body
    assert made.body == {
        "name": "gpu",
        "description": "GPUs",
        "ordering": "drf",
        "placement": "concentrated",
        "agents": [],
    }
    names = [g["name"] for g in (await api("GET", "scaling-groups")).body["scaling_groups"]]
    assert names == ["default", "gpu"]
    # A group without agents exists, so sessions may name it; none is reachable there: 503.
    answer = await api("POST", "sessions", body={"scaling_group": "gpu", "resources": SMALL})
    assert answer.code == 503 and "gpu" in answer.body["message"], answer.body
    answer = await api("POST", "sessions", body={"scaling_group": "tpu", "resources": SMALL})
    assert answer.code == 400 and "scaling group 'tpu'" in answer.body["message"]


async def test_priority_orders_a_real_queue(api: Api) -> None:
    """One place left (max_concurrent_sessions 1): the higher priority starts first."""
    made = await api(
        "POST", "resource-policies", body={"name": "one", "max_concurrent_sessions": 1}
    )
    assert made.code == 201, made.body
    user = await api("POST", "keypairs", body={"user": "pia", "resource_policy": "one"})
    headers = {"Authorization": f"Keypair {user.body['access_key']}:{user.body['secret_key']}"}

    async def create(name: str) -> dict[str, Any]:
        body = {"name": name, "resources": SMALL, "enqueue_only": True}
        answer = await api("POST", "sessions", body=body, headers=headers)
        assert answer.code == 201, answer.body
        return dict(answer.body)

    first = await create("pia-first")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120

    async def status(ref: str) -> str:
        return str((await api("GET", "sessions", ref, headers=headers)).body["status"])

    while await status(first["id"]) != "RUNNING":
        assert loop.time() < deadline
        await asyncio.sleep(0.3)
    low = await create("pia-low")
    high = await create("pia-high")
    changed = await api("PATCH", "sessions", high["id"], body={"priority": 50}, headers=headers)
    assert changed.code == 200, changed.body
    assert (await api("DELETE", "sessions", first["id"], headers=headers)).code == 202
    while await status(high["id"]) != "RUNNING":
        assert loop.time() < deadline
        await asyncio.sleep(0.3)
    # The older, lower-priority session still waits for the owner's one place.
    assert await status(low["id"]) == "PENDING"
