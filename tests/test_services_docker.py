"""Services in a real session container, reached through the proxy on their own origin.

One session serves every test of this module's server (a fresh server per test, so each test
makes its own): the ``http`` built-in and a WebSocket echo app written into /home/work and declared
by config. Requests go to the test server's real socket with the service's Host header, as a
browser resolving ``*.localhost`` would send them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any
from urllib.parse import urlsplit

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest, HTTPResponse
from tornado.websocket import websocket_connect

from jupyter_sessions.proxy import ProxyTokens, service_host_label

from .conftest import Api

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_cleanup")]

ECHO_APP = """
import asyncio, json, sys
import tornado.web, tornado.websocket

class Echo(tornado.websocket.WebSocketHandler):
    def on_message(self, message):
        self.write_message(message, binary=isinstance(message, bytes))

@tornado.web.stream_request_body
class Root(tornado.web.RequestHandler):
    def prepare(self):
        self.size = 0
    def data_received(self, chunk):
        self.size += len(chunk)
    def get(self):
        self.write({"path": self.request.uri, "headers": dict(self.request.headers.get_all())})
    def post(self):
        self.write({"size": self.size})

async def main():
    app = tornado.web.Application([(r"/ws", Echo), (r"/.*", Root)])
    app.listen(int(sys.argv[1]), "0.0.0.0", max_body_size=1 << 30)
    await asyncio.Event().wait()

asyncio.run(main())
"""
ECHO_SERVICE = {
    "name": "echo",
    "protocol": "http",
    "port": 8765,
    "command": ["python3", "echo_app.py", "{port}"],
    "arguments": {"--verbose": ""},
    "environ": {"ECHO_MODE": "[a-z]{1,10}"},
}
BIG = 100 * 2**20


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], kernel_image: str) -> dict[str, Any]:
    from jupyter_sessions.services import DEFAULT_SERVICES

    sessions_config["default_image"] = kernel_image
    sessions_config["services"] = [*DEFAULT_SERVICES, ECHO_SERVICE]
    return sessions_config


@pytest.fixture
def session_id(api: Api, jp_asyncio_loop: asyncio.AbstractEventLoop) -> str:
    """A RUNNING session with the echo app and a 100 MiB file in its work directory."""
    answer = jp_asyncio_loop.run_until_complete(
        api("POST", "sessions", body={"name": "servicer", "max_wait_seconds": 120})
    )
    assert answer.code == 201 and answer.body["status"] == "RUNNING", answer.body
    return str(answer.body["id"])


@pytest.fixture
def port(http_server: Any, jp_http_port: int) -> int:
    """The test server's real listening port (the proxy is routed by Host on it)."""
    return jp_http_port


async def run(api: Api, session: str, code: str) -> str:
    answer = await api("POST", "sessions", session, "execute", body={"mode": "query", "code": code})
    assert answer.code == 200 and answer.body["status"] == "finished", answer.body
    assert answer.body["exit_code"] == 0, answer.body
    return "".join(d for k, d in answer.body["console"] if k == "stdout")


async def fetch(
    port: int, host: str, path: str = "/", *, cookie: str | None = None, **kwargs: Any
) -> HTTPResponse:
    headers = {"Host": host, **kwargs.pop("headers", {})}
    if cookie is not None:
        headers["Cookie"] = cookie
    request = HTTPRequest(
        f"http://127.0.0.1:{port}{path}",
        headers=headers,
        follow_redirects=False,
        request_timeout=120,
        **kwargs,
    )
    return await AsyncHTTPClient().fetch(request, raise_error=False)


async def start(api: Api, session: str, service: str, **body: Any) -> dict[str, Any]:
    answer = await api("POST", "sessions", session, "services", service, "start", body=body)
    assert answer.code == 200, answer.body
    return dict(answer.body)


async def enter(port: int, url: str) -> tuple[str, str]:
    """Exchange a service URL's token for the proxy cookie: (host, cookie header value)."""
    parts = urlsplit(url)
    host = parts.netloc
    response = await fetch(port, host, f"{parts.path}?{parts.query}")
    assert response.code == 302, response.body
    assert "jsess-token" not in response.headers["Location"]
    cookie = response.headers["Set-Cookie"]
    return host, cookie.split(";", 1)[0]


def rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


