"""An explicitly configured Docker agent whose engine is down: 503, and nothing half-made."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import Api


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], tmp_path: Any) -> dict[str, Any]:
    """An engine address where nothing listens: a real fault, no fake needed."""
    sessions_config["agents"] = [
        {"id": "gone", "kind": "docker", "url": f"unix://{tmp_path}/no-engine.sock"}
    ]
    return sessions_config


async def test_engine_down_answers_503_and_agent_shows_lost(api: Api) -> None:
    answer = await api("POST", "sessions", body={"name": "wont-start"})
    assert answer.code == 503, answer.body
    assert "reachable" in answer.body["message"]
    agents = await api("GET", "agents")
    assert agents.body["agents"][0]["status"] == "LOST"
    assert (await api("GET", "sessions")).body["total"] == 0  # nothing half-made was kept
