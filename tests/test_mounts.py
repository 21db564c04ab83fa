"""Mounts: folders of the server's content root in a session's container, and what is refused.

The policy tests use real folders and symlinks; the Docker tests run real containers that read
(and, where allowed, write) the host's files through the bind mount.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import pytest

from jupyter_sessions.agents.base import KernelSpec
from jupyter_sessions.agents.local import LOCAL_IMAGE, LocalAgent
from jupyter_sessions.errors import InvalidRequest, PermissionDenied
from jupyter_sessions.mounts import (
    Mount,
    MountPolicy,
    docker_mounts,
    is_system_path,
    parse_mounts,
)
from jupyter_sessions.types import ResourceSlot, new_session_id

from .conftest import Api
from .test_identity import keypair_auth, new_keypair
from .test_local_agent import run as run_local
from .test_provisioner import wait_for

OWNER = "AKIAOWNER"


@pytest.fixture
def content(tmp_path: Path) -> Path:
    root = tmp_path / "content"
    (root / "project" / "sub").mkdir(parents=True)
    (root / "project" / "data.csv").write_text("a,b\n1,2\n")
    return root


def test_the_shape_of_mounts_is_checked() -> None:
    assert parse_mounts(None) == ()
    [mount] = parse_mounts([{"source": "project", "read_only": True, "working_dir": "sub/"}])
    assert mount == Mount("project", None, True, "sub")
    bad: list[Any] = [
        "project",
        [{"target": "/home/work/x"}],
        [{"source": ""}],
        [{"source": "p", "extra": 1}],
        [{"source": "p", "read_only": "yes"}],
        [{"source": "p", "target": "relative"}],
        [{"source": "p", "target": "/home/work"}],
        [{"source": "p", "target": "/etc/passwd"}],
        [{"source": "p", "target": "/home/work/../etc"}],
        [{"source": "p", "target": "/home/work/a,b"}],
        [{"source": "p", "working_dir": "/abs"}],
        [{"source": "p", "working_dir": "../up"}],
        [{"source": "p", "working_dir": "a"}, {"source": "q", "working_dir": "b"}],
        [{"source": str(i)} for i in range(9)],
    ]
    for raw in bad:
        with pytest.raises(InvalidRequest):
            parse_mounts(raw)


def test_the_policy_resolves_under_the_root_and_refuses_the_rest(
    content: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (content / "escape").symlink_to(outside)
    (content / "etc-link").symlink_to("/etc")
    policy = MountPolicy(root_dir=str(content), owner_access_key=OWNER)

    [mount] = policy.resolve(parse_mounts([{"source": "project", "working_dir": "sub"}]), OWNER)
    assert mount.source == os.path.realpath(content / "project")
    assert mount.target == "/home/work/notebooks" and mount.read_only is False
    assert mount.container_working_dir == "/home/work/notebooks/sub"
    # An absolute path under the root is the same mount (a restart replays the stored one).
    assert policy.resolve(parse_mounts([mount.to_json()]), OWNER) == (mount,)

    refused = {
        "../outside": PermissionDenied,
        "escape": PermissionDenied,
        "etc-link": PermissionDenied,
        str(outside): PermissionDenied,
        "missing": InvalidRequest,
    }
    for source, error in refused.items():
        with pytest.raises(error):
            policy.resolve(parse_mounts([{"source": source}]), OWNER)
    with pytest.raises(InvalidRequest, match="working_dir"):
        policy.resolve(parse_mounts([{"source": "project", "working_dir": "nope"}]), OWNER)
    with pytest.raises(InvalidRequest, match="overlaps"):
        policy.resolve(
            parse_mounts(
                [
                    {"source": "project", "target": "/home/work/a"},
                    {"source": "project/sub", "target": "/home/work/a/b"},
                ]
            ),
            OWNER,
        )
    # Only the server's owner mounts its content root.
    with pytest.raises(PermissionDenied, match="owner"):
        policy.resolve(parse_mounts([{"source": "project"}]), "AKIAGUEST")
    # Read-only by config: a request can't widen it.
    strict = MountPolicy(root_dir=str(content), read_only=True, owner_access_key=OWNER)
    assert strict.resolve(parse_mounts([{"source": "project"}]), OWNER)[0].read_only is True
    with pytest.raises(PermissionDenied, match="read-only"):
        strict.resolve(parse_mounts([{"source": "project", "read_only": False}]), OWNER)


def test_system_directories_are_never_mounted_even_under_a_root_of_slash() -> None:
    policy = MountPolicy(root_dir="/", owner_access_key=OWNER)
    for source in ["/", "etc", "/usr/lib", "/proc/1", "/var/run", "/home", "/run/docker.sock"]:
        with pytest.raises(PermissionDenied, match="system directory"):
            policy.resolve(parse_mounts([{"source": source}]), OWNER)
    assert is_system_path("/var/lib/docker/volumes")
    assert not is_system_path("/home/alice/notebooks")


def test_the_recheck_catches_a_folder_swapped_for_a_symlink(content: Path, tmp_path: Path) -> None:
    policy = MountPolicy(root_dir=str(content), owner_access_key=OWNER)
    mounts = policy.resolve(parse_mounts([{"source": "project"}]), OWNER)
    policy.recheck(mounts)
    (content / "project").rename(content / "moved")
    (content / "project").symlink_to(tmp_path)
    with pytest.raises(PermissionDenied, match="changed"):
        policy.recheck(mounts)


def test_remote_engines_refuse_mounts(tmp_path: Path) -> None:
    mounts = (Mount(str(tmp_path), "/home/work/x", True),)
    assert docker_mounts(mounts, "a", "unix:///var/run/docker.sock")[0]["ReadOnly"] is True
    with pytest.raises(InvalidRequest, match="own host"):
        docker_mounts(mounts, "remote", "tcp://10.0.0.2:2375")


async def test_the_local_agent_starts_the_kernel_in_the_mounts_folder(
    tmp_path: Path, content: Path
) -> None:
    """No containers: a mount is only where the kernel starts; read-only can't be kept."""
    agent = LocalAgent("local", installation_id="test", root_dir=tmp_path / "local")
    source = str(content / "project")

    def spec(read_only: bool) -> KernelSpec:
        mount = Mount(source, "/home/work/notebooks", read_only, "sub")
        return KernelSpec(
            new_session_id(),
            "main1",
            LOCAL_IMAGE,
            ResourceSlot.parse({"cpu": 1}),
            key=secrets.token_hex(32),
            mounts=(mount,),
        )

    try:
        with pytest.raises(InvalidRequest, match="read-only"):
            await agent.create_kernel(spec(read_only=True))
        handle = await agent.create_kernel(spec(read_only=False))
        printed = await run_local(handle, "import os; print(os.getcwd())")
        assert printed.strip() == os.path.realpath(content / "project" / "sub")
    finally:
        await agent.close()


