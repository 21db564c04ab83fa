"""modify, rename, restart, check_and_transit_status and bootstrap_script, through the REST API.

Most tests run on the local agent (real subprocess kernels, cheap on this 2-core machine); the
ones marked ``docker`` run the same paths on the real engine, where a restart must keep the work
volume. Every test walks a session's status history to show each step.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

import docker
import pytest

from jupyter_sessions.actions.lifecycle import MAX_BOOTSTRAP_BYTES
from jupyter_sessions.types import SessionStatus

from .conftest import Api

TERMINAL = {"TERMINATED", "CANCELLED"}
ABSENT_ID = "0e1b7a6c-8f0e-4a57-9f5c-3c2f1d1a2b3c"


# --- fixtures and helpers -------------------------------------------------------------------------


@pytest.fixture
def local_agent(sessions_config: dict[str, Any], tmp_path: Path) -> Path:
    """The local agent (image "local"); listed before ``api`` so it applies before start."""
    root = tmp_path / "local-agent"
    sessions_config["agents"] = [{"id": "local", "kind": "local", "root_dir": str(root)}]
    return root


@pytest.fixture
def no_sweeper(sessions_config: dict[str, Any]) -> None:
    """A sweeper that runs once at start and then not for an hour: only transit-status checks."""
    sessions_config["sweep_interval"] = 3600.0


@pytest.fixture
def on_docker(sessions_config: dict[str, Any], kernel_image: str) -> str:
    sessions_config["default_image"] = kernel_image
    return kernel_image


async def hold_queue(app: Any) -> None:
    """Stop the scheduler so new sessions stay PENDING (no container, no kernel)."""
    await app.ensure_started()
    await app.scheduler.stop()


async def wait_status(
    api: Api, ref: str, wanted: set[str], timeout: float = 90, **kwargs: Any
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        answer = await api("GET", "sessions", ref, **kwargs)
        assert answer.code == 200, answer.body
        if answer.body["status"] in wanted or loop.time() > deadline:
            return dict(answer.body)
        await asyncio.sleep(0.2)


async def history(api: Api, ref: str) -> list[dict[str, Any]]:
    answer = await api("GET", "sessions", ref, "status-history")
    assert answer.code == 200, answer.body
    return list(answer.body["history"])


async def run(api: Api, ref: str, code: str) -> tuple[str, str]:
    """Run code in the session's kernel: (stdout, stderr)."""
    answer = await api("POST", "sessions", ref, "execute", body={"mode": "query", "code": code})
    console: list[Any] = []
    for _ in range(60):
        assert answer.code == 200, answer.body
        console.extend(answer.body["console"])
        if answer.body["status"] == "finished":
            break
        answer = await api(
            "POST",
            "sessions",
            ref,
            "execute",
            body={"mode": "continue", "run_id": answer.body["run_id"]},
        )
    else:
        raise AssertionError(f"the run did not finish: {console}")
    out = "".join(data for kind, data in console if kind == "stdout")
    err = "".join(data for kind, data in console if kind == "stderr")
    return out, err


async def create(api: Api, **body: Any) -> dict[str, Any]:
    """Create a session and wait (generously: CPU is shared) until it runs or fails."""
    answer = await api("POST", "sessions", body={"max_wait_seconds": 60, **body})
    assert answer.code == 201, answer.body
    return await wait_status(api, answer.body["id"], {"RUNNING", "ERROR"}, timeout=240)


async def destroy(api: Api, ref: str) -> None:
    answer = await api("DELETE", "sessions", ref)
    assert answer.code in (200, 202), answer.body
    final = await wait_status(api, answer.body["id"], TERMINAL, timeout=180)
    assert final["status"] in TERMINAL, final


async def second_user(api: Api, user: str = "second-user", **fields: Any) -> dict[str, str]:
    answer = await api("POST", "keypairs", body={"user": user, **fields})
    assert answer.code == 201, answer.body
    return {"Authorization": f"Keypair {answer.body['access_key']}:{answer.body['secret_key']}"}


def kernel_pid(session: dict[str, Any]) -> int:
    """The local agent's container id is ``local-<pid>-<random>``."""
    container_id = session["kernels"][0]["container_id"]
    assert container_id.startswith("local-"), container_id
    return int(container_id.split("-")[1])