async def test_the_http_service_serves_a_large_file_with_bounded_memory(
    api: Api, session_id: str, port: int
) -> None:
    digest = await run(
        api,
        session_id,
        "import hashlib, os\nh = hashlib.sha256()\nwith open('big.bin', 'wb') as f:\n"
        f"    for _ in range({BIG // 2**20}):\n        b = os.urandom(2**20); h.update(b); "
        "f.write(b)\nprint(h.hexdigest())",
    )
    started = await start(api, session_id, "http")
    assert started["service"]["status"] == "running" and started["service"]["healthy"]
    url = started["url"]
    assert url.startswith(f"http://{service_host_label(session_id, 'http')}.localhost:{port}/")
    host, cookie = await enter(port, url)

    # A fast reader gets the whole file, byte for byte.
    hashed = hashlib.sha256()
    received = 0

    def take(chunk: bytes) -> None:
        nonlocal received
        received += len(chunk)
        hashed.update(chunk)

    response = await fetch(port, host, "/big.bin", cookie=cookie, streaming_callback=take)
    assert response.code == 200
    assert received == BIG and hashed.hexdigest() == digest.strip()

    # A slow reader: the proxy must not read ahead of it (flow control), so the server's memory
    # grows by far less than the file while the reader pauses after its first megabyte.
    before = rss()
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=65536)
    writer.write(f"GET /big.bin HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n\r\n".encode())
    got = 0
    while got < 2**20:
        got += len(await reader.read(65536))
    reader._transport.pause_reading()  # type: ignore[attr-defined]
    for _ in range(20):  # let the server run while the reader does not read
        await asyncio.sleep(0.1)
    grown = rss() - before
    writer.close()
    assert grown < 40 * 2**20, f"the server grew by {grown} bytes for a paused reader"


async def test_requests_without_valid_credentials_are_refused(
    api: Api, session_id: str, port: int, sessions_app: Any
) -> None:
    started = await start(api, session_id, "http")
    host = urlsplit(started["url"]).netloc
    assert (await fetch(port, host, "/")).code == 401
    assert (await fetch(port, host, "/?jsess-token=forged.token")).code == 401
    assert (await fetch(port, host, "/", cookie="jsess-proxy=forged.token")).code == 401
    # Jupyter's own token does not open a service.
    token = sessions_app.serverapp.identity_provider.token
    answer = await fetch(port, host, "/", headers={"Authorization": f"token {token}"})
    assert answer.code == 401
    answer = await fetch(port, host, f"/?token={token}")
    assert answer.code == 401
    # Expired and wrongly signed tokens.
    tokens = sessions_app.service.services.tokens
    expired = ProxyTokens(secret=tokens._secret, ttl=-10)
    owner = (await api("GET", "sessions", session_id)).body["owner_access_key"]
    stale = expired.mint(session_id, "http", owner)
    answer = await fetch(port, host, f"/?jsess-token={stale}")
    assert answer.code == 401 and "expired" in json.loads(answer.body)["message"]
    forged = ProxyTokens(ttl=60).mint(session_id, "http", owner)
    assert (await fetch(port, host, f"/?jsess-token={forged}")).code == 401
    # A URL token is not a cookie, and a cookie is not a URL token.
    url_token = tokens.mint(session_id, "http", owner)
    assert (await fetch(port, host, "/", cookie=f"jsess-proxy={url_token}")).code == 401
    # The error is JSON and echoes nothing of the request.
    answer = await fetch(port, host, "/<script>")
    assert answer.headers["Content-Type"].startswith("application/json")
    assert b"<script>" not in answer.body


