"""Gateway mode: a second, stock Jupyter Server (a subprocess, our extension off) started with
``--gateway-url`` pointing at the test server runs a notebook's cells in a session container.

The stock server lists our generated kernelspecs, starts the kernel through our server's
``/api/kernels`` (where the provisioner makes a session) and relays the kernel's messages over
its own WebSocket, exactly as JupyterLab would use it.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from jupyter_sessions.kernels.provisioner import KERNEL_TAG
from jupyter_sessions.kernelspecs import DEFAULT_NAME

from .conftest import Api
from .test_provisioner import sessions_config, wait_for  # noqa: F401 - the same small sessions

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_cleanup")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def gateway_client_server(
    server_url: str, jp_serverapp: Any, tmp_path: Path
) -> Iterator[tuple[str, str]]:
    """A stock Jupyter Server whose kernels are our server's: (its base URL, its token)."""
    port, token = free_port(), secrets.token_hex(16)
    root = tmp_path / "gateway-root"
    root.mkdir()
    argv = [
        sys.executable,
        "-m",
        "jupyter_server",
        "--allow-root",
        "--no-browser",
        "--ServerApp.ip=127.0.0.1",
        f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0",
        f"--ServerApp.root_dir={root}",
        f"--IdentityProvider.token={token}",
        # Stock: our extension (installed in this environment) stays off in that server.
        "--ServerApp.jpserver_extensions",
        "jupyter_sessions=False",
        f"--gateway-url={server_url}",
        f"--GatewayClient.auth_token={jp_serverapp.identity_provider.token}",
        "--GatewayClient.request_timeout=120",
    ]
    log = (tmp_path / "gateway-server.log").open("wb")
    process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}/", token
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


async def call(base: str, token: str, method: str, path: str, body: Any = None) -> Any:
    request = HTTPRequest(
        base + path,
        method=method,
        headers={"Authorization": f"token {token}"},
        body=json.dumps(body) if body is not None else (b"" if method == "POST" else None),
        allow_nonstandard_methods=True,
        request_timeout=150,
    )
    response = await AsyncHTTPClient().fetch(request)
    return json.loads(response.body) if response.body else None


async def wait_until_up(base: str, token: str, timeout: float = 90.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            await call(base, token, "GET", "api/status")
            return
        except (HTTPClientError, OSError):
            assert loop.time() < deadline, "the gateway client server did not come up"
            await asyncio.sleep(0.5)


async def run_cell(ws: Any, code: str) -> tuple[str, str]:
    """One cell over the Jupyter WebSocket protocol: its stdout and the reply's status."""
    msg_id = uuid.uuid4().hex
    await ws.write_message(
        json.dumps(
            {
                "header": {
                    "msg_id": msg_id,
                    "msg_type": "execute_request",
                    "username": "test",
                    "session": "gateway-test",
                    "version": "5.3",
                    "date": "",
                },
                "parent_header": {},
                "metadata": {},
                "content": {"code": code, "silent": False, "store_history": True},
                "channel": "shell",
                "buffers": [],
            }
        )
    )
    text, status, idle = "", None, False
    while status is None or not idle:
        frame = await asyncio.wait_for(ws.read_message(), 120)
        assert frame is not None, "the gateway closed the kernel's WebSocket"
        message = json.loads(frame)
        if message.get("parent_header", {}).get("msg_id") != msg_id:
            continue
        kind = message["header"]["msg_type"]
        if kind == "stream":
            text += message["content"]["text"]
        elif kind == "error":
            text += message["content"]["evalue"]
        elif kind == "execute_reply":
            status = message["content"]["status"]
        elif kind == "status" and message["content"]["execution_state"] == "idle":
            idle = True
    return text, status


async def test_a_stock_server_in_gateway_mode_runs_a_notebook_in_a_session(
    api: Api, sessions_app: Any, gateway_client_server: tuple[str, str]
) -> None:
    await sessions_app.ensure_started()  # the kernelspecs are written at start-up
    base, token = gateway_client_server
    await wait_until_up(base, token)

    specs = await call(base, token, "GET", "api/kernelspecs")
    assert DEFAULT_NAME in specs["kernelspecs"], sorted(specs["kernelspecs"])

    kernel = await call(base, token, "POST", "api/kernels", {"name": DEFAULT_NAME})
    listed = (await api("GET", "sessions")).body["sessions"]
    [session] = [s for s in listed if s["tag"] == KERNEL_TAG]
    assert session["status"] == "RUNNING"
    assert session["owner_access_key"] == sessions_app.identity.owner.access_key

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("import os, socket\nwhere = (os.getuid(), os.getcwd())"),
        nbformat.v4.new_code_cell("print(where, socket.gethostname() != '')"),
    ]
    ws_url = base.replace("http://", "ws://") + f"api/kernels/{kernel['id']}/channels"
    ws = await websocket_connect(
        HTTPRequest(ws_url, headers={"Authorization": f"token {token}"}, request_timeout=60)
    )
    try:
        outputs = [await run_cell(ws, cell.source) for cell in notebook.cells]
    finally:
        ws.close()
    assert outputs[0] == ("", "ok")
    assert outputs[1] == ("(1000, '/home/work') True\n", "ok")

    await call(base, token, "DELETE", f"api/kernels/{kernel['id']}")

    async def destroyed() -> bool:
        return (await api("GET", "sessions", session["id"])).body["status"] == "TERMINATED"

    await wait_for(destroyed)
