"""The JupyterLab panel in a real browser (Debian's Chromium) against a real Docker session, and the
labextension as JupyterLab sees it (`jupyter labextension list`).

The test server loads JupyterLab itself (``jupyterlab`` in ``jpserver_extensions``) and finds the
panel where the editable install builds it, ``jupyter_sessions/labextension/``, through a link
like `jupyter labextension develop` makes: pytest-jupyter points Jupyter's data paths at temporary
directories, so the venv's share/jupyter is not seen.
Screenshots are kept in ``test-artifacts/<test name>/``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest

import jupyter_sessions

from .conftest import Api

PACKAGE_DIR = Path(jupyter_sessions.__file__).resolve().parent
BUILT = PACKAGE_DIR / "labextension"
#: Generous: two cores shared by several test runs, a container to start, JupyterLab to load.
SLOW_MS = 180_000
#: Any other wait of the page.
STEP_MS = 60_000


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], kernel_image: str) -> dict[str, Any]:
    sessions_config["default_image"] = kernel_image
    return sessions_config


@pytest.fixture(scope="session")
def labextensions(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `jupyter labextension develop` makes: <dir>/<package name> → the build (JupyterLab
    serves an extension's files from a directory named after its package). One for the whole
    run: jupyter_server's static file handler caches a file's path by URL in the process, so a
    second server with another directory would be refused the cached path (403)."""
    assert (BUILT / "package.json").exists(), (
        f"{BUILT} is missing: build the labextension (pip install -e . builds it)"
    )
    path = tmp_path_factory.mktemp("labextensions")
    (path / "jupyter-sessions").symlink_to(BUILT, target_is_directory=True)
    return path


@pytest.fixture
def jp_server_config(sessions_config: dict[str, Any], labextensions: Path) -> dict[str, Any]:
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_sessions": True, "jupyterlab": True}},
        "SessionsApp": sessions_config,
        "LabApp": {
            "extra_labextensions_path": [str(labextensions)],
            "news_url": None,
            # window.jupyterapp: the tests call JupyterLab's commands.
            "expose_app_in_browser": True,
            "check_for_updates_class": "jupyterlab.NeverCheckForUpdate",
        },
    }


async def open_lab(browser: Any, server_url: str, jp_serverapp: Any) -> tuple[Any, Any]:
    """A new browser context on JupyterLab with the sessions panel open."""
    context = await browser.new_context(
        accept_downloads=True, viewport={"width": 1400, "height": 900}
    )
    page = await context.new_page()
    page.set_default_timeout(STEP_MS)
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    token = jp_serverapp.identity_provider.token
    await page.goto(f"{server_url}lab?token={token}")
    tab = page.locator('.jp-SideBar li.lm-TabBar-tab[data-id="jupyter-sessions-panel"]')
    await tab.wait_for(timeout=SLOW_MS)
    if await page.locator('.jp-Dialog[aria-label^="Error Loading Theme"]').count():
        # JupyterLab gives up on its theme's stylesheet when the machine is very busy (2 cores
        # shared by several runs): load the page once more rather than test an unstyled one.
        await page.reload()
        await tab.wait_for(timeout=SLOW_MS)
    # The panel's own command: it activates the panel (a click on its tab would close it when
    # JupyterLab's layout restorer had opened it already).
    await page.evaluate(
        """async () => {
            await window.jupyterapp.restored;
            await window.jupyterapp.commands.execute('jupyter-sessions:show-panel');
        }"""
    )
    await page.locator("#jupyter-sessions-panel .jp-SessionsPanel-header").wait_for()
    assert not errors, errors
    return context, page


async def create_from_dialog(page: Any, name: str, cpu: str = "0.5", mem: str = "512m") -> None:
    await page.click('#jupyter-sessions-panel button[data-command="jupyter-sessions:create"]')
    dialog = page.locator(".jp-Dialog")
    await dialog.locator('input[name="name"]').fill(name)
    await dialog.locator('input[name="cpu"]').fill(cpu)
    await dialog.locator('input[name="mem"]').fill(mem)
    await dialog.locator("button.jp-mod-accept").click()


