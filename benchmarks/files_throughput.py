"""Benchmark: upload and download throughput of the files API next to `docker cp` of the same
data into and out of the same session container, measured in the same run.

    .venv/bin/python benchmarks/files_throughput.py [--mib 512] [--runs 3]

Starts its own Jupyter server on the local Docker engine, creates one session, writes one file of
random data, then alternates: upload through `POST files` (multipart, streamed from disk), `docker
cp` into /home/work; download through `GET files/content` (streamed to disk), `docker cp` out.
Prints the best MB/s of each and the ratios API / docker cp (the goal is at least 0.9).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

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


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=512, help="size of the file moved (MiB)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each transfer (best kept)")
    args = parser.parse_args()
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
        best: dict[str, float] = {}

        def keep(kind: str, seconds: float) -> None:
            best[kind] = min(best.get(kind, float("inf")), seconds)

        try:
            for _ in range(args.runs):
                keep("api upload", api_upload(server, session, data, "api.bin"))
                keep("docker cp in", docker_cp(str(data), f"{container}:/home/work/cp.bin"))
                target = scratch / "api-out.bin"
                keep("api download", api_download(server, session, "api.bin", target))
                assert sha256(target) == expected, "the API download differs"
                target.unlink()
                keep("docker cp out", docker_cp(f"{container}:/home/work/cp.bin", str(scratch)))
                (scratch / "cp.bin").unlink()
        finally:
            server.http.delete(f"{server.api}/sessions/{session}", params={"forced": "true"})

    rate = {kind: size / seconds / 1e6 for kind, seconds in best.items()}
    print(f"{args.mib} MiB, best of {args.runs} runs (MB/s):")
    for kind in ("api upload", "docker cp in", "api download", "docker cp out"):
        print(f"  {kind:14s} {rate[kind]:8.1f}")
    print(f"  upload ratio   {rate['api upload'] / rate['docker cp in']:8.2f}  (API / docker cp)")
    print(
        f"  download ratio {rate['api download'] / rate['docker cp out']:8.2f}  (API / docker cp)"
    )
    data.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
