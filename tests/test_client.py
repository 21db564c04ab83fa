"""The Python client (jupyter_sessions/client.py) against a real test server on a real socket.

Sessions run on the local agent (subprocess kernels), as test_local_sessions does. The blocking
client runs in a thread (``asyncio.to_thread``) so that the server, on this test's loop, can answer.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from jupyter_sessions import errors
from jupyter_sessions.client import (
    ENV_KEYPAIR,
    ENV_TOKEN,
    ENV_URL,
    AsyncSessionsClient,
    Call,
    ServerError,
    ServerInfo,
    ServerUnreachable,
    SessionsClient,
    SSEParser,
    error_from_answer,
    find_server,
    parse_answer,
    running_servers,
)


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    # "auto" with an engine address where nothing listens: the local agent serves the sessions.
    sessions_config["docker_url"] = f"unix://{tmp_path}/no-docker.sock"
    return sessions_config


@pytest.fixture
def token(jp_serverapp: Any) -> str:
    return str(jp_serverapp.identity_provider.token)


@pytest.fixture
def server(server_url: str, token: str) -> ServerInfo:
    return ServerInfo(server_url, token)


async def test_async_client_follows_a_session_through_its_life(server: ServerInfo) -> None:
    async with AsyncSessionsClient(server=server) as client:
        created = await client.create_session(name="via-client", max_wait_seconds=60)
        assert created["status"] == "RUNNING", created
        session_id = created["id"]

        listed = await client.list_sessions(match="via-")
        assert [s["id"] for s in listed["sessions"]] == [session_id]
        assert (await client.get_session(session_id))["name"] == "via-client"

        result = await client.execute("via-client", "x = 6 * 7\nprint('hi'); x")
        assert result["status"] == "finished"
        assert result["console"] == [["stdout", "hi\n"], ["media", {"text/plain": "42"}]]

        seen: list[tuple[str, Any]] = []
        streamed = await client.run(
            "via-client",
            "import sys\nprint('out')\nprint('err', file=sys.stderr)\nname = input('who? ')\n"
            "print('hello', name)\n1/0",
            on_output=lambda kind, data: seen.append((kind, data)),
            on_input=lambda prompt, secret: "world",
        )
        assert streamed["status"] == "finished" and streamed["exit_code"] == 1
        text = "".join(str(data) for kind, data in seen if kind == "stdout")
        assert "out\n" in text and "hello world\n" in text
        assert any(kind == "stderr" and "ZeroDivisionError" in data for kind, data in seen)
        assert streamed["console"] == [list(item) for item in seen]

        completion = await client.complete("via-client", "imp", 3)
        assert "import" in completion["matches"]
        assert await client.interrupt("via-client") == {"interrupted": True}

        renamed = await client.rename_session("via-client", "renamed-by-client")
        assert renamed["name"] == "renamed-by-client"
        tagged = await client.modify_session(session_id, tag="t1")
        assert tagged["tag"] == "t1"
        usage = await client.usage(session_id)
        assert usage["kernels"][0]["name"] == "main1"
        graph = await client.dependency_graph(session_id)
        assert [node["id"] for node in graph["nodes"]] == [session_id]
        assert isinstance(await client.logs(session_id), str)

        gone = await client.destroy_session(session_id)
        assert gone["status"] in ("TERMINATING", "TERMINATED")
        ended = await client.wait_for(session_id, {"TERMINATED"}, timeout=120)
        assert ended["status"] == "TERMINATED"
        history = await client.status_history(session_id)
        moves = [(row["from"], row["to"]) for row in history["history"]]
        assert moves[0][1] == "PENDING" and moves[-1] == ("TERMINATING", "TERMINATED")


async def test_errors_come_back_as_the_error_tree(server: ServerInfo) -> None:
    async with AsyncSessionsClient(server=server) as client:
        with pytest.raises(errors.NotFound) as missing:
            await client.get_session("no-such-session")
        assert missing.value.status_code == 404
        assert "no-such-session" in missing.value.message
        with pytest.raises(errors.InvalidRequest):
            await client.create_session(name="x", enqueue_only=True)
        await client.create_session(name="taken-name", enqueue_only=True)
        with pytest.raises(errors.Conflict):
            await client.create_session(name="taken-name", enqueue_only=True)
        with pytest.raises(errors.InvalidRequest):
            await client.run("taken-name", "1", options={"timeout": "soon"})
        await client.wait_for("taken-name", timeout=120)
        await client.destroy_session("taken-name", forced=True)

    async with AsyncSessionsClient(server=ServerInfo(server.url, "wrong-token")) as stranger:
        with pytest.raises(errors.Unauthenticated):
            await stranger.list_sessions()
        with pytest.raises((errors.Unauthenticated, errors.PermissionDenied)):
            await stranger.run("taken-name", "1")

    async with AsyncSessionsClient(server=ServerInfo("http://127.0.0.1:9/", "t")) as nowhere:
        with pytest.raises(ServerUnreachable):
            await nowhere.list_sessions()


async def test_blocking_client_runs_streams_and_interrupts(server: ServerInfo) -> None:
    def work() -> dict[str, Any]:
        with SessionsClient(server=server) as client:
            created = client.create_session(name="blocking", max_wait_seconds=60)
            assert created["status"] == "RUNNING", created

            def stop_at_start(kind: str, data: Any) -> None:
                if kind == "stdout" and "started" in data:
                    raise KeyboardInterrupt

            with pytest.raises(KeyboardInterrupt):
                client.run(
                    "blocking",
                    "import time\nprint('started', flush=True)\ntime.sleep(3600)",
                    on_output=stop_at_start,
                )
            # Closing the stream interrupted the run: the kernel serves the next one (were the
            # sleep still running, this would answer exec-timeout).
            after = client.execute("blocking", "print('after')", options={"timeout": 120})
            kinds = client.run("blocking", "print('again')")
            client.destroy_session("blocking")
            # A name reaches only active sessions: the ended one is found by its id.
            final = client.wait_for(created["id"], {"TERMINATED"}, timeout=120)
            return {"after": after, "again": kinds, "final": final}

    outcome = await asyncio.to_thread(work)
    assert outcome["after"]["status"] == "finished", outcome["after"]
    assert outcome["after"]["console"] == [["stdout", "after\n"]]
    assert outcome["again"]["console"] == [["stdout", "again\n"]]
    assert outcome["final"]["status"] == "TERMINATED"


async def test_keypair_users_see_only_their_own(server: ServerInfo) -> None:
    async with AsyncSessionsClient(server=server) as owner:
        await owner.create_session(name="owners-own", enqueue_only=True)
        keypair = await owner.create_keypair("guest")
        pair = f"{keypair['access_key']}:{keypair['secret_key']}"
        async with AsyncSessionsClient(server.url, keypair=pair) as guest:
            assert (await guest.list_sessions())["sessions"] == []
            with pytest.raises(errors.NotFound):
                await guest.get_session("owners-own")
            with pytest.raises(errors.PermissionDenied):
                await guest.list_keypairs()
        policy = (await owner.list_keypairs())["keypairs"][0].get("resource_policy", "default")
        assert (await owner.get_resource_policy(policy))["name"] == policy
        await owner.wait_for("owners-own", timeout=120)
        await owner.destroy_session("owners-own", forced=True)


async def test_finds_the_server_from_the_environment(
    server: ServerInfo, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_URL, server.url.rstrip("/"))
    monkeypatch.setenv(ENV_TOKEN, str(server.token))
    monkeypatch.delenv(ENV_KEYPAIR, raising=False)
    found = find_server()
    assert found == ServerInfo(server.url, server.token, None, f"${ENV_URL}")
    async with AsyncSessionsClient() as client:
        assert (await client.list_sessions())["total"] == 0
    monkeypatch.setenv(ENV_KEYPAIR, "no-colon")
    with pytest.raises(errors.InvalidRequest):
        find_server()


def test_other_tokens_go_only_to_local_servers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (ENV_URL, ENV_TOKEN, ENV_KEYPAIR):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "hub-token")
    monkeypatch.setenv("JUPYTER_TOKEN", "")
    # A URL named by hand gets only the token given for it.
    assert find_server("https://elsewhere.example/").token is None
    monkeypatch.setenv(ENV_URL, "https://elsewhere.example/user/x/")
    assert find_server().token is None
    monkeypatch.delenv(ENV_URL)
    # A local server with a password (no token in its runtime file): the inherited token.
    (tmp_path / "jpserver-9.json").write_text(
        json.dumps({"url": "http://127.0.0.1:8888/user/x/", "token": "", "pid": os.getpid()})
    )
    found = find_server(runtime_dir=tmp_path)
    assert (found.url, found.token) == ("http://127.0.0.1:8888/user/x/", "hub-token")


async def test_finds_the_server_from_its_runtime_files(
    server: ServerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (ENV_URL, ENV_TOKEN, ENV_KEYPAIR, "JUPYTER_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    runtime = tmp_path / "other-runtime"
    runtime.mkdir()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    files = {
        # A server that is gone (its pid has exited): ignored.
        "jpserver-1.json": {"url": server.url, "token": "old", "pid": int(dead.stdout)},
        # A live process, but no jupyter_sessions API there: probed, then passed over.
        "jpserver-2.json": {"url": "http://127.0.0.1:9/", "token": "t", "pid": os.getpid()},
        # The test server, with its token.
        "jpserver-3.json": {"url": server.url, "token": server.token, "pid": os.getpid()},
    }
    for name, info in files.items():
        (runtime / name).write_text(json.dumps(info))
    os.utime(runtime / "jpserver-3.json", (1, 1))  # the oldest file: the probe must reach it
    assert [info["token"] for info in running_servers(runtime)] == ["t", server.token]
    found = await asyncio.to_thread(find_server, runtime_dir=runtime, probe_timeout=5)
    assert (found.url, found.token) == (server.url, server.token)
    assert "runtime file" in found.source
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(runtime))
    with await asyncio.to_thread(SessionsClient) as client:
        assert client.server == found
        assert (await asyncio.to_thread(client.list_images))["images"][0]["name"] == "local"
    (runtime / "jpserver-3.json").unlink()
    # Only one candidate left: taken without a probe, and it fails loudly when used.
    only = find_server(runtime_dir=runtime)
    assert only.url == "http://127.0.0.1:9/"
    (runtime / "jpserver-2.json").unlink()
    with pytest.raises(ServerUnreachable, match=ENV_URL):
        find_server(runtime_dir=runtime)


def test_error_answers_map_to_classes() -> None:
    conflict = error_from_answer(409, {"message": "taken", "reason": "conflict"})
    assert type(conflict) is errors.Conflict and conflict.message == "taken"
    status = error_from_answer(409, {"message": "is RUNNING", "reason": "invalid-status"})
    assert type(status) is errors.InvalidStatus
    by_status = error_from_answer(429, {"message": "too many", "reason": "custom"})
    assert type(by_status) is errors.QuotaExceeded
    page = error_from_answer(500, "<html>boom</html>")
    assert type(page) is ServerError and page.details["http_status"] == 500
    # An empty log is "", never "None"; an empty JSON answer is None.
    assert parse_answer(Call("GET", "x", kind="text"), 200, b"") == ""
    assert parse_answer(Call("DELETE", "x"), 204, b"") is None
    with pytest.raises(errors.NotFound):
        parse_answer(Call("GET", "x"), 404, b'{"message": "gone", "reason": "not-found"}')


def test_sse_parser_reads_events() -> None:
    parser = SSEParser()
    lines = [
        ": keep-alive",
        "event: session_status",
        'data: {"session_id": "s1",',
        'data:  "status": "RUNNING"}',
        "",
        "data: plain",
        "",
    ]
    events = [event for line in lines if (event := parser.feed(line)) is not None]
    assert [(e.event, e.data) for e in events] == [
        ("session_status", {"session_id": "s1", "status": "RUNNING"}),
        ("message", "plain"),
    ]


async def test_files_through_both_clients(server: ServerInfo, tmp_path: Path) -> None:
    local = tmp_path / "local"
    (local / "inner").mkdir(parents=True)
    (local / "inner" / "a.txt").write_text("alpha\n")
    (local / "b.bin").write_bytes(bytes(range(256)) * 64)
    async with AsyncSessionsClient(server=server) as client:
        created = await client.create_session(name="files-client", max_wait_seconds=60)
        assert created["status"] == "RUNNING", created
        uploaded = await client.upload("files-client", [local, ("note.txt", b"from memory\n")])
        # Paths come back as the session sees them (its work directory is /home/work).
        assert sorted(f["path"].removeprefix("/home/work/") for f in uploaded["files"]) == [
            "local/b.bin",
            "local/inner/a.txt",
            "note.txt",
        ]
        with pytest.raises(errors.Conflict):
            await client.upload("files-client", [("note.txt", b"again\n")])
        await client.upload("files-client", [("note.txt", b"replaced\n")], overwrite=True)
        await client.make_dir("files-client", "made")
        await client.move_file("files-client", "note.txt", "made/note.txt")
        listing = await client.list_files("files-client", "made")
        assert [(f["name"], f["type"]) for f in listing["files"]] == [("note.txt", "file")]
        await client.make_dir("files-client", "made/scratch")
        with pytest.raises(errors.Conflict, match="recursive"):
            await client.delete_file("files-client", "made")  # not empty
        await client.delete_file("files-client", "made/scratch")
        target = await client.download("files-client", "made/note.txt", tmp_path)
        assert target == tmp_path / "note.txt" and target.read_text() == "replaced\n"
        with pytest.raises(errors.NotFound):
            await client.download("files-client", "nothing-here.txt", tmp_path / "x")

    def blocking() -> tuple[bytes, list[str]]:
        with SessionsClient(server=server) as sync:
            copy = sync.download("files-client", "local/b.bin", tmp_path / "b.copy")
            archive = sync.download_archive(
                "files-client", ["local"], tmp_path / "local.tar", format="tar"
            )
            import tarfile

            with tarfile.open(archive) as tar:
                names = sorted(m.name for m in tar.getmembers() if m.isfile())
            return copy.read_bytes(), names

    content, names = await asyncio.to_thread(blocking)
    assert content == (local / "b.bin").read_bytes()
    assert [name.removeprefix("./") for name in names] == ["local/b.bin", "local/inner/a.txt"]


async def test_follow_logs_and_events_stream(server: ServerInfo) -> None:
    async with AsyncSessionsClient(server=server) as client:
        events = client.events()
        first = asyncio.ensure_future(events.__anext__())
        created = await client.create_session(name="streams", max_wait_seconds=60)
        session_id = created["id"]
        statuses: list[str] = []
        event = await asyncio.wait_for(first, 60)
        while True:
            if event.event == "session_status" and event.data["session_id"] == session_id:
                statuses.append(event.data["status"])
                if event.data["status"] == "RUNNING":
                    break
            event = await asyncio.wait_for(events.__anext__(), 60)
        await events.aclose()
        assert statuses[0] in ("PENDING", "SCHEDULED") and statuses[-1] == "RUNNING"

        lines = client.follow_logs("streams")
        marker = "follow-marker-7f3a"
        await client.execute(
            "streams",
            f"import os\nos.write(2, b'{marker}\\n')",
        )
        seen = []
        async for line in lines:
            seen.append(line)
            if marker in line:
                break
        await lines.aclose()
        assert any(marker in line for line in seen)
        await client.destroy_session(session_id)


async def test_kernel_connection_lets_jupyter_client_talk_to_the_kernel(
    server: ServerInfo,
) -> None:
    """What the kernel provisioner reads through the client: a connection a jupyter_client
    kernel client can use directly."""
    from jupyter_client.asynchronous.client import AsyncKernelClient

    async with AsyncSessionsClient(server=server) as client:
        created = await client.create_session(name="direct-kernel", max_wait_seconds=60)
        answer = await client.kernel_connection("direct-kernel")
        assert answer["session_id"] == created["id"]
        kc = AsyncKernelClient()
        kc.load_connection_info(answer["connection"])
        kc.start_channels()
        try:
            reply = await kc.kernel_info(reply=True, timeout=30)
            assert reply["content"]["status"] == "ok"
        finally:
            kc.stop_channels()
        with pytest.raises(errors.NotFound):
            await client.kernel_connection("direct-kernel", "sub9")
        await client.destroy_session(created["id"])


async def test_templates_through_the_client(server: ServerInfo) -> None:
    async with AsyncSessionsClient(server=server) as client:
        template = await client.create_template(
            {
                "name": "small-local",
                "body": {"image": "local", "resources": {"cpu": {"$param": "cpu"}}},
                "parameters": {"cpu": {"type": "number", "default": 1}},
            }
        )
        template_id = template["id"]
        listed = await client.list_templates()
        assert [t["id"] for t in listed["templates"]] == [template_id]
        assert (await client.get_template(template_id))["name"] == "small-local"
        renamed = await client.modify_template(template_id, name="tiny-local")
        assert renamed["name"] == "tiny-local"
        with pytest.raises(errors.InvalidRequest, match="cpu"):
            await client.create_from_template(template_id, parameters={"cpu": "two"})
        session = await client.create_from_template(
            template_id, name="templated", parameters={"cpu": 0.5}, max_wait_seconds=60
        )
        assert session["status"] == "RUNNING" and session["image"] == "local"
        assert float(session["resources"]["cpu"]) == 0.5
        await client.destroy_session(session["id"])
        await client.delete_template(template_id)
        with pytest.raises(errors.NotFound):
            await client.get_template(template_id)


async def test_cancelling_an_async_run_interrupts_it(server: ServerInfo) -> None:
    async with AsyncSessionsClient(server=server) as client:
        created = await client.create_session(name="cancelled-run", max_wait_seconds=60)
        started = asyncio.Event()
        running = asyncio.ensure_future(
            client.run(
                "cancelled-run",
                "import time\nprint('started', flush=True)\ntime.sleep(3600)",
                on_output=lambda kind, data: started.set(),
            )
        )
        await asyncio.wait_for(started.wait(), 60)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        after = await client.execute("cancelled-run", "print('after')", options={"timeout": 120})
        assert after["status"] == "finished" and after["console"] == [["stdout", "after\n"]]
        await client.destroy_session(created["id"])
