"""The kernel provisioner on real containers: kernels started through the server's own
/api/kernels (in process) and through nbclient in another kernel manager (over REST).

Each test starts one or two small session containers; the kernel image is the suite's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning.factory import KernelProvisionerFactory
from nbclient import NotebookClient

from jupyter_sessions.client import ENV_TOKEN, ENV_URL
from jupyter_sessions.kernels.provisioner import (
    ENV_SESSION,
    KERNEL_TAG,
    SessionProvisioner,
    release_server_kernels,
)
from jupyter_sessions.kernelspecs import DEFAULT_NAME, kernels_dir

from .conftest import Api
from .test_identity import keypair_auth, new_keypair
from .test_scheduling import until

pytestmark = [pytest.mark.docker, pytest.mark.usefixtures("docker_cleanup")]
MISSING_IMAGE = "jupyter-sessions/missing:1"


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], kernel_image: str) -> dict[str, Any]:
    sessions_config["default_image"] = kernel_image
    sessions_config["default_resources"] = {"cpu": 0.5, "mem": "256m"}
    # Allowed, but present on no agent: its sessions fail while PREPARING.
    sessions_config["allowed_images"] = [kernel_image, MISSING_IMAGE]
    return sessions_config


@pytest.fixture
def project(jp_root_dir: Path) -> Path:
    """A notebook's folder in the content root, with a data file beside the notebook."""
    folder = jp_root_dir / "project"
    folder.mkdir()
    (folder / "data.csv").write_text("x,y\n1,2\n3,4\n")
    return folder


async def kernel_sessions(api: Api) -> list[dict[str, Any]]:
    answer = await api("GET", "sessions")
    return [s for s in answer.body["sessions"] if s["tag"] == KERNEL_TAG]


async def wait_for(check: Any) -> Any:
    """Poll ``check`` until it holds (a generous deadline, a safety net only)."""
    return await until(check, check.__name__, timeout=90)


async def run(client: Any, code: str) -> tuple[str, dict[str, Any]]:
    outputs: list[dict[str, Any]] = []
    reply = await client.execute_interactive(code, output_hook=outputs.append, timeout=60)
    text = "".join(
        m["content"].get("text", "") + m["content"].get("evalue", "")
        for m in outputs
        if m["msg_type"] in ("stream", "error")
    )
    return text, reply["content"]


async def test_kernelspecs_are_generated_for_images_and_templates(
    api: Api, jp_fetch: Any, sessions_app: Any, jp_data_dir: Path
) -> None:
    answer = await api(
        "POST",
        "templates",
        body={"name": "small-one", "body": {"resources": {"cpu": 0.5}}, "shared": True},
    )
    assert answer.code == 201, answer.body
    await sessions_app.ensure_started()
    from jupyter_sessions.kernelspecs import install_kernelspecs

    await install_kernelspecs(sessions_app, jp_data_dir)
    specs = json.loads((await jp_fetch("api", "kernelspecs")).body)["kernelspecs"]
    ours = {name: spec for name, spec in specs.items() if name.startswith("jsess-")}
    default = ours[DEFAULT_NAME]["spec"]
    assert default["metadata"]["kernel_provisioner"] == {
        "provisioner_name": "jupyter-sessions",
        "config": {},
    }
    assert sessions_app.default_image in default["display_name"]
    [template] = [s["spec"] for n, s in ours.items() if n.startswith("jsess-template-small-one")]
    assert template["metadata"]["kernel_provisioner"]["config"] == {"template": answer.body["id"]}
    assert (kernels_dir(jp_data_dir) / DEFAULT_NAME / "kernel.json").is_file()
    missing = ours["jsess-jupyter-sessions-missing-1"]["spec"]
    assert missing["metadata"]["kernel_provisioner"]["config"] == {"image": MISSING_IMAGE}


async def test_a_kernel_whose_session_fails_leaves_no_session_behind(
    api: Api, jp_serverapp: Any, sessions_app: Any
) -> None:
    await sessions_app.ensure_started()
    with pytest.raises(RuntimeError, match="not present"):
        await jp_serverapp.kernel_manager.start_kernel(
            kernel_name="jsess-jupyter-sessions-missing-1"
        )
    [session] = await kernel_sessions(api)

    async def ended() -> bool:
        body = (await api("GET", "sessions", session["id"])).body
        return body["status"] == "TERMINATED"

    await wait_for(ended)
    assert jp_serverapp.kernel_manager.list_kernel_ids() == []