# --- rename ---------------------------------------------------------------------------------------


async def test_rename_is_checked_before_anything_is_written_and_logged_in_history(
    local_agent: Path, api: Api, sessions_app: Any
) -> None:
    await hold_queue(sessions_app)
    alpha = (await api("POST", "sessions", body={"name": "alpha", "enqueue_only": True})).body
    beta = (await api("POST", "sessions", body={"name": "beta", "enqueue_only": True})).body
    before = await history(api, alpha["id"])

    taken = await api("POST", "sessions", "alpha", "rename", body={"name": "beta"})
    assert taken.code == 409 and "beta" in taken.body["message"], taken.body
    for bad, needle in [
        ({"name": "ab"}, "name"),
        ({"name": ABSENT_ID}, "session id"),
        ({"name": "has space"}, "name"),
        ({"name": 5}, "name"),
        ({}, "name is required"),
        ({"name": "gamma", "tag": "x"}, "tag"),
    ]:
        answer = await api("POST", "sessions", "alpha", "rename", body=bad)
        assert answer.code == 400 and needle in answer.body["message"], (bad, answer.body)
    # Nothing of the refused renames was written.
    assert (await api("GET", "sessions", alpha["id"])).body["name"] == "alpha"
    assert await history(api, alpha["id"]) == before

    renamed = await api("POST", "sessions", "alpha", "rename", body={"name": "gamma"})
    assert renamed.code == 200, renamed.body
    assert renamed.body["id"] == alpha["id"] and renamed.body["name"] == "gamma"
    assert renamed.body["status"] == "PENDING"
    steps = await history(api, "gamma")
    assert steps[:-1] == before
    assert (steps[-1]["from"], steps[-1]["to"]) == ("PENDING", "PENDING")
    assert steps[-1]["reason"] == "renamed from alpha to gamma"
    assert (await api("GET", "sessions", "alpha")).code == 404
    # The same name again changes nothing, and writes no history.
    same = await api("POST", "sessions", "gamma", "rename", body={"name": "gamma"})
    assert same.code == 200 and await history(api, "gamma") == steps
    # The old name is free for a new session.
    assert (await api("POST", "sessions", body={"name": "alpha", "enqueue_only": True})).code == 201

    # A final session holds no name, and cannot be renamed itself.
    assert (await api("DELETE", "sessions", "beta")).body["status"] == "CANCELLED"
    moved = await api("POST", "sessions", "gamma", "rename", body={"name": "beta"})
    assert moved.code == 200 and moved.body["name"] == "beta"
    final = await api("POST", "sessions", beta["id"], "rename", body={"name": "delta"})
    assert final.code == 409 and "CANCELLED" in final.body["message"], final.body
    assert final.body["reason"] == "invalid-status"

    missing = await api("POST", "sessions", ABSENT_ID, "rename", body={"name": "delta"})
    assert missing.code == 404


# --- modify ---------------------------------------------------------------------------------------


