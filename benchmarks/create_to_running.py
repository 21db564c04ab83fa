"""Benchmark: create → RUNNING through the REST API, next to a plain `docker run` of the same image
with its kernel answering (the baseline), both measured in the same run.

    .venv/bin/python benchmarks/create_to_running.py [--runs 10]

Starts its own Jupyter server (fresh store, loopback, a random token) on the local Docker engine.
Prints p50/p90 of each and their ratio. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import io
import json
import secrets
import statistics
import sys
import tarfile
import time

import docker
from _server import jupyter_server
from jupyter_client import BlockingKernelClient

from jupyter_sessions.images import image_tag

PORTS = {
    "shell_port": 5000,
    "iopub_port": 5001,
    "stdin_port": 5002,
    "control_port": 5003,
    "hb_port": 5004,
}


def plain_docker_run(client: docker.DockerClient, image: str) -> float:
    """`docker run` of the image with a connection file, until kernel_info answers."""
    key = secrets.token_hex(32)
    inner = {
        **PORTS,
        "ip": "0.0.0.0",
        "transport": "tcp",
        "key": key,
        "signature_scheme": "hmac-sha256",
    }
    payload = json.dumps(inner).encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        info = tarfile.TarInfo("connection.json")
        info.size, info.uid, info.gid, info.mode = len(payload), 1000, 1000, 0o600
        tar.addfile(info, io.BytesIO(payload))
    started = time.perf_counter()
    container = client.containers.create(
        image, ports={f"{p}/tcp": ("127.0.0.1", None) for p in PORTS.values()}, detach=True
    )
    try:
        container.put_archive("/tmp", buffer.getvalue())
        container.start()
        container.reload()
        ports = container.attrs["NetworkSettings"]["Ports"]
        outer = {n: int(ports[f"{p}/tcp"][0]["HostPort"]) for n, p in PORTS.items()}
        kc = BlockingKernelClient()
        kc.load_connection_info(
            {
                **outer,
                "ip": "127.0.0.1",
                "transport": "tcp",
                "key": key,
                "signature_scheme": "hmac-sha256",
            }
        )
        kc.start_channels()
        try:
            while True:
                msg_id = kc.kernel_info()
                try:
                    reply = kc.get_shell_msg(timeout=1)
                    if reply["parent_header"].get("msg_id") == msg_id:
                        break
                except Exception:
                    continue
        finally:
            kc.stop_channels()
        return time.perf_counter() - started
    finally:
        container.remove(force=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    image = image_tag()
    client = docker.from_env()
    client.images.get(image)  # fails clearly when the image was not built

    with jupyter_server() as server:
        http, base = server.http, server.api
        plain_docker_run(client, image)  # warm the engine's caches for both sides alike
        ours: list[float] = []
        plain: list[float] = []
        for run in range(args.runs):
            plain.append(plain_docker_run(client, image))
            started = time.perf_counter()
            answer = http.post(
                f"{base}/sessions",
                json={"name": f"bench-{run:03d}", "max_wait_seconds": 120},
                timeout=180,
            )
            elapsed = time.perf_counter() - started
            body = answer.json()
            if answer.status_code != 201 or body["status"] != "RUNNING":
                print(f"run {run}: {answer.status_code} {body}", file=sys.stderr)
                return 1
            ours.append(elapsed)
            http.delete(f"{base}/sessions/{body['id']}", params={"forced": "true"}, timeout=60)
        p50_ours, p50_plain = statistics.median(ours), statistics.median(plain)
        q = statistics.quantiles
        print(f"runs: {args.runs}  image: {image}")
        print(
            f"plain docker run → kernel ready: p50 {p50_plain * 1000:.0f} ms, "
            f"p90 {q(plain, n=10)[-1] * 1000:.0f} ms"
        )
        print(
            f"POST sessions → RUNNING:         p50 {p50_ours * 1000:.0f} ms, "
            f"p90 {q(ours, n=10)[-1] * 1000:.0f} ms"
        )
        print(f"ratio (ours / plain, p50): {p50_ours / p50_plain:.2f}")
        return 0


if __name__ == "__main__":
    sys.exit(main())
