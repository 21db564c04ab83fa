"""The event stream: SSE over a real socket, each user seeing only their own events; keep-alive
comments; narrowing to a session or a task; the server's event bus only when allowed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import pytest

from jupyter_sessions.bgtasks import Progress
from jupyter_sessions.events import SESSION_STATUS_SCHEMA, TASK_PROGRESS_SCHEMA, Event
from jupyter_sessions.handlers.events import EventsHandler

from .conftest import Api
from .test_identity import keypair_auth, new_keypair

#: Generous: CPU is shared with other test runs.
DEADLINE = 60.0


class SSEClient:
    """A raw HTTP/1.0 client of a streamed route (no chunked framing to undo): headers, then
    the body as it comes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.status = 0
        self.headers: dict[str, str] = {}
        self.text = ""

    async def read_until(self, needle: str, timeout: float = DEADLINE) -> str:
        """Read until ``needle`` is in the body; fails after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while needle not in self.text:
            remaining = deadline - loop.time()
            assert remaining > 0, f"{needle!r} never came; got {self.text[-2000:]!r}"
            chunk = await asyncio.wait_for(self.reader.read(65536), remaining)
            assert chunk, f"the stream ended before {needle!r}; got {self.text[-2000:]!r}"
            self.text += chunk.decode(errors="replace")
        return self.text

    async def read_to_end(self, timeout: float = DEADLINE) -> str:
        while chunk := await asyncio.wait_for(self.reader.read(65536), timeout):
            self.text += chunk.decode(errors="replace")
        return self.text

    def frames(self, kind: str) -> list[dict[str, Any]]:
        found = []
        for block in self.text.split("\n\n"):
            lines = block.splitlines()
            if f"event: {kind}" in lines:
                data = next(line for line in lines if line.startswith("data: "))
                found.append(json.loads(data[len("data: ") :]))
        return found

    def close(self) -> None:
        self.writer.close()


StreamOpener = Callable[..., Awaitable[SSEClient]]


@pytest.fixture
def open_stream(jp_http_port: int, jp_base_url: str, jp_serverapp: Any) -> StreamOpener:
    """Open a streamed GET under jupyter-sessions/api as the owner (or with ``headers``)."""
    token = jp_serverapp.identity_provider.token

    async def open_(path: str, headers: dict[str, str] | None = None, **params: str) -> SSEClient:
        reader, writer = await asyncio.open_connection("127.0.0.1", jp_http_port)
        query = f"?{urlencode(params)}" if params else ""
        sent = headers if headers is not None else {"Authorization": f"token {token}"}
        request = f"GET {jp_base_url}jupyter-sessions/api/{path}{query} HTTP/1.0\r\n"
        request += "".join(f"{k}: {v}\r\n" for k, v in sent.items()) + "\r\n"
        writer.write(request.encode())
        await writer.drain()
        client = SSEClient(reader, writer)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), DEADLINE)
        status_line, *header_lines = head.decode().split("\r\n")
        client.status = int(status_line.split()[1])
        client.headers = {
            k.strip().lower(): v.strip()
            for k, _, v in (line.partition(":") for line in header_lines if line)
        }
        return client

    return open_


def owner_key(sessions_app: Any) -> str:
    return str(sessions_app.identity.owner.access_key)


async def gated_task(sessions_app: Any, owner: str, gate: asyncio.Event, steps: int = 3) -> Any:
    """A real background task of the owner that takes ``steps`` steps, then waits for the gate."""

    async def work(progress: Progress) -> dict[str, Any]:
        for number in range(steps):
            await progress.step(f"step {number + 1}")
        await gate.wait()
        return {"answer": 42}

    tasks = sessions_app.service.observability.tasks
    return await tasks.submit("test", owner, work, total=steps)


async def test_each_user_sees_only_their_own_events(
    api: Api, sessions_app: Any, open_stream: StreamOpener
) -> None:
    second = keypair_auth(await new_keypair(api, "second-watcher"))
    assert (await api("GET", "sessions")).code == 200  # started: the owner is known
    mine = await open_stream("events")
    theirs = await open_stream("events", headers=second)
    assert mine.status == 200 and theirs.status == 200
    assert mine.headers["content-type"].startswith("text/event-stream")
    await mine.read_until(": connected")
    await theirs.read_until(": connected")

    gate = asyncio.Event()
    task = await gated_task(sessions_app, owner_key(sessions_app), gate)
    await mine.read_until('"message": "step 3"')
    gate.set()
    await mine.read_until('"status": "done"')
    progress = [f for f in mine.frames("task_progress") if f["task_id"] == task.id]
    assert progress[0]["status"] == "pending"
    assert [f["progress"]["current"] for f in progress if f["status"] == "running"][-3:] == [
        1,
        2,
        3,
    ]
    assert progress[-1]["status"] == "done" and progress[-1]["progress"]["total"] == 3

    # The second user's stream saw nothing of it: an event of theirs arrives, the owner's never.
    sessions_app.hub.publish(
        Event("task_progress", second["Authorization"].split()[1].split(":")[0], {"task_id": "x"})
    )
    await theirs.read_until('"task_id": "x"')
    assert task.id not in theirs.text
    mine.close()
    theirs.close()


async def test_streams_narrow_to_a_task_and_refuse_what_is_not_yours(
    api: Api, sessions_app: Any, open_stream: StreamOpener
) -> None:
    assert (await api("GET", "sessions")).code == 200
    gate = asyncio.Event()
    first = await gated_task(sessions_app, owner_key(sessions_app), gate, steps=1)
    gate.set()
    stream = await open_stream("events", task=first.id)
    assert stream.status == 200
    await stream.read_until(": connected")
    other_gate = asyncio.Event()
    other = await gated_task(sessions_app, owner_key(sessions_app), other_gate, steps=2)
    other_gate.set()
    # A task of the same owner, but not the one asked for: never on this stream.
    sessions_app.hub.publish(
        Event("task_progress", owner_key(sessions_app), {"task_id": first.id, "marker": "end"})
    )
    await stream.read_until('"marker": "end"')
    assert other.id not in stream.text
    stream.close()

    second = keypair_auth(await new_keypair(api, "snooper"))
    assert (await open_stream("events", headers=second, task=first.id)).status == 404
    assert (await open_stream("events", session="no-such-session")).status == 404
    assert (await open_stream("events", headers={})).status in (401, 403)
    owner = owner_key(sessions_app)
    assert (await open_stream("events", headers=second, owner_access_key=owner)).status == 403


async def test_idle_streams_get_keep_alive_comments(
    api: Api, open_stream: StreamOpener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(EventsHandler, "keepalive", 0.2)
    stream = await open_stream("events")
    await stream.read_until(": keep-alive\n\n")
    await stream.read_until(": keep-alive\n\n: keep-alive\n\n")
    stream.close()


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any]) -> dict[str, Any]:
    sessions_config["emit_server_events"] = None  # auto: on while the owner is the only user
    return sessions_config


async def test_the_server_bus_gets_ids_and_statuses_only(
    api: Api, jp_serverapp: Any, sessions_app: Any
) -> None:
    assert (await api("GET", "sessions")).code == 200
    received: list[tuple[str, dict[str, Any]]] = []
    done = asyncio.Event()

    async def listener(logger: Any, schema_id: str, data: dict[str, Any]) -> None:
        received.append((schema_id, data))
        if data.get("status") == "done":
            done.set()

    for schema in (SESSION_STATUS_SCHEMA, TASK_PROGRESS_SCHEMA):
        jp_serverapp.event_logger.add_listener(schema_id=schema, listener=listener)
    owner = owner_key(sessions_app)
    sessions_app.hub.publish(
        Event(
            "session_status",
            owner,
            {"session_id": "s-1", "status": "RUNNING", "reason": "secret-ish reason", "at": "x"},
        )
    )
    gate = asyncio.Event()
    gate.set()
    await gated_task(sessions_app, owner, gate, steps=1)
    await asyncio.wait_for(done.wait(), DEADLINE)
    statuses = [d for s, d in received if s == SESSION_STATUS_SCHEMA]
    assert {"session_id": "s-1", "status": "RUNNING"} in statuses
    tasks = [d for s, d in received if s == TASK_PROGRESS_SCHEMA]
    assert [d["status"] for d in tasks] == ["pending", "running", "running", "done"]
    assert tasks[-1]["current"] == 1 and tasks[-1]["total"] == 1
    text = json.dumps(received)
    assert "secret-ish" not in text and owner not in text


async def test_the_server_bus_is_off_once_keypair_users_exist_or_when_configured_off(
    api: Api, sessions_app: Any
) -> None:
    assert (await api("GET", "sessions")).code == 200
    assert await sessions_app._emit_events() is True  # only the owner so far
    await new_keypair(api, "guest-of-the-server")
    sessions_app._single_user = None  # forget the cached answer (it is re-read every 10 s)
    assert await sessions_app._emit_events() is False
    sessions_app.emit_server_events = True
    assert await sessions_app._emit_events() is True
    sessions_app.emit_server_events = False
    assert await sessions_app._emit_events() is False