async def test_modify_changes_tag_priority_idle_timeout_and_pending_resources(
    local_agent: Path, api: Api, sessions_app: Any
) -> None:
    await hold_queue(sessions_app)
    session = (
        await api("POST", "sessions", body={"name": "mod-me", "tag": "old", "enqueue_only": True})
    ).body
    assert session["resources"] == {"cpu": 1, "mem": 2**30}

    changed = await api(
        "PATCH",
        "sessions",
        "mod-me",
        body={"tag": "new", "priority": 7, "idle_timeout": 600, "resources": {"mem": "768m"}},
    )
    assert changed.code == 200, changed.body
    assert changed.body["tag"] == "new" and changed.body["priority"] == 7
    # A partial resources change is merged over what the session asked for.
    assert changed.body["resources"] == {"cpu": 1, "mem": 768 * 2**20}
    stored = await sessions_app.repository.get(session["id"])
    assert stored.idle_timeout == 600
    cleared = await api("PATCH", "sessions", "mod-me", body={"tag": None, "idle_timeout": None})
    assert cleared.code == 200 and cleared.body["tag"] is None
    assert (await sessions_app.repository.get(session["id"])).idle_timeout is None

    # A name change is a rename: checked the same way, and in the history.
    renamed = await api("PATCH", "sessions", "mod-me", body={"name": "modded"})
    assert renamed.code == 200 and renamed.body["name"] == "modded"
    assert (await history(api, "modded"))[-1]["reason"] == "renamed from mod-me to modded"

    for bad, status, needle in [
        ({}, 400, "nothing to change"),
        ({"colour": "blue"}, 400, "colour"),
        ({"status": "RUNNING"}, 400, "status"),
        ({"priority": 101}, 400, "priority"),
        ({"priority": True}, 400, "priority"),
        ({"idle_timeout": 0}, 400, "idle_timeout"),
        ({"idle_timeout": "1h"}, 400, "idle_timeout"),
        ({"tag": 5}, 400, "tag"),
        ({"name": "x"}, 400, "name"),
        ({"resources": {"gpu": 1}}, 400, "resources.gpu"),
        ({"resources": {}}, 400, "resources"),
        ({"resources": {"mem": "1m"}}, 400, "resources.mem"),
        ({"resources": {"cpu": 100000}}, 403, "largest agent"),
    ]:
        answer = await api("PATCH", "sessions", "modded", body=bad)
        assert answer.code == status and needle in answer.body["message"], (bad, answer.body)
    after = (await api("GET", "sessions", "modded")).body
    assert after["resources"] == {"cpu": 1, "mem": 768 * 2**20} and after["priority"] == 7

    # Once it runs, resources are fixed (409 naming the status); the changed memory is what
    # the kernel got (the local agent sets RLIMIT_AS to mem plus 1 GiB of headroom).
    sessions_app.scheduler.start()
    running = await wait_status(api, "modded", {"RUNNING", "ERROR"}, timeout=240)
    assert running["status"] == "RUNNING", running
    out, _ = await run(
        api, "modded", "import resource; print(resource.getrlimit(resource.RLIMIT_AS)[0])"
    )
    assert int(out) == 768 * 2**20 + 2**30
    late = await api("PATCH", "sessions", "modded", body={"resources": {"cpu": 0.5}})
    assert late.code == 409 and "RUNNING" in late.body["message"], late.body
    assert (await api("PATCH", "sessions", "modded", body={"tag": "running"})).code == 200

    await destroy(api, "modded")
    final = await api("PATCH", "sessions", session["id"], body={"tag": "too late"})
    assert final.code == 409 and "TERMINATED" in final.body["message"], final.body


async def test_modify_resources_never_exceeds_the_owners_policy(
    local_agent: Path, api: Api, sessions_app: Any
) -> None:
    await hold_queue(sessions_app)
    policy = {"name": "small", "max_session_resources": {"cpu": 1, "mem": "1g"}}
    assert (await api("POST", "resource-policies", body=policy)).code == 201
    user = await second_user(api, "small-user", resource_policy="small")
    created = await api(
        "POST",
        "sessions",
        body={"name": "small-one", "resources": {"cpu": 0.5}, "enqueue_only": True},
        headers=user,
    )
    assert created.code == 201, created.body
    over = await api("PATCH", "sessions", "small-one", body={"resources": {"cpu": 2}}, headers=user)
    assert over.code == 403 and "max_session_resources" in over.body["message"], over.body
    within = await api(
        "PATCH", "sessions", "small-one", body={"resources": {"cpu": 1}}, headers=user
    )
    assert within.code == 200 and within.body["resources"]["cpu"] == 1


# --- bootstrap_script -----------------------------------------------------------------------------


async def test_bootstrap_script_runs_in_the_work_directory_as_data(
    local_agent: Path, api: Api
) -> None:
    # Quotes, $, backslashes, a newline and a here-document: the script is one argv item of
    # ``sh -c``, so the shell sees exactly this text and nothing of ours around it.
    tricky = 'it\'s "quoted" $HOME \\ `not run` ; done'
    script = (
        "set -e\n"
        "pwd > where.txt\n"
        "printf '%s\\n' \"$MARK\" > mark.txt\n"
        "cat > tricky.txt <<'EOF'\n"
        f"{tricky}\n"
        "EOF\n"
        "echo bootstrapped\n"
    )
    session = await create(
        api, name="booted", bootstrap_script=script, environ={"MARK": "from environ"}
    )
    assert session["status"] == "RUNNING", session
    out, _ = await run(
        api,
        "booted",
        "import os; print(open('where.txt').read().strip() == os.getcwd()); "
        "print(open('mark.txt').read().strip()); print(open('tricky.txt').read().strip())",
    )
    assert out.splitlines() == ["True", "from environ", tricky]
    steps = await history(api, "booted")
    assert [s["to"] for s in steps][-2:] == ["CREATING", "RUNNING"]
    assert steps[-1]["reason"] == "kernel ready, bootstrap_script done"
    await destroy(api, "booted")