async def test_the_token_becomes_a_host_only_cookie_and_leaves_the_url(
    api: Api, session_id: str, port: int
) -> None:
    started = await start(api, session_id, "http")
    parts = urlsplit(started["url"])
    response = await fetch(port, parts.netloc, f"/sub/dir?x=1&{parts.query}")
    assert response.code == 302
    assert response.headers["Location"] == "/sub/dir?x=1"
    cookie = response.headers["Set-Cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie and "path=/" in cookie
    assert "domain=" not in cookie  # bound to the service's host alone
    # direct-access-info mints fresh URLs for the running services.
    info = await api("GET", "sessions", session_id, "direct-access-info")
    assert info.code == 200 and info.body["proxy_mode"] == "origin"
    assert set(info.body["services"]) == {"http"}
    host, cookie_value = await enter(port, info.body["services"]["http"]["url"])
    assert (await fetch(port, host, "/", cookie=cookie_value)).code == 200
    # HTTP semantics pass through: HEAD, redirects (not followed by the proxy), 304.
    await run(api, session_id, "import os; os.makedirs('sub', exist_ok=True)")
    head = await fetch(port, host, "/", cookie=cookie_value, method="HEAD")
    assert head.code == 200 and head.body == b"" and int(head.headers["Content-Length"]) > 0
    moved = await fetch(port, host, "/sub", cookie=cookie_value)
    assert moved.code == 301 and moved.headers["Location"] == "/sub/"
    await run(api, session_id, "open('sub/f.txt', 'w').write('f')")
    file_answer = await fetch(port, host, "/sub/f.txt", cookie=cookie_value)
    since = file_answer.headers["Last-Modified"]
    cached = await fetch(
        port, host, "/sub/f.txt", cookie=cookie_value, headers={"If-Modified-Since": since}
    )
    assert cached.code == 304 and cached.body == b""


async def test_credentials_and_hop_by_hop_headers_stay_behind(
    api: Api, session_id: str, port: int
) -> None:
    await run(api, session_id, f"open('echo_app.py', 'w').write({ECHO_APP!r})")
    started = await start(api, session_id, "echo", environ={"ECHO_MODE": "plain"})
    host, cookie = await enter(port, started["url"])
    response = await fetch(
        port,
        host,
        "/seen?q=1",
        cookie=f"{cookie}; app=kept",
        headers={
            "Authorization": "token secret-jupyter-token",
            "X-XSRFToken": "the-apps-own-xsrf",
            "Connection": "close, X-Private",
            "X-Private": "hop",
        },
    )
    assert response.code == 200
    seen = json.loads(response.body)
    headers = {k.lower(): v for k, v in seen["headers"].items()}
    assert seen["path"] == "/seen?q=1"
    assert "authorization" not in headers
    assert headers["x-xsrftoken"] == "the-apps-own-xsrf"  # the app's own XSRF scheme works
    assert "x-private" not in headers
    assert headers["cookie"] == "app=kept"  # the app's own cookie only, never the proxy's
    assert headers["host"] == host and headers["x-forwarded-proto"] == "http"
    # An upload streams through, and state-changing requests from other origins are refused.
    body = b"x" * (20 * 2**20)
    response = await fetch(port, host, "/upload", cookie=cookie, method="POST", body=body)
    assert response.code == 200 and json.loads(response.body) == {"size": len(body)}
    for evil in ({"Origin": "http://evil.localhost"}, {"Sec-Fetch-Site": "cross-site"}):
        answer = await fetch(port, host, "/x", cookie=cookie, method="POST", body=b"", headers=evil)
        assert answer.code == 403


async def test_a_websocket_echo_round_trips_and_needs_credentials(
    api: Api, session_id: str, port: int
) -> None:
    await run(api, session_id, f"open('echo_app.py', 'w').write({ECHO_APP!r})")
    started = await start(api, session_id, "echo")
    host, cookie = await enter(port, started["url"])

    def ws_request(**headers: str) -> HTTPRequest:
        return HTTPRequest(f"ws://127.0.0.1:{port}/ws", headers={"Host": host, **headers})

    connection = await websocket_connect(ws_request(Cookie=cookie))
    for message in ("hello", b"\x00\x01binary", "x" * 200_000):
        await connection.write_message(message, binary=isinstance(message, bytes))
        assert await asyncio.wait_for(connection.read_message(), 30) == message
    connection.close()
    # No credentials, a forged cookie, or another origin: refused before the upgrade.
    for headers, code in (
        ({}, 401),
        ({"Cookie": "jsess-proxy=forged.value"}, 401),
        ({"Cookie": cookie, "Origin": "http://evil.localhost"}, 403),
    ):
        with pytest.raises(HTTPClientError) as refused:
            await websocket_connect(ws_request(**headers))
        assert refused.value.code == code, headers


async def test_only_the_sessions_declared_services_are_reachable(
    api: Api, session_id: str, port: int, sessions_app: Any
) -> None:
    started = await start(api, session_id, "http")
    host, cookie = await enter(port, started["url"])
    running = sessions_app.service.services._running[(session_id, "http")]
    assert running.host not in ("127.0.0.1", "localhost") and running.port == 8000
    # The cookie of one service opens no other host: another service, another session.
    other_service = f"{service_host_label(session_id, 'echo')}.localhost:{port}"
    assert (await fetch(port, other_service, "/", cookie=cookie)).code == 401
    other_session = f"{service_host_label('0e1b7a6c-8f0e-4a57-9f5c-3c2f1d1a2b3c', 'http')}"
    assert (await fetch(port, f"{other_session}.localhost", "/", cookie=cookie)).code == 401
    # A validly signed token for a session that runs no such service: nothing to reach.
    tokens = sessions_app.service.services.tokens
    owner = (await api("GET", "sessions", session_id)).body["owner_access_key"]
    for name in ("jupyter", "port-22"):
        token = tokens.mint(session_id, name, owner)
        label = service_host_label(session_id, name)
        answer = await fetch(port, f"{label}.localhost", f"/?jsess-token={token}")
        assert answer.code == 404, name
    # A request naming another host (absolute form) never leaves for it: only paths go upstream.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET http://127.0.0.1:{port}/api/contents HTTP/1.1\r\nHost: {host}\r\n"
        f"Cookie: {cookie}\r\nConnection: close\r\n\r\n".encode()
    )
    reply = await asyncio.wait_for(reader.read(), 30)
    writer.close()
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    # Kernel ports and undeclared arguments or variables are refused before anything starts.
    for body, needle in (
        ({"port": 5001}, "reserved"),
        ({"port": 80}, "from 1024"),
        ({"arguments": {"--bind": "127.0.0.1"}}, "not declared"),
        ({"environ": {"LD_PRELOAD": "/x.so"}}, "not declared"),
    ):
        answer = await api("POST", "sessions", session_id, "services", "echo", "start", body=body)
        assert answer.code == 400 and needle in answer.body["message"], (body, answer.body)
    answer = await api(
        "POST",
        "sessions",
        session_id,
        "services",
        "echo",
        "start",
        body={"environ": {"ECHO_MODE": "$(reboot)"}},
    )
    assert answer.code == 400 and "does not match" in answer.body["message"]


