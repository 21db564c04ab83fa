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
    # JupyterLab takes a while to answer on a busy machine: a long client timeout.
    response = await jp_fetch(
        "jupyter-sessions",
        "api",
        "sessions",
        session_id,
        "services",
        "jupyter",
        "start",
        method="POST",
        body=b"{}",
        request_timeout=300,
    )
    started = json.loads(response.body)
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