async def wait_row(page: Any, name: str, status: str) -> Any:
    row = page.locator(f'#jupyter-sessions-panel li[data-session-name="{name}"]')
    await page.locator(
        f'#jupyter-sessions-panel li[data-session-name="{name}"][data-status="{status}"]'
    ).wait_for(timeout=SLOW_MS)
    return row


async def wait_for_service_page(page: Any) -> None:
    """The proxied JupyterLab answers once its server is up: reload until it does (bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SLOW_MS / 1000
    while True:
        title = await page.title()
        if "JupyterLab" in title or "Jupyter" in title:
            return
        assert loop.time() < deadline, f"the service never answered: {await page.content()}"
        await asyncio.sleep(2)
        await page.reload()


async def wait_kernel_connected(page: Any) -> None:
    """Until the current notebook or console has its kernel, connected and idle: a cell run
    before that is dropped silently (the toolbar says "idle" even before there is a kernel)."""
    await page.wait_for_function(
        """() => {
            const context = window.jupyterapp.shell.currentWidget?.sessionContext;
            const kernel = context?.session?.kernel;
            return !!kernel && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
        }""",
        timeout=SLOW_MS,
        polling=200,
    )


async def show_view(page: Any, view: str) -> Any:
    await page.click(f'#jupyter-sessions-panel .jp-SessionsTab[data-view="{view}"]')
    return page.locator("#jupyter-sessions-panel .jp-SessionsView")


async def open_notebook_on_session(
    page: Any, api: Api, jp_serverapp: Any, session_id: str, artifacts_dir: Path
) -> None:
    """The panel's "Open notebook on this session" on the selected session (which has
    /home/work/hello.txt): the notebook's kernel is a kernel of this server attached to the
    session's main kernel, so its cell runs in that container; shutting it down detaches, and
    the session's kernel keeps what the cell defined."""
    connection = await api("GET", "sessions", session_id, "kernels", "main1", "connection")
    assert connection.code == 200, connection.body
    container_id = connection.body["container_id"]
    assert container_id, connection.body
    kernels_before = set(jp_serverapp.kernel_manager.list_kernel_ids())

    notebooks = page.locator(".jp-NotebookPanel")
    count = await notebooks.count()
    await page.click(
        '#jupyter-sessions-panel button[data-command="jupyter-sessions:open-notebook"]'
    )
    notebook = notebooks.nth(count)
    await notebook.wait_for(timeout=SLOW_MS)
    await wait_kernel_connected(page)
    [kernel_id] = set(jp_serverapp.kernel_manager.list_kernel_ids()) - kernels_before
    cell = notebook.locator(".jp-Cell .cm-content").first
    await cell.click()
    await page.keyboard.type(
        "import os; from_notebook = 6 * 7; "
        "print('host', os.uname().nodename, 'reads', open('/home/work/hello.txt').read())"
    )
    await page.keyboard.press("Shift+Enter")
    output = notebook.locator(".jp-OutputArea-output", has_text="reads hello from the panel")
    await output.wait_for(timeout=SLOW_MS)
    host = re.search(r"host (\S+)", await output.inner_text())
    assert host and container_id.startswith(host.group(1)), (host, container_id)
    # The notebook is connected to the kernel the route started (by id), nothing else.
    shown = await notebook.evaluate(
        """() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.id"""
    )
    assert shown == kernel_id, (shown, kernel_id)
    await page.screenshot(path=str(artifacts_dir / "notebook-on-panel-session.png"))

    # Shut the notebook's kernel down and close it: that detaches; the session keeps running
    # with its kernel's state (the variable the cell defined).
    await page.evaluate(
        """async () => {
            const widget = window.jupyterapp.shell.currentWidget;
            await widget.sessionContext.shutdown();
            widget.dispose();
        }"""
    )
    await notebook.wait_for(state="detached")
    assert kernel_id not in jp_serverapp.kernel_manager.list_kernel_ids()
    session = await api("GET", "sessions", session_id)
    assert session.body["status"] == "RUNNING", session.body
    result = await run_code(api, session_id, "print('still', from_notebook)")
    assert "still 42" in "".join(data for kind, data in result if kind == "stdout"), result

    # A console on the session, likewise: it sees the same kernel's state.
    await page.click('#jupyter-sessions-panel button[data-command="jupyter-sessions:open-console"]')
    console = page.locator(".jp-CodeConsole").last
    await console.wait_for(timeout=SLOW_MS)
    await wait_kernel_connected(page)
    await console.locator(".jp-CodeConsole-input .cm-content").click()
    await page.keyboard.type("print('console sees', from_notebook, 'on', os.uname().nodename)")
    await page.keyboard.press("Shift+Enter")
    said = console.locator(".jp-OutputArea-output", has_text="console sees 42 on")
    await said.wait_for(timeout=SLOW_MS)
    assert container_id.startswith((await said.inner_text()).split()[-1]), container_id
    await page.screenshot(path=str(artifacts_dir / "console-on-panel-session.png"))
    await page.evaluate(
        """async () => {
            const widget = window.jupyterapp.shell.currentWidget;
            await widget.sessionContext.shutdown();
            widget.dispose();
        }"""
    )
    await console.wait_for(state="detached")
    assert set(jp_serverapp.kernel_manager.list_kernel_ids()) == kernels_before
    session = await api("GET", "sessions", session_id)
    assert session.body["status"] == "RUNNING", session.body


