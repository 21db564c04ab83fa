"""`jupyter sessions ...` as a user types it: the real `jupyter` command finds our executable on
PATH and runs it in its own process, which finds the test server through the environment."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from jupyter_sessions.cli import main
from jupyter_sessions.client import ENV_KEYPAIR, ENV_TOKEN, ENV_URL

BIN = Path(sys.executable).parent


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    sessions_config["docker_url"] = f"unix://{tmp_path}/no-docker.sock"
    return sessions_config


@dataclass
class Ran:
    code: int
    out: str
    err: str


@pytest.fixture
def jupyter(server_url: str, jp_serverapp: Any, tmp_path: Path) -> Any:
    """Run ``jupyter sessions ARGS`` (stdin optional) against the test server."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in (ENV_URL, ENV_TOKEN, ENV_KEYPAIR)
    }
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env[ENV_URL] = server_url
    env[ENV_TOKEN] = str(jp_serverapp.identity_provider.token)
    workdir = tmp_path / "cwd"
    workdir.mkdir()

    async def run(*args: str, stdin: str | None = None) -> Ran:
        process = await asyncio.create_subprocess_exec(
            str(BIN / "jupyter"),
            "sessions",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=workdir,
        )
        out, err = await process.communicate(stdin.encode() if stdin is not None else b"")
        assert process.returncode is not None
        return Ran(process.returncode, out.decode(), err.decode())

    run.workdir = workdir  # type: ignore[attr-defined]
    return run


async def test_a_session_from_the_terminal(jupyter: Any, tmp_path: Path) -> None:
    assert (await jupyter("list")).out.strip() == "no sessions"
    created = await jupyter("create", "local", "--name", "cli-session", "--env", "GREETING=hi")
    assert created.code == 0, created.err
    name, session_id, status = created.out.split()[:3]
    assert (name, status) == ("cli-session", "RUNNING")

    listed = await jupyter("list")
    assert listed.out.splitlines()[1].split()[:4] == ["cli-session", "RUNNING", "local", session_id]
    as_json = await jupyter("--json", "list", "cli-")
    assert [s["id"] for s in json.loads(as_json.out)["sessions"]] == [session_id]

    ran = await jupyter("exec", "cli-session", "import os, sys\nprint(os.environ['GREETING'])\n6*7")
    assert (ran.code, ran.out) == (0, "hi\n42\n"), ran.err
    piped = await jupyter("exec", "cli-session", stdin="import sys\nprint('oops', file=sys.stderr)")
    assert (piped.code, piped.out, piped.err) == (0, "", "oops\n")
    failed = await jupyter("exec", "cli-session", "raise SystemError('boom')")
    assert failed.code == 1 and "SystemError: boom" in failed.err

    local = tmp_path / "data"
    (local / "sub").mkdir(parents=True)
    (local / "sub" / "numbers.csv").write_text("1,2,3\n")
    uploaded = await jupyter("upload", "cli-session", str(local))
    assert uploaded.code == 0, uploaded.err
    assert "data/sub/numbers.csv" in uploaded.out
    read = await jupyter(
        "exec", "cli-session", "print(open('data/sub/numbers.csv').read(), end='')"
    )
    assert read.out == "1,2,3\n", read.err
    await jupyter("exec", "cli-session", "open('result.txt', 'w').write('computed\\n')")
    downloaded = await jupyter("download", "cli-session", "result.txt")
    assert downloaded.code == 0, downloaded.err
    assert (jupyter.workdir / "result.txt").read_text() == "computed\n"

    logs = await jupyter("logs", "cli-session", "--tail", "5")
    assert logs.code == 0 and logs.err == ""

    gone = await jupyter("destroy", "cli-session", "--wait")
    assert gone.code == 0 and gone.out.split() == ["cli-session", session_id, "TERMINATED"]


async def test_errors_are_one_line_and_exit_1(jupyter: Any) -> None:
    missing = await jupyter("exec", "no-such-session", "1")
    assert missing.code == 1
    assert missing.err == "jupyter-sessions exec: no session 'no-such-session'\n"
    bad = await jupyter("create", "local", "--name", "x")
    assert bad.code == 1 and bad.err.startswith("jupyter-sessions create: ")
    assert "Traceback" not in bad.err
    usage = await jupyter("create", "local", "--env", "NOEQUALS")
    assert usage.code == 1 and "--env takes NAME=VALUE" in usage.err
    unknown = await jupyter("frobnicate")
    assert unknown.code == 2 and "invalid choice" in unknown.err
    wrong = await jupyter("--token", "wrong", "list")
    assert wrong.code == 1 and "authentication" in wrong.err.lower()


def test_jupyter_lists_the_subcommand(monkeypatch: pytest.MonkeyPatch) -> None:
    from jupyter_core.command import list_subcommands

    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    assert "sessions" in list_subcommands()


def test_server_chores_need_no_server(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["image-tag"]) == 0
    assert capsys.readouterr().out.startswith("jupyter-sessions/kernel:")


async def test_ctrl_c_interrupts_the_run_in_the_session(
    jupyter: Any, server_url: str, jp_serverapp: Any
) -> None:
    import signal

    created = await jupyter("create", "local", "--name", "cli-ctrl-c")
    assert created.code == 0, created.err
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        ENV_URL: server_url,
        ENV_TOKEN: str(jp_serverapp.identity_provider.token),
    }
    process = await asyncio.create_subprocess_exec(
        str(BIN / "jupyter-sessions"),
        "exec",
        "cli-ctrl-c",
        "import time\nprint('started', flush=True)\ntime.sleep(3600)",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        # As from a terminal: a test run started in the background (`cmd &` in a script) ignores
        # SIGINT, and Python would not turn an ignored SIGINT into KeyboardInterrupt.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 120)
    assert line == b"started\n"
    process.send_signal(signal.SIGINT)
    assert await asyncio.wait_for(process.wait(), 120) == 130
    # The sleep was interrupted in the session: the next run finishes within its timeout.
    after = await jupyter("exec", "cli-ctrl-c", "print('after')", "--timeout", "120")
    assert (after.code, after.out) == (0, "after\n"), after.err
    assert (await jupyter("destroy", "cli-ctrl-c")).code == 0
