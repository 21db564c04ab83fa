"""Commits and conversions on the real engine: a file written in a session survives
convert-to-image and is read back from a new session made from that image (the environ does not
come along); progress arrives on SSE; commit exports a tar.gz; names are per owner and limited;
a real local registry (Debian's docker-registry) receives pushes, and a failed push is reported."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import socket
import subprocess
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import docker
import pytest

from jupyter_sessions.agents.base import LABEL_INSTALLATION, LABEL_SESSION
from jupyter_sessions.agents.docker_commit import LABEL_COMMITTED_FROM

from .conftest import Api
from .test_events import DEADLINE, StreamOpener, open_stream  # noqa: F401 - fixture
from .test_execute_docker import run_to_end, text_of
from .test_identity import keypair_auth, new_keypair
from .test_tasks import wait_for_status

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_cleanup", "remove_images")]

WRITE = (
    "import os, pathlib\n"
    "pathlib.Path('/home/work/kept.txt').write_text('written in the first session')\n"
    "os.makedirs('/home/work/sub', exist_ok=True)\n"
    "pathlib.Path('/home/work/sub/deep.txt').write_text('deep')\n"
    "pathlib.Path('/tmp/outside-the-volume.txt').write_text('in the container layer')\n"
    "print(os.environ['SECRET_TOKEN'])"
)
READ = (
    "import os, pathlib\n"
    "print(pathlib.Path('/home/work/kept.txt').read_text())\n"
    "print(pathlib.Path('/home/work/sub/deep.txt').read_text())\n"
    "print(pathlib.Path('/tmp/outside-the-volume.txt').read_text())\n"
    "print('SECRET_TOKEN' in os.environ)\n"
    "print(pathlib.Path('/home/work/kept.txt').stat().st_uid)"
)


@pytest.fixture
def sessions_config(
    sessions_config: dict[str, Any], kernel_image: str, tmp_path: Path
) -> dict[str, Any]:
    sessions_config["default_image"] = kernel_image
    sessions_config["commit_dir"] = str(tmp_path / "commits")
    sessions_config["usage_sample_interval"] = 0
    return sessions_config


@pytest.fixture
def remove_images(docker_client: docker.DockerClient, sessions_app: Any) -> Iterator[None]:
    """Remove the images this test's owners converted (named by their fresh access keys)."""
    yield
    with sessions_app.database.engine.connect() as connection:
        names = [str(row[0]) for row in connection.exec_driver_sql("SELECT name FROM user_images")]
    for name in names:
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.images.remove(name, force=True)


async def running_session(api: Api, name: str, **body: Any) -> str:
    answer = await api("POST", "sessions", body={"name": name, "max_wait_seconds": 120, **body})
    assert answer.code == 201 and answer.body["status"] == "RUNNING", answer.body
    return str(answer.body["id"])