async def run_code(api: Api, session_id: str, code: str) -> list[list[Any]]:
    """Code run in the session's main kernel (execute in query mode, continued to its end)."""
    answer = await api(
        "POST", "sessions", session_id, "execute", body={"mode": "query", "code": code}
    )
    assert answer.code == 200, answer.body
    console = list(answer.body["console"])
    while answer.body["status"] == "continued":
        answer = await api(
            "POST",
            "sessions",
            session_id,
            "execute",
            body={"mode": "continue", "run_id": answer.body["run_id"]},
        )
        assert answer.code == 200, answer.body
        console += answer.body["console"]
    return console


@pytest.mark.browser
@pytest.mark.docker
@pytest.mark.usefixtures("docker_cleanup")
async def test_the_panel_runs_a_session_from_create_to_destroy(
    browser: Any, server_url: str, jp_serverapp: Any, api: Api, artifacts_dir: Path
) -> None:
    context, page = await open_lab(browser, server_url, jp_serverapp)
    panel = page.locator("#jupyter-sessions-panel")
    try:
        # A refused create is a JupyterLab dialog carrying the server's own message.
        refused = await api("POST", "sessions", body={"name": "x!", "enqueue_only": True})
        assert refused.code == 400, refused.body
        await create_from_dialog(page, "x!")
        error = page.locator(".jp-Dialog")
        await error.locator(".jp-Dialog-header", has_text="Could not create the session").wait_for()
        assert refused.body["message"] in await error.inner_text()
        await error.locator(".jp-Dialog-footer button").last.click()
        await error.wait_for(state="detached")

        # Create from the dialog; the row follows the session to RUNNING.
        await create_from_dialog(page, "ui-session", cpu="1", mem="1g")
        row = await wait_row(page, "ui-session", "RUNNING")
        listed = await api("GET", "sessions", "ui-session")
        assert listed.code == 200 and listed.body["status"] == "RUNNING", listed.body
        assert listed.body["resources"] == {"cpu": 1, "mem": 2**30}
        await row.click()

        # Info: the status history as a timeline, from PENDING to RUNNING.
        info = await show_view(page, "info")
        timeline = info.locator(".jp-SessionsTimeline-entry")
        await timeline.last.wait_for()
        statuses = [await e.get_attribute("data-status") for e in await timeline.all()]
        assert statuses[0] == "PENDING" and statuses[-1] == "RUNNING", statuses
        await page.screenshot(path=str(artifacts_dir / "panel-running-session.png"))

        # Run a cell in the session's kernel; it also writes to the kernel process's file
        # descriptor 1, the container's own stdout, which is what the logs show (ipykernel may
        # forward that write to the cell's output too, after the flushed print).
        run = await show_view(page, "run")
        await run.locator("textarea").fill(
            "import os\n"
            "print('answer', 6 * 7, os.getcwd(), flush=True)\n"
            "os.write(1, b'marker-in-the-container-log\\n')"
        )
        await run.locator("button", has_text="Run").click()
        output = run.locator('.jp-SessionsRun-output[data-state="done"]')
        await output.wait_for()
        assert "answer 42 /home/work" in await output.inner_text()
        await page.screenshot(path=str(artifacts_dir / "panel-run.png"))

        # Logs: the kernel's output, with the line written above.
        logs = await show_view(page, "logs")
        await logs.locator("pre.jp-SessionsLogs", has_text="marker-in-the-container-log").wait_for()
        await page.screenshot(path=str(artifacts_dir / "panel-logs.png"))

        # Files: upload through the view's file input, see it listed, download it back.
        files = await show_view(page, "files")
        await files.locator('input[type="file"]').set_input_files(
            files=[
                {"name": "hello.txt", "mimeType": "text/plain", "buffer": b"hello from the panel\n"}
            ]
        )
        entry = files.locator('li.jp-SessionsFiles-entry[data-name="hello.txt"]')
        await entry.wait_for()
        async with page.expect_download() as download_info:
            await entry.locator("button.jp-SessionsFiles-download").click()
        download = await download_info.value
        saved = artifacts_dir / "downloaded-hello.txt"
        await download.save_as(saved)
        assert download.suggested_filename == "hello.txt"
        assert saved.read_bytes() == b"hello from the panel\n"
        on_server = await api("GET", "sessions", "ui-session", "files", "content", path="hello.txt")
        assert on_server.body == "hello from the panel\n", on_server.body
        # Drag and drop: a file dropped on the view is uploaded into the folder shown.
        await files.evaluate(
            """(view) => {
                const data = new DataTransfer();
                data.items.add(new File(["dropped bytes"], "dropped.txt", {type: "text/plain"}));
                view.dispatchEvent(new DragEvent("dragover", {dataTransfer: data, bubbles: true}));
                view.dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
            }"""
        )
        await files.locator('li.jp-SessionsFiles-entry[data-name="dropped.txt"]').wait_for()
        # Both, selected, as one zip archive.
        for name in ("hello.txt", "dropped.txt"):
            await files.locator(f'li[data-name="{name}"] input[type="checkbox"]').check()
        async with page.expect_download() as download_info:
            await files.locator("button", has_text="Download selected").click()
        archive = artifacts_dir / "downloaded.zip"
        await (await download_info.value).save_as(archive)
        with zipfile.ZipFile(archive) as zipped:
            assert zipped.read("hello.txt") == b"hello from the panel\n"
            assert zipped.read("dropped.txt") == b"dropped bytes"
        await page.screenshot(path=str(artifacts_dir / "panel-files.png"))

        # A notebook on this very session, from the panel's action: its cell runs in the
        # session's container (the hostname is the container id's prefix, and it reads the file
        # uploaded above). Closing the notebook and shutting its kernel down only detaches.
        await open_notebook_on_session(page, api, jp_serverapp, listed.body["id"], artifacts_dir)

        # Services: start the image's http service (JupyterLab in the container) and open it
        # through the proxy, in a new tab on the service's own origin.
        services = await show_view(page, "services")
        service = services.locator('li.jp-SessionsServices-entry[data-name="jupyter"]')
        async with context.expect_page(timeout=STEP_MS) as popup_info:
            await service.locator("button.jp-mod-accept").click()
        popup = await popup_info.value
        await popup.wait_for_url(re.compile(r"^http://[^/]*\.localhost:\d+/"), timeout=SLOW_MS)
        await wait_for_service_page(popup)
        await popup.locator(".jp-LabShell").wait_for(timeout=SLOW_MS)
        await popup.locator("#jupyterlab-splash").wait_for(state="detached", timeout=SLOW_MS)
        await popup.screenshot(path=str(artifacts_dir / "service-jupyter.png"))
        await popup.close()
        await services.locator(
            'li.jp-SessionsServices-entry[data-name="jupyter"][data-status="running"]'
        ).wait_for(timeout=SLOW_MS)
        await page.screenshot(path=str(artifacts_dir / "panel-services.png"))

        # Usage: at least one sample drawn.
        usage = await show_view(page, "usage")
        await usage.locator("svg.jp-SessionsSparkline").first.wait_for()
        assert "Memory:" in await usage.inner_text()

        # Destroy, confirmed in a dialog; the session ends (and the engine holds nothing of it).
        await panel.locator('button[data-command="jupyter-sessions:destroy"]').click()
        await page.locator(".jp-Dialog button.jp-mod-warn").click()
        await wait_row(page, "ui-session", "TERMINATED")
        ended = await api("GET", "sessions", listed.body["id"])
        assert ended.body["status"] == "TERMINATED", ended.body
        await page.screenshot(path=str(artifacts_dir / "panel-destroyed.png"))
    finally:
        await context.close()


