"""The client and the widget on the Docker agent: what only containers have (services, images,
background tasks and their events), through the same calls a notebook makes."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import docker
import pytest

from jupyter_sessions.client import AsyncSessionsClient, Event, ServerInfo, SessionsClient
from jupyter_sessions.widgets import SessionsWidget

pytestmark = pytest.mark.docker


@pytest.fixture
def server(server_url: str, jp_serverapp: Any) -> ServerInfo:
    return ServerInfo(server_url, str(jp_serverapp.identity_provider.token))


async def test_convert_to_image_is_a_task_with_events(
    server: ServerInfo,
    kernel_image: str,
    docker_client: docker.DockerClient,
    docker_cleanup: None,
) -> None:
    made: list[str] = []
    try:
        async with AsyncSessionsClient(server=server) as client:
            created = await client.create_session(
                kernel_image, name="dock-client", max_wait_seconds=120
            )
            assert created["status"] == "RUNNING", created
            session_id = created["id"]

            out: list[str] = []
            result = await client.run(
                "dock-client",
                "import os\nopen('kept.txt', 'w').write('in the image')\nprint(os.getuid())",
                on_output=lambda kind, data: out.append(data),
            )
            assert result["status"] == "finished" and "".join(out) == "1000\n"

            services = await client.list_services("dock-client")
            assert "jupyter" in [service["name"] for service in services["services"]]
            report = await client.abusing_report("dock-client")
            assert isinstance(report, dict)

            events = client.events(session=session_id)
            first = asyncio.ensure_future(events.__anext__())
            await asyncio.sleep(0)
            task = await client.convert_to_image("dock-client", "client-made")
            assert task["kind"] and task["status"] in ("pending", "running", "done")
            progress: list[Event] = []
            event = await asyncio.wait_for(first, 120)
            while True:
                if event.event == "task_progress" and event.data.get("task_id") == task["id"]:
                    progress.append(event)
                    if event.data["status"] in ("done", "failed", "cancelled"):
                        break
                event = await asyncio.wait_for(events.__anext__(), 300)
            await events.aclose()
            done = await client.wait_task(task["id"], timeout=300)
            assert done["status"] == "done", done
            made.append(done["result"]["image"])
            assert progress[-1].data["status"] == "done"
            status = await client.commit_status("dock-client")
            assert status["status"] == "ready" and status["last"]["id"] == task["id"]

        # The blocking client sees the same task, and the image is on the engine.
        def blocking() -> dict[str, Any]:
            with SessionsClient(server=server) as sync:
                return sync.get_task(task["id"])

        assert (await asyncio.to_thread(blocking))["status"] == "done"

        # The widget's Services and Commits tabs show the same, through their models.
        def widget_tabs() -> tuple[tuple[str, ...], str]:
            with SessionsClient(server=server) as sync:
                widget = SessionsWidget(sync, live=False)
                widget.refresh()
                widget.select("dock-client")
                widget.detail.tabs.selected_index = 1
                services = tuple(widget.detail.services.service.options)
                widget.detail.tabs.selected_index = 3
                task_line = widget.detail.commits.task.value
                widget.close()
                return services, task_line

        services_shown, task_line = await asyncio.to_thread(widget_tabs)
        assert "jupyter" in services_shown
        assert task["id"] in task_line and "done" in task_line
        assert docker_client.images.get(made[0]).id == done["result"]["image_id"]
    finally:
        for name in made:
            with contextlib.suppress(docker.errors.APIError):
                docker_client.images.remove(name, force=True)
