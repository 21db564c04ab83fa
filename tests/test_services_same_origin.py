"""The opt-in same-origin mode: services under {base_url}jupyter-sessions/proxy/<id>/<service>/,
authenticated by Jupyter itself and stripped of its credentials before they go upstream."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from tornado.httpclient import HTTPClientError

from .conftest import Api
from .test_services_docker import ECHO_APP, ECHO_SERVICE, run

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_cleanup")]


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], kernel_image: str) -> dict[str, Any]:
    from jupyter_sessions.services import DEFAULT_SERVICES

    sessions_config["default_image"] = kernel_image
    sessions_config["services"] = [*DEFAULT_SERVICES, ECHO_SERVICE]
    sessions_config["service_proxy_mode"] = "same-origin"
    return sessions_config


async def proxied(jp_fetch: Any, *path: str, **kwargs: Any) -> Any:
    try:
        return await jp_fetch("jupyter-sessions", "proxy", *path, **kwargs)
    except HTTPClientError as error:
        assert error.response is not None
        return error.response


async def test_same_origin_services_need_jupyter_auth_and_never_see_it(
    api: Api, jp_fetch: Any, jp_ws_fetch: Any, jp_base_url: str, sessions_app: Any
) -> None:
    token = sessions_app.serverapp.identity_provider.token
    created = await api("POST", "sessions", body={"name": "same-origin", "max_wait_seconds": 120})
    assert created.code == 201 and created.body["status"] == "RUNNING", created.body
    sid = created.body["id"]
    await run(api, sid, "open('hello.txt', 'w').write('hi')")
    await run(api, sid, f"open('echo_app.py', 'w').write({ECHO_APP!r})")
    started = await api("POST", "sessions", sid, "services", "http", "start")
    assert started.code == 200, started.body
    assert started.body["url"] == f"{jp_base_url}jupyter-sessions/proxy/{sid}/http/"
    assert (await api("POST", "sessions", sid, "services", "echo", "start")).code == 200

    # http.server is not told its base URL: it gets paths relative to its root.
    served = await proxied(jp_fetch, sid, "http", "hello.txt")
    assert served.code == 200 and served.body == b"hi"
    # Without Jupyter's credentials: refused; a second user: 404.
    refused = await proxied(jp_fetch, sid, "http", "hello.txt", headers={"Authorization": ""})
    assert refused.code in (401, 403)
    keypair = await api("POST", "keypairs", body={"user": "another-one"})
    other = {"Authorization": f"Keypair {keypair.body['access_key']}:{keypair.body['secret_key']}"}
    assert (await proxied(jp_fetch, sid, "http", "hello.txt", headers=other)).code == 404

    # The app sees neither the token, nor Authorization, nor Jupyter's cookies.
    seen = await proxied(
        jp_fetch,
        sid,
        "echo",
        "look",
        params={"token": token, "q": "1"},
        headers={"Cookie": "_xsrf=outer; app=kept"},
    )
    assert seen.code == 200, seen.body
    echoed = json.loads(seen.body)
    headers = {k.lower(): v for k, v in echoed["headers"].items()}
    assert "authorization" not in headers and token not in seen.body.decode()
    assert headers.get("cookie") == "app=kept"
    assert echoed["path"].endswith("look?q=1")

    # WebSockets too: authenticated by Jupyter before the upgrade, then relayed.
    connection = await jp_ws_fetch("jupyter-sessions", "proxy", sid, "echo", "ws")
    await connection.write_message("same origin")
    assert await asyncio.wait_for(connection.read_message(), 30) == "same origin"
    connection.close()
    with pytest.raises(HTTPClientError) as refused_ws:
        await jp_ws_fetch(
            "jupyter-sessions", "proxy", sid, "echo", "ws", headers={"Authorization": ""}
        )
    assert refused_ws.value.code in (401, 403)
