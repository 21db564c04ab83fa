"""Files on the local agent: the work directory is on the host, walked with openat, so the
traversal corpus here guards the server's own filesystem."""

from __future__ import annotations

import asyncio
import hashlib
import io
import os
import tarfile
import zipfile
from pathlib import Path
from typing import Any

import pytest

from .conftest import Api
from .files_support import (
    assert_corpus_refused,
    assert_links_out_refused,
    fetch_bytes,
    make_links_code,
    multipart,
    run_code,
    running_session,
    upload,
)


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    # "auto" with an engine address where nothing listens: the local agent.
    sessions_config["docker_url"] = f"unix://{tmp_path}/no-docker.sock"
    sessions_config["files_max_file_size"] = 1_000_000
    return sessions_config


def _tree(work: Path) -> list[str]:
    """Everything under the work directory but the kernel's own IPython state."""
    return sorted(str(p.relative_to(work)) for p in work.rglob("*") if ".ipython" not in p.parts)


async def _work_dir(api: Api, ref: str) -> Path:
    return Path((await run_code(api, ref, "import os; print(os.getcwd())")).strip())


async def test_upload_list_download_and_archive_round_trip(api: Api, jp_fetch: Any) -> None:
    await running_session(api, "files-local")
    payload = os.urandom(300_000)
    files = [("a.bin", payload), ("deep/er/b.txt", b"hello"), ("c.txt", b""), (".hid", b"h")]
    answer = await upload(api, "files-local", files)
    assert answer.code == 201, answer.body
    assert answer.body["files"] == [
        {"path": "/home/work/a.bin", "size": len(payload), "status": "created"},
        {"path": "/home/work/deep/er/b.txt", "size": 5, "status": "created"},
        {"path": "/home/work/c.txt", "size": 0, "status": "created"},
        {"path": "/home/work/.hid", "size": 1, "status": "created"},
    ]
    # The kernel sees the same files.
    digest = await run_code(
        api,
        "files-local",
        "import hashlib; print(hashlib.sha256(open('a.bin','rb').read()).hexdigest())",
    )
    assert digest.strip() == hashlib.sha256(payload).hexdigest()

    listing = await api("GET", "sessions", "files-local", "files")
    assert listing.code == 200 and listing.body["path"] == "/home/work", listing.body
    entries = {f["name"]: f for f in listing.body["files"]}
    assert set(entries) == {"a.bin", "c.txt", "deep"}
    assert entries["a.bin"]["type"] == "file" and entries["a.bin"]["size"] == len(payload)
    assert entries["a.bin"]["mode"] == "0644" and entries["deep"]["type"] == "dir"
    assert entries["a.bin"]["mtime"].endswith("+00:00") and entries["a.bin"]["owner"]
    hidden = await api("GET", "sessions", "files-local", "files", hidden="true")
    assert ".hid" in {f["name"] for f in hidden.body["files"]}
    nested = await api("GET", "sessions", "files-local", "files", path="/home/work/deep/er")
    assert [f["name"] for f in nested.body["files"]] == ["b.txt"]

    down = await fetch_bytes(
        jp_fetch, "GET", "sessions", "files-local", "files", "content", path="a.bin"
    )
    assert down.code == 200 and down.body == payload
    assert down.headers["Content-Type"] == "application/octet-stream"
    assert down.headers["Content-Length"] == str(len(payload))
    assert down.headers["Content-Disposition"] == (
        "attachment; filename=\"a.bin\"; filename*=UTF-8''a.bin"
    )
    text = await fetch_bytes(
        jp_fetch, "GET", "sessions", "files-local", "files", "content", path="deep/er/b.txt"
    )
    assert text.headers["Content-Type"] == "text/plain" and text.body == b"hello"
    for header, start, end in (
        ("1000-1999", 1000, 2000),
        ("-10", -10, None),
        ("299990-", -10, None),
    ):
        part = await fetch_bytes(
            jp_fetch,
            "GET",
            "sessions",
            "files-local",
            "files",
            "content",
            path="a.bin",
            headers={"Range": f"bytes={header}"},
        )
        assert part.code == 206 and part.body == payload[start:end], header
        first = start % len(payload)
        last = (end or len(payload)) - 1
        assert part.headers["Content-Range"] == f"bytes {first}-{last}/{len(payload)}"
    past = await fetch_bytes(
        jp_fetch,
        "GET",
        "sessions",
        "files-local",
        "files",
        "content",
        path="a.bin",
        headers={"Range": f"bytes={len(payload)}-"},
    )
    assert past.code == 416, past.body
    assert past.headers["Content-Range"] == f"bytes */{len(payload)}"
    empty = await fetch_bytes(
        jp_fetch, "GET", "sessions", "files-local", "files", "content", path="c.txt"
    )
    assert empty.code == 200 and empty.body == b""
    folder = await fetch_bytes(
        jp_fetch, "GET", "sessions", "files-local", "files", "content", path="deep"
    )
    assert folder.code == 400
    missing = await fetch_bytes(
        jp_fetch, "GET", "sessions", "files-local", "files", "content", path="nope"
    )
    assert missing.code == 404

    tar = await fetch_bytes(
        jp_fetch,
        "POST",
        "sessions",
        "files-local",
        "files",
        "archive",
        body={"paths": ["deep", "a.bin"]},
    )
    assert tar.code == 200 and tar.headers["Content-Type"] == "application/x-tar"
    with tarfile.open(fileobj=io.BytesIO(tar.body)) as archive:
        assert archive.getnames() == ["deep", "deep/er", "deep/er/b.txt", "a.bin"]
        extracted = archive.extractfile("a.bin")
        assert extracted is not None and extracted.read() == payload
    zipped = await fetch_bytes(
        jp_fetch,
        "POST",
        "sessions",
        "files-local",
        "files",
        "archive",
        body={"paths": ["."], "format": "zip"},
    )
    assert zipped.code == 200 and zipped.headers["Content-Type"] == "application/zip"
    assert "filename*=UTF-8''files.zip" in zipped.headers["Content-Disposition"]
    with zipfile.ZipFile(io.BytesIO(zipped.body)) as archive:
        assert archive.read("work/a.bin") == payload
        assert archive.read("work/deep/er/b.txt") == b"hello"
    assert (
        await api("POST", "sessions", "files-local", "files", "archive", body={"paths": ["x"]})
    ).code == 404
    bad = await api(
        "POST", "sessions", "files-local", "files", "archive", body={"paths": ["a"], "format": "7z"}
    )
    assert bad.code == 400 and bad.body["reason"] == "invalid-request"