async def test_a_file_survives_convert_to_image_and_the_environ_does_not(
    api: Api,
    docker_client: docker.DockerClient,
    sessions_app: Any,
    open_stream: StreamOpener,  # noqa: F811
) -> None:
    session = await running_session(api, "maker", environ={"SECRET_TOKEN": "s3cr3t-value"})
    wrote = await run_to_end(api, session, WRITE)
    assert wrote["exit_code"] == 0 and "s3cr3t-value" in text_of(wrote["console"], "stdout")

    events = await open_stream("events", session=session)
    await events.read_until(": connected")
    answer = await api("POST", "sessions", session, "convert-to-image", body={"image_name": "kept"})
    assert answer.code == 202, answer.body
    task = answer.body
    assert task["kind"] == "convert" and task["session_id"] == session
    # Only one commit or conversion of a session at a time (a conversion takes seconds; if this
    # one was already over, the commit simply runs).
    busy = await api("POST", "sessions", session, "commit")
    assert busy.code in (409, 202), busy.body
    if busy.code == 202:
        assert (await wait_for_status(api, busy.body["id"], "done", "failed"))["status"] == "done"
    else:
        assert task["id"] in busy.body["message"]
    done = await wait_for_status(api, task["id"], "done", "failed")
    assert done["status"] == "done", done
    owner = sessions_app.identity.owner.access_key.lower()
    image = f"jupyter-sessions/{owner}/kept:latest"
    assert done["result"]["image"] == image and done["result"]["pushed_to"] is None

    # Progress arrived on the session's event stream, step by step.
    await events.read_until('"status": "done"')
    steps = [
        f["progress"]
        for f in events.frames("task_progress")
        if f["task_id"] == task["id"] and f["status"] == "running"
    ]
    assert [s["current"] for s in steps][1:] == [1, 2, 3, 4], steps
    assert all(s["total"] == 4 for s in steps)
    events.close()

    # The owner sees it in GET images and may use it; the new session has the files.
    images = (await api("GET", "images")).body["images"]
    assert any(i["name"] == image and i["present"] for i in images), images
    reader = await running_session(api, "reader", image=image)
    read = await run_to_end(api, reader, READ)
    assert read["exit_code"] == 0, read
    lines = text_of(read["console"], "stdout").splitlines()
    assert lines == [
        "written in the first session",
        "deep",
        "in the container layer",
        "False",
        "1000",
    ], lines
    status = await api("GET", "sessions", session, "commit")
    assert status.code == 200 and status.body["status"] == "ready"
    assert status.body["last"]["id"] == task["id"]
    # The image itself: the original configuration (no environ, none of our container labels),
    # and not the first kernel's connection file (its key).
    made = docker_client.images.get(image)
    assert not any("SECRET_TOKEN" in item for item in made.attrs["Config"]["Env"])
    labels = made.attrs["Config"]["Labels"]
    assert LABEL_SESSION not in labels and LABEL_INSTALLATION not in labels
    assert labels[LABEL_COMMITTED_FROM] == session
    probe = docker_client.containers.create(image)
    try:
        with pytest.raises(docker.errors.NotFound):
            probe.get_archive("/tmp/connection.json")
    finally:
        probe.remove(force=True)

    # Another user neither sees it nor may use it, and can't take the name.
    second = keypair_auth(await new_keypair(api, "someone-else"))
    assert all(
        i["name"] != image for i in (await api("GET", "images", headers=second)).body["images"]
    )
    refused = await api("POST", "sessions", body={"image": image}, headers=second)
    assert refused.code == 400 and "not allowed" in refused.body["message"]
    assert (await api("POST", "sessions", session, "commit", headers=second)).code == 404
    # Nor remove it; its owner can't either while the reader session uses it, then can.
    assert (await api("DELETE", "images", headers=second, name=image)).code == 404
    in_use = await api("DELETE", "images", name=image)
    assert in_use.code == 409 and "still use" in in_use.body["message"], in_use.body
    assert (await api("DELETE", "sessions", reader, forced="true")).code in (200, 202)
    deadline = time.monotonic() + DEADLINE
    while (await api("DELETE", "images", name=image)).code == 409:
        assert time.monotonic() < deadline, "the reader session never ended"
        await asyncio.sleep(0.5)
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(image)
    assert all(i["name"] != image for i in (await api("GET", "images")).body["images"])
    assert (await api("DELETE", "images", name=image)).code == 404
    assert (await api("DELETE", "images")).code == 400


async def test_commit_exports_a_tar_gz_and_reports_its_status(
    api: Api, sessions_config: dict[str, Any]
) -> None:
    session = await running_session(api, "committed", environ={"SECRET_TOKEN": "s3cr3t-value"})
    await run_to_end(api, session, WRITE)
    assert (await api("GET", "sessions", session, "commit")).body == {
        "session_id": session,
        "status": "ready",
        "last": None,
    }
    answer = await api("POST", "sessions", session, "commit")
    assert answer.code == 202 and answer.body["kind"] == "commit", answer.body
    ongoing = await api("GET", "sessions", session, "commit")
    assert ongoing.body["status"] in ("ongoing", "ready")
    done = await wait_for_status(api, answer.body["id"], "done", "failed")
    assert done["status"] == "done", done
    path = Path(done["result"]["path"])
    assert path.parent == Path(sessions_config["commit_dir"]) / session
    assert path.name.endswith(".tar.gz") and path.stat().st_size == done["result"]["size"]
    with gzip.open(path) as raw, tarfile.open(fileobj=raw, mode="r|") as archive:
        names = [member.name for member in archive]
    assert "manifest.json" in names
    status = await api("GET", "sessions", session, "commit")
    assert status.body["status"] == "ready" and status.body["last"]["result"]["path"] == str(path)

    # Not running: 409.
    assert (await api("DELETE", "sessions", session, forced="true")).code == 202
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    while (await api("GET", "sessions", session)).body["status"] != "TERMINATED":
        assert loop.time() < deadline
        await asyncio.sleep(0.2)
    assert (await api("POST", "sessions", session, "commit")).code == 409
    again = await api("POST", "sessions", session, "convert-to-image", body={"image_name": "late"})
    assert again.code == 409


