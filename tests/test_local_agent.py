"""The local agent with real kernels: subprocesses in per-session directories, clean environment,
rlimits, process-group teardown without zombies, and storage removal that stays inside its root."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import secrets
import stat
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client.asynchronous import AsyncKernelClient

from jupyter_sessions.agents.base import KernelHandle, KernelSpec
from jupyter_sessions.agents.local import LOCAL_IMAGE, LocalAgent, address_space_limit
from jupyter_sessions.errors import AgentError, AgentUnavailable, InvalidRequest
from jupyter_sessions.types import ResourceSlot

#: A cap on waits for a kernel to answer or to die (a safety net, not an assertion on speed).
WAIT = 60.0


@pytest.fixture
def agent(tmp_path: Path, jp_asyncio_loop: asyncio.AbstractEventLoop) -> Iterator[LocalAgent]:
    local = LocalAgent(installation_id=uuid.uuid4().hex[:12], root_dir=tmp_path / "local")
    yield local
    jp_asyncio_loop.run_until_complete(local.close())


def make_spec(
    session_id: str | None = None,
    *,
    kernel_name: str = "main1",
    mem: str | None = None,
    environ: dict[str, str] | None = None,
    image: str = LOCAL_IMAGE,
) -> KernelSpec:
    resources = {"cpu": 1, **({"mem": mem} if mem else {})}
    return KernelSpec(
        session_id=str(uuid.uuid4()) if session_id is None else session_id,
        kernel_name=kernel_name,
        image=image,
        resources=ResourceSlot.parse(resources),
        environ=environ or {},
        key=secrets.token_hex(32),
    )


async def run(handle: KernelHandle, code: str) -> str:
    """Run code on the kernel over ZMQ with the handle's connection; return its stdout."""
    client = AsyncKernelClient()
    client.load_connection_info(handle.connection)  # type: ignore[arg-type]
    # No heartbeat channel: on a busy machine a just-started kernel's first beat can be late, and
    # a bare client's wait_for_ready takes a missed beat for a dead kernel.
    client.start_channels(hb=False)
    try:
        await client.wait_for_ready(timeout=WAIT)
        out: list[str] = []

        def hook(msg: dict[str, Any]) -> None:
            if msg["msg_type"] == "stream" and msg["content"]["name"] == "stdout":
                out.append(msg["content"]["text"])
            elif msg["msg_type"] == "error":
                out.append("\n".join(msg["content"]["traceback"]))

        reply = await client.execute_interactive(code, output_hook=hook, timeout=WAIT)
        assert reply["content"]["status"] == "ok", "".join(out)
        return "".join(out)
    finally:
        client.stop_channels()


async def run_json(handle: KernelHandle, code: str) -> Any:
    """Run code that prints one JSON document; return it parsed."""
    return json.loads(await run(handle, code))


def pid_of(handle: KernelHandle) -> int:
    return int(handle.container_id.split("-")[1])


def reaped(pid: int) -> bool:
    """True when pid is no child of ours any more (reaped), so no zombie of ours is left."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


def running(pid: int) -> bool:
    """True when the process exists and is neither a zombie nor dead."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return False
    return fields[0] not in ("Z", "X")


def live_processes_in(directory: Path) -> list[int]:
    """Pids of running processes whose cwd is ``directory`` (kernels and their children)."""
    found = []
    target = os.path.realpath(directory)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == target and running(int(entry.name)):
            found.append(int(entry.name))
    return found


async def wait_until_dead(agent: LocalAgent, handle: KernelHandle) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while await agent.kernel_exists(handle.container_id):
        assert loop.time() < deadline, "the kernel did not exit"
        await asyncio.sleep(0.05)