async def test_a_server_kernel_runs_in_a_session_beside_the_notebook(
    api: Api, jp_fetch: Any, jp_serverapp: Any, project: Path, sessions_app: Any
) -> None:
    await sessions_app.ensure_started()
    started = await jp_fetch(
        "api", "kernels", method="POST", body=json.dumps({"name": DEFAULT_NAME, "path": "project"})
    )
    kernel_id = json.loads(started.body)["id"]
    [session] = await kernel_sessions(api)
    assert session["status"] == "RUNNING" and session["name"] == f"kernel-{kernel_id}"

    km = jp_serverapp.kernel_manager.get_kernel(kernel_id)
    assert isinstance(km.provisioner, SessionProvisioner) and km.provisioner.created
    client = km.client()
    client.start_channels()
    try:
        text, reply = await run(
            client, "import os; print(os.getcwd()); print(open('data.csv').read())"
        )
        assert reply["status"] == "ok", text
        assert text.split() == ["/home/work/notebooks", "x,y", "1,2", "3,4"]

        # Interrupt: the server's interrupt is the session's.
        request = client.execute("import time; print('sleeping', flush=True); time.sleep(120)")
        # Interrupt once the code runs (its first output is on IOPub), not before.
        while True:
            output = await client.get_iopub_msg(timeout=60)
            if output["parent_header"].get("msg_id") == request and output["msg_type"] == "stream":
                break
        await jp_fetch("api", "kernels", kernel_id, "interrupt", method="POST", body=b"")
        while True:
            message = await client.get_shell_msg(timeout=60)
            if message["parent_header"].get("msg_id") == request:
                break
        assert message["content"]["status"] == "error"
        assert message["content"]["ename"] == "KeyboardInterrupt"
        await run(client, "kept = 42")
    finally:
        client.stop_channels()

    # Restart: the session's restart in place (new container, same session).
    before = session["kernels"][0]["container_id"]
    await jp_fetch("api", "kernels", kernel_id, "restart", method="POST", body=b"")
    after = (await api("GET", "sessions", session["id"])).body
    assert after["status"] == "RUNNING" and after["kernels"][0]["container_id"] != before
    history = (await api("GET", "sessions", session["id"], "status-history")).body["history"]
    assert "RESTARTING" in [h["to"] for h in history]
    client = km.client()
    client.start_channels()
    try:
        text, reply = await run(client, "print(open('data.csv').read()); kept")
        assert reply["status"] == "error" and "kept" in text  # a fresh kernel
        assert "x,y" in text
    finally:
        client.stop_channels()

    # Restarted behind Jupyter's back (other ports and key): Jupyter's restarter notices, and
    # the provisioner attaches to the new kernel.
    assert (await api("POST", "sessions", session["id"], "restart")).code == 202

    async def reattached() -> bool:
        body = (await api("GET", "sessions", session["id"])).body
        new = body["kernels"][0]["container_id"]
        return (
            body["status"] == "RUNNING" and km.provisioner.container_id == new and km.ready.done()
        )

    await wait_for(reattached)
    client = km.client()
    client.start_channels()
    try:
        text, reply = await run(client, "print('after', 6 * 7)")
        assert reply["status"] == "ok" and text.strip() == "after 42"
    finally:
        client.stop_channels()

    # Shutdown destroys the session it made.
    await jp_fetch("api", "kernels", kernel_id, method="DELETE")

    async def ended() -> bool:
        body = (await api("GET", "sessions", session["id"])).body
        return body["status"] == "TERMINATED"

    await wait_for(ended)


async def test_a_kernel_attached_to_a_session_detaches_at_shutdown(
    api: Api, jp_data_dir: Path, jp_serverapp: Any, sessions_app: Any
) -> None:
    created = await api("POST", "sessions", body={"name": "shared-kernel", "max_wait_seconds": 90})
    assert created.body["status"] == "RUNNING", created.body
    await api(
        "POST", "sessions", "shared-kernel", "execute", body={"mode": "query", "code": "v = 7"}
    )
    spec_dir = jp_data_dir / "kernels" / "attach-shared"
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [],
        "display_name": "attach",
        "language": "python",
        "interrupt_mode": "signal",
        "metadata": {
            "kernel_provisioner": {
                "provisioner_name": "jupyter-sessions",
                "config": {"session": "shared-kernel"},
            }
        },
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    kernel_id = await jp_serverapp.kernel_manager.start_kernel(kernel_name="attach-shared")
    km = jp_serverapp.kernel_manager.get_kernel(kernel_id)
    assert km.provisioner.created is False
    client = km.client()
    client.start_channels()
    try:
        text, _reply = await run(client, "print(v * 6)")
        assert text.strip() == "42"  # the session's own kernel, with its state
    finally:
        client.stop_channels()
    await jp_serverapp.kernel_manager.shutdown_kernel(kernel_id)

    # Detached: the session's kernel got no shutdown (nor interrupt) and keeps its state.
    after = (await api("GET", "sessions", "shared-kernel")).body
    assert after["status"] == "RUNNING"
    assert after["kernels"][0]["container_id"] == created.body["kernels"][0]["container_id"]
    code = {"mode": "query", "code": "print(v)"}
    answer = await api("POST", "sessions", "shared-kernel", "execute", body=code)
    assert answer.body["console"] == [["stdout", "7\n"]], answer.body
    assert len(await kernel_sessions(api)) == 0  # nothing was made for the kernel


