"""Services on the local agent: subprocesses on loopback ports of their own, through the proxy."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

from jupyter_sessions.services import probe

from .conftest import Api


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    # "auto" with an engine address where nothing listens: the local agent.
    sessions_config["docker_url"] = f"unix://{tmp_path}/no-docker.sock"
    return sessions_config


async def fetch(port: int, host: str, path: str, **headers: str) -> HTTPResponse:
    request = HTTPRequest(
        f"http://127.0.0.1:{port}{path}",
        headers={"Host": host, **headers},
        follow_redirects=False,
        request_timeout=60,
    )
    return await AsyncHTTPClient().fetch(request, raise_error=False)


async def test_the_http_service_runs_beside_a_local_kernel(
    api: Api, sessions_app: Any, http_server: Any, jp_http_port: int
) -> None:
    created = await api("POST", "sessions", body={"name": "local-web", "max_wait_seconds": 60})
    assert created.code == 201 and created.body["status"] == "RUNNING", created.body
    session_id = created.body["id"]
    code = "open('hello.txt', 'w').write('hello from the work directory')"
    wrote = await api(
        "POST", "sessions", session_id, "execute", body={"mode": "query", "code": code}
    )
    assert wrote.code == 200 and wrote.body["exit_code"] == 0, wrote.body

    started = await api("POST", "sessions", session_id, "services", "http", "start")
    assert started.code == 200, started.body
    running = sessions_app.service.services._running[(session_id, "http")]
    # A loopback port of its own (the declared 8000 may be taken on a shared host).
    assert running.host == "127.0.0.1" and started.body["service"]["port"] == running.port

    parts = urlsplit(started.body["url"])
    entered = await fetch(jp_http_port, parts.netloc, f"{parts.path}?{parts.query}")
    assert entered.code == 302
    cookie = entered.headers["Set-Cookie"].split(";", 1)[0]
    served = await fetch(jp_http_port, parts.netloc, "/hello.txt", Cookie=cookie)
    assert served.code == 200 and served.body == b"hello from the work directory"
    assert (await fetch(jp_http_port, parts.netloc, "/hello.txt")).code == 401

    stopped = await api("POST", "sessions", session_id, "services", "http", "shutdown")
    assert stopped.code == 200 and stopped.body["service"]["status"] == "stopped"
    assert (await fetch(jp_http_port, parts.netloc, "/hello.txt", Cookie=cookie)).code == 404
    # The jupyter service is the image's (a Docker image label): the local agent has none.
    listed = await api("GET", "sessions", session_id, "services")
    assert [s["name"] for s in listed.body["services"]] == ["http"]
    # A service still running when the session ends is stopped with it (no stray process).
    again = await api("POST", "sessions", session_id, "services", "http", "start")
    assert again.code == 200, again.body
    port = again.body["service"]["port"]
    assert await probe("127.0.0.1", port, "http")
    assert (await api("DELETE", "sessions", session_id)).code == 202
    for _ in range(200):
        if not await probe("127.0.0.1", port, "tcp"):
            break
        await asyncio.sleep(0.1)
    assert not await probe("127.0.0.1", port, "tcp")