async def test_taken_ports_conflict_and_health_is_rechecked(
    api: Api, session_id: str, port: int, sessions_app: Any
) -> None:
    await start(api, session_id, "http")
    # Started twice, or another service on its port: 409.
    again = await api("POST", "sessions", session_id, "services", "http", "start")
    assert again.code == 409
    await run(api, session_id, f"open('echo_app.py', 'w').write({ECHO_APP!r})")
    clash = await api(
        "POST", "sessions", session_id, "services", "echo", "start", body={"port": 8000}
    )
    assert clash.code == 409 and "8000" in clash.body["message"]
    # A port some other process of the session holds: 409 too.
    await run(
        api,
        session_id,
        "import subprocess\nsubprocess.Popen(['python3', '-m', 'http.server', '8123'], "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\nimport socket, time\n"
        "for _ in range(100):\n    try:\n        socket.create_connection(('127.0.0.1', 8123))"
        ".close(); break\n    except OSError: time.sleep(0.1)",
    )
    taken = await api(
        "POST", "sessions", session_id, "services", "echo", "start", body={"port": 8123}
    )
    assert taken.code == 409 and "taken" in taken.body["message"]

    listed = await api("GET", "sessions", session_id, "services")
    assert listed.code == 200
    by_name = {s["name"]: s for s in listed.body["services"]}
    assert {"jupyter", "http", "echo"} <= set(by_name)  # the image's label, then config
    assert by_name["jupyter"]["source"] == "image" and by_name["echo"]["source"] == "config"
    assert by_name["http"]["status"] == "running" and by_name["http"]["healthy"]
    assert by_name["echo"]["status"] == "stopped"
    # Kill the http server behind the manager's back: the listing says it is dead.
    await run(
        api,
        session_id,
        "import os, signal\nfor pid in os.listdir('/proc'):\n    if pid.isdigit():\n"
        "        try: cmd = open(f'/proc/{pid}/cmdline').read()\n        except OSError: continue\n"
        "        if 'http.server\\x008000' in cmd: os.kill(int(pid), signal.SIGKILL)",
    )
    for _ in range(100):
        listed = await api("GET", "sessions", session_id, "services")
        http = next(s for s in listed.body["services"] if s["name"] == "http")
        if http["status"] != "running":
            break
        await asyncio.sleep(0.2)
    assert http["status"] in ("dead", "unhealthy") and not http["healthy"]
    # Once shut down it is stopped and its host answers 404; it can start again.
    stopped = await api("POST", "sessions", session_id, "services", "http", "shutdown")
    assert stopped.code == 200 and stopped.body["service"]["status"] == "stopped"
    assert (await api("POST", "sessions", session_id, "services", "http", "shutdown")).code == 409
    await start(api, session_id, "http")
    # What a server restart does to the registry (services live in its memory): the service
    # keeps running in the container and is listed as unmanaged; starting it takes it over
    # (its process group is one an exec of ours started), and the proxy reaches it again.
    sessions_app.service.services._running.clear()
    listed = await api("GET", "sessions", session_id, "services")
    by_name = {s["name"]: s for s in listed.body["services"]}
    assert by_name["http"]["status"] == "unmanaged" and by_name["echo"]["status"] == "stopped"
    adopted = await start(api, session_id, "http")
    assert adopted["service"]["status"] == "running", adopted
    host, cookie_value = await enter(port, adopted["url"])
    assert (await fetch(port, host, "/", cookie=cookie_value)).code == 200
    # Shutting the adopted service down stops its process inside the container.
    stopped = await api("POST", "sessions", session_id, "services", "http", "shutdown")
    assert stopped.code == 200 and stopped.body["service"]["status"] == "stopped", stopped.body
    listed = await api("GET", "sessions", session_id, "services")
    http = next(s for s in listed.body["services"] if s["name"] == "http")
    assert http["status"] == "stopped", http  # nothing answers on 8000 any more
    # A process of the user's own on the declared port is never taken over.
    await run(
        api,
        session_id,
        "import subprocess\nsubprocess.Popen(['python3', '-m', 'http.server', '8000'], "
        "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\nimport socket, time\n"
        "for _ in range(100):\n    try:\n        socket.create_connection(('127.0.0.1', 8000))"
        ".close(); break\n    except OSError: time.sleep(0.1)",
    )
    foreign = await api("POST", "sessions", session_id, "services", "http", "start")
    assert foreign.code == 409 and "not a service" in foreign.body["message"], foreign.body


