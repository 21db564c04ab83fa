"""Benchmark: upload and download throughput of the files API next to `docker cp` of the same
data into and out of the same session container, measured in the same run.

    .venv/bin/python benchmarks/files_throughput.py [--mib 512] [--runs 5] [--client curl|python]

Starts its own Jupyter server on the local Docker engine, creates one session, writes one file of
random data, then alternates: upload through `POST files` (multipart, streamed from disk), `docker
cp` into /home/work; download through `GET files/content` (streamed to disk), `docker cp` out.
Both sides move the same file, into and out of the same container's /home/work, from and to the
same scratch directory, each run one after the other; the best run of each is kept. Prints MB/s,
the server's CPU seconds per transfer, the load average (this machine is shared: a busy machine
lowers every figure, and the ratios only mean something within one run), and the ratios
API / docker cp (the goal is at least 0.9).

``--client curl`` (the default) is a native HTTP client, like the docker CLI on the other side:
it sends the multipart body with a Content-Length, as browsers do. ``--client python`` uses
requests, which sends a chunked body from a generator and costs the machine about 0.5 CPU second
per 512 MiB of its own, that docker cp doesn't pay.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from _server import Server, jupyter_server

CHUNK = 1 << 20


def multipart_body(path: Path, name: str, boundary: str) -> Iterator[bytes]:
    yield (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def curl(server: Server, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        ["curl", "-sSf", "-H", f"Authorization: token {server.token}", "-H", "Expect:", *args],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def curl_upload(server: Server, session: str, path: Path, name: str) -> float:
    url = f"{server.api}/sessions/{session}/files?overwrite=true"
    return curl(server, "-F", f"file=@{path};filename={name}", url)


def curl_download(server: Server, session: str, name: str, target: Path) -> float:
    return curl(
        server, "-o", str(target), f"{server.api}/sessions/{session}/files/content?path={name}"
    )


def api_upload(server: Server, session: str, path: Path, name: str) -> float:
    boundary = uuid.uuid4().hex
    started = time.perf_counter()
    answer = server.http.post(
        f"{server.api}/sessions/{session}/files",
        params={"overwrite": "true"},
        data=multipart_body(path, name, boundary),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        timeout=3600,
    )
    elapsed = time.perf_counter() - started
    answer.raise_for_status()
    return elapsed


def api_download(server: Server, session: str, name: str, target: Path) -> float:
    started = time.perf_counter()
    with server.http.get(
        f"{server.api}/sessions/{session}/files/content",
        params={"path": name},
        stream=True,
        timeout=3600,
    ) as answer:
        answer.raise_for_status()
        with open(target, "wb") as out:
            for chunk in answer.iter_content(CHUNK):
                out.write(chunk)
    return time.perf_counter() - started


def docker_cp(source: str, target: str) -> float:
    started = time.perf_counter()
    subprocess.run(["docker", "cp", source, target], check=True, capture_output=True)
    return time.perf_counter() - started


def server_pid(server: Server) -> int | None:
    """The server's process (for its CPU time): the one listening on the benchmark's port."""
    found = subprocess.run(
        ["pgrep", "-f", "--", f"--port={server.port}"], capture_output=True, text=True
    ).stdout.split()
    return int(found[0]) if found else None


def cpu_seconds(pid: int | None) -> float:
    if pid is None:
        return 0.0
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=512, help="size of the file moved (MiB)")
    parser.add_argument("--runs", type=int, default=5, help="runs of each transfer (best kept)")
    parser.add_argument("--client", choices=("curl", "python"), default="curl")
    args = parser.parse_args()
    if args.client == "curl" and shutil.which("curl") is None:
        print("curl is not installed; use --client python", file=sys.stderr)
        return 1
    upload, download = (
        (curl_upload, curl_download) if args.client == "curl" else (api_upload, api_download)
    )
    size = args.mib * 2**20
    scratch = Path(tempfile.mkdtemp(prefix="jsess-files-bench-"))
    data = scratch / "data.bin"
    with open(data, "wb") as out:
        for _ in range(args.mib):
            out.write(os.urandom(CHUNK))
    expected = sha256(data)

    with jupyter_server() as server:
        created = server.http.post(
            f"{server.api}/sessions", json={"name": "files-bench", "max_wait_seconds": 120}
        ).json()
        if created.get("status") != "RUNNING":
            print(f"the session did not start: {created}", file=sys.stderr)
            return 1
        session, container = created["id"], created["kernels"][0]["container_id"]
        pid = server_pid(server)
        best: dict[str, float] = {}
        cpu: dict[str, float] = {}
        load = os.getloadavg()[0]

        def keep(kind: str, seconds: float) -> None:
            best[kind] = min(best.get(kind, float("inf")), seconds)

        def api(kind: str, transfer: Any, *transfer_args: Any) -> None:
            before = cpu_seconds(pid)
            keep(kind, transfer(server, session, *transfer_args))
            used = cpu_seconds(pid) - before
            cpu[kind] = min(cpu.get(kind, float("inf")), used)

        try:
            for _ in range(args.runs):
                api("api upload", upload, data, "api.bin")
                keep("docker cp in", docker_cp(str(data), f"{container}:/home/work/cp.bin"))
                target = scratch / "api-out.bin"
                api("api download", download, "api.bin", target)
                assert sha256(target) == expected, "the API download differs"
                target.unlink()
                keep("docker cp out", docker_cp(f"{container}:/home/work/cp.bin", str(scratch)))
                (scratch / "cp.bin").unlink()
        finally:
            server.http.delete(f"{server.api}/sessions/{session}", params={"forced": "true"})

    rate = {kind: size / seconds / 1e6 for kind, seconds in best.items()}
    print(
        f"{args.mib} MiB, best of {args.runs} runs (MB/s), client {args.client}, load average "
        f"{load:.1f} before and {os.getloadavg()[0]:.1f} after:"
    )
    for kind in ("api upload", "docker cp in", "api download", "docker cp out"):
        spent = f"  (server CPU {cpu[kind]:.2f} s)" if kind in cpu else ""
        print(f"  {kind:14s} {rate[kind]:8.1f}{spent}")
    print(f"  upload ratio   {rate['api upload'] / rate['docker cp in']:8.2f}  (API / docker cp)")
    print(
        f"  download ratio {rate['api download'] / rate['docker cp out']:8.2f}  (API / docker cp)"
    )
    data.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
