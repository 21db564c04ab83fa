"""Files in a real session container: the helper runs there as the kernel's user, so the
container's own view decides where a path leads; a second user never reaches them."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from typing import Any

import pytest

from .conftest import Api
from .files_support import (
    assert_corpus_refused,
    assert_links_out_refused,
    fetch_bytes,
    make_links_code,
    run_code,
    running_session,
    upload,
)
from .test_identity import keypair_auth, new_keypair

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_cleanup")]


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], kernel_image: str) -> dict[str, Any]:
    sessions_config["default_image"] = kernel_image
    return sessions_config


async def test_round_trip_as_the_kernels_user(api: Api, jp_fetch: Any) -> None:
    await running_session(api, "files-docker")
    payload = os.urandom(3 * 2**20 + 17)
    sent = await upload(
        api, "files-docker", [("data/blob.bin", payload), ("data/notes/é ü.txt", "ü".encode())]
    )
    assert sent.code == 201, sent.body
    assert [f["path"] for f in sent.body["files"]] == [
        "/home/work/data/blob.bin",
        "/home/work/data/notes/é ü.txt",
    ]
    seen = await run_code(
        api,
        "files-docker",
        "import hashlib, os\n"
        "st = os.stat('data/blob.bin')\n"
        "print(st.st_uid, st.st_gid, oct(st.st_mode & 0o777),"
        " hashlib.sha256(open('data/blob.bin','rb').read()).hexdigest())",
    )
    assert seen.split() == ["1000", "1000", "0o644", hashlib.sha256(payload).hexdigest()]

    listing = await api("GET", "sessions", "files-docker", "files", path="data")
    assert listing.code == 200 and listing.body["path"] == "/home/work/data"
    entries = {f["name"]: f for f in listing.body["files"]}
    assert entries["blob.bin"]["owner"] == "work" and entries["blob.bin"]["size"] == len(payload)
    assert entries["notes"]["type"] == "dir"

    down = await fetch_bytes(
        jp_fetch, "GET", "sessions", "files-docker", "files", "content", path="data/blob.bin"
    )
    assert (
        down.code == 200 and hashlib.sha256(down.body).digest() == hashlib.sha256(payload).digest()
    )
    named = await fetch_bytes(
        jp_fetch, "GET", "sessions", "files-docker", "files", "content", path="data/notes/é ü.txt"
    )
    assert named.body == "ü".encode()
    assert named.headers["Content-Disposition"].endswith("filename*=UTF-8''%C3%A9%20%C3%BC.txt")

    tar = await fetch_bytes(
        jp_fetch,
        "POST",
        "sessions",
        "files-docker",
        "files",
        "archive",
        body={"paths": ["/home/work/data"]},
    )
    assert tar.code == 200
    assert "filename*=UTF-8''data.tar" in tar.headers["Content-Disposition"]
    with tarfile.open(fileobj=io.BytesIO(tar.body)) as archive:
        names = archive.getnames()
        assert names == ["data", "data/blob.bin", "data/notes", "data/notes/é ü.txt"]
        blob = archive.getmember("data/blob.bin")
        assert (blob.uid, blob.mode) == (1000, 0o644)
        extracted = archive.extractfile(blob)
        assert extracted is not None and extracted.read() == payload

    moved = await api(
        "POST",
        "sessions",
        "files-docker",
        "files",
        "move",
        body={"src": "data/blob.bin", "dst": "blob.bin"},
    )
    assert moved.code == 200, moved.body
    made = await api("POST", "sessions", "files-docker", "files", "mkdir", body={"path": "m/n"})
    assert made.code == 201
    deleted = await api(
        "DELETE", "sessions", "files-docker", "files", path="data", recursive="true"
    )
    assert deleted.code == 200
    names = [
        f["name"] for f in (await api("GET", "sessions", "files-docker", "files")).body["files"]
    ]
    assert names == ["blob.bin", "m"]
    # A file never replaces a directory.
    refused = await api(
        "POST", "sessions", "files-docker", "files", "move", body={"src": "blob.bin", "dst": "m"}
    )
    assert refused.code == 409


async def test_traversal_corpus_is_refused_in_the_container(api: Api, jp_fetch: Any) -> None:
    session = await running_session(api, "files-corpus")
    prepared = await run_code(
        api,
        "files-corpus",
        "import os; os.makedirs('/tmp/outside', exist_ok=True);"
        " open('/tmp/outside/secret.txt', 'w').write('secret')",
    )
    assert prepared == ""
    assert (await run_code(api, "files-corpus", make_links_code("/tmp/outside"))).strip() == "ok"
    checked = await assert_corpus_refused(api, session["id"])
    assert checked >= 30 * 9
    await assert_links_out_refused(api, jp_fetch, "files-corpus")
    after = await run_code(
        api,
        "files-corpus",
        "import os; print(sorted(os.listdir('/tmp/outside')),"
        " open('/tmp/outside/secret.txt').read(), os.path.exists('/tmp/x'),"
        " os.path.exists('/home/work/moved'), open('file.txt').read())",
    )
    assert after.strip() == "['secret.txt'] secret False False inside"


async def test_a_second_user_gets_404_on_every_file_action(api: Api, jp_fetch: Any) -> None:
    session = await running_session(api, "files-private")
    assert (await upload(api, "files-private", [("mine.txt", b"mine")])).code == 201
    second = keypair_auth(await new_keypair(api, "files-second"))
    for ref in (session["id"], "files-private"):
        answers = {
            "list": await api("GET", "sessions", ref, "files", headers=second),
            "upload": await upload(api, ref, [("theirs.txt", b"x")], auth=second),
            "download": await api(
                "GET", "sessions", ref, "files", "content", path="mine.txt", headers=second
            ),
            "archive": await api(
                "POST", "sessions", ref, "files", "archive", body={"paths": ["."]}, headers=second
            ),
            "delete": await api(
                "DELETE", "sessions", ref, "files", path="mine.txt", headers=second
            ),
            "move": await api(
                "POST",
                "sessions",
                ref,
                "files",
                "move",
                body={"src": "mine.txt", "dst": "x"},
                headers=second,
            ),
            "mkdir": await api(
                "POST", "sessions", ref, "files", "mkdir", body={"path": "x"}, headers=second
            ),
        }
        codes = {name: answer.code for name, answer in answers.items()}
        assert set(codes.values()) == {404}, codes
        assert all("mine" not in str(a.body) for a in answers.values())
    names = [
        f["name"] for f in (await api("GET", "sessions", "files-private", "files")).body["files"]
    ]
    assert names == ["mine.txt"]