async def test_nbclient_runs_a_notebook_in_a_session_over_rest(
    api: Api,
    server_url: str,
    jp_serverapp: Any,
    jp_data_dir: Path,
    project: Path,
    sessions_app: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await sessions_app.ensure_started()
    monkeypatch.setenv(ENV_URL, server_url)
    monkeypatch.setenv(ENV_TOKEN, jp_serverapp.identity_provider.token)
    monkeypatch.setenv("JUPYTER_PATH", str(kernels_dir(jp_data_dir).parent))
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("import csv\nrows = list(csv.reader(open('data.csv')))"),
        nbformat.v4.new_code_cell("import os\nprint(len(rows), rows[-1], os.getuid())"),
    ]
    nbformat.write(notebook, project / "analysis.ipynb")
    # nbclient makes (and, at the end, shuts down) its own kernel manager in this process.
    runner = NotebookClient(
        notebook,
        kernel_name=DEFAULT_NAME,
        timeout=120,
        resources={"metadata": {"path": str(project)}},
    )
    await runner.async_execute()
    assert notebook.cells[1].outputs[0]["text"] == "3 ['3', '4'] 1000\n"
    # nbclient shut the kernel down at the end: the session it made is gone with it.

    async def all_ended() -> bool:
        return all(s["status"] == "TERMINATED" for s in await kernel_sessions(api))

    assert (await api("GET", "sessions")).body["total"] == 1
    await wait_for(all_ended)


async def test_a_new_kernel_manager_reattaches_from_saved_provisioner_info(
    api: Api,
    server_url: str,
    jp_serverapp: Any,
    sessions_app: Any,
    monkeypatch: pytest.MonkeyPatch,
    jp_data_dir: Path,
) -> None:
    await sessions_app.ensure_started()
    monkeypatch.setenv(ENV_URL, server_url)
    monkeypatch.setenv(ENV_TOKEN, jp_serverapp.identity_provider.token)
    monkeypatch.setenv("JUPYTER_PATH", str(kernels_dir(jp_data_dir).parent))
    first = AsyncKernelManager(kernel_name=DEFAULT_NAME)
    await first.start_kernel()
    client = first.client()
    client.start_channels()
    await client.wait_for_ready(timeout=60)
    await run(client, "state = 'kept across managers'")
    client.stop_channels()
    saved = json.loads(json.dumps(await first.provisioner.get_provisioner_info()))
    kernel_id = first.kernel_id
    # The first manager goes away without shutting anything down (its process ended).

    second = AsyncKernelManager(kernel_name=DEFAULT_NAME, kernel_id=kernel_id)
    provisioner = KernelProvisionerFactory.instance().create_provisioner_instance(
        kernel_id, second.kernel_spec, parent=second
    )
    await provisioner.load_provisioner_info(saved)
    second.provisioner = provisioner
    second.load_connection_info(provisioner.connection_info)
    assert await second.is_alive()
    client = second.client()
    client.start_channels()
    try:
        text, _ = await run(client, "print(state)")
        assert text.strip() == "kept across managers"
    finally:
        client.stop_channels()
    [session] = await kernel_sessions(api)
    await second.shutdown_kernel()

    async def ended() -> bool:
        body = (await api("GET", "sessions", session["id"])).body
        return body["status"] == "TERMINATED"

    await wait_for(ended)


