"""Shared fixtures: a Jupyter server with the extension on a fresh store, the real Docker engine,
the kernel image, and a request helper that returns status and JSON for any answer."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import docker
import pytest
from tornado.httpclient import HTTPClientError

from jupyter_sessions.agents.base import LABEL_INSTALLATION
from jupyter_sessions.agents.docker import DockerAgent

pytest_plugins = ["pytest_jupyter.jupyter_server", "tests.postgres", "tests.browser"]


@pytest.fixture(scope="session")
def docker_client() -> Iterator[docker.DockerClient]:
    """The real engine; the README's test command starts one when none runs."""
    client = docker.from_env()
    client.ping()
    yield client
    client.close()


@pytest.fixture(scope="session")
def kernel_image(docker_client: docker.DockerClient) -> str:
    from jupyter_sessions.images import build_image

    return build_image(docker_client, progress=lambda message: None)


@pytest.fixture
def sessions_config(tmp_path: Any) -> dict[str, Any]:
    """SessionsApp settings of this test's server (a test may change them before it starts)."""
    return {
        "db_url": f"sqlite:///{tmp_path}/sessions.db",
        "scheduler_interval": 0.5,
        "sweep_interval": 1.0,
        "owner_name": "owner",
    }


@pytest.fixture
def jp_server_config(sessions_config: dict[str, Any]) -> dict[str, Any]:
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_sessions": True}},
        "SessionsApp": sessions_config,
    }


@pytest.fixture
def sessions_app(jp_serverapp: Any) -> Any:
    return jp_serverapp.web_app.settings["jupyter_sessions"]


@dataclass
class Answer:
    code: int
    body: Any
    headers: Any


Api = Callable[..., Awaitable[Answer]]


@pytest.fixture
def api(jp_fetch: Any) -> Api:
    """Call a route under jupyter-sessions/api with the server's token; never raises on 4xx/5xx."""

    async def call(
        method: str,
        *path: str,
        body: Any = None,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        **params: Any,
    ) -> Answer:
        kwargs: dict[str, Any] = {"method": method, "params": params or None}
        if raw is not None:
            kwargs["body"] = raw
        elif body is not None:
            kwargs["body"] = json.dumps(body)
        elif method in ("POST", "PUT", "PATCH"):
            kwargs["body"] = b""
        if method == "DELETE":
            kwargs["allow_nonstandard_methods"] = True
        if headers is not None:
            kwargs["headers"] = headers
        try:
            response = await jp_fetch("jupyter-sessions", "api", *path, **kwargs)
        except HTTPClientError as error:
            response = error.response
            assert response is not None, error
        text = response.body.decode() if response.body else ""
        try:
            parsed = json.loads(text) if text else None
        except ValueError:
            parsed = text
        return Answer(response.code, parsed, response.headers)

    return call


async def shut_down_kernels(kernel_manager: Any) -> None:
    """Every kernel of the server, one by one (shutdown_all also takes the ids of starts that
    failed, which jupyter_client keeps as pending, and fails on them)."""
    for kernel_id in list(kernel_manager.list_kernel_ids()):
        with contextlib.suppress(Exception):
            await kernel_manager.shutdown_kernel(kernel_id, now=True)


@pytest.fixture
def docker_cleanup(
    docker_client: docker.DockerClient, sessions_app: Any, jp_asyncio_loop: Any
) -> Iterator[None]:
    """Remove whatever this test's installation left on the engine (and only that)."""
    yield
    # The Jupyter server's own kernels first (those of session kernelspecs run in containers):
    # a container removed under them would have their restarter start them again, and a kernel
    # still starting makes the server's shutdown fail (jupyter_client's InvalidStateError).
    jp_asyncio_loop.run_until_complete(shut_down_kernels(sessions_app.serverapp.kernel_manager))
    # Stop the scheduler and the start tasks first, so that nothing starts a session behind the
    # cleanup's back.
    jp_asyncio_loop.run_until_complete(sessions_app.scheduler.stop())
    jp_asyncio_loop.run_until_complete(sessions_app.service.close())
    installation = getattr(sessions_app, "installation_id", None)
    if not installation:
        return
    selector = {"label": f"{LABEL_INSTALLATION}={installation}"}
    for container in docker_client.containers.list(all=True, filters=selector):
        container.remove(force=True)
    for volume in docker_client.volumes.list(filters=selector):
        volume.remove(force=True)
    # The agents' own removal also drops the host-port rules of their bridge.
    for agent in sessions_app.registry:
        if isinstance(agent, DockerAgent):
            with contextlib.suppress(Exception):
                jp_asyncio_loop.run_until_complete(agent.remove_network())
    for network in docker_client.networks.list(filters=selector):
        network.remove()
