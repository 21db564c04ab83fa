"""JupyterLab running inside a session, loaded through the proxy in a real browser (Chromium).

The browser first logs in to the Jupyter server itself, so it holds that server's cookies; the
app on its own origin (``<session>-jupyter.localhost``) must not be able to read them, nor the
proxy's HttpOnly cookie. Then a notebook's cell runs on a kernel inside the session container.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from .conftest import Api

pytestmark = [pytest.mark.docker, pytest.mark.browser, pytest.mark.usefixtures("docker_cleanup")]

NOTEBOOK = {
    "cells": [
        {
            "cell_type": "code",
            "execution_count": None,
            "id": "c0",
            "metadata": {},
            "outputs": [],
            "source": ["import socket\n", "print('answer', 6 * 7, socket.gethostname())"],
        }
    ],
    "metadata": {
        "kernelspec": {
            "display_name": "Python 3 (ipykernel)",
            "language": "python",
            "name": "python3",
        }
    },
    "nbformat": 4,
    "nbformat_minor": 5,
}


def watch_kernel_socket(page: Any) -> asyncio.Future[str]:
    """Resolves with the URL of the page's first kernel WebSocket once a kernel_info_reply came
    back on it: the notebook then has its kernel, connected (JupyterLab asks on connecting)."""
    ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_websocket(socket: Any) -> None:
        if "/api/kernels/" not in socket.url or "/channels" not in socket.url:
            return

        def on_frame(payload: str | bytes) -> None:
            data = payload if isinstance(payload, bytes) else payload.encode()
            if b"kernel_info_reply" in data and not ready.done():
                ready.set_result(socket.url)

        socket.on("framereceived", on_frame)

    page.on("websocket", on_websocket)
    return ready


async def start_service(jp_fetch: Any, session_id: str, name: str) -> dict[str, Any]:
    """Start a service; a Jupyter server takes a while to answer on a busy machine, so the
    client waits long."""
    response = await jp_fetch(
        "jupyter-sessions",
        "api",
        "sessions",
        session_id,
        "services",
        name,
        "start",
        method="POST",
        body=b"{}",
        request_timeout=300,
    )
    return dict(json.loads(response.body))


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], kernel_image: str) -> dict[str, Any]:
    sessions_config["default_image"] = kernel_image
    return sessions_config


async def test_jupyterlab_in_a_session_loads_through_the_proxy_and_runs_a_cell(
    api: Api,
    jp_fetch: Any,
    browser: Any,
    server_url: str,
    artifacts_dir: Path,
    sessions_app: Any,
) -> None:
    created = await api("POST", "sessions", body={"name": "lab-inside", "max_wait_seconds": 120})
    assert created.code == 201 and created.body["status"] == "RUNNING", created.body
    session_id = created.body["id"]
    code = f"open('check.ipynb', 'w').write({json.dumps(NOTEBOOK)!r})"
    wrote = await api(
        "POST", "sessions", session_id, "execute", body={"mode": "query", "code": code}
    )
    assert wrote.code == 200 and wrote.body["exit_code"] == 0, wrote.body
    started = await start_service(jp_fetch, session_id, "jupyter")
    url = started["url"]
    assert started["service"]["status"] == "running"
    assert f"{session_id}-jupyter.localhost" in url

    context = await browser.new_context()
    page = await context.new_page()
    # Log in to the Jupyter server itself: the browser now holds its cookies.
    token = sessions_app.serverapp.identity_provider.token
    await page.goto(f"{server_url}login?token={token}")
    server_cookies = [(c["name"], c["value"]) for c in await context.cookies(server_url)]
    assert any(name.startswith("username-") for name, _ in server_cookies), server_cookies

    await page.goto(url, timeout=180_000)
    assert "jsess-token" not in page.url  # the token left the URL for a cookie
    await page.wait_for_selector("#jp-main-dock-panel", timeout=180_000)
    kernel_socket = watch_kernel_socket(page)
    await page.goto(url.split("?")[0] + "lab/tree/check.ipynb", timeout=180_000)
    await page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=180_000)
    # The app's JavaScript sees neither the Jupyter server's cookies nor the proxy's cookie.
    visible = await page.evaluate("document.cookie")
    for name, value in server_cookies:
        assert f"{name}={value}" not in visible, (name, visible)
    assert "jsess-proxy" not in visible
    proxy_cookies = [c for c in await context.cookies(url) if c["name"] == "jsess-proxy"]
    assert proxy_cookies and proxy_cookies[0]["httpOnly"]

    # Run the cell on the notebook's kernel, which runs inside the session container. The
    # toolbar's execution indicator says "idle" from the start, before the notebook has a kernel
    # at all (a cell run then is dropped silently): wait for the kernel's answer on its WebSocket,
    # through the proxy, instead.
    kernel_url = await asyncio.wait_for(kernel_socket, timeout=180)
    assert f"{session_id}-jupyter.localhost" in kernel_url, kernel_url
    await page.wait_for_selector(
        ".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=180_000
    )
    await page.click(".jp-Notebook .jp-Cell .jp-InputArea-editor")
    await page.keyboard.press("Shift+Enter")
    output = page.locator(".jp-OutputArea-output", has_text="answer 42")
    await output.first.wait_for(timeout=120_000)
    text = await output.first.inner_text()
    container_host = created.body["kernels"][0]["container_id"][:12]
    assert "answer 42" in text and container_host in text, text
    await page.screenshot(path=str(artifacts_dir / "jupyterlab-in-session.png"))
    assert (artifacts_dir / "jupyterlab-in-session.png").stat().st_size > 10_000
    await context.close()


async def test_the_terminal_service_is_a_shell_in_the_session_through_the_proxy(
    api: Api, jp_fetch: Any, browser: Any, artifacts_dir: Path
) -> None:
    """The image's `terminal` service: a terminal page whose keystrokes and output travel over
    the proxied WebSocket; the shell runs in the session's container as the image's user."""
    created = await api("POST", "sessions", body={"name": "shell", "max_wait_seconds": 120})
    assert created.code == 201 and created.body["status"] == "RUNNING", created.body
    session_id = created.body["id"]
    catalog = await api("GET", "sessions", session_id, "services")
    assert catalog.code == 200, catalog.body
    assert "terminal" in {s["name"] for s in catalog.body["services"]}, catalog.body
    url = (await start_service(jp_fetch, session_id, "terminal"))["url"]
    assert f"{session_id}-terminal.localhost" in url

    context = await browser.new_context()
    page = await context.new_page()
    # What the shell sends back, as terminado's frames on the page's WebSocket (xterm.js draws
    # on a canvas, so the screen's text is not in the DOM).
    received: list[str] = []
    prompt: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    def on_websocket(socket: Any) -> None:
        if "/terminals/websocket/" not in socket.url:
            return
        assert f"{session_id}-terminal.localhost" in socket.url, socket.url

        def on_frame(payload: str | bytes) -> None:
            text = payload if isinstance(payload, str) else payload.decode(errors="replace")
            received.append(text)
            if text.startswith('["stdout"') and not prompt.done():
                prompt.set_result(text)

        socket.on("framereceived", on_frame)

    page.on("websocket", on_websocket)
    await page.goto(url, timeout=180_000)
    # The page goes to the service's default URL, terminal "1".
    assert page.url.split("?")[0].endswith("/terminals/1"), (page.url, await page.content())
    await asyncio.wait_for(prompt, timeout=180)  # the shell's prompt came back
    await page.locator(".xterm-helper-textarea").focus()
    await page.keyboard.type("echo shell-$((6*7)) as $(id -un) in $(hostname)\n")
    container_host = created.body["kernels"][0]["container_id"][:12]
    expected = f"shell-42 as work in {container_host}"
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while not any(expected in frame for frame in received):
        assert loop.time() < deadline, received
        await asyncio.sleep(0.2)
    await page.screenshot(path=str(artifacts_dir / "terminal-in-session.png"))
    await context.close()
