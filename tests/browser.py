"""Browser fixtures: Debian's Chromium, headless, driven by Playwright's async API.

Playwright's own browser download can't reach its CDN here, so the tests launch the system
Chromium (`apt-get install chromium`, done by scripts/setup.sh). Screenshots go to
``test-artifacts/`` at the top of the repository, kept after the run (and ignored by git).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture
def browser(jp_asyncio_loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
    """A headless Chromium (playwright.async_api.Browser) for one test, on the test's loop."""
    from playwright.async_api import async_playwright

    run = jp_asyncio_loop.run_until_complete
    playwright = run(async_playwright().start())
    chromium = run(playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS))
    try:
        yield chromium
    finally:
        run(chromium.close())
        run(playwright.stop())


@pytest.fixture
def server_url(jp_serverapp: Any, http_server: Any, jp_http_port: int, jp_base_url: str) -> str:
    """The test server's base URL on a real listening socket (jp_fetch alone never listens)."""
    return f"http://127.0.0.1:{jp_http_port}{jp_base_url}"


@pytest.fixture
def artifacts_dir(request: pytest.FixtureRequest) -> Path:
    """Where a test keeps its screenshots: ``test-artifacts/<test name>/``."""
    path = ARTIFACTS / request.node.name.replace("/", "_")
    path.mkdir(parents=True, exist_ok=True)
    return path
