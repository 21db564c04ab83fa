"""What the file tests share: multipart bodies, a session helper, and the traversal corpus that
every file action must refuse with 400 on every agent."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterable
from typing import Any

from .conftest import Api

#: Paths that lead outside the work directory, lexically or through the links ``make_links``
#: plants (``out_abs`` → a directory outside, ``out_rel`` → ../../.., ``chain`` → out_abs,
#: ``up`` → .., ``root`` → /, ``loop`` → loop, ``sub/out`` → ../../.., ``sub/hop`` → ../up).
CORPUS: list[str] = [
    "..",
    "../x",
    "../../etc/passwd",
    "./../x",
    "sub/../../x",
    "sub/./../../etc",
    "sub/../..",
    "file.txt/../../x",
    "/",
    "//etc/passwd",
    "/etc/passwd",
    "/home",
    "/home/workspace/x",
    "/home/work/../etc/passwd",
    "/home/work/../../etc",
    "/home/work/sub/../../..",
    "/proc/self/root/etc/passwd",
    "\x00",
    "a\x00b",
    "/home/work\x00/x",
    "sub/\x00",
    "x" * 256,
    "a/" * 2100 + "b",
    "out_abs/secret.txt",
    "out_abs/new.txt",
    "out_abs/sub/x",
    "out_rel/etc/passwd",
    "out_rel/x",
    "chain/secret.txt",
    "chain/x",
    "up/x",
    "up/work/file.txt",
    "root/etc/passwd",
    "root/tmp/x",
    "loop/x",
    "sub/out/x",
    "sub/hop/x",
]


def multipart(files: Iterable[tuple[str, bytes]], boundary: str | None = None) -> tuple[bytes, str]:
    """A multipart/form-data body: one part per (filename, content)."""
    boundary = boundary or uuid.uuid4().hex
    chunks: list[bytes] = []
    for name, content in files:
        disposition = f'form-data; name="file"; filename="{name}"'
        chunks.append(
            f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            "Content-Type: application/octet-stream\r\n\r\n".encode("utf-8", "surrogateescape")
        )
        chunks.append(content)
        chunks.append(b"\r\n")
    chunks.append(f"--{boundary}--\r\n".encode())
    return b"".join(chunks), f"multipart/form-data; boundary={boundary}"


async def upload(
    api: Api,
    ref: str,
    files: Iterable[tuple[str, bytes]],
    auth: dict[str, str] | None = None,
    **params: Any,
) -> Any:
    body, content_type = multipart(files)
    headers = {"Content-Type": content_type, **(auth or {})}
    return await api("POST", "sessions", ref, "files", raw=body, headers=headers, **params)


async def running_session(api: Api, name: str) -> dict[str, Any]:
    created = await api("POST", "sessions", body={"name": name, "max_wait_seconds": 120})
    assert created.code == 201, created.body
    for _ in range(600):
        if created.body["status"] == "RUNNING":
            return dict(created.body)
        assert created.body["status"] in (
            "PENDING",
            "SCHEDULED",
            "PREPARING",
            "PREPARED",
            "CREATING",
        ), created.body
        await asyncio.sleep(0.2)
        created = await api("GET", "sessions", name)
    raise AssertionError(f"session {name} never ran: {created.body}")


async def run_code(api: Api, ref: str, code: str) -> str:
    """Run code in the session's kernel; its stdout."""
    answer = await api("POST", "sessions", ref, "execute", body={"mode": "query", "code": code})
    assert answer.code == 200 and answer.body["status"] == "finished", answer.body
    return "".join(item[1] for item in answer.body["console"] if item[0] == "stdout")


def make_links_code(outside: str) -> str:
    """Python run in the session's work directory that plants the corpus's links."""
    links = {
        "out_abs": outside,
        "out_rel": "../../..",
        "chain": "out_abs",
        "up": "..",
        "root": "/",
        "loop": "loop",
        "sub/out": "../../..",
        "sub/hop": "../up",
        "inside": "sub",
    }
    return (
        "import os, json\n"
        "os.makedirs('sub', exist_ok=True)\n"
        "open('file.txt', 'w').write('inside')\n"
        f"for name, target in json.loads({json.dumps(json.dumps(links))}).items():\n"
        "    os.symlink(target, name)\n"
        "print('ok')\n"
    )


async def corpus_answers(api: Api, ref: str, path: str) -> dict[str, Any]:
    """Every file action aimed at ``path`` (all at once): status and body by action."""
    calls = {
        "list": api("GET", "sessions", ref, "files", path=path),
        "download": api("GET", "sessions", ref, "files", "content", path=path),
        "archive": api("POST", "sessions", ref, "files", "archive", body={"paths": [path]}),
        "upload-into": upload(api, ref, [("f.txt", b"data")], path=path),
        "upload-named": upload(api, ref, [(path, b"data")]),
        "delete": api("DELETE", "sessions", ref, "files", path=path),
        "move-from": api(
            "POST", "sessions", ref, "files", "move", body={"src": path, "dst": "moved"}
        ),
        "move-to": api(
            "POST", "sessions", ref, "files", "move", body={"src": "file.txt", "dst": path}
        ),
        "mkdir": api("POST", "sessions", ref, "files", "mkdir", body={"path": path}),
    }
    answers = await asyncio.gather(*calls.values())
    return {name: (a.code, a.body) for name, a in zip(calls, answers, strict=True)}


async def fetch_bytes(
    jp_fetch: Any, method: str, *path: str, body: Any = None, **params: Any
) -> Any:
    """A raw response (binary bodies: downloads and archives); never raises on 4xx/5xx."""
    kwargs: dict[str, Any] = {"method": method, "params": params or None, "raise_error": False}
    if body is not None:
        kwargs["body"] = json.dumps(body)
    headers = params.pop("headers", None)
    if headers:
        kwargs["headers"] = headers
        kwargs["params"] = params or None
    return await jp_fetch("jupyter-sessions", "api", *path, **kwargs)


#: Links that are themselves inside but lead outside: refused wherever they are followed.
LEADING_OUT = ["out_abs", "out_rel", "chain", "up", "root", "sub/out", "sub/hop", "loop"]


async def assert_corpus_refused(api: Api, ref: str) -> int:
    """Every corpus path, on every action: 400. Returns how many requests were checked."""
    failures, checked = [], 0
    for path in CORPUS:
        for action, (code, body) in (await corpus_answers(api, ref, path)).items():
            checked += 1
            if code != 400:
                failures.append((path[:40], action, code, body))
    assert not failures, failures
    return checked


async def assert_links_out_refused(api: Api, jp_fetch: Any, ref: str) -> None:
    """A link leading outside, named as the last component, is not followed by reads."""
    for path in LEADING_OUT:
        listed = await api("GET", "sessions", ref, "files", path=path)
        assert listed.code == 400, (path, listed.body)
        down = await fetch_bytes(jp_fetch, "GET", "sessions", ref, "files", "content", path=path)
        assert down.code == 400, (path, down.code, down.body)
        arch = await api("POST", "sessions", ref, "files", "archive", body={"paths": [path]})
        assert arch.code == 400, (path, arch.body)
    # The links themselves are listed as links, and may be removed.
    listing = await api("GET", "sessions", ref, "files")
    links = {f["name"]: f.get("target") for f in listing.body["files"] if f["type"] == "symlink"}
    assert links["chain"] == "out_abs" and links["up"] == ".."