async def test_overwrite_mkdir_move_and_delete(api: Api) -> None:
    await running_session(api, "files-manage")
    assert (await upload(api, "files-manage", [("f.txt", b"one")])).code == 201
    again = await upload(api, "files-manage", [("f.txt", b"two")])
    assert again.code == 409 and "overwrite=true" in again.body["message"]
    assert (await run_code(api, "files-manage", "print(open('f.txt').read())")).strip() == "one"
    replaced = await upload(api, "files-manage", [("f.txt", b"two")], overwrite="true")
    assert replaced.code == 201 and replaced.body["files"][0]["status"] == "replaced"
    twice = await upload(api, "files-manage", [("g.txt", b"1"), ("./g.txt", b"2")])
    assert twice.code == 400

    made = await api("POST", "sessions", "files-manage", "files", "mkdir", body={"path": "x/y"})
    assert made.code == 201 and made.body["path"] == "/home/work/x/y"
    exists = await api("POST", "sessions", "files-manage", "files", "mkdir", body={"path": "x"})
    assert exists.code == 409
    into = await upload(api, "files-manage", [("z.txt", b"z")], path="x/y")
    assert into.body["files"][0]["path"] == "/home/work/x/y/z.txt", into.body
    onto_dir = await upload(api, "files-manage", [("x", b"z")], overwrite="true")
    assert onto_dir.code == 409

    moved = await api(
        "POST",
        "sessions",
        "files-manage",
        "files",
        "move",
        body={"src": "f.txt", "dst": "x/f2.txt"},
    )
    assert moved.code == 200 and moved.body["path"] == "/home/work/x/f2.txt", moved.body
    clash = await api(
        "POST",
        "sessions",
        "files-manage",
        "files",
        "move",
        body={"src": "x/f2.txt", "dst": "x/y/z.txt"},
    )
    assert clash.code == 409
    into_itself = await api(
        "POST", "sessions", "files-manage", "files", "move", body={"src": "x", "dst": "x/y/x"}
    )
    assert into_itself.code == 400
    gone = await api(
        "POST", "sessions", "files-manage", "files", "move", body={"src": "nope", "dst": "a"}
    )
    assert gone.code == 404

    full = await api("DELETE", "sessions", "files-manage", "files", path="x")
    assert full.code == 409 and "recursive" in full.body["message"]
    assert (await api("DELETE", "sessions", "files-manage", "files", path="x/f2.txt")).code == 200
    assert (
        await api("DELETE", "sessions", "files-manage", "files", path="x", recursive="true")
    ).code == 200
    assert (await api("DELETE", "sessions", "files-manage", "files", path="x")).code == 404
    root = await api("DELETE", "sessions", "files-manage", "files", path="/home/work")
    assert root.code == 400
    listing = await api("GET", "sessions", "files-manage", "files", hidden="true")
    assert "x" not in {f["name"] for f in listing.body["files"]}


