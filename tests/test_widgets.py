"""The sessions widget, driven through its ipywidgets models (no browser): its state follows a
session through its life. The widget uses the blocking client, so each step runs in a thread while
the test server answers on this loop; sessions run on the local agent."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from jupyter_sessions.client import ServerInfo, SessionsClient
from jupyter_sessions.widgets import SessionsWidget

R = TypeVar("R")


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    sessions_config["docker_url"] = f"unix://{tmp_path}/no-docker.sock"
    return sessions_config


@pytest.fixture
def client(server_url: str, jp_serverapp: Any) -> Any:
    info = ServerInfo(server_url, str(jp_serverapp.identity_provider.token))
    with SessionsClient(server=info) as blocking:
        yield blocking


async def off_loop(step: Callable[[], R]) -> R:
    return await asyncio.to_thread(step)


async def until(check: Callable[[], bool], what: str, deadline: float = 120.0) -> None:
    """Poll a model until ``check`` holds (a generous deadline, never a timed assertion)."""
    end = time.monotonic() + deadline
    while not check():
        assert time.monotonic() < end, f"never: {what}"
        await asyncio.sleep(0.1)


async def test_the_widget_follows_a_session_through_its_life(client: SessionsClient) -> None:
    widget = await off_loop(lambda: SessionsWidget(client, live=False))
    assert widget.table.options == ()
    assert widget.detail.layout.display == "none"

    await off_loop(widget.form.load_choices)
    assert widget.form.image.options == ("local",) and widget.form.image.value == "local"

    # The form: a bad name answers with the server's message, in the form, and creates nothing.
    widget.form.name.value = "x"
    await off_loop(widget.form.create_button.click)
    assert (
        "name" in widget.form.message.value and "color:var(--jp-error" in widget.form.message.value
    )
    assert widget.table.options == ()

    widget.form.name.value = "widget-session"
    widget.form.cpu.value = 1
    widget.form.mem.value = "1g"
    await off_loop(widget.form.create_button.click)
    assert "widget-session is RUNNING" in widget.form.message.value, widget.form.message.value
    # Created: listed, selected, and the detail shows it.
    [(label, session_id)] = widget.table.options
    assert label.split("  ·  ") == ["widget-session", "RUNNING", "local"]
    assert widget.table.value == session_id
    assert widget.detail.layout.display is None
    assert "widget-session" in widget.detail.title.value and "RUNNING" in widget.detail.title.value
    assert widget.detail.session is not None
    assert widget.detail.session["resources"]["cpu"] in (1, "1", 1.0)

    # The logs tab: the kernel's own log, as text.
    expected_log = await off_loop(lambda: client.logs(session_id, tail=200))
    # The files tab (open first): upload through the FileUpload model, browse into a folder.
    files = widget.detail.files
    assert files.files.options == () and "0 entries" in files.message.value
    upload = {
        "name": "hello.txt",
        "type": "text/plain",
        "size": 6,
        "content": memoryview(b"hello\n"),
        "last_modified": datetime.now(UTC),
    }
    await off_loop(lambda: client.make_dir(session_id, "folder"))
    await off_loop(lambda: setattr(files.upload, "value", (upload,)))
    assert "uploaded 1 file(s)" in files.message.value, files.message.value
    assert [label for label, _ in files.files.options] == ["folder/", "hello.txt  (6 B)"]
    files.files.value = files.files.options[0][1]
    await off_loop(files.open_button.click)
    assert files.path.value == "folder" and files.files.options == ()
    await off_loop(lambda: setattr(files.upload, "value", (upload,)))
    assert [label for label, _ in files.files.options] == ["hello.txt  (6 B)"]
    await off_loop(files.up_button.click)
    assert files.path.value == "" and len(files.files.options) == 2
    listed = await off_loop(lambda: client.list_files(session_id, "folder"))
    assert [f["name"] for f in listed["files"]] == ["hello.txt"]

    # Changing tab loads it (a request: off the loop, like every step that reaches the server).
    await off_loop(lambda: setattr(widget.detail.tabs, "selected_index", TAB_LOGS))
    assert widget.detail.logs.text.value == expected_log
    assert widget.detail.logs.message.value == ""

    # Live: the widget's own thread sees what happens elsewhere (here: a destroy by the client).
    widget.interval = 0.2
    widget.live.value = True
    assert widget._thread is not None and widget._thread.is_alive()
    await off_loop(lambda: client.destroy_session(session_id))
    await until(
        lambda: widget.table.options and "TERMINATED" in widget.table.options[0][0],
        "the list shows TERMINATED",
    )
    await until(lambda: "TERMINATED" in widget.detail.title.value, "the detail shows TERMINATED")
    assert widget.detail.destroy_button.disabled
    widget.live.value = False
    await until(lambda: widget._thread is not None and not widget._thread.is_alive(), "stopped")

    # Restart from TERMINATED makes a new session (restarted_from): the list grows.
    await off_loop(widget.detail.restart_button.click)
    assert "widget-session is PENDING" in widget.detail.message.value, widget.detail.message.value
    await off_loop(widget.refresh)
    assert len(widget.table.options) == 2
    rerun = next(s for s in widget.sessions.values() if s.get("restarted_from") == session_id)
    await off_loop(lambda: client.wait_for(rerun["id"], timeout=120))
    await off_loop(lambda: widget.select(rerun["id"]))
    await off_loop(widget.refresh)
    assert "RUNNING" in widget.detail.title.value
    await off_loop(widget.detail.destroy_button.click)
    assert (
        "TERMINATING" in widget.detail.message.value or "TERMINATED" in widget.detail.message.value
    )
    await off_loop(lambda: client.wait_for(rerun["id"], {"TERMINATED"}, timeout=120))
    await off_loop(widget.refresh)
    statuses = sorted(label.split("  ·  ")[1] for label, _ in widget.table.options)
    assert statuses == ["TERMINATED", "TERMINATED"]
    widget.close()


async def test_a_server_error_shows_in_the_pane(client: SessionsClient) -> None:
    """A pane whose action fails shows the server's message and keeps working."""
    created = await off_loop(lambda: client.create_session(name="pane-errors", max_wait_seconds=60))
    widget = await off_loop(lambda: SessionsWidget(client, live=False))
    await off_loop(widget.refresh)
    await off_loop(lambda: widget.select("pane-errors"))
    convert = widget.detail.commits
    convert.image_name.value = ""
    await off_loop(convert.convert_button.click)
    assert "name the image first" in convert.message.value
    # The local agent has no images to commit to: a clear error from the server, in the pane.
    await off_loop(convert.commit_button.click)
    assert "color:var(--jp-error" in convert.message.value
    await off_loop(lambda: client.destroy_session(created["id"]))
    widget.close()


TAB_LOGS = 2
