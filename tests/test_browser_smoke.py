"""The browser fixture itself: the system Chromium starts and loads the Jupyter server's page."""

from __future__ import annotations

from pathlib import Path
from typing import Any


async def test_chromium_loads_the_server_login_page(
    browser: Any, server_url: str, artifacts_dir: Path
) -> None:
    page = await browser.new_page()
    response = await page.goto(server_url + "login")
    assert response is not None and response.status == 200
    assert await page.locator("#password_input").count() == 1
    await page.screenshot(path=str(artifacts_dir / "login.png"))
    assert (artifacts_dir / "login.png").stat().st_size > 1000
