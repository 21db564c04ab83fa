"""Following a kernel container's output live (``docker logs --follow``) without blocking the loop.

The docker SDK's stream is a blocking generator: a thread reads it and hands chunks to the loop.
Closing the stream (the client left) ends the thread; so does the container ending.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import threading
from collections.abc import AsyncIterator
from typing import Any

import docker
import docker.errors


async def follow_logs(
    client: docker.DockerClient, container_ref: str, *, tail: int | None
) -> AsyncIterator[str]:
    """The container's output from its last ``tail`` lines (all when None), then as it comes,
    until the container ends; nothing when it does not exist."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    holder: dict[str, Any] = {}

    def put(item: str | None) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed (server stop)
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def pump() -> None:
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        try:
            container = client.containers.get(container_ref)
            stream = container.logs(
                stdout=True, stderr=True, stream=True, follow=True, tail=tail or "all"
            )
            holder["stream"] = stream
            for chunk in stream:
                text = decoder.decode(chunk)
                if text:
                    put(text)
        except (docker.errors.DockerException, OSError, ValueError, AttributeError):
            pass  # gone, or closed under us because the client left
        finally:
            put(None)

    thread = threading.Thread(target=pump, name=f"jsess-logs-{container_ref[:20]}", daemon=True)
    thread.start()
    try:
        while (text := await queue.get()) is not None:
            yield text
    finally:
        stream = holder.get("stream")
        if stream is not None:
            await asyncio.to_thread(_close, stream)


def _close(stream: Any) -> None:
    with contextlib.suppress(Exception):  # already closed, or the engine went away
        stream.close()