async def test_failed_uploads_leave_nothing_behind(api: Api, jp_fetch: Any) -> None:
    await running_session(api, "files-clean")
    work = await _work_dir(api, "files-clean")
    before = _tree(work)
    # The second file passes the per-file limit (1,000,000 bytes here): the first is removed
    # too, and so are the directories the request made.
    too_big = await upload(
        api, "files-clean", [("new/a.txt", b"a" * 10), ("new/b.bin", b"b" * 1_000_001)]
    )
    assert too_big.code == 413 and "1000000" in too_big.body["message"], too_big.body
    # A conflict in the middle: nothing of the request lands.
    assert (await upload(api, "files-clean", [("exists.txt", b"x")])).code == 201
    conflict = await upload(api, "files-clean", [("n1.txt", b"1"), ("exists.txt", b"2")])
    assert conflict.code == 409
    # A body cut short, and a part without a filename.
    body, content_type = multipart([("cut.txt", b"x" * 1000)])
    cut = await api(
        "POST",
        "sessions",
        "files-clean",
        "files",
        raw=body[:-40],
        headers={"Content-Type": content_type},
    )
    assert cut.code == 400, cut.body
    nameless = body.replace(b'; filename="cut.txt"', b"")
    refused = await api(
        "POST",
        "sessions",
        "files-clean",
        "files",
        raw=nameless,
        headers={"Content-Type": content_type},
    )
    assert refused.code == 400 and "filename" in refused.body["message"]
    not_multipart = await api("POST", "sessions", "files-clean", "files", body={"a": 1})
    assert not_multipart.code == 400
    assert _tree(work) == sorted([*before, "exists.txt"])