async def test_image_names_are_checked_and_limited_per_owner(api: Api, sessions_app: Any) -> None:
    session = await running_session(api, "namer")
    for bad in ("UPPER", "../etc", "a..b", "-lead", "x" * 65, "ok:bad tag", "ok:.dot", ""):
        answer = await api(
            "POST", "sessions", session, "convert-to-image", body={"image_name": bad}
        )
        assert answer.code == 400, (bad, answer.body)
    answer = await api(
        "POST", "sessions", session, "convert-to-image", body={"image_name": "ok", "x": 1}
    )
    assert answer.code == 400 and "x" in answer.body["message"]
    # No registry configured: asking for a push is refused before any work.
    answer = await api(
        "POST", "sessions", session, "convert-to-image", body={"image_name": "ok", "push": True}
    )
    assert answer.code == 400 and "registry" in answer.body["message"]

    # The owner's policy allows one image: the first conversion fits, a second name does not.
    owner = sessions_app.identity.owner.access_key
    keypairs = (await api("GET", "keypairs")).body["keypairs"]
    policy = next(k["resource_policy"] for k in keypairs if k["access_key"] == owner)
    limited = await api("PATCH", "resource-policies", policy, body={"max_images": 1})
    assert limited.code == 200, limited.body
    first = await api(
        "POST", "sessions", session, "convert-to-image", body={"image_name": "one:v1"}
    )
    assert first.code == 202, first.body
    assert (await wait_for_status(api, first.body["id"], "done", "failed"))["status"] == "done"
    over = await api("POST", "sessions", session, "convert-to-image", body={"image_name": "two"})
    assert over.code == 429 and "max_images" in over.body["message"], over.body
    # Re-making one's own name is not a new image.
    same = await api("POST", "sessions", session, "convert-to-image", body={"image_name": "one:v1"})
    assert same.code == 202, same.body
    assert (await wait_for_status(api, same.body["id"], "done", "failed"))["status"] == "done"
    # Removing the image gives its place back.
    made = (await api("GET", "tasks", first.body["id"])).body["result"]["image"]
    assert (await api("DELETE", "images", name=made)).code == 200
    second = await api("POST", "sessions", session, "convert-to-image", body={"image_name": "two"})
    assert second.code == 202, second.body
    assert (await wait_for_status(api, second.body["id"], "done", "failed"))["status"] == "done"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[str]:
    """A real registry (Debian's docker-registry) on a loopback port, for this test only."""
    port = free_port()
    config = tmp_path / "registry.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n"
        f"storage:\n  filesystem:\n    rootdirectory: {tmp_path / 'registry'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    process = subprocess.Popen(
        ["/usr/bin/docker-registry", "serve", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/", timeout=5):
                    break
            except OSError:
                assert process.poll() is None, "docker-registry exited"
                assert time.monotonic() < deadline, "docker-registry never answered"
                time.sleep(0.2)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(30)


def use_registry(sessions_app: Any, registry: str) -> None:
    """What c.SessionsApp.image_registry sets, set on the running server."""
    commits = sessions_app.service.observability.commits
    commits.config = dataclasses.replace(commits.config, registry=registry)


@pytest.mark.registry
async def test_a_converted_image_is_pushed_to_the_registry(
    api: Api, sessions_app: Any, registry: str
) -> None:
    use_registry(sessions_app, registry)
    session = await running_session(api, "pusher")
    await run_to_end(api, session, WRITE.replace("print(os.environ['SECRET_TOKEN'])", ""))
    answer = await api("POST", "sessions", session, "convert-to-image", body={"image_name": "pub"})
    assert answer.code == 202 and answer.body["progress"]["total"] == 5, answer.body
    done = await wait_for_status(api, answer.body["id"], "done", "failed")
    assert done["status"] == "done", done
    owner = sessions_app.identity.owner.access_key.lower()
    assert done["result"]["image"] == f"{registry}/jupyter-sessions/{owner}/pub:latest"
    assert done["result"]["pushed_to"] == registry
    with urllib.request.urlopen(
        f"http://{registry}/v2/jupyter-sessions/{owner}/pub/tags/list", timeout=30
    ) as response:
        assert b'"latest"' in response.read()


async def test_a_failed_push_fails_the_task_with_the_reason(api: Api, sessions_app: Any) -> None:
    nowhere = f"127.0.0.1:{free_port()}"  # nothing listens there
    use_registry(sessions_app, nowhere)
    session = await running_session(api, "unlucky")
    answer = await api("POST", "sessions", session, "convert-to-image", body={"image_name": "lost"})
    assert answer.code == 202, answer.body
    failed = await wait_for_status(api, answer.body["id"], "done", "failed")
    assert failed["status"] == "failed", failed
    assert f"push to {nowhere} failed" in failed["error"], failed
    # The image itself was made and stays its owner's.
    owner = sessions_app.identity.owner.access_key.lower()
    images = (await api("GET", "images")).body["images"]
    assert any(i["name"] == f"{nowhere}/jupyter-sessions/{owner}/lost:latest" for i in images)