async def test_a_failing_bootstrap_script_means_error_with_its_output(
    local_agent: Path, api: Api
) -> None:
    # Long output: status_info keeps its tail.
    script = "echo preparing\nfor i in $(seq 1 3000); do echo line $i; done\nexit 4"
    long = await create(api, name="long-boot", bootstrap_script=script)
    assert long["status"] == "ERROR", long
    info = long["status_info"]
    assert info.startswith("bootstrap_script failed with exit code 4: …"), info[:200]
    assert info.rstrip().endswith("line 3000") and "preparing" not in info
    assert len(info) < 2200
    await destroy(api, "long-boot")

    # Both streams reach status_info.
    session = await create(api, name="bad-boot", bootstrap_script="echo out\necho err >&2\nexit 3")
    assert session["status"] == "ERROR", session
    info = session["status_info"]
    assert "bootstrap_script failed with exit code 3" in info, info
    assert "out" in info and "err" in info, info
    steps = await history(api, "bad-boot")
    assert [s["to"] for s in steps][-2:] == ["CREATING", "ERROR"]
    assert steps[-1]["reason"] == info
    # ERROR is not final: a restart runs the script again (and fails again), destroy cleans up.
    restarted = await api("POST", "sessions", "bad-boot", "restart")
    assert restarted.code == 202 and restarted.body["status"] == "RESTARTING", restarted.body
    again = await wait_status(api, session["id"], {"RUNNING", "ERROR"}, timeout=240)
    assert again["status"] == "ERROR" and "exit code 3" in again["status_info"], again
    assert [s["to"] for s in await history(api, "bad-boot")][-3:] == [
        "ERROR",
        "RESTARTING",
        "ERROR",
    ]
    await destroy(api, "bad-boot")


