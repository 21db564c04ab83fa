"""Running code in a real session container: query, input, continue, interrupt, complete, stream."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError
from tornado.websocket import WebSocketClientConnection

from jupyter_sessions.kernels.runs import Console

from .conftest import Api

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_cleanup")]


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], kernel_image: str) -> dict[str, Any]:
    sessions_config["default_image"] = kernel_image
    return sessions_config


@pytest.fixture
def session_id(api: Api, jp_asyncio_loop: asyncio.AbstractEventLoop) -> str:
    """A RUNNING session (pytest-jupyter runs async tests but not async fixtures)."""
    answer = jp_asyncio_loop.run_until_complete(
        api("POST", "sessions", body={"name": "runner", "max_wait_seconds": 90})
    )
    assert answer.code == 201 and answer.body["status"] == "RUNNING", answer.body
    return str(answer.body["id"])


async def execute(api: Api, session: str, **body: Any) -> dict[str, Any]:
    answer = await api("POST", "sessions", session, "execute", body=body)
    assert answer.code == 200, answer.body
    return dict(answer.body)


async def run_to_end(api: Api, session: str, code: str, **options: Any) -> dict[str, Any]:
    """A query, continued until it finishes; the console of every answer joined."""
    result = await execute(api, session, mode="query", code=code, options=options)
    return await until_not_continued(api, session, result)


async def until_not_continued(api: Api, session: str, result: dict[str, Any]) -> dict[str, Any]:
    """Continue a run while it answers `continued`: on a busy machine the kernel may not reach
    `input()` (or the end) within one flush interval; the console of every answer is joined."""
    console = list(result["console"])
    while result["status"] == "continued":
        result = await execute(api, session, mode="continue", run_id=result["run_id"])
        console += result["console"]
    return {**result, "console": console}


def text_of(console: list[list[Any]], kind: str) -> str:
    return "".join(data for k, data in console if k == kind)


async def test_stdout_and_stderr_arrive_in_order(api: Api, session_id: str) -> None:
    # The kernel buffers each stream on its own; a flush publishes at once, in program order.
    code = (
        "import sys\nprint('a', flush=True)\nprint('b', file=sys.stderr, flush=True)\n"
        "print('c', flush=True)\n1 + 1"
    )
    result = await run_to_end(api, session_id, code)
    assert result["status"] == "finished" and result["exit_code"] == 0
    assert result["console"][:3] == [["stdout", "a\n"], ["stderr", "b\n"], ["stdout", "c\n"]]
    assert result["console"][3] == ["media", {"text/plain": "2"}]


async def test_an_exception_is_stderr_with_its_traceback_and_exit_code_1(
    api: Api, session_id: str
) -> None:
    result = await run_to_end(api, session_id, "def f():\n    1 / 0\nf()")
    assert result["status"] == "finished" and result["exit_code"] == 1
    stderr = text_of(result["console"], "stderr")
    assert "ZeroDivisionError" in stderr and "f()" in stderr
    assert "\x1b[" not in stderr  # no terminal colour codes


async def test_a_displayed_png_comes_back_as_media(api: Api, session_id: str) -> None:
    code = "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"
    result = await run_to_end(api, session_id, code)
    assert result["exit_code"] == 0, result
    media = [data for kind, data in result["console"] if kind == "media"]
    pngs = [m["image/png"] for m in media if "image/png" in m]
    assert pngs, result["console"]
    assert base64.b64decode(pngs[0]).startswith(b"\x89PNG\r\n\x1a\n")


async def test_input_round_trips_and_password_prompts_say_so(api: Api, session_id: str) -> None:
    result = await execute(
        api, session_id, mode="query", code="name = input('name? ')\nprint('hi', name)"
    )
    result = await until_not_continued(api, session_id, result)
    assert result["status"] == "waiting-input", result
    assert result["options"]["is_password"] is False
    assert ["stdout", "name? "] in result["console"]
    # Backend.AI's SDK spells it runId: both are accepted.
    result = await execute(api, session_id, mode="input", runId=result["run_id"], code="bob")
    result = await until_not_continued(api, session_id, result)
    assert result["status"] == "finished", result
    assert "hi bob" in text_of(result["console"], "stdout")

    secret = await execute(
        api,
        session_id,
        mode="query",
        code="import getpass\ns = getpass.getpass('pw: ')\nprint(len(s))",
    )
    secret = await until_not_continued(api, session_id, secret)
    assert secret["status"] == "waiting-input" and secret["options"]["is_password"] is True
    done = await execute(api, session_id, mode="input", run_id=secret["run_id"], code="hunter2")
    done = await until_not_continued(api, session_id, done)
    assert text_of(done["console"], "stdout").strip().endswith("7")


async def test_a_long_run_answers_continued_then_finished(api: Api, session_id: str) -> None:
    code = "import time\nprint('start', flush=True)\ntime.sleep(5)\nprint('done')"
    first = await execute(api, session_id, mode="query", code=code)
    assert first["status"] == "continued" and first["exit_code"] is None
    # The output so far comes with each `continued` answer (on a busy machine "start" may only
    # arrive with the second one).
    assert first["console"] in ([], [["stdout", "start\n"]]), first
    statuses, console = [], list(first["console"])
    result = first
    while result["status"] == "continued":
        result = await execute(api, session_id, mode="continue", run_id=first["run_id"])
        statuses.append(result["status"])
        console += result["console"]
        assert result["run_id"] == first["run_id"]
    assert statuses[-1] == "finished" and console == [["stdout", "start\n"], ["stdout", "done\n"]]
    # A finished run is forgotten once its output was taken.
    gone = await api(
        "POST",
        "sessions",
        session_id,
        "execute",
        body={"mode": "continue", "run_id": first["run_id"]},
    )
    assert gone.code == 404


async def test_interrupt_stops_an_endless_loop(api: Api, session_id: str) -> None:
    first = await execute(
        api,
        session_id,
        mode="query",
        code="print('looping', flush=True)\nwhile True: pass",
        options={"flush_interval": 0.3},
    )
    assert first["status"] == "continued"
    # Interrupt once the loop runs (an interrupt before the cell starts would miss it).
    seen = text_of(first["console"], "stdout")
    while "looping" not in seen:
        more = await execute(api, session_id, mode="continue", run_id=first["run_id"])
        assert more["status"] == "continued", more
        seen += text_of(more["console"], "stdout")
    assert (await api("POST", "sessions", session_id, "interrupt")).code == 200
    result = await until_not_continued(
        api, session_id, await execute(api, session_id, mode="continue", run_id=first["run_id"])
    )
    assert result["status"] == "finished", result
    assert result["exit_code"] == 1
    assert "KeyboardInterrupt" in text_of(result["console"], "stderr")
    after = await run_to_end(api, session_id, "6 * 7")
    assert after["console"] == [["media", {"text/plain": "42"}]]


async def test_a_run_over_its_timeout_answers_exec_timeout(api: Api, session_id: str) -> None:
    result = await execute(
        api, session_id, mode="query", code="import time\ntime.sleep(60)", options={"timeout": 1}
    )
    while result["status"] == "continued":
        result = await execute(api, session_id, mode="continue", run_id=result["run_id"])
    assert result["status"] == "exec-timeout" and result["exit_code"] == 1
    after = await run_to_end(api, session_id, "'still usable'")
    assert after["console"] == [["media", {"text/plain": "'still usable'"}]]


async def test_completion_offers_os_for_import_o(api: Api, session_id: str) -> None:
    answer = await api(
        "POST", "sessions", session_id, "complete", body={"code": "import o", "cursor_pos": 8}
    )
    assert answer.code == 200, answer.body
    assert "os" in answer.body["matches"]
    assert answer.body["cursor_start"] == 7 and answer.body["cursor_end"] == 8


async def test_runs_are_served_in_order_and_unpolled_output_waits(
    api: Api, session_id: str
) -> None:
    slow = await execute(
        api,
        session_id,
        mode="query",
        code="import time\ntime.sleep(1)\nprint('first')",
        options={"flush_interval": 0.05},
    )
    assert slow["status"] == "continued"
    second = await run_to_end(api, session_id, "print('second')")
    assert second["console"] == [["stdout", "second\n"]]  # nothing of the first run leaks in
    rest = await execute(api, session_id, mode="continue", run_id=slow["run_id"])
    assert rest["status"] == "finished" and rest["console"] == [["stdout", "first\n"]]


async def test_bad_requests_say_why(api: Api, session_id: str, sessions_app: Any) -> None:
    cases = [
        ({"mode": "shout", "code": "1"}, 400, "mode"),
        ({"mode": "continue"}, 400, "run_id"),
        ({"mode": "input", "code": "x"}, 400, "run_id"),
        ({"mode": "continue", "run_id": "nope"}, 404, "nope"),
        ({"mode": "query", "code": 5}, 400, "code"),
        ({"mode": "query", "code": "1", "options": {"timeout": -1}}, 400, "timeout"),
        ({"mode": "batch", "options": {}}, 400, "options"),
    ]
    for body, status, needle in cases:
        answer = await api("POST", "sessions", session_id, "execute", body=body)
        assert answer.code == status, (body, answer.body)
        assert needle in answer.body["message"], (body, answer.body)
    idle = await execute(api, session_id, mode="query", code="1")
    not_waiting = await api(
        "POST",
        "sessions",
        session_id,
        "execute",
        body={"mode": "input", "run_id": idle["run_id"], "code": "x"},
    )
    assert not_waiting.code in (404, 409)
    bad_complete = await api(
        "POST", "sessions", session_id, "complete", body={"code": "abc", "cursor_pos": 10}
    )
    assert bad_complete.code == 400

    await sessions_app.scheduler.stop()
    queued = await api("POST", "sessions", body={"name": "queued", "enqueue_only": True})
    assert queued.body["status"] == "PENDING"
    not_running = await api(
        "POST", "sessions", "queued", "execute", body={"mode": "query", "code": "1"}
    )
    assert not_running.code == 409 and "PENDING" in not_running.body["message"]


async def receive(ws: WebSocketClientConnection) -> Any:
    message = await asyncio.wait_for(ws.read_message(), 60)
    assert message is not None, "the server closed the socket"
    return json.loads(message)


async def test_the_stream_forwards_items_as_they_happen(jp_ws_fetch: Any, session_id: str) -> None:
    ws = await jp_ws_fetch("jupyter-sessions", "api", "sessions", session_id, "execute", "stream")
    code = "import time\nfor i in range(3):\n    print(i, flush=True)\n    time.sleep(0.3)\n"
    await ws.write_message(json.dumps({"mode": "query", "code": code}))
    frames = []
    while True:
        frame = await receive(ws)
        frames.append(frame)
        if isinstance(frame, dict):
            break
    items, final = frames[:-1], frames[-1]
    assert items == [["stdout", "0\n"], ["stdout", "1\n"], ["stdout", "2\n"]]
    assert final["status"] == "finished" and final["exit_code"] == 0 and final["console"] == []
    assert await ws.read_message() is None  # closed after the result


async def test_the_stream_takes_input_frames(jp_ws_fetch: Any, session_id: str) -> None:
    ws = await jp_ws_fetch("jupyter-sessions", "api", "sessions", session_id, "execute", "stream")
    await ws.write_message(json.dumps({"mode": "query", "code": "print(input('? ') * 2)"}))
    assert await receive(ws) == ["stdout", "? "]
    waiting = await receive(ws)
    assert waiting["status"] == "waiting-input"
    await ws.write_message(json.dumps({"mode": "input", "code": "ab"}))
    assert await receive(ws) == ["stdout", "abab\n"]
    assert (await receive(ws))["status"] == "finished"


async def test_closing_the_stream_interrupts_and_the_session_stays_usable(
    jp_ws_fetch: Any, api: Api, session_id: str
) -> None:
    ws = await jp_ws_fetch("jupyter-sessions", "api", "sessions", session_id, "execute", "stream")
    await ws.write_message(
        json.dumps({"mode": "query", "code": "print('looping', flush=True)\nwhile True: pass"})
    )
    assert await receive(ws) == ["stdout", "looping\n"]
    ws.close()
    after = await run_to_end(api, session_id, "'alive'")
    assert after["status"] == "finished"
    assert after["console"] == [["media", {"text/plain": "'alive'"}]]


async def test_the_stream_needs_authentication(jp_ws_fetch: Any, session_id: str) -> None:
    with pytest.raises(HTTPClientError) as refused:
        await jp_ws_fetch(
            "jupyter-sessions",
            "api",
            "sessions",
            session_id,
            "execute",
            "stream",
            headers={"Authorization": "token wrong"},
        )
    assert refused.value.code in (401, 403)


def test_unpolled_output_is_bounded() -> None:
    console = Console(max_bytes=100)
    for i in range(50):
        console.add("stdout", f"line {i:03d}\n")
        console.add("stderr", "e\n")
    items = console.take()
    assert items[0][0] == "log" and "dropped" in items[0][1]
    assert sum(len(data) for kind, data in items[1:]) <= 100
    assert items[-1] == ["stderr", "e\n"]
    assert console.take() == []


def test_one_growing_stream_is_bounded_too() -> None:
    console = Console(max_bytes=100)
    for i in range(1000):
        console.add("stdout", f"line {i:03d}\n")
    items = console.take()
    assert items[0][0] == "log" and "dropped" in items[0][1]
    assert len(items) == 2 and len(items[1][1]) <= 100
    assert items[1][1].endswith("line 999\n")


async def batch_to_end(api: Api, session: str, **options: Any) -> list[dict[str, Any]]:
    """Every answer of a batch run, continued until it finishes."""
    answers = [await execute(api, session, mode="batch", options=options)]
    while answers[-1]["status"] not in ("finished", "exec-timeout"):
        answers.append(await execute(api, session, mode="continue", run_id=answers[0]["run_id"]))
    return answers


async def test_batch_runs_clean_build_exec_in_the_work_directory(api: Api, session_id: str) -> None:
    answers = await batch_to_end(
        api,
        session_id,
        clean="rm -f built.txt; echo cleaned",
        build="echo artefact > built.txt; echo built",
        exec='cat built.txt; pwd; echo "$0" >&2; exit 3',
    )
    statuses = [a["status"] for a in answers if a["status"] != "continued"]
    assert statuses == ["clean-finished", "build-finished", "finished"]
    assert answers[-1]["exit_code"] == 3
    console = [item for a in answers for item in a["console"]]
    stdout = text_of(console, "stdout")
    assert stdout.split() == ["cleaned", "built", "artefact", "/home/work"]
    assert text_of(console, "stderr").strip() == "sh"


async def test_a_failed_build_skips_exec_and_keeps_its_exit_code(api: Api, session_id: str) -> None:
    answers = await batch_to_end(api, session_id, build="echo oops >&2; exit 2", exec="echo never")
    assert answers[-1]["status"] == "finished" and answers[-1]["exit_code"] == 2
    console = [item for a in answers for item in a["console"]]
    assert "never" not in text_of(console, "stdout")
    assert "oops" in text_of(console, "stderr")


async def test_a_batch_command_over_its_timeout_is_killed(api: Api, session_id: str) -> None:
    answers = await batch_to_end(api, session_id, exec="sleep 60", timeout=1)
    assert answers[-1]["status"] == "exec-timeout" and answers[-1]["exit_code"] != 0
    ps = await batch_to_end(api, session_id, exec="ps -eo args")
    assert "sleep 60" not in text_of(ps[-1]["console"], "stdout")  # the whole group was killed


async def test_usage_reports_what_the_kernel_uses(api: Api, session_id: str) -> None:
    before = await api("GET", "sessions", session_id, "usage")
    assert before.code == 200, before.body
    assert before.body["session_id"] == session_id
    [kernel] = before.body["kernels"]
    assert kernel["name"] == "main1" and kernel["status"] == "RUNNING"
    assert kernel["usage"]["mem_limit"] == 2**30  # the default resources: 1 GiB, no swap
    await run_to_end(api, session_id, "block = bytearray(200 * 2**20)\nsum(range(10**7))")
    after = (await api("GET", "sessions", session_id, "usage")).body["kernels"][0]["usage"]
    assert after["mem_bytes"] >= 200 * 2**20
    assert after["cpu_seconds"] > kernel["usage"]["cpu_seconds"]
    assert after["pids"] >= 1
