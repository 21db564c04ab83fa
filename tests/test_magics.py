"""The magics: nbclient runs notebooks whose cells use ``%session`` and ``%%session`` against the
test server. The notebook's kernel is a local ipykernel that finds the server through the
environment variables set here; the sessions run on the local agent."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import nbformat
import pytest
from IPython.core.error import UsageError
from IPython.testing.globalipapp import get_ipython
from jupyter_client.manager import AsyncKernelManager
from nbclient import NotebookClient

from jupyter_sessions.client import ENV_KEYPAIR, ENV_TOKEN, ENV_URL, AsyncSessionsClient, ServerInfo


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    sessions_config["docker_url"] = f"unix://{tmp_path}/no-docker.sock"
    return sessions_config


@pytest.fixture
def server_env(server_url: str, jp_serverapp: Any, monkeypatch: pytest.MonkeyPatch) -> ServerInfo:
    """The variables a kernel started now inherits, naming the test server."""
    token = str(jp_serverapp.identity_provider.token)
    monkeypatch.setenv(ENV_URL, server_url)
    monkeypatch.setenv(ENV_TOKEN, token)
    monkeypatch.delenv(ENV_KEYPAIR, raising=False)
    return ServerInfo(server_url, token)


def notebook(*cells: str) -> Any:
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c) for c in cells])


def text_of(cell: Any, stream: str = "stdout") -> str:
    return "".join(o.get("text", "") for o in cell.outputs if o.get("name") == stream)


def error_of(cell: Any) -> tuple[str, str] | None:
    for output in cell.outputs:
        if output.output_type == "error":
            return output.ename, output.evalue
    return None


async def run_notebook(nb: Any, tmp_path: Path, allow_errors: bool = False) -> Any:
    client = NotebookClient(
        nb,
        kernel_name="python3",
        timeout=180,
        allow_errors=allow_errors,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    await client.async_execute()
    return nb


async def test_a_notebook_runs_cells_in_a_session(server_env: ServerInfo, tmp_path: Path) -> None:
    (tmp_path / "local.txt").write_text("from the notebook's side\n")
    nb = notebook(
        "%load_ext jupyter_sessions",
        "%session create local --name nb-session --cpu 1 --mem 1g",
        "%%session nb-session\nimport os\nprint('remote cwd', os.getcwd())\nvalue = 6 * 7\nvalue",
        # State persists between cells: the same kernel in the session.
        "%%session nb-session\nfrom IPython.display import HTML\nprint(value + 1)\n"
        "display(HTML('<b>bold</b>'))",
        "%sessions",
        "%session logs nb-session --tail 5",
        "%session destroy nb-session",
    )
    await run_notebook(nb, tmp_path)
    cells = nb.cells
    assert "session nb-session (" in text_of(cells[1]) and "is RUNNING" in text_of(cells[1])
    assert "remote cwd" in text_of(cells[2])
    # The remote kernel's cwd is the session's work directory, not the notebook's folder.
    assert "/jupyter_sessions/local/" in text_of(cells[2])
    assert any(o.get("data", {}).get("text/plain") == "42" for o in cells[2].outputs)
    assert text_of(cells[3]) == "43\n"
    assert any(o.get("data", {}).get("text/html") == "<b>bold</b>" for o in cells[3].outputs)
    table = text_of(cells[4]).splitlines()
    assert table[0].split()[:2] == ["NAME", "STATUS"]
    assert table[1].split()[:3] == ["nb-session", "RUNNING", "local"]
    assert "nb-session is TERMINATING" in text_of(cells[6]) or "TERMINATED" in text_of(cells[6])


async def test_remote_errors_and_mistakes_are_short(server_env: ServerInfo, tmp_path: Path) -> None:
    nb = notebook(
        "%load_ext jupyter_sessions",
        "%%session no-such-session\n1",
        "%session create local --name err-session",
        "%%session err-session\nprint('before')\n1/0",
        "%session frobnicate",
        "%session",
        "%%session\nprint(1)",
        "%session create",
        "%session destroy err-session",
    )
    await run_notebook(nb, tmp_path, allow_errors=True)
    cells = nb.cells
    # IPython shows a UsageError as one line on stderr, with no traceback.
    assert text_of(cells[1], "stderr") == "UsageError: no session 'no-such-session'\n"
    assert text_of(cells[3]) == "before\n"
    assert "ZeroDivisionError" in text_of(cells[3], "stderr")
    assert error_of(cells[3]) == (
        "CellFailed",
        "the cell failed (exit code 1) in session err-session",
    )
    # Only the session's traceback is shown (on stderr), never the magic's own frames.
    tracebacks = [o.traceback for o in cells[3].outputs if o.output_type == "error"]
    assert tracebacks == [["CellFailed: the cell failed (exit code 1) in session err-session"]]
    for index, words in (
        (4, "invalid choice: 'frobnicate'"),
        (5, "usage: %session create|"),
        (6, "usage: %%session NAME"),
        (7, "usage: %session create IMAGE"),
    ):
        message = text_of(cells[index], "stderr")
        assert message.startswith("UsageError: ") and words in message, cells[index].outputs
        assert "Traceback" not in message
    assert error_of(cells[8]) is None


async def test_interrupting_the_notebook_interrupts_the_session(
    server_env: ServerInfo, tmp_path: Path
) -> None:
    """Ctrl-C in the notebook (a kernel interrupt) stops the cell running in the session, and the
    session stays usable."""
    manager = AsyncKernelManager(kernel_name="python3")
    await manager.start_kernel(cwd=str(tmp_path))
    kc = manager.client()
    kc.start_channels()
    try:
        await kc.wait_for_ready(timeout=60)
        setup = "%load_ext jupyter_sessions\n%session create local --name ctrl-c"
        reply = await kc.execute_interactive(setup, timeout=120)
        assert reply["content"]["status"] == "ok", reply

        started = asyncio.Event()

        def watch(message: dict[str, Any]) -> None:
            if "started" in message["content"].get("text", ""):
                started.set()

        code = "%%session ctrl-c\nimport time\nprint('started', flush=True)\ntime.sleep(3600)"
        running = asyncio.ensure_future(
            kc.execute_interactive(code, output_hook=watch, timeout=300)
        )
        await asyncio.wait_for(started.wait(), 120)
        await manager.interrupt_kernel()
        reply = await running
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"

        async with AsyncSessionsClient(server=server_env) as client:
            # The sleep was interrupted in the session: the next run finishes (a sleep still
            # running would make it answer exec-timeout).
            after = await client.execute("ctrl-c", "print('after')", options={"timeout": 120})
            assert after["status"] == "finished" and after["console"] == [["stdout", "after\n"]]
            await client.destroy_session("ctrl-c")
    finally:
        kc.stop_channels()
        await manager.shutdown_kernel(now=True)


def test_usage_errors_need_no_server(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mistakes in the line are caught before any server is looked for."""
    monkeypatch.setenv(ENV_URL, "http://127.0.0.1:9/")
    shell = get_ipython()
    shell.run_line_magic("load_ext", "jupyter_sessions")
    with pytest.raises(UsageError, match="invalid choice"):
        shell.run_line_magic("session", "nope")
    with pytest.raises(UsageError, match="argument --cpu"):
        shell.run_line_magic("session", "create local --cpu many")
    with pytest.raises(UsageError, match="No closing quotation"):
        shell.run_line_magic("session", "create 'local")
    with pytest.raises(UsageError, match="usage: %sessions"):
        shell.run_line_magic("sessions", "a b")
    # The server is asked only now, and its absence is one line too.
    with pytest.raises(UsageError, match="did not answer"):
        shell.run_line_magic("sessions", "")


