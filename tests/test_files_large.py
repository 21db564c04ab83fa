"""The issue's acceptance run: 1,000 small files and one 1 GiB file through the REST API of a
Docker session, with checksums, while the server's memory (this pytest process runs it) is watched:
its resident size may grow by less than 100 MB while the 1 GiB moves."""

from __future__ import annotations

import hashlib
import io
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from tornado.httpclient import AsyncHTTPClient, HTTPRequest

from .conftest import Api
from .files_support import running_session, upload

pytestmark = [pytest.mark.docker, pytest.mark.large, pytest.mark.usefixtures("docker_cleanup")]

GIB = 2**30
BLOCK = 2**20
MAX_GROWTH = 100 * 10**6


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], kernel_image: str) -> dict[str, Any]:
    sessions_config["default_image"] = kernel_image
    return sessions_config


def rss() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class PeakRSS:
    """Samples this process's resident size in a thread; ``growth`` is peak minus the start."""

    def __init__(self) -> None:
        self.start = rss()
        self.peak = self.start
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def blocks(count: int) -> Iterator[bytes]:
    """``count`` MiB that no engine can compress or deduplicate (a counter in each block)."""
    base = hashlib.sha256(b"jupyter-sessions").digest() * (BLOCK // 32)
    for index in range(count):
        yield index.to_bytes(8, "big") + base[8:]


def big_body(boundary: str, name: str, size_mib: int) -> tuple[Callable[..., Any], int, str]:
    """A streamed multipart body of one file, its length and the file's sha256."""
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    digest = hashlib.sha256()
    for block in blocks(size_mib):
        digest.update(block)

    async def produce(write: Callable[[bytes], Any]) -> None:
        await write(head)
        for block in blocks(size_mib):
            await write(block)
        await write(tail)

    return produce, len(head) + size_mib * BLOCK + len(tail), digest.hexdigest()


async def test_a_thousand_files_and_one_gib_round_trip(
    api: Api, jp_serverapp: Any, server_url: str
) -> None:
    session = await running_session(api, "files-large")
    ref = session["id"]

    # 1,000 small files in one request, back as one archive.
    small = {f"many/d{i % 10}/f{i:04d}.txt": uuid.uuid4().bytes * (1 + i % 7) for i in range(1000)}
    sent = await upload(api, ref, small.items())
    assert sent.code == 201, sent.body
    assert len(sent.body["files"]) == 1000

    token = jp_serverapp.identity_provider.token
    client = AsyncHTTPClient(force_instance=True, max_body_size=2 * GIB)
    base = f"{server_url}jupyter-sessions/api/sessions/{ref}/files"
    auth = {"Authorization": f"token {token}"}
    try:
        tar_bytes = io.BytesIO()

        def keep(chunk: bytes) -> None:  # returns None: tornado awaits what a callback returns
            tar_bytes.write(chunk)

        answer = await client.fetch(
            HTTPRequest(
                f"{base}/archive",
                method="POST",
                headers=auth,
                body='{"paths": ["many"]}',
                streaming_callback=keep,
                request_timeout=600,
            )
        )
        assert answer.code == 200
        tar_bytes.seek(0)
        with tarfile.open(fileobj=tar_bytes) as tar:
            got = {
                m.name: hashlib.sha256(tar.extractfile(m).read()).hexdigest()  # type: ignore[union-attr]
                for m in tar.getmembers()
                if m.isfile()
            }
        assert got == {name: hashlib.sha256(data).hexdigest() for name, data in small.items()}

        # One GiB up and down, streamed on both sides, with the server's memory watched.
        boundary = uuid.uuid4().hex
        produce, length, expected = big_body(boundary, "big.bin", GIB // BLOCK)
        with PeakRSS() as up:
            started = time.monotonic()
            answer = await client.fetch(
                HTTPRequest(
                    base,
                    method="POST",
                    headers={
                        **auth,
                        "Content-Type": f"multipart/form-data; boundary={boundary}",
                        "Content-Length": str(length),
                    },
                    body_producer=produce,
                    request_timeout=1200,
                )
            )
            up_seconds = time.monotonic() - started
        assert answer.code == 201, answer.body
        digest = hashlib.sha256()
        received = 0

        def take(chunk: bytes) -> None:
            nonlocal received
            received += len(chunk)
            digest.update(chunk)

        with PeakRSS() as down:
            started = time.monotonic()
            answer = await client.fetch(
                HTTPRequest(
                    f"{base}/content?path=big.bin",
                    headers=auth,
                    streaming_callback=take,
                    request_timeout=1200,
                )
            )
            down_seconds = time.monotonic() - started
        assert answer.code == 200 and received == GIB
        assert digest.hexdigest() == expected
        print(
            f"\n1 GiB through the API: upload {GIB / up_seconds / 2**20:.0f} MiB/s "
            f"(RSS +{up.growth / 1e6:.1f} MB), download {GIB / down_seconds / 2**20:.0f} MiB/s "
            f"(RSS +{down.growth / 1e6:.1f} MB)"
        )
        assert up.growth < MAX_GROWTH, up.growth
        assert down.growth < MAX_GROWTH, down.growth
    finally:
        client.close()