@pytest.mark.browser
@pytest.mark.docker
@pytest.mark.usefixtures("docker_cleanup")
async def test_a_notebook_cell_runs_in_a_session_that_the_panel_shows(
    browser: Any, server_url: str, jp_serverapp: Any, artifacts_dir: Path
) -> None:
    """A notebook on the generated session kernelspec (the kernel provisioner) runs its cell in a
    container, as the image's user; the panel lists that kernel's session, live."""
    context, page = await open_lab(browser, server_url, jp_serverapp)
    try:
        # The specs are written when the extension starts (the panel's first request); read them
        # again, then open a notebook on the default image's spec.
        await page.evaluate(
            """async () => {
                const app = window.jupyterapp;
                await app.serviceManager.kernelspecs.refreshSpecs();
                await app.commands.execute('notebook:create-new', {kernelName: 'jsess-default'});
            }"""
        )
        notebook = page.locator(".jp-NotebookPanel").last
        await notebook.wait_for()
        await page.locator(
            '#jupyter-sessions-panel li[data-session-name^="kernel-"][data-status="RUNNING"]'
        ).wait_for(timeout=SLOW_MS)
        await wait_kernel_connected(page)
        cell = notebook.locator(".jp-Cell .cm-content").first
        await cell.click()
        await page.keyboard.type("import os; print('uid', os.getuid(), 'in', os.uname().nodename)")
        await page.keyboard.press("Shift+Enter")
        output = notebook.locator(".jp-OutputArea-output", has_text="uid 1000 in")
        await output.wait_for(timeout=SLOW_MS)
        await page.screenshot(path=str(artifacts_dir / "notebook-on-session.png"))
    finally:
        await context.close()