async def test_the_connection_route_is_for_the_owner_and_admins_only(api: Api) -> None:
    alice = await new_keypair(api, "alice")
    answer = await api(
        "POST",
        "sessions",
        body={"name": "alices", "max_wait_seconds": 90},
        headers=keypair_auth(alice),
    )
    assert answer.body["status"] == "RUNNING", answer.body
    session_id = answer.body["id"]
    path = ("sessions", session_id, "kernels", "main1", "connection")
    mine = await api("GET", *path, headers=keypair_auth(alice))
    assert mine.code == 200, mine.body
    connection = mine.body["connection"]
    assert connection["ip"] == "127.0.0.1" and len(connection["key"]) == 64
    assert set(connection) >= {"shell_port", "iopub_port", "control_port", "signature_scheme"}
    assert mine.headers["Cache-Control"] == "no-store"
    bob = await new_keypair(api, "bob")
    assert (await api("GET", *path, headers=keypair_auth(bob))).code == 404
    assert (await api("GET", *path)).code == 200  # the server's owner is an admin
    assert (await api("GET", "sessions", session_id, "kernels", "sub1", "connection")).code == 404
    bad = await api("GET", "sessions", session_id, "kernels", "..", "connection")
    assert bad.code in (400, 404)


async def test_at_server_stop_made_sessions_go_and_attached_ones_stay(
    api: Api, jp_serverapp: Any, jp_data_dir: Path, sessions_app: Any
) -> None:
    await sessions_app.ensure_started()
    created = await api("POST", "sessions", body={"name": "long-lived", "max_wait_seconds": 90})
    assert created.body["status"] == "RUNNING", created.body
    manager = jp_serverapp.kernel_manager
    made = await manager.start_kernel(kernel_name=DEFAULT_NAME)
    [made_session] = await kernel_sessions(api)
    # The launch environment names the session, as a kernelspec's config would.
    attached = await manager.start_kernel(kernel_name=DEFAULT_NAME, env={ENV_SESSION: "long-lived"})
    assert manager.get_kernel(attached).provisioner.created is False

    code = {"mode": "query", "code": "marker = 5"}
    assert (await api("POST", "sessions", "long-lived", "execute", body=code)).code == 200

    await release_server_kernels(sessions_app)  # what stop_extension does first
    await manager.shutdown_all()  # what Jupyter does after the extensions stopped

    async def made_one_destroyed() -> bool:
        body = (await api("GET", "sessions", made_session["id"])).body
        return body["status"] == "TERMINATED"

    await wait_for(made_one_destroyed)
    # The attached session's kernel was sent nothing: same container, state kept.
    after = (await api("GET", "sessions", "long-lived")).body
    assert after["status"] == "RUNNING"
    assert after["kernels"][0]["container_id"] == created.body["kernels"][0]["container_id"]
    assert made not in manager.list_kernel_ids()
    code = {"mode": "query", "code": "print(marker)"}
    answer = await api("POST", "sessions", "long-lived", "execute", body=code)
    assert answer.body["console"] == [["stdout", "5\n"]], answer.body


async def test_the_owner_opens_a_jupyter_kernel_on_a_session_and_detaches(
    api: Api, jp_fetch: Any, jp_serverapp: Any
) -> None:
    created = await api("POST", "sessions", body={"name": "lab-target", "max_wait_seconds": 90})
    assert created.body["status"] == "RUNNING", created.body
    await api("POST", "sessions", "lab-target", "execute", body={"mode": "query", "code": "n = 3"})
    opened = await api("POST", "sessions", "lab-target", "jupyter-kernels")
    assert opened.code == 201, opened.body
    assert opened.body["session_id"] == created.body["id"]
    kernel_id = opened.body["kernel_id"]
    # JupyterLab finds it among the server's kernels, and it is the session's kernel.
    listed = json.loads((await jp_fetch("api", "kernels")).body)
    assert [k["id"] for k in listed] == [kernel_id]
    km = jp_serverapp.kernel_manager.get_kernel(kernel_id)
    client = km.client()
    client.start_channels()
    try:
        text, _ = await run(client, "print(n * 14)")
        assert text.strip() == "42"
    finally:
        client.stop_channels()
    await jp_fetch("api", "kernels", kernel_id, method="DELETE")
    code = {"mode": "query", "code": "print(n)"}
    answer = await api("POST", "sessions", "lab-target", "execute", body=code)
    assert answer.body["console"] == [["stdout", "3\n"]], answer.body

    # A keypair user's own session: the server's kernels are not theirs.
    guest = await new_keypair(api, "guest")
    theirs = await api(
        "POST",
        "sessions",
        body={"name": "guest-one", "enqueue_only": True},
        headers=keypair_auth(guest),
    )
    denied = await api(
        "POST", "sessions", theirs.body["id"], "jupyter-kernels", headers=keypair_auth(guest)
    )
    assert denied.code == 403, denied.body
    assert json.loads((await jp_fetch("api", "kernels")).body) == []