def test_the_provisioner_mounts_the_notebooks_folder_or_the_root(content: Path) -> None:
    from jupyter_sessions.kernels.provisioner import SessionProvisioner

    folder = str(content / "project" / "sub")
    root = str(content)
    by_folder = SessionProvisioner(kernel_id="k", kernel_spec=None)
    assert by_folder._mount_of(folder, root) == [{"source": folder, "working_dir": "."}]
    by_root = SessionProvisioner(kernel_id="k", kernel_spec=None, mount="root")
    assert by_root._mount_of(folder, root) == [{"source": root, "working_dir": "project/sub"}]
    # Over REST the root is unknown here, and a folder outside the root is its own mount.
    assert by_root._mount_of(folder, None) == [{"source": folder, "working_dir": "."}]
    assert by_root._mount_of("/srv", root) == [{"source": "/srv", "working_dir": "."}]


# --- real containers -----------------------------------------------------------------------------


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], kernel_image: str) -> dict[str, Any]:
    sessions_config["default_image"] = kernel_image
    return sessions_config


async def run_code(api: Api, ref: str, code: str) -> dict[str, Any]:
    answer = await api("POST", "sessions", ref, "execute", body={"mode": "query", "code": code})
    assert answer.code == 200, answer.body
    return answer.body


def stdout(result: dict[str, Any]) -> str:
    return "".join(data for kind, data in result["console"] if kind == "stdout")


@pytest.mark.docker
@pytest.mark.usefixtures("docker_cleanup")
async def test_a_session_reads_and_writes_the_hosts_files_through_its_mounts(
    api: Api, jp_root_dir: Path
) -> None:
    # Only the mounted folders' own modes matter in the container (uid 1000), not their parents'.
    project = jp_root_dir / "project"
    (project / "sub").mkdir(parents=True)
    (project / "data.csv").write_text("a,b\n1,2\n")
    (project / "data.csv").chmod(0o644)
    writable = jp_root_dir / "out"
    writable.mkdir()
    os.chown(writable, 1000, 1000)
    answer = await api(
        "POST",
        "sessions",
        body={
            "name": "mounted",
            "resources": {"cpu": 0.5, "mem": "256m"},
            "mounts": [
                {"source": "project", "read_only": True, "working_dir": "."},
                {"source": str(writable), "target": "/home/work/out"},
            ],
            "max_wait_seconds": 90,
        },
    )
    assert answer.code == 201, answer.body
    assert answer.body["status"] == "RUNNING", answer.body

    result = await run_code(
        api, "mounted", "import os; print(os.getcwd()); print(open('data.csv').read())"
    )
    assert stdout(result).split() == ["/home/work/notebooks", "a,b", "1,2"]
    # Read-only is enforced by the engine; the read-write mount writes the host's file.
    result = await run_code(api, "mounted", "open('new.txt', 'w')")
    assert "Read-only file system" in "".join(d for k, d in result["console"] if k == "stderr")
    result = await run_code(api, "mounted", "open('/home/work/out/r.txt', 'w').write('hi')")
    assert result["exit_code"] == 0, result
    assert (writable / "r.txt").read_text() == "hi"
    assert not (project / "new.txt").exists()

    # A restart makes a new container with the same mounts.
    assert (await api("POST", "sessions", "mounted", "restart")).code == 202

    async def running_again() -> bool:
        return (await api("GET", "sessions", "mounted")).body["status"] == "RUNNING"

    await wait_for(running_again)
    result = await run_code(api, "mounted", "print(open('data.csv').read())")
    assert stdout(result).split() == ["a,b", "1,2"]


@pytest.mark.docker
@pytest.mark.usefixtures("docker_cleanup")
async def test_mounts_are_refused_to_guests_and_outside_the_root(
    api: Api, jp_root_dir: Path, tmp_path: Path
) -> None:
    (jp_root_dir / "project").mkdir()
    guest = await new_keypair(api, "guest")
    body = {"mounts": [{"source": "project"}], "enqueue_only": True}
    answer = await api("POST", "sessions", body=body, headers=keypair_auth(guest))
    assert answer.code == 403 and "owner" in answer.body["message"], answer.body
    for source in ["..", "/etc", str(tmp_path)]:
        answer = await api("POST", "sessions", body={**body, "mounts": [{"source": source}]})
        assert answer.code == 403, (source, answer.body)
    answer = await api("POST", "sessions", body={**body, "mounts": [{"source": "nope"}]})
    assert answer.code == 400 and "does not exist" in answer.body["message"]
    assert (await api("GET", "sessions")).body["total"] == 0