def test_jupyter_labextension_list_reports_the_panel_ok(tmp_path: Path) -> None:
    """What a user sees: the venv's JupyterLab lists the extension, enabled and OK."""
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(tmp_path / "config"))
    env.pop("JUPYTER_PATH", None)
    listed = subprocess.run(
        [sys.executable, "-m", "jupyter", "labextension", "list"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=True,
    )
    text = listed.stdout + listed.stderr
    line = next((ln for ln in text.splitlines() if "jupyter-sessions" in ln), "")
    assert "enabled" in line and "OK" in line and "(python, jupyter_sessions)" in line, text
    # The built package.json is the one JupyterLab loads: name, version and the plugin's schema.
    built = json.loads((BUILT / "package.json").read_text())
    assert built["name"] == "jupyter-sessions" and built["version"] == jupyter_sessions.__version__
    assert (BUILT / "schemas" / "jupyter-sessions" / "plugin.json").exists()


@pytest.mark.browser
async def test_the_built_wheel_shows_the_panel_without_node(
    browser: Any, tmp_path: Path, artifacts_dir: Path
) -> None:
    """The wheel carries the built panel: installed where no Node is on PATH, JupyterLab lists it
    OK and a real `jupyter lab` shows it. The fresh venv sees the dev venv's packages but not its
    editable jupyter_sessions, so the panel can only come from the wheel."""
    repo = PACKAGE_DIR.parent
    wheels = tmp_path / "wheels"
    await run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(wheels), str(repo))
    [wheel] = wheels.glob("jupyter_sessions-*.whl")

    # The wheel goes into a fresh venv by that venv's own pip, before anything else is visible
    # there. (Never `pip install --prefix` with the dev venv's pip: it would uninstall the dev
    # venv's editable jupyter_sessions.) Only then does the venv see the dev venv's packages
    # (jupyterlab and the server's dependencies, through a .pth line: nothing is downloaded).
    venv = tmp_path / "venv"
    await run(sys.executable, "-m", "venv", str(venv))
    await run(
        str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-compile", "-q",
        "--disable-pip-version-check", str(wheel), cwd=tmp_path,
    )  # fmt: skip
    [site] = (venv / "lib").glob("python3*/site-packages")
    dev_site = next(p for p in map(Path, sys.path) if p.name == "site-packages" and p.is_dir())
    (site / "dev_venv.pth").write_text(f"{dev_site}\n")
    python = venv / "bin" / "python"
    env = {
        "PATH": str(venv / "bin"),  # no node, no npm, no jlpm of the dev venv
        "HOME": str(tmp_path / "home"),
        "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
        # JupyterLab's own application files are those of the dev venv's jupyterlab.
        "JUPYTERLAB_DIR": str(Path(sys.prefix) / "share" / "jupyter" / "lab"),
    }
    found = await run(
        str(python),
        "-c",
        "import jupyter_sessions; print(jupyter_sessions.__file__)",
        env=env,
        cwd=tmp_path,
    )
    assert str(site) in found, found  # the wheel's copy, not the editable one
    # (cwd elsewhere than the repository: Python puts the working directory on sys.path.)
    listed = await run(str(python), "-m", "jupyterlab.labextensions", "list", env=env, cwd=tmp_path)
    line = next((ln for ln in listed.splitlines() if "jupyter-sessions" in ln), "")
    assert "enabled" in line and "OK" in line, listed
    assert str(venv / "share" / "jupyter" / "labextensions") in listed, listed

    # A real `jupyter lab` of that venv, set up for the local agent by binder/postBuild's own
    # config step (what Binder runs; no Docker there), and by the test's user config.
    postbuild = (repo / "binder" / "postBuild").read_text()
    binder_step = postbuild.split("python - <<'PY'\n", 1)[1].split("\nPY\n", 1)[0]
    await run(str(python), "-c", binder_step, env=env, cwd=tmp_path)
    config = {
        "SessionsApp": {"db_url": f"sqlite:///{tmp_path}/sessions.db"},
        "LabApp": {"news_url": None},
    }
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "jupyter_server_config.json").write_text(json.dumps(config))
    port = free_port()
    token = "wheel-test-token"
    server = await asyncio.create_subprocess_exec(
        str(python), "-m", "jupyterlab", "--no-browser", "--allow-root",
        f"--port={port}", "--ServerApp.ip=127.0.0.1", f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={tmp_path}",
        env=env, cwd=tmp_path, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        context = await browser.new_context(viewport={"width": 1400, "height": 900})
        page = await context.new_page()
        page.set_default_timeout(STEP_MS)
        await goto_when_up(page, f"http://127.0.0.1:{port}/lab?token={token}")
        tab = page.locator('.jp-SideBar li.lm-TabBar-tab[data-id="jupyter-sessions-panel"]')
        await tab.wait_for(timeout=SLOW_MS)
        await tab.click()
        await page.locator("#jupyter-sessions-panel .jp-SessionsPanel-empty").wait_for()
        await page.screenshot(path=str(artifacts_dir / "wheel-without-node.png"))
        await context.close()
        agents = json.loads(
            await asyncio.to_thread(
                fetch_text, f"http://127.0.0.1:{port}/jupyter-sessions/api/agents", token
            )
        )["agents"]
        assert [(a["id"], a["kind"]) for a in agents] == [("local", "local")], agents
    finally:
        server.terminate()
        _, stderr = await server.communicate()
        assert server.returncode is not None, stderr


def fetch_text(url: str, token: str) -> str:
    request = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return str(answer.read().decode())


async def run(*argv: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    """Runs a command (argv, no shell) off the loop's thread; its output, or a failure with it."""
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, cwd=cwd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(process.communicate(), timeout=600)
    text = out.decode(errors="replace")
    assert process.returncode == 0, f"{argv}: {text}"
    return text


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def goto_when_up(page: Any, url: str) -> None:
    """Loads url once the server listens (it takes a few seconds to start; bounded)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + SLOW_MS / 1000
    while True:
        try:
            response = await page.goto(url)
            if response is not None and response.ok:
                return
        except Exception:  # connection refused while the server starts
            if loop.time() > deadline:
                raise
        assert loop.time() < deadline, f"{url} never answered OK"
        await asyncio.sleep(1)
