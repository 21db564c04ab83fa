"""Kernel logs on the real engine: tail, follow live (a streamed response that ends with the
container), kept across a restart and still readable after destroy."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from jupyter_sessions.logstore import tail_lines

from .conftest import Api
from .test_events import DEADLINE, StreamOpener, open_stream  # noqa: F401 - fixture
from .test_execute_docker import run_to_end
from .test_identity import keypair_auth, new_keypair

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_cleanup")]

#: Writes straight to the kernel process's stdout: the container's log, not the notebook's.
SAY = "import os\nos.write(1, b'{text}\\n')"


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], kernel_image: str) -> dict[str, Any]:
    sessions_config["default_image"] = kernel_image
    sessions_config["usage_sample_interval"] = 0  # no sampler: nothing else execs in here
    return sessions_config


def test_tail_lines_keeps_the_last_lines() -> None:
    assert tail_lines("a\nb\nc\n", 2) == "b\nc\n"
    assert tail_lines("a\nb\nc", None) == "a\nb\nc"


async def wait_for_status(api: Api, ref: str, status: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE * 2
    while True:
        answer = await api("GET", "sessions", ref)
        if answer.body["status"] == status:
            return dict(answer.body)
        assert loop.time() < deadline, answer.body
        await asyncio.sleep(0.2)


async def test_logs_follow_live_and_remain_after_destroy(
    api: Api,
    open_stream: StreamOpener,  # noqa: F811
) -> None:
    answer = await api("POST", "sessions", body={"name": "chatty", "max_wait_seconds": 90})
    assert answer.code == 201 and answer.body["status"] == "RUNNING", answer.body
    session = answer.body["id"]
    result = await run_to_end(api, session, SAY.format(text="before-follow"))
    assert result["exit_code"] == 0, result

    logs = await api("GET", "sessions", session, "logs")
    assert logs.code == 200 and "before-follow" in logs.body
    stream = await open_stream(f"sessions/{session}/logs", follow="true", tail="1")
    assert stream.status == 200 and stream.headers["content-type"].startswith("text/plain")
    await stream.read_until("before-follow")
    await run_to_end(api, session, SAY.format(text="said-while-followed"))
    await stream.read_until("said-while-followed")

    # Another user's follow is a 404, like any other route on this session.
    second = keypair_auth(await new_keypair(api, "log-reader"))
    assert (await open_stream(f"sessions/{session}/logs", headers=second, follow="1")).status == 404

    # The stream ends when the container does (a restart replaces it); what the old container
    # said is kept, and everything stays readable after destroy.
    assert (await api("POST", "sessions", session, "restart")).code == 202
    await stream.read_to_end(timeout=DEADLINE * 2)
    stream.close()
    await wait_for_status(api, session, "RUNNING")
    await run_to_end(api, session, SAY.format(text="after-restart"))
    assert (await api("DELETE", "sessions", session)).code == 202
    await wait_for_status(api, session, "TERMINATED")
    after = await api("GET", "sessions", session, "logs")
    assert after.code == 200
    for said in ("before-follow", "said-while-followed", "after-restart"):
        assert said in after.body, (said, after.body)
    assert after.body.index("said-while-followed") < after.body.index("after-restart")
    tail = await api("GET", "sessions", session, "logs", tail="1")
    assert tail.body.strip().endswith("after-restart") and "before-follow" not in tail.body
    # Following an ended session answers what was kept, and ends.
    ended = await open_stream(f"sessions/{session}/logs", follow="true")
    assert "after-restart" in await ended.read_to_end()
    assert (await api("GET", "sessions", session, "logs", kernel="sub9")).code == 404
