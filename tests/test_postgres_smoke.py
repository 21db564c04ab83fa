"""End to end on PostgreSQL: a Jupyter server whose store is a real PostgreSQL database runs a
session on the real Docker engine through its whole life, and the rows land in that database."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import docker
import psycopg
import pytest

from .conftest import Api

# Until tests/conftest.py lists "tests.postgres" in pytest_plugins:

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_cleanup")]


@pytest.fixture
def store_url(request: pytest.FixtureRequest) -> str:
    """This test's fresh PostgreSQL database (SQLAlchemy URL)."""
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def sessions_config(
    sessions_config: dict[str, Any], kernel_image: str, store_url: str
) -> dict[str, Any]:
    sessions_config["db_url"] = store_url
    sessions_config["default_image"] = kernel_image
    return sessions_config


async def wait_status(api: Api, ref: str, wanted: set[str], timeout: float = 60) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        answer = await api("GET", "sessions", ref)
        assert answer.code == 200, answer.body
        if answer.body["status"] in wanted or loop.time() > deadline:
            return answer.body
        await asyncio.sleep(0.2)


def stored_rows(store_url: str, session_id: str) -> tuple[str, list[str]]:
    """The session's status and history as PostgreSQL itself holds them (not through the app)."""
    with psycopg.connect(store_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        row = conn.execute("SELECT status FROM sessions WHERE id = %s", (session_id,)).fetchone()
        assert row is not None, "the session is not in the PostgreSQL store"
        history = conn.execute(
            "SELECT to_status FROM status_history WHERE session_id = %s ORDER BY id",
            (session_id,),
        ).fetchall()
    return row[0], [h[0] for h in history]


async def test_a_session_lives_and_ends_on_a_postgresql_store(
    api: Api,
    docker_client: docker.DockerClient,
    sessions_app: Any,
    store_url: str,
    tmp_path: Path,
) -> None:
    assert sessions_app.database.url.get_backend_name() == "postgresql"
    answer = await api(
        "POST",
        "sessions",
        body={
            "name": "on-postgres",
            "resources": {"cpu": 0.5, "mem": "256m"},
            "tag": "pg",
            "max_wait_seconds": 90,
        },
    )
    assert answer.code == 201, answer.body
    session = answer.body
    assert session["status"] == "RUNNING", session
    # Times are UTC even though the test server's own time zone is not.
    assert session["created_at"].endswith("Z") and session["status_changed_at"].endswith("Z")
    [kernel] = session["kernels"]
    container = docker_client.containers.get(kernel["container_id"])
    assert container.status == "running"

    listed = await api("GET", "sessions")
    assert listed.code == 200
    assert [s["id"] for s in listed.body["sessions"]] == [session["id"]]
    assert listed.body["total"] == 1
    matched = await api("GET", "sessions", match="on-post")
    assert [s["id"] for s in matched.body["sessions"]] == [session["id"]]

    history = await api("GET", "sessions", "on-postgres", "status-history")
    assert history.code == 200
    running_path = ["PENDING", "SCHEDULED", "PREPARING", "PREPARED", "CREATING", "RUNNING"]
    assert [h["to"] for h in history.body["history"]] == running_path
    assert all(h["at"].endswith("Z") for h in history.body["history"])
    assert stored_rows(store_url, session["id"]) == ("RUNNING", running_path)

    gone = await api("DELETE", "sessions", "on-postgres")
    assert gone.code == 202 and gone.body["status"] == "TERMINATING", gone.body
    final = await wait_status(api, session["id"], {"TERMINATED", "ERROR"})
    assert final["status"] == "TERMINATED", final
    assert final["terminated_at"] and final["terminated_at"].endswith("Z")
    with pytest.raises(docker.errors.NotFound):
        container.reload()
    status, stored_history = stored_rows(store_url, session["id"])
    assert status == "TERMINATED"
    assert stored_history == [*running_path, "TERMINATING", "TERMINATED"]
    # Nothing fell back to the default SQLite file.
    assert list(tmp_path.rglob("sessions.db")) == []