async def test_a_kernel_runs_in_its_work_dir_with_a_clean_environment(
    agent: LocalAgent, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JUPYTER_TOKEN", "secret")
    monkeypatch.setenv("JPY_SESSION_NAME", "leak")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "leak")
    spec = make_spec(environ={"GREETING": "hello"})
    handle = await agent.create_kernel(spec)
    work = agent.work_dir(spec.session_id)

    assert handle.connection["ip"] == "127.0.0.1"
    assert handle.connection["key"] == spec.key
    assert handle.connection["signature_scheme"] == "hmac-sha256"
    assert await agent.kernel_exists(handle.container_id)

    seen = await run_json(
        handle,
        "import json, os\n"
        "start_env = dict(e.split('=', 1) for e in "
        "open('/proc/self/environ').read().split('\\0') if e)\n"
        "open('made-here.txt', 'w').write('written by the kernel')\n"
        "print(json.dumps({'cwd': os.getcwd(), 'home': os.path.expanduser('~'), "
        "'env': start_env, 'pid': os.getpid(), 'pgid': os.getpgid(0), 'sid': os.getsid(0)}))",
    )
    assert os.path.realpath(seen["cwd"]) == os.path.realpath(work)
    assert os.path.realpath(seen["home"]) == os.path.realpath(work)
    # Exactly what the agent passed: nothing of the server's environment.
    assert set(seen["env"]) == {"PATH", "LANG", "HOME", "GREETING"}
    assert seen["env"]["GREETING"] == "hello"
    assert seen["env"]["HOME"] == str(work)
    # Its own session and process group, led by the kernel (the launcher exec'd into it).
    assert seen["pid"] == seen["pgid"] == seen["sid"] == pid_of(handle)

    assert (work / "made-here.txt").read_text() == "written by the kernel"
    runtime = agent.runtime_dir(spec.session_id)
    assert stat.S_IMODE(runtime.stat().st_mode) == 0o700
    assert stat.S_IMODE((runtime / "main1.json").stat().st_mode) == 0o600
    assert json.loads((runtime / "main1.json").read_text())["key"] == spec.key
    assert "kernel main1 starting" in agent.log_path(spec.session_id, "main1").read_text()


async def test_memory_sets_rlimit_as_and_an_allocation_past_it_fails_in_the_kernel(
    agent: LocalAgent,
) -> None:
    limit = address_space_limit(512 * 2**20)
    handle = await agent.create_kernel(make_spec(mem="512m"))
    limits = await run_json(
        handle,
        "import json, resource\n"
        "print(json.dumps([resource.getrlimit(resource.RLIMIT_AS), "
        "resource.getrlimit(resource.RLIMIT_CORE)]))",
    )
    assert limits == [[limit, limit], [0, 0]]
    outcome = await run(
        handle,
        f"try:\n    block = bytearray({limit})\n    print('allocated')\n"
        "except MemoryError:\n    print('MemoryError')\n",
    )
    assert outcome.strip() == "MemoryError"
    assert (await run(handle, "print('still here')")).strip() == "still here"

    unlimited = await agent.create_kernel(make_spec())
    limits = await run_json(
        unlimited,
        "import json, resource\nprint(json.dumps(resource.getrlimit(resource.RLIMIT_AS)))",
    )
    assert tuple(limits) == resource.getrlimit(resource.RLIMIT_AS)


async def test_destroy_stops_the_process_group_and_leaves_no_zombie(agent: LocalAgent) -> None:
    spec = make_spec()
    handle = await agent.create_kernel(spec)
    pid = pid_of(handle)
    child = int(
        await run(
            handle,
            "import subprocess\nchild = subprocess.Popen(['sleep', '1000'])\nprint(child.pid)",
        )
    )
    assert running(pid) and running(child)

    await agent.destroy_kernel(handle.container_id)

    assert not await agent.kernel_exists(handle.container_id)
    assert reaped(pid)
    assert not running(child)  # the kernel's own child went with its group
    assert live_processes_in(agent.work_dir(spec.session_id)) == []
    await agent.destroy_kernel(handle.container_id)  # again: already gone is fine

    assert agent.session_dir(spec.session_id).is_dir()
    await agent.remove_session_storage(spec.session_id)
    assert not agent.session_dir(spec.session_id).exists()
    await agent.remove_session_storage(spec.session_id)  # again: already gone is fine


async def test_forced_destroy_by_kernel_ref_and_a_kernel_that_exits_by_itself(
    agent: LocalAgent,
) -> None:
    spec = make_spec()
    handle = await agent.create_kernel(spec)
    await agent.destroy_kernel(agent.kernel_ref(spec.session_id, "main1"), forced=True)
    assert not await agent.kernel_exists(handle.container_id)
    assert reaped(pid_of(handle))

    crashing = await agent.create_kernel(make_spec(spec.session_id))
    assert await agent.kernel_exists(crashing.container_id)
    client = AsyncKernelClient()
    client.load_connection_info(crashing.connection)  # type: ignore[arg-type]
    client.start_channels()
    try:
        await client.wait_for_ready(timeout=WAIT)
        client.execute("import os; os._exit(3)")
        await wait_until_dead(agent, crashing)
    finally:
        client.stop_channels()
    await agent.destroy_kernel(crashing.container_id)
    assert reaped(pid_of(crashing))