async def test_a_second_user_gets_404_and_status_events_are_published(
    api: Api, session_id: str, sessions_app: Any
) -> None:
    answer = await api("POST", "keypairs", body={"user": "someone-else"})
    assert answer.code == 201, answer.body
    other = {"Authorization": f"Keypair {answer.body['access_key']}:{answer.body['secret_key']}"}
    for method, path in (
        ("GET", ("services",)),
        ("POST", ("services", "http", "start")),
        ("POST", ("services", "http", "shutdown")),
        ("GET", ("direct-access-info",)),
    ):
        answer = await api(method, "sessions", session_id, *path, headers=other)
        assert answer.code == 404, (method, path, answer.body)
    with sessions_app.hub.subscribe() as events:
        await start(api, session_id, "http")
        seen = []
        while not events.empty():
            event = events.get_nowait()
            if event.kind == "service_status":
                seen.append(event.data["status"])
    assert seen[-1] == "running" and "starting" in seen


async def test_preopened_ports_are_declared_at_create_and_reachable(
    api: Api, port: int, sessions_app: Any
) -> None:
    for bad, needle in (
        ([5002], "reserved"),
        ([80], "from 1024"),
        ([8080, 8080], "twice"),
        (list(range(9000, 9009)), "at most 8"),
        ("8080", "list"),
    ):
        answer = await api("POST", "sessions", body={"preopen_ports": bad, "enqueue_only": True})
        assert answer.code == 400 and needle in answer.body["message"], (bad, answer.body)
    created = await api(
        "POST",
        "sessions",
        body={"name": "preopened", "preopen_ports": [8090], "max_wait_seconds": 120},
    )
    assert created.code == 201 and created.body["status"] == "RUNNING", created.body
    session_id = created.body["id"]
    listed = await api("GET", "sessions", session_id, "services")
    preopened = next(s for s in listed.body["services"] if s["name"] == "port-8090")
    assert preopened["source"] == "preopen" and preopened["port"] == 8090
    # The user's own app listens there; starting the port registers it with the proxy.
    await run(
        api,
        session_id,
        "import subprocess, socket, time\nopen('mine.txt', 'w').write('my own app')\n"
        "subprocess.Popen(['python3', '-m', 'http.server', '8090'], stdout=subprocess.DEVNULL, "
        "stderr=subprocess.DEVNULL)\nfor _ in range(100):\n    try:\n"
        "        socket.create_connection(('127.0.0.1', 8090)).close(); break\n"
        "    except OSError: time.sleep(0.1)",
    )
    started = await start(api, session_id, "port-8090")
    assert started["service"]["status"] == "running"
    host, cookie = await enter(port, started["url"])
    served = await fetch(port, host, "/mine.txt", cookie=cookie)
    assert served.code == 200 and served.body == b"my own app"
    info = await api("GET", "sessions", session_id, "direct-access-info")
    assert info.body["direct_ports"] == {}  # published only where the admin allows it
    # Arguments or another port are not for a preopened port.
    answer = await api(
        "POST", "sessions", session_id, "services", "port-8090", "start", body={"port": 8091}
    )
    assert answer.code in (400, 409)
