"""Background tasks on a real store: progress and results through GET tasks/{id}, cancel through
DELETE, failures as errors, other users' tasks as 404, and tasks a stopped server left running
marked failed at the next start."""

from __future__ import annotations

import asyncio
from typing import Any

from jupyter_sessions.bgtasks import INTERRUPTED, Progress, TaskService
from jupyter_sessions.errors import AgentError
from jupyter_sessions.events import EventHub
from jupyter_sessions.repository import Database

from .conftest import Api
from .test_events import DEADLINE, gated_task, owner_key
from .test_identity import keypair_auth, new_keypair


async def wait_for_status(api: Api, task_id: str, *statuses: str, **kwargs: Any) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while True:
        answer = await api("GET", "tasks", task_id, **kwargs)
        assert answer.code == 200, answer.body
        if answer.body["status"] in statuses:
            return answer.body
        assert loop.time() < deadline, answer.body
        await asyncio.sleep(0.05)


async def test_a_task_reports_progress_then_its_result(api: Api, sessions_app: Any) -> None:
    assert (await api("GET", "sessions")).code == 200
    gate = asyncio.Event()
    task = await gated_task(sessions_app, owner_key(sessions_app), gate, steps=2)
    running = await wait_for_status(api, task.id, "running")
    assert running["kind"] == "test" and running["progress"]["total"] == 2
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while running["progress"]["current"] < 2:
        assert loop.time() < deadline
        running = (await api("GET", "tasks", task.id)).body
    assert running["progress"]["message"] == "step 2" and running["result"] is None
    gate.set()
    done = await wait_for_status(api, task.id, "done")
    assert done["result"] == {"answer": 42} and done["error"] is None
    assert done["progress"] == {"current": 2, "total": 2, "message": "done"}
    # Ended: cancelling it is a conflict, and it stays done.
    assert (await api("DELETE", "tasks", task.id)).code == 409
    assert (await api("GET", "tasks", task.id)).body["status"] == "done"


async def test_a_running_task_can_be_cancelled(api: Api, sessions_app: Any) -> None:
    assert (await api("GET", "sessions")).code == 200
    gate = asyncio.Event()  # never set: the work waits until it is cancelled
    task = await gated_task(sessions_app, owner_key(sessions_app), gate, steps=1)
    await wait_for_status(api, task.id, "running")
    answer = await api("DELETE", "tasks", task.id)
    assert answer.code == 200 and answer.body["status"] == "cancelled", answer.body
    assert (await api("GET", "tasks", task.id)).body["status"] == "cancelled"


async def test_a_failure_is_the_tasks_error(api: Api, sessions_app: Any) -> None:
    assert (await api("GET", "sessions")).code == 200

    async def work(progress: Progress) -> dict[str, Any]:
        await progress.step("about to fail")
        raise AgentError("the engine said no")

    async def crash(progress: Progress) -> dict[str, Any]:
        raise KeyError("internal detail")

    tasks = sessions_app.service.observability.tasks
    failing = await tasks.submit("test", owner_key(sessions_app), work, total=1)
    failed = await wait_for_status(api, failing.id, "failed")
    assert failed["error"] == "the engine said no" and failed["result"] is None
    crashing = await tasks.submit("test", owner_key(sessions_app), crash)
    crashed = await wait_for_status(api, crashing.id, "failed")
    assert crashed["error"] == "internal error: KeyError"  # no detail leaks
    assert "internal detail" not in str(crashed)


async def test_other_users_tasks_are_404_and_unknown_ones_too(api: Api, sessions_app: Any) -> None:
    assert (await api("GET", "sessions")).code == 200
    gate = asyncio.Event()
    task = await gated_task(sessions_app, owner_key(sessions_app), gate, steps=1)
    second = keypair_auth(await new_keypair(api, "not-the-owner"))
    assert (await api("GET", "tasks", task.id, headers=second)).code == 404
    assert (await api("DELETE", "tasks", task.id, headers=second)).code == 404
    assert (await api("GET", "tasks", "no-such-task")).code == 404
    assert (await api("GET", "tasks", task.id)).code == 200
    gate.set()
    await wait_for_status(api, task.id, "done")


async def test_tasks_a_stopped_server_left_running_fail_at_start(any_store_url: str) -> None:
    """A row left running (the server died under it) is failed by the next start (on SQLite and
    on PostgreSQL)."""
    database = Database(any_store_url)
    database.migrate()
    try:
        from jupyter_sessions.repository.repository import SessionRepository

        owner = await SessionRepository(database).ensure_owner_keypair("owner")
        tasks = TaskService(database, EventHub())
        gate = asyncio.Event()

        async def work(progress: Progress) -> dict[str, Any]:
            await progress.step("working")
            await gate.wait()
            return {}

        task = await tasks.submit("test", owner.access_key, work, total=1)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        while (await tasks.get(task.id)).status != "running":
            assert loop.time() < deadline
            await asyncio.sleep(0.05)
        # The "server" dies: its task never finishes, its row still says running.
        restarted = TaskService(database, EventHub())
        assert await restarted.fail_interrupted() == 1
        row = await restarted.get(task.id)
        assert row.status == "failed" and row.error == INTERRUPTED
        gate.set()
        await asyncio.sleep(0)
        # The abandoned work ending later does not overwrite the recorded failure.
        await asyncio.wait(list(tasks._running.values()) or [asyncio.sleep(0)], timeout=DEADLINE)
        assert (await restarted.get(task.id)).status == "failed"
    finally:
        database.close()
