"""On the local agent (subprocess kernels, no images): commit and convert answer a clear 400; logs
follow by re-reading the kernel's log file and remain after destroy; the abuse report works
without the process list (a local kernel shares the host's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from jupyter_sessions.agents.docker_commit import changed_paths, prune_archives

from .conftest import Api
from .test_events import DEADLINE, StreamOpener, open_stream  # noqa: F401 - fixture
from .test_execute_docker import run_to_end
from .test_logs import SAY, wait_for_status


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    sessions_config["docker_url"] = f"unix://{tmp_path}/no-docker.sock"  # auto → local agent
    sessions_config["usage_sample_interval"] = 0.2
    return sessions_config


async def test_local_sessions_refuse_commits_and_keep_their_logs(
    api: Api,
    open_stream: StreamOpener,  # noqa: F811
) -> None:
    created = await api("POST", "sessions", body={"name": "local-one", "max_wait_seconds": 60})
    assert created.code == 201 and created.body["status"] == "RUNNING", created.body
    session = created.body["id"]
    for path, body in (("commit", None), ("convert-to-image", {"image_name": "nope"})):
        answer = await api("POST", "sessions", session, path, body=body)
        assert answer.code == 400, answer.body
        assert "local agent" in answer.body["message"] and "Docker" in answer.body["message"]
    assert (await api("GET", "sessions", session, "commit")).body["last"] is None

    report = await api("GET", "sessions", session, "abusing-report")
    assert report.code == 200 and report.body["processes_checked"] is False
    assert report.body["abusing"] is False, report.body

    await run_to_end(api, session, SAY.format(text="local-before"))
    stream = await open_stream(f"sessions/{session}/logs", follow="true")
    await stream.read_until("local-before")
    await run_to_end(api, session, SAY.format(text="local-live"))
    await stream.read_until("local-live")
    assert (await api("DELETE", "sessions", session)).code == 202
    await stream.read_to_end(timeout=DEADLINE)
    stream.close()
    await wait_for_status(api, session, "TERMINATED")
    kept = await api("GET", "sessions", session, "logs")
    assert "local-before" in kept.body and "local-live" in kept.body


def test_changed_paths_copies_added_trees_and_changed_leaves_only() -> None:
    diff = [
        {"Path": "/tmp", "Kind": 0},
        {"Path": "/tmp/connection.json", "Kind": 1},  # the kernel's key: never
        {"Path": "/tmp/jsess-exec-1.pid", "Kind": 1},
        {"Path": "/tmp/notes.txt", "Kind": 1},
        {"Path": "/usr", "Kind": 0},
        {"Path": "/usr/local", "Kind": 0},
        {"Path": "/usr/local/lib/pkg", "Kind": 1},  # an added tree: copied from its top
        {"Path": "/usr/local/lib/pkg/mod.py", "Kind": 1},
        {"Path": "/etc/motd", "Kind": 0},  # a changed leaf
        {"Path": "/etc/hosts", "Kind": 0},  # Docker's own
        {"Path": "/home/work", "Kind": 0},  # the volume: copied on its own
        {"Path": "/data", "Kind": 1},  # a mount point
        {"Path": "/opt/gone", "Kind": 2},  # deleted: archives can't say so
    ]
    assert changed_paths(diff, ["/data"]) == ["/etc/motd", "/tmp/notes.txt", "/usr/local/lib/pkg"]


def test_old_commit_archives_are_pruned(tmp_path: Path) -> None:
    for stamp in ("20260101T000000Z", "20260102T000000Z", "20260103T000000Z"):
        (tmp_path / f"{stamp}.tar.gz").write_bytes(b"x")
    removed = prune_archives(tmp_path, 2)
    assert [p.name for p in removed] == ["20260101T000000Z.tar.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "20260102T000000Z.tar.gz",
        "20260103T000000Z.tar.gz",
    ]
    assert prune_archives(tmp_path, 0) == []