async def test_a_destroy_by_name_while_the_kernel_starts_wins(agent: LocalAgent) -> None:
    spec = make_spec()
    creating = asyncio.ensure_future(agent.create_kernel(spec))
    await asyncio.sleep(0)  # the create is now starting the process in a thread
    await agent.destroy_kernel(agent.kernel_ref(spec.session_id, spec.kernel_name), forced=True)
    with pytest.raises(AgentError, match="destroyed while it started"):
        await creating
    assert live_processes_in(agent.work_dir(spec.session_id)) == []


async def test_the_work_dir_survives_a_kernel_restart_and_one_name_runs_once(
    agent: LocalAgent,
) -> None:
    spec = make_spec()
    first = await agent.create_kernel(spec)
    await run(first, "open('kept.txt', 'w').write('kept')")
    with pytest.raises(AgentError, match="already running"):
        await agent.create_kernel(make_spec(spec.session_id))
    await agent.destroy_kernel(first.container_id)

    second = await agent.create_kernel(make_spec(spec.session_id))
    assert second.container_id != first.container_id
    assert (await run(second, "print(open('kept.txt').read())")).strip() == "kept"


async def test_unknown_refs_and_ids_that_are_not_uuids(agent: LocalAgent, tmp_path: Path) -> None:
    await agent.destroy_kernel("local-999999-deadbeef")
    await agent.destroy_kernel(agent.kernel_ref(str(uuid.uuid4()), "main1"), forced=True)
    assert not await agent.kernel_exists("local-999999-deadbeef")

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")
    some_id = str(uuid.uuid4())
    for bad in ["../outside", "..", "", "not-a-uuid", some_id.upper(), "{" + some_id + "}"]:
        with pytest.raises(InvalidRequest):
            await agent.remove_session_storage(bad)
        with pytest.raises(InvalidRequest):
            await agent.create_kernel(make_spec(bad))
    with pytest.raises(InvalidRequest):
        await agent.create_kernel(make_spec(kernel_name="../main1"))
    with pytest.raises(InvalidRequest, match="not present"):
        await agent.create_kernel(make_spec(image="python:3.11"))
    assert (outside / "precious.txt").read_text() == "keep me"


async def test_removing_storage_never_follows_a_symlink_out(
    agent: LocalAgent, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me")

    spec = make_spec()
    handle = await agent.create_kernel(spec)
    await run(
        handle,
        f"import os\nos.symlink({str(outside)!r}, 'link-out')\n"
        "os.makedirs('locked/inner')\nopen('locked/inner/f', 'w').close()\n"
        "os.chmod('locked/inner', 0o500)\nos.chmod('locked', 0o500)",
    )
    with pytest.raises(AgentError, match="still has a running kernel"):
        await agent.remove_session_storage(spec.session_id)
    await agent.destroy_kernel(handle.container_id)
    await agent.remove_session_storage(spec.session_id)
    assert not agent.session_dir(spec.session_id).exists()
    assert (outside / "precious.txt").read_text() == "keep me"

    # A session directory that is itself a symlink: only the link goes.
    planted = str(uuid.uuid4())
    agent.root_dir.mkdir(exist_ok=True)
    (agent.root_dir / planted).symlink_to(outside)
    await agent.remove_session_storage(planted)
    assert not (agent.root_dir / planted).exists()
    assert (outside / "precious.txt").read_text() == "keep me"


async def test_info_and_the_one_local_image(agent: LocalAgent) -> None:
    info = await agent.info()
    assert info.reachable
    assert info.capacity.get("cpu") > 0 and info.capacity.get("mem") > 0
    assert "no isolation" in info.detail
    assert await agent.has_image(LOCAL_IMAGE)
    assert not await agent.has_image("python:3.11")
    images = await agent.list_images()
    assert [image.name for image in images] == [LOCAL_IMAGE]
    assert "Python environment" in images[0].labels["org.jupyter.sessions.description"]


async def test_close_kills_every_kernel(agent: LocalAgent) -> None:
    specs = [make_spec(), make_spec()]
    handles = await asyncio.gather(*(agent.create_kernel(spec) for spec in specs))
    assert len({pid_of(h) for h in handles}) == 2
    for handle in handles:
        await run(handle, "print(1)")

    await agent.close()

    for spec, handle in zip(specs, handles, strict=True):
        assert not await agent.kernel_exists(handle.container_id)
        assert reaped(pid_of(handle))
        assert live_processes_in(agent.work_dir(spec.session_id)) == []
    assert not (await agent.info()).reachable
    with pytest.raises(AgentUnavailable):
        await agent.create_kernel(make_spec())