async def test_storage_quota_is_checked_before_and_during_uploads(api: Api, jp_fetch: Any) -> None:
    policy = await api("PATCH", "resource-policies", "default", body={"storage_quota": 200_000})
    assert policy.code == 200, policy.body
    await running_session(api, "files-quota")
    assert (await upload(api, "files-quota", [("a.bin", b"a" * 150_000)])).code == 201
    over = await upload(api, "files-quota", [("b.bin", b"b" * 50_000)])
    assert over.code == 413 and over.body["reason"] == "too-large"
    assert "storage quota" in over.body["message"] and "200000" in over.body["message"]
    # What the kernel itself keeps in its home (the work directory) counts too.
    used = over.body["details"]["used"]
    assert over.body["details"]["limit"] == 200_000 and 150_000 <= used < 200_000 - 1000
    # Measured as the bytes pass, too (no Content-Length: a chunked body).
    body, content_type = multipart([("c.bin", b"c" * 50_000)])

    async def produce(write: Any) -> None:
        for start in range(0, len(body), 4096):
            await write(body[start : start + 4096])

    chunked = await jp_fetch(
        "jupyter-sessions",
        "api",
        "sessions",
        "files-quota",
        "files",
        method="POST",
        body_producer=produce,
        headers={"Content-Type": content_type},
        raise_error=False,
    )
    assert chunked.code == 413, chunked.body
    listing = await api("GET", "sessions", "files-quota", "files")
    assert [f["name"] for f in listing.body["files"]] == ["a.bin"]
    assert _tree(await _work_dir(api, "files-quota")) == ["a.bin"]  # no temporaries either
    assert listing.body["storage"]["quota"] == 200_000
    assert listing.body["storage"]["used"] == used
    assert (await upload(api, "files-quota", [("small.bin", b"s" * 1000)])).code == 201


async def test_traversal_corpus_is_refused_on_every_action(
    api: Api, jp_fetch: Any, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    session = await running_session(api, "files-corpus")
    assert (await run_code(api, "files-corpus", make_links_code(str(outside)))).strip() == "ok"
    work = await _work_dir(api, "files-corpus")
    checked = await assert_corpus_refused(api, "files-corpus")
    assert checked >= 30 * 9
    await assert_links_out_refused(api, jp_fetch, "files-corpus")
    # Nothing outside was read into the session, written, moved or removed.
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret"
    assert (work / "file.txt").read_text() == "inside"
    assert not (work / "moved").exists() and not (work.parent / "x").exists()
    # A link that stays inside is followed.
    inside = await upload(api, session["id"], [("via-link.txt", b"v")], path="inside")
    assert inside.code == 201 and inside.body["files"][0]["path"] == "/home/work/sub/via-link.txt"


async def test_files_need_a_running_session(api: Api) -> None:
    session = await running_session(api, "files-ended")
    assert (await api("DELETE", "sessions", "files-ended")).code in (200, 202)
    for _ in range(100):
        info = await api("GET", "sessions", session["id"])
        if info.body["status"] == "TERMINATED":
            break
    listing = await api("GET", "sessions", session["id"], "files")
    assert listing.code == 409 and "RUNNING" in listing.body["message"], listing.body
    assert (await upload(api, session["id"], [("a", b"a")])).code == 409


async def test_a_client_that_goes_away_leaves_nothing_behind(api: Api, jp_fetch: Any) -> None:
    """The connection drops mid-file: the request's temporary file and directories go."""
    await running_session(api, "files-gone")
    work = await _work_dir(api, "files-gone")
    before = _tree(work)
    body, content_type = multipart([("gone/half.bin", b"h" * 900_000)])  # under the file limit
    seen: list[str] = []

    async def produce(write: Any) -> None:
        await write(body[: len(body) // 2])
        # The temporary file appears while the body streams; then the client gives up.
        for _ in range(200):
            seen.extend(name for name in _tree(work) if ".jsess-upload-" in name)
            if seen:
                break
            await asyncio.sleep(0.05)
        raise ConnectionAbortedError("the client gives up")

    with pytest.raises(ConnectionAbortedError):
        await jp_fetch(
            "jupyter-sessions",
            "api",
            "sessions",
            "files-gone",
            "files",
            method="POST",
            body_producer=produce,
            headers={"Content-Type": content_type, "Content-Length": str(len(body))},
        )
    assert seen, "the upload never started"
    for _ in range(200):
        if _tree(work) == before:
            break
        await asyncio.sleep(0.05)
    assert _tree(work) == before
