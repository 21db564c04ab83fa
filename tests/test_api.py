"""The REST surface without running containers: auth, validation, errors, the OpenAPI document."""

from __future__ import annotations

import re
from typing import Any

import pytest

from jupyter_sessions.handlers import default_handlers
from jupyter_sessions.handlers.openapi import implemented_methods, openapi_path

from .conftest import Api

# A request that wrongly succeeds would leave a container behind: clean up after every test.
pytestmark = pytest.mark.usefixtures("docker_cleanup")

ROUTE_SAMPLES = {"{ref}": "0e1b7a6c-8f0e-4a57-9f5c-3c2f1d1a2b3c"}


def concrete(path: str) -> str:
    for placeholder, value in ROUTE_SAMPLES.items():
        path = path.replace(placeholder, value)
    return path


async def test_every_route_refuses_requests_without_credentials(api: Api) -> None:
    checked = 0
    for pattern, handler in default_handlers:
        path = concrete(openapi_path(pattern)).lstrip("/")
        for method in implemented_methods(handler):
            answer = await api(
                method.upper(),
                *path.split("/"),
                headers={"Authorization": ""},
                body={} if method in ("post", "patch") else None,
            )
            assert answer.code in (401, 403), (method, path, answer.code)
            assert isinstance(answer.body, dict) and "message" in answer.body
            assert "traceback" not in answer.body
            checked += 1
    assert checked >= 7


async def test_a_wrong_token_is_refused(api: Api) -> None:
    answer = await api("GET", "sessions", headers={"Authorization": "token not-the-token"})
    assert answer.code in (401, 403)


async def test_openapi_describes_every_route_and_method(api: Api) -> None:
    answer = await api("GET", "openapi.json")
    assert answer.code == 200
    document = answer.body
    assert document["openapi"].startswith("3.")
    for pattern, handler in default_handlers:
        path = openapi_path(pattern)
        assert path in document["paths"], path
        for method in implemented_methods(handler):
            operation = document["paths"][path][method]
            assert operation.get("summary"), f"{method.upper()} {path} has no summary"
            assert operation.get("operationId"), f"{method.upper()} {path} has no operationId"
            assert "undocumented" not in str(operation["responses"]), (method, path)
    refs = set(re.findall(r'"#/components/schemas/(\w+)"', str(document).replace("'", '"')))
    assert refs <= set(document["components"]["schemas"])


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        ({"image": "evil/image:latest"}, 400, "allowed images"),
        ({"resources": {"mem": "lots"}}, 400, "resources.mem"),
        ({"resources": {"gpu": 1}}, 400, "resources.gpu"),
        ({"resources": {"cpu": 0}}, 400, "resources.cpu"),
        ({"name": "../../etc"}, 400, "name"),
        ({"name": "0e1b7a6c-8f0e-4a57-9f5c-3c2f1d1a2b3c"}, 400, "session id"),
        ({"colour": "blue"}, 400, "colour"),
        ({"mounts": ["/etc"]}, 400, "mounts"),
        ({"depends_on": ["x"]}, 400, "depends_on"),
        ({"cluster_size": 0}, 400, "cluster_size"),
        ({"type": "batch"}, 400, "batch"),
        ({"type": "weird"}, 400, "type"),
        ({"max_wait_seconds": -1}, 400, "max_wait_seconds"),
        ({"environ": {"A": 1}}, 400, "environ.A"),
        ({"scaling_group": "gpu"}, 400, "scaling"),
        ({"resources": {"cpu": 100000}}, 403, "largest agent"),
        ([1, 2], 400, "JSON object"),
    ],
)
async def test_bad_create_requests_get_clear_errors(
    api: Api, body: Any, status: int, needle: str
) -> None:
    answer = await api("POST", "sessions", body=body)
    assert answer.code == status, answer.body
    assert needle in answer.body["message"]
    assert answer.body["reason"]


async def test_malformed_json_is_400(api: Api) -> None:
    answer = await api("POST", "sessions", raw=b"{not json")
    assert answer.code == 400
    assert "JSON" in answer.body["message"]


async def test_unknown_session_is_404_and_bad_query_is_400(api: Api) -> None:
    assert (await api("GET", "sessions", "0e1b7a6c-8f0e-4a57-9f5c-3c2f1d1a2b3c")).code == 404
    assert (await api("GET", "sessions", "no-such-session")).code == 404
    assert (await api("GET", "sessions", status="SLEEPING")).code == 400
    assert (await api("GET", "sessions", limit="many")).code == 400
    answer = await api("DELETE", "sessions", "no-such-session", forced="maybe")
    assert answer.code == 400


async def test_list_starts_empty_and_agents_are_reported(api: Api) -> None:
    answer = await api("GET", "sessions")
    assert answer.code == 200 and answer.body == {"sessions": [], "total": 0}
    agents = await api("GET", "agents")
    assert agents.code == 200
    assert agents.body["total"] == 1
    assert agents.body["agents"][0]["kind"] == "docker"
    assert agents.body["agents"][0]["status"] == "ALIVE"
