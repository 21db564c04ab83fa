"""The in-process event hub: status changes and task progress, fanned out to whoever listens.

Subscribers get their own bounded queue; a slow subscriber loses its oldest events rather than
slowing the publisher. The SSE route (owner-filtered) and the create call's wait both listen here.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class Event:
    kind: str  # session_status | task_progress | service_status
    owner_access_key: str
    data: dict[str, Any]
    at: datetime = field(default_factory=lambda: datetime.now(UTC))


class EventHub:
    def __init__(self, queue_size: int = 1000) -> None:
        self._subscribers: set[asyncio.Queue[Event]] = set()
        self._queue_size = queue_size

    def publish(self, event: Event) -> None:
        for queue in self._subscribers:
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(event)

    @contextlib.contextmanager
    def subscribe(self) -> Any:
        queue: asyncio.Queue[Event] = asyncio.Queue(self._queue_size)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)

    async def stream(self, accept: Callable[[Event], bool]) -> AsyncIterator[Event]:
        with self.subscribe() as queue:
            while True:
                event = await queue.get()
                if accept(event):
                    yield event