@pytest.mark.parametrize(
    ("script", "needle"),
    [
        ("x" * (MAX_BOOTSTRAP_BYTES + 1), "64 KiB"),
        ("é" * (MAX_BOOTSTRAP_BYTES // 2 + 1), "64 KiB"),  # counted in UTF-8 bytes
        ("echo a\0b", "NUL"),
        (["echo", "hi"], "string"),
        (7, "string"),
        ("\ud800", "Unicode"),
    ],
)
async def test_bad_bootstrap_scripts_are_refused_by_name(
    local_agent: Path, api: Api, script: Any, needle: str
) -> None:
    answer = await api("POST", "sessions", body={"bootstrap_script": script})
    assert answer.code == 400, answer.body
    assert "bootstrap_script" in answer.body["message"] and needle in answer.body["message"]
    assert (await api("GET", "sessions")).body["total"] == 0


async def test_a_bootstrap_script_at_the_size_limit_is_accepted(
    local_agent: Path, api: Api, sessions_app: Any
) -> None:
    await hold_queue(sessions_app)
    script = "#" * (MAX_BOOTSTRAP_BYTES - 1) + "\n"
    answer = await api("POST", "sessions", body={"bootstrap_script": script, "enqueue_only": True})
    assert answer.code == 201, answer.body


# --- restart --------------------------------------------------------------------------------------


async def test_restart_in_place_keeps_id_and_work_directory_and_reruns_bootstrap(
    local_agent: Path, api: Api
) -> None:
    session = await create(
        api, name="restart-me", bootstrap_script="echo boot >> boot.log", environ={"K": "v"}
    )
    assert session["status"] == "RUNNING", session
    await run(api, "restart-me", "x = 42\nopen('keep.txt', 'w').write('kept')")
    old_container = session["kernels"][0]["container_id"]

    answer = await api("POST", "sessions", "restart-me", "restart")
    assert answer.code == 202, answer.body
    assert answer.body["status"] == "RESTARTING" and answer.body["id"] == session["id"]
    running = await wait_status(api, session["id"], {"RUNNING", "ERROR"}, timeout=240)
    assert running["status"] == "RUNNING", running
    assert running["status_info"] == "restarted: kernel ready, bootstrap_script done"
    assert running["kernels"][0]["container_id"] != old_container
    assert running["kernels"][0]["status"] == "RUNNING"

    out, err = await run(
        api,
        "restart-me",
        "import os; print(open('keep.txt').read(), open('boot.log').read().split(), "
        "os.environ['K'])\nx",
    )
    assert out.split() == ["kept", "['boot',", "'boot']", "v"], out  # bootstrap ran twice
    assert "NameError" in err  # a new kernel: the old one's variables are gone
    steps = [s["to"] for s in await history(api, "restart-me")]
    assert steps == [
        "PENDING",
        "SCHEDULED",
        "PREPARING",
        "PREPARED",
        "CREATING",
        "RUNNING",
        "RESTARTING",
        "RUNNING",
    ]
    with pytest.raises(ProcessLookupError):
        os.kill(kernel_pid(session), 0)  # the old kernel process is gone
    await destroy(api, "restart-me")


async def test_restart_from_error_after_the_kernel_died(
    local_agent: Path, no_sweeper: None, api: Api
) -> None:
    session = await create(api, name="crashy")
    assert session["status"] == "RUNNING", session
    os.kill(kernel_pid(session), signal.SIGKILL)  # a real crash of the kernel process
    # The sweeper sleeps for an hour: only transit-status can notice. The process takes a moment
    # to be gone for good (its threads exit after the leader), so ask until it is.
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        checked = await api("POST", "sessions", "transit-status", body={"session_ids": ["crashy"]})
        assert checked.code == 200, checked.body
        [errored] = checked.body["sessions"]
        if errored["status"] != "RUNNING" or loop.time() > deadline:
            break
        await asyncio.sleep(0.1)
    assert errored["status"] == "ERROR" and "vanished" in errored["status_info"], errored

    answer = await api("POST", "sessions", "crashy", "restart")
    assert answer.code == 202 and answer.body["status"] == "RESTARTING", answer.body
    running = await wait_status(api, session["id"], {"RUNNING", "ERROR"}, timeout=240)
    assert running["status"] == "RUNNING", running
    out, _ = await run(api, "crashy", "print(6 * 7)")
    assert out.strip() == "42"
    assert [s["to"] for s in await history(api, "crashy")][-4:] == [
        "RUNNING",
        "ERROR",
        "RESTARTING",
        "RUNNING",
    ]
    await destroy(api, "crashy")


async def test_restart_of_a_final_session_runs_it_again_as_a_new_one(
    local_agent: Path, api: Api, sessions_app: Any
) -> None:
    first = await create(
        api,
        name="rerun-me",
        tag="nightly",
        resources={"cpu": 0.5, "mem": "512m"},
        environ={"RUN_KIND": "again"},
        bootstrap_script="echo boot >> boot.log",
    )
    assert first["status"] == "RUNNING", first
    await destroy(api, "rerun-me")

    answer = await api("POST", "sessions", first["id"], "restart")
    assert answer.code == 201, answer.body
    second = answer.body
    assert second["id"] != first["id"] and second["restarted_from"] == first["id"]
    assert second["name"] == "rerun-me" and second["tag"] == "nightly"
    assert second["resources"] == {"cpu": 0.5, "mem": 512 * 2**20}
    assert second["owner_access_key"] == first["owner_access_key"]
    running = await wait_status(api, second["id"], {"RUNNING", "ERROR"}, timeout=240)
    assert running["status"] == "RUNNING", running
    out, _ = await run(
        api, "rerun-me", "import os; print(os.environ['RUN_KIND'], open('boot.log').read())"
    )
    assert out.split() == ["again", "boot"]  # its own work directory, bootstrapped once
    assert (await history(api, second["id"]))[0]["to"] == "PENDING"
    old = (await api("GET", "sessions", first["id"])).body
    assert old["status"] == "TERMINATED"  # the final one stays final

    # The name is taken by the new one now: running the old one again is a conflict.
    taken = await api("POST", "sessions", first["id"], "restart")
    assert taken.code == 409 and "rerun-me" in taken.body["message"], taken.body
    await destroy(api, second["id"])

    # A cancelled session is final too; its rerun is subject to the same checks as a create.
    await hold_queue(sessions_app)
    cancelled = (
        await api("POST", "sessions", body={"name": "never-ran", "enqueue_only": True})
    ).body
    assert (await api("DELETE", "sessions", "never-ran")).body["status"] == "CANCELLED"
    again = await api("POST", "sessions", cancelled["id"], "restart")
    assert again.code == 201 and again.body["status"] == "PENDING", again.body
    assert again.body["restarted_from"] == cancelled["id"]


async def test_restart_refuses_other_statuses_naming_them(
    local_agent: Path, api: Api, sessions_app: Any
) -> None:
    await hold_queue(sessions_app)
    pending = (await api("POST", "sessions", body={"name": "waiting", "enqueue_only": True})).body
    answer = await api("POST", "sessions", "waiting", "restart")
    assert answer.code == 409 and "PENDING" in answer.body["message"], answer.body
    assert answer.body["reason"] == "invalid-status"
    assert [s["to"] for s in await history(api, pending["id"])] == ["PENDING"]
    assert (await api("POST", "sessions", ABSENT_ID, "restart")).code == 404
    assert (await api("POST", "sessions", "no-such-name", "restart")).code == 404


# --- check_and_transit_status ---------------------------------------------------------------------


async def test_transit_status_applies_deadlines_now(
    local_agent: Path, api: Api, sessions_app: Any
) -> None:
    await hold_queue(sessions_app)
    sessions_app.service.config.deadlines[SessionStatus.SCHEDULED] = 0.5
    stuck = (await api("POST", "sessions", body={"name": "stuck-one", "enqueue_only": True})).body
    other = (await api("POST", "sessions", body={"name": "fine-one", "enqueue_only": True})).body
    # Inject what a start task that died with a previous server leaves: a session SCHEDULED and
    # nothing working on it (a real scheduler would go on at once).
    await sessions_app.repository.transit(stuck["id"], SessionStatus.SCHEDULED, "placed")

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while True:
        answer = await api(
            "POST",
            "sessions",
            "transit-status",
            body={"session_ids": [stuck["id"], "fine-one", stuck["id"]]},
        )
        assert answer.code == 200, answer.body
        first = answer.body["sessions"][0]
        if first["status"] != "SCHEDULED" or loop.time() > deadline:
            break
        await asyncio.sleep(0.2)
    assert answer.body["total"] == 2  # in the order asked, duplicates once
    assert [s["id"] for s in answer.body["sessions"]] == [stuck["id"], other["id"]]
    assert first["status"] == "ERROR", first
    assert first["status_info"] == "deadline: SCHEDULED for more than 0.5 s"
    assert answer.body["sessions"][1]["status"] == "PENDING"  # PENDING has no deadline
    assert [s["to"] for s in await history(api, stuck["id"])] == ["PENDING", "SCHEDULED", "ERROR"]


async def test_transit_status_refuses_bad_requests_and_others_sessions(
    local_agent: Path, api: Api, sessions_app: Any
) -> None:
    await hold_queue(sessions_app)
    mine = (await api("POST", "sessions", body={"name": "mine-only", "enqueue_only": True})).body
    for body, needle in [
        ({}, "session_ids"),
        ({"session_ids": "mine-only"}, "session_ids"),
        ({"session_ids": [1]}, "session_ids"),
        ({"session_ids": [""]}, "session_ids"),
        ({"session_ids": ["x"] * 101}, "at most 100"),
        ({"session_ids": [], "colour": "blue"}, "colour"),
    ]:
        answer = await api("POST", "sessions", "transit-status", body=body)
        assert answer.code == 400 and needle in answer.body["message"], (body, answer.body)
    empty = await api("POST", "sessions", "transit-status", body={"session_ids": []})
    assert empty.code == 200 and empty.body == {"sessions": [], "total": 0}
    unknown = await api(
        "POST", "sessions", "transit-status", body={"session_ids": ["mine-only", ABSENT_ID]}
    )
    assert unknown.code == 404 and ABSENT_ID in unknown.body["message"]

    other = await second_user(api)
    for ref in (mine["id"], "mine-only"):
        answer = await api(
            "POST", "sessions", "transit-status", body={"session_ids": [ref]}, headers=other
        )
        assert answer.code == 404, answer.body
        assert mine["owner_access_key"] not in str(answer.body)
    # Other methods on the literal path are not a session named "transit-status".
    assert (await api("GET", "sessions", "transit-status")).code == 405


async def test_a_second_user_can_change_none_of_the_owners_sessions(
    local_agent: Path, api: Api, sessions_app: Any
) -> None:
    await hold_queue(sessions_app)
    owners = (await api("POST", "sessions", body={"name": "owners-own", "enqueue_only": True})).body
    other = await second_user(api)
    for ref in (owners["id"], "owners-own"):
        for method, suffix, body in [
            ("PATCH", (), {"tag": "mine now"}),
            ("POST", ("rename",), {"name": "stolen"}),
            ("POST", ("restart",), None),
        ]:
            answer = await api(method, "sessions", ref, *suffix, body=body, headers=other)
            assert answer.code == 404, (method, ref, suffix, answer.body)
    after = (await api("GET", "sessions", owners["id"])).body
    assert after["name"] == "owners-own" and after["tag"] is None
    assert [s["to"] for s in await history(api, owners["id"])] == ["PENDING"]
    # The owner (admin) may act on another key's session by id.
    theirs = (
        await api(
            "POST", "sessions", body={"name": "guest-own", "enqueue_only": True}, headers=other
        )
    ).body
    renamed = await api("POST", "sessions", theirs["id"], "rename", body={"name": "by-admin"})
    assert renamed.code == 200 and renamed.body["owner_access_key"] == theirs["owner_access_key"]
    assert (await api("GET", "sessions", "by-admin", headers=other)).code == 200


# --- on the real Docker engine --------------------------------------------------------------------


@pytest.mark.docker
async def test_restart_on_docker_keeps_the_volume_and_replaces_the_container(
    on_docker: str, docker_cleanup: None, api: Api, docker_client: Any
) -> None:
    from jupyter_sessions.agents.docker import container_name, volume_name

    session = await create(api, name="docker-restart", bootstrap_script="echo boot >> boot.log")
    assert session["status"] == "RUNNING", session
    await run(api, "docker-restart", "open('keep.txt', 'w').write('kept')")
    old = docker_client.containers.get(session["kernels"][0]["container_id"])
    volume = docker_client.volumes.get(volume_name(session["id"]))

    answer = await api("POST", "sessions", "docker-restart", "restart")
    assert answer.code == 202 and answer.body["status"] == "RESTARTING", answer.body
    running = await wait_status(api, session["id"], {"RUNNING", "ERROR"}, timeout=240)
    assert running["status"] == "RUNNING", running
    new = docker_client.containers.get(running["kernels"][0]["container_id"])
    assert new.id != old.id and new.name == container_name(session["id"], "main1")
    with pytest.raises(docker.errors.NotFound):
        old.reload()
    volume.reload()  # the same work volume, still there
    out, _ = await run(
        api,
        "docker-restart",
        "import os; print(os.getcwd(), open('keep.txt').read(), open('boot.log').read().split())",
    )
    assert out.split() == ["/home/work", "kept", "['boot',", "'boot']"], out
    assert [s["to"] for s in await history(api, "docker-restart")][-3:] == [
        "RUNNING",
        "RESTARTING",
        "RUNNING",
    ]
    await destroy(api, "docker-restart")


@pytest.mark.docker
async def test_bootstrap_failure_on_docker_means_error_with_output(
    on_docker: str, docker_cleanup: None, api: Api
) -> None:
    script = "id -u\ntouch /etc/forbidden\n"  # the kernel's user is not root
    session = await create(api, name="docker-bad-boot", bootstrap_script=script)
    assert session["status"] == "ERROR", session
    info = session["status_info"]
    assert "bootstrap_script failed with exit code 1" in info, info
    assert "1000" in info and "/etc/forbidden" in info, info
    await destroy(api, "docker-bad-boot")