async def test_files_logs_services_and_commit_from_a_notebook(
    server_env: ServerInfo, tmp_path: Path
) -> None:
    folder = tmp_path / "notebooks"  # the notebook's folder (tmp_path/data is the server's)
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "table.csv").write_text("a,b\n1,2\n")
    nb = notebook(
        "%load_ext jupyter_sessions",
        "%session create local --name nb-files",
        "%session upload nb-files data",
        "%session ls nb-files data",
        "%%session nb-files\nprint(open('data/table.csv').read(), end='')\n"
        "open('made.txt', 'w').write('made remotely\\n')",
        "%session download nb-files made.txt fetched.txt",
        "print(open('fetched.txt').read(), end='')",
        "%session services nb-files",
        "%session commit nb-files",
        "%session destroy nb-files",
    )
    await run_notebook(nb, folder, allow_errors=True)
    cells = nb.cells
    assert "data/table.csv" in text_of(cells[2]) and "created" in text_of(cells[2])
    assert text_of(cells[3]).splitlines()[1].split()[:2] == ["table.csv", "file"]
    assert text_of(cells[4]) == "a,b\n1,2\n"
    assert "saved made.txt to fetched.txt" in text_of(cells[5])
    assert text_of(cells[6]) == "made remotely\n"
    assert text_of(cells[7], "stderr") == "" and text_of(cells[7])
    # The local agent has no images: the server's reason, in one line.
    commit = text_of(cells[8], "stderr")
    assert commit.startswith("UsageError: ") and "Traceback" not in commit
    assert "is TERMINATING" in text_of(cells[9]) or "is TERMINATED" in text_of(cells[9])
