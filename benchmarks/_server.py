"""A real Jupyter server with jupyter_sessions for benchmarks: own store, loopback, random token."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    port: int
    token: str
    workdir: Path
    http: requests.Session

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/jupyter-sessions/api"


@contextmanager
def jupyter_server(*extra: str) -> Iterator[Server]:
    token = secrets.token_hex(16)
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="jsess-bench-"))
    command = [
        sys.executable,
        "-m",
        "jupyter_server",
        f"--port={port}",
        "--ip=127.0.0.1",
        "--no-browser",
        f"--IdentityProvider.token={token}",
        "--allow-root",
        f"--ServerApp.root_dir={workdir}",
        f"--SessionsApp.db_url=sqlite:///{workdir}/sessions.db",
        "--SessionsApp.scheduler_interval=0.5",
        *extra,
    ]
    with open(workdir / "server.log", "w") as log:
        server = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "JUPYTER_DATA_DIR": str(workdir / "data")},
        )
        http = requests.Session()
        http.headers["Authorization"] = f"token {token}"
        handle = Server(port, token, workdir, http)
        try:
            for _ in range(150):
                try:
                    if http.get(f"{handle.api}/agents", timeout=5).status_code == 200:
                        break
                except requests.ConnectionError:
                    pass
                time.sleep(0.2)
            else:
                raise RuntimeError(f"the server did not start; see {workdir}/server.log")
            yield handle
        finally:
            server.terminate()
            server.wait(30)
