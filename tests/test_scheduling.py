"""Resource policies, the pending queue and ``depends_on``: limits at create (403, 429), the
scheduler's atomic admission (concurrency, total slots, agent capacity), first in first out per
owner, dependencies that wait, start or cancel, and recursive destroy.

Server tests run on the local agent (subprocess kernels: ten of them are affordable on two cores,
ten containers less so); one smaller variant runs on the real Docker engine. The store-level race
tests run on SQLite and PostgreSQL, with two managers (two engines and pools) on PostgreSQL.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

import docker
import pytest
from sqlalchemy.orm import Session

from jupyter_sessions.actions.lifecycle import CreateFromParamsAction, CreateSessionParams
from jupyter_sessions.agents.base import LABEL_INSTALLATION
from jupyter_sessions.errors import PermissionDenied, QuotaExceeded
from jupyter_sessions.identity import Caller
from jupyter_sessions.repository import Database, SessionRepository
from jupyter_sessions.repository.accounts import AccountRepository
from jupyter_sessions.repository.orm import SessionRow
from jupyter_sessions.repository.repository import (
    AdmissionState,
    NewKernel,
    NewSession,
    SessionData,
)
from jupyter_sessions.scheduler import (
    admission_decision,
    dependency_verdict,
    format_amount,
)
from jupyter_sessions.types import OCCUPYING_STATUSES, ResourceSlot, SessionStatus

from .conftest import Api

S = SessionStatus
T = TypeVar("T")
SMALL = {"cpu": 0.1, "mem": "128m"}
OCCUPYING = {str(s) for s in OCCUPYING_STATUSES}


@pytest.fixture
def sessions_config(
    sessions_config: dict[str, Any], tmp_path: Path, request: pytest.FixtureRequest
) -> dict[str, Any]:
    """The local agent on SQLite, unless a test asks for ``postgresql`` or ``docker``."""
    variant = getattr(request, "param", "sqlite")
    if variant == "docker":
        sessions_config["default_image"] = request.getfixturevalue("kernel_image")
        return sessions_config
    sessions_config["agents"] = [{"id": "local", "kind": "local", "root_dir": str(tmp_path / "l")}]
    if variant == "postgresql":
        sessions_config["db_url"] = request.getfixturevalue("postgres_url")
    return sessions_config


BOTH_STORES = pytest.mark.parametrize("sessions_config", ["sqlite", "postgresql"], indirect=True)


# --- helpers -------------------------------------------------------------------------------------


async def until(check: Callable[[], Awaitable[T | None]], what: str, timeout: float = 180.0) -> T:
    """Poll ``check`` until it returns something true; fail naming ``what`` past the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}; last: {value!r}")
        await asyncio.sleep(0.2)


async def new_user(api: Api, user: str, **limits: Any) -> dict[str, str]:
    """A keypair user bound to a policy of its own with ``limits``; answers its headers."""
    policy = await api("POST", "resource-policies", body={"name": f"p-{user}", **limits})
    assert policy.code == 201, policy.body
    keypair = await api("POST", "keypairs", body={"user": user, "resource_policy": f"p-{user}"})
    assert keypair.code == 201, keypair.body
    return {"Authorization": f"Keypair {keypair.body['access_key']}:{keypair.body['secret_key']}"}


async def sessions_of(api: Api, headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    answer = await api("GET", "sessions", headers=headers, limit=1000)
    assert answer.code == 200, answer.body
    return list(answer.body["sessions"])


async def info(api: Api, ref: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    answer = await api("GET", "sessions", ref, headers=headers)
    assert answer.code == 200, answer.body
    return dict(answer.body)


async def reaches(
    api: Api, ref: str, status: str, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        session = await info(api, ref, headers)
        return session if session["status"] == status else None

    return await until(check, f"session {ref} {status}")


async def create(api: Api, headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
    body.setdefault("resources", SMALL)
    answer = await api("POST", "sessions", body=body, headers=headers)
    assert answer.code == 201, answer.body
    return dict(answer.body)


async def inject_result(sessions_app: Any, session_id: str, result: str) -> None:
    """Test-only: give a session the result its batch command would leave (batch sessions are
    another part's work; here only how the scheduler reads results is under test)."""

    def work(db: Session) -> None:
        row = db.get(SessionRow, session_id)
        assert row is not None
        row.result = result

    await sessions_app.database.run(work)


def census(sessions: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for session in sessions:
        counts[session["status"]] = counts.get(session["status"], 0) + 1
    counts["occupying"] = sum(1 for s in sessions if s["status"] in OCCUPYING)
    return counts


async def max_occupancy_in_history(api: Api, sessions: list[dict[str, Any]], **kw: Any) -> int:
    """The most sessions that occupied at once, replayed from every status history."""
    moves: list[tuple[datetime, int]] = []
    for session in sessions:
        answer = await api("GET", "sessions", session["id"], "status-history", **kw)
        assert answer.code == 200, answer.body
        for change in answer.body["history"]:
            before = change["from"] in OCCUPYING
            after = change["to"] in OCCUPYING
            if before != after:
                moves.append((datetime.fromisoformat(change["at"]), 1 if after else -1))
    most = current = 0
    # At an equal instant an end sorts first: a start is admitted only after an end committed.
    for _at, delta in sorted(moves):
        current += delta
        most = max(most, current)
    return most


# --- the scheduler's rules, as pure functions ----------------------------------------------------


def session_data(**fields: Any) -> SessionData:
    now = datetime.now(UTC)
    values: dict[str, Any] = {
        "id": "00000000-0000-4000-8000-000000000001",
        "name": "probe",
        "owner_access_key": "AK",
        "status": S.PENDING,
        "status_info": "queued",
        "status_data": {},
        "status_changed_at": now,
        "result": "UNDEFINED",
        "exit_code": None,
        "type": "interactive",
        "image": "local",
        "resources": {"cpu": 4, "mem": 2**30},
        "cluster_mode": "single-node",
        "cluster_size": 1,
        "scaling_group": "default",
        "tag": None,
        "priority": 0,
        "params": {},
        "restarted_from": None,
        "created_at": now,
        "terminated_at": None,
        "kernels": (),
    }
    values.update(fields)
    return SessionData(**values)


def test_admission_reasons_name_the_limit() -> None:
    def state(**fields: Any) -> AdmissionState:
        values: dict[str, Any] = {
            "session": session_data(),
            "max_concurrent_sessions": None,
            "total_resource_slots": ResourceSlot({}),
            "owner_sessions": 0,
            "owner_usage": ResourceSlot({}),
            "agent_usage": {"a1": ResourceSlot({})},
        }
        values.update(fields)
        return AdmissionState(**values)

    cap = [("a1", ResourceSlot({"cpu": Decimal(8), "mem": Decimal(2**34)}))]
    assert admission_decision(state(), cap).agent_id == "a1"
    full = admission_decision(state(max_concurrent_sessions=10, owner_sessions=10), cap)
    assert full.agent_id is None and full.reason == "max_concurrent_sessions 10 reached"
    total = admission_decision(
        state(
            total_resource_slots=ResourceSlot({"cpu": Decimal(6)}),
            owner_usage=ResourceSlot({"cpu": Decimal(3)}),
        ),
        cap,
    )
    assert total.agent_id is None
    assert total.reason == "total_resource_slots reached on cpu: 3 cpu in use of 6 cpu, 4 cpu asked"
    busy = admission_decision(state(agent_usage={"a1": ResourceSlot({"cpu": Decimal(5)})}), cap)
    assert busy.agent_id is None and busy.reason == "no agent has 4 cpu free"
    assert admission_decision(state(agent_usage={}), []).reason == (
        "no agent of scaling group 'default' is reachable"
    )
    assert format_amount("mem", Decimal(512 * 2**20)) == "512m mem"
    assert format_amount("cpu", Decimal("0.50")) == "0.5 cpu"


def test_dependency_verdicts() -> None:
    a, b = "a" * 8, "b" * 8
    session = session_data(depends_on=(a, b))
    assert dependency_verdict(session, {a: ("RUNNING", "UNDEFINED"), b: ("PENDING", "")}) == (
        [a, b],
        None,
    )
    assert dependency_verdict(session, {a: ("TERMINATED", "SUCCESS"), b: ("RUNNING", "")}) == (
        [b],
        None,
    )
    done = {a: ("TERMINATED", "SUCCESS"), b: ("TERMINATED", "SUCCESS")}
    assert dependency_verdict(session, done) == ([], None)
    for state, reason in [
        (("TERMINATED", "FAILURE"), f"dependency {b} ended TERMINATED with result FAILURE"),
        (("TERMINATED", "UNDEFINED"), f"dependency {b} ended TERMINATED with result UNDEFINED"),
        (("CANCELLED", "UNDEFINED"), f"dependency {b} ended CANCELLED"),
        (("ERROR", "UNDEFINED"), f"dependency {b} ended ERROR"),
    ]:
        assert dependency_verdict(session, {a: ("TERMINATED", "SUCCESS"), b: state})[1] == reason


# --- the store: atomic under racing managers (SQLite and PostgreSQL) ----------------------------


@pytest.fixture
def managers(any_store_url: str) -> Iterator[list[Database]]:
    """Stores as managers see them: two engines on PostgreSQL, one on SQLite (a single writer,
    and several managers share only a PostgreSQL store)."""
    first = Database(any_store_url)
    first.migrate()
    dbs = [first]
    if first.is_postgresql:
        dbs.append(Database(any_store_url))
    yield dbs
    for db in dbs:
        db.close()


def pending_session(owner: str, name: str, cpu: int = 1) -> NewSession:
    return NewSession(
        name=name,
        owner_access_key=owner,
        image="local",
        type="interactive",
        resources={"cpu": cpu, "mem": 2**28},
        cluster_mode="single-node",
        cluster_size=1,
        scaling_group="default",
        tag=None,
        priority=0,
        params={},
        kernels=(NewKernel("main1", "main", 1),),
    )


async def test_racing_admissions_never_overshoot_a_policy_or_an_agent(
    managers: list[Database],
) -> None:
    repositories = [SessionRepository(db) for db in managers]
    accounts = AccountRepository(managers[0])
    await repositories[0].ensure_owner_keypair("owner")
    await accounts.create_policy("three", {"max_concurrent_sessions": 3})
    alice = (await accounts.create_keypair("alice", resource_policy="three")).keypair.access_key
    bob = (await accounts.create_keypair("bob")).keypair.access_key
    await repositories[0].upsert_agent(
        "a1",
        kind="local",
        url="",
        scaling_group="default",
        status="ALIVE",
        status_info="",
        capacity={"cpu": 5},
    )
    sessions = [
        await repositories[0].create_session(pending_session(owner, f"{who}-{i}"))
        for i in range(8)
        for owner, who in ((alice, "alice"), (bob, "bob"))
    ]
    decide = functools.partial(
        admission_decision, candidates=[("a1", ResourceSlot({"cpu": Decimal(5)}))]
    )
    # Every manager tries every session at once: each pool runs its transactions in parallel.
    outcomes = await asyncio.gather(
        *(repo.admit(s.id, ["a1"], decide) for s in sessions for repo in repositories)
    )
    admitted = [scheduled.id for scheduled, _decision in outcomes if scheduled is not None]
    assert len(admitted) == len(set(admitted)) == 5  # the agent's capacity, each session once
    stored = [await repositories[0].get(s.id) for s in sessions]
    scheduled = [s for s in stored if s.status is S.SCHEDULED]
    assert {s.id for s in scheduled} == set(admitted)
    assert sum(1 for s in scheduled if s.owner_access_key == alice) <= 3
    assert all(s.kernels[0].agent_id == "a1" for s in scheduled)
    waiting = [s for s in stored if s.status is S.PENDING]
    assert len(waiting) == 11
    assert all(
        s.status_info in ("max_concurrent_sessions 3 reached", "no agent has 1 cpu free")
        for s in waiting
    ), [s.status_info for s in waiting]
    for session in scheduled:
        history = await repositories[0].status_history(session.id)
        assert [(h.from_status, h.to_status) for h in history] == [
            (None, "PENDING"),
            ("PENDING", "SCHEDULED"),
        ]


async def test_racing_creates_cannot_both_take_the_last_pending_place(
    managers: list[Database],
) -> None:
    repositories = [SessionRepository(db) for db in managers]
    accounts = AccountRepository(managers[0])
    await repositories[0].ensure_owner_keypair("owner")
    await accounts.create_policy("queue3", {"max_pending_sessions": 3})
    carol = (await accounts.create_keypair("carol", resource_policy="queue3")).keypair.access_key
    outcomes = await asyncio.gather(
        *(
            repositories[i % len(repositories)].create_session_within_policy(
                pending_session(carol, f"carol-{i}")
            )
            for i in range(12)
        ),
        return_exceptions=True,
    )
    created = [o for o in outcomes if isinstance(o, SessionData)]
    refused = [o for o in outcomes if isinstance(o, QuotaExceeded)]
    assert len(created) == 3 and len(refused) == 9, outcomes
    assert "max_pending_sessions 3 reached" in refused[0].message


# --- the server: limits at create ----------------------------------------------------------------


async def test_per_session_limits_answer_403_and_the_pending_limit_429(
    api: Api, sessions_app: Any
) -> None:
    headers = await new_user(
        api,
        "dora",
        max_session_resources={"cpu": 0.5, "mem": "1g"},
        max_pending_sessions=2,
        max_concurrent_sessions=0,
        max_containers_per_session=1,
    )
    big = await api(
        "POST", "sessions", body={"resources": {"cpu": 1, "mem": "128m"}}, headers=headers
    )
    assert big.code == 403, big.body
    assert "max_session_resources" in big.body["message"] and "cpu" in big.body["message"]
    # The policy's max_containers_per_session, checked through the service itself.
    access_key = headers["Authorization"].split()[1].split(":")[0]
    caller = Caller(access_key, "dora", False)
    params = CreateSessionParams(
        name=None, image=None, resources=ResourceSlot.parse(SMALL), cluster_size=2
    )
    with pytest.raises(PermissionDenied) as containers:
        await sessions_app.service.create_from_params(
            CreateFromParamsAction(caller=caller, params=params)
        )
    assert "max_containers_per_session 1" in containers.value.message

    answers = await asyncio.gather(
        *(
            api(
                "POST",
                "sessions",
                body={"resources": SMALL, "enqueue_only": True},
                headers=headers,
            )
            for _ in range(5)
        )
    )
    codes = sorted(a.code for a in answers)
    assert codes == [201, 201, 429, 429, 429], [a.body for a in answers]
    refused = next(a for a in answers if a.code == 429)
    assert "max_pending_sessions 2 reached" in refused.body["message"]
    queued = [a.body for a in answers if a.code == 201]

    async def both_waiting() -> bool:
        found = [await info(api, s["id"], headers) for s in queued]
        return all(
            s["status"] == "PENDING" and s["status_info"] == "max_concurrent_sessions 0 reached"
            for s in found
        )

    await until(both_waiting, "the queued sessions to say why they wait")
    # A place freed in the queue can be taken again.
    gone = await api("DELETE", "sessions", queued[0]["id"], headers=headers)
    assert gone.code == 200 and gone.body["status"] == "CANCELLED"
    again = await api(
        "POST", "sessions", body={"resources": SMALL, "enqueue_only": True}, headers=headers
    )
    assert again.code == 201, again.body


# --- the server: the pending queue ---------------------------------------------------------------


@BOTH_STORES
async def test_fifty_creates_against_a_limit_of_ten(api: Api) -> None:
    headers = await new_user(api, "crowd", max_concurrent_sessions=10)
    answers = await asyncio.gather(
        *(
            api(
                "POST",
                "sessions",
                body={"name": f"crowd-{i:02d}", "resources": SMALL, "enqueue_only": True},
                headers=headers,
            )
            for i in range(50)
        )
    )
    assert [a.code for a in answers] == [201] * 50, [a.body for a in answers if a.code != 201]
    most_seen = 0

    def settled(running: int, pending: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            nonlocal most_seen
            sessions = await sessions_of(api, headers)
            counts = census(sessions)
            most_seen = max(most_seen, counts["occupying"])
            assert counts["occupying"] <= 10, counts
            waiting = [s for s in sessions if s["status"] == "PENDING"]
            return (
                counts.get("RUNNING", 0) == running
                and counts["occupying"] == running
                and len(waiting) == pending
                and all(s["status_info"] == "max_concurrent_sessions 10 reached" for s in waiting)
            )

        return check

    await until(settled(10, 40), "10 RUNNING and 40 PENDING with the reason")
    # Each end lets exactly one more start.
    first_running = next(s for s in await sessions_of(api, headers) if s["status"] == "RUNNING")
    gone = await api("DELETE", "sessions", first_running["id"], headers=headers)
    assert gone.code == 202, gone.body
    await reaches(api, first_running["id"], "TERMINATED", headers)
    await until(settled(10, 39), "one more to start after one ended")
    running = [s for s in await sessions_of(api, headers) if s["status"] == "RUNNING"][:3]
    for session in running:
        assert (await api("DELETE", "sessions", session["id"], headers=headers)).code == 202
    await until(settled(10, 36), "three more to start after three ended")
    assert most_seen == 10

    sessions = await sessions_of(api, headers)
    # First in, first out: the 14 that started are the 14 oldest.
    by_age = sorted(sessions, key=lambda s: (s["created_at"], s["id"]))
    assert {s["status"] for s in by_age[:14]} <= {"RUNNING", "TERMINATED"}
    assert {s["status"] for s in by_age[14:]} == {"PENDING"}
    # Never more than 10 at once, replayed from every session's history (not only samples).
    assert await max_occupancy_in_history(api, sessions, headers=headers) == 10


async def test_total_resource_slots_hold_the_owners_queue_in_order(api: Api) -> None:
    headers = await new_user(api, "erin", total_resource_slots={"cpu": 0.5})
    first = await create(
        api, headers, name="erin-a", resources={"cpu": 0.3, "mem": "128m"}, max_wait_seconds=60
    )
    assert first["status"] == "RUNNING", first
    second = await create(
        api, headers, name="erin-b", resources={"cpu": 0.3, "mem": "128m"}, enqueue_only=True
    )
    third = await create(api, headers, name="erin-c", resources=SMALL, enqueue_only=True)

    async def third_held() -> dict[str, Any] | None:
        session = await info(api, third["id"], headers)
        return session if session["status_info"].startswith("waiting behind") else None

    held = await until(third_held, "the third session to wait behind the second")
    # It would fit (0.3 + 0.1 <= 0.5) but the owner's queue is first in, first out.
    assert held["status"] == "PENDING"
    assert "total_resource_slots reached on cpu" in held["status_info"]
    blocked = await info(api, second["id"], headers)
    assert blocked["status"] == "PENDING"
    assert blocked["status_info"] == (
        "total_resource_slots reached on cpu: 0.3 cpu in use of 0.5 cpu, 0.3 cpu asked"
    )
    assert (await api("DELETE", "sessions", first["id"], headers=headers)).code == 202
    await reaches(api, second["id"], "RUNNING", headers)
    await reaches(api, third["id"], "RUNNING", headers)  # 0.3 + 0.1 fit together


async def test_a_session_waits_for_agent_capacity(api: Api) -> None:
    agents = (await api("GET", "agents")).body["agents"]
    capacity = agents[0]["capacity"]["cpu"]
    whole = await create(
        api, name="whole-agent", resources={"cpu": capacity, "mem": "128m"}, max_wait_seconds=60
    )
    assert whole["status"] == "RUNNING", whole
    headers = await new_user(api, "fred")
    small = await create(
        api, headers, name="fred-small", resources={"cpu": 0.5, "mem": "128m"}, enqueue_only=True
    )

    async def waits() -> dict[str, Any] | None:
        session = await info(api, small["id"], headers)
        return session if session["status_info"] == "no agent has 0.5 cpu free" else None

    assert (await until(waits, "the capacity reason"))["status"] == "PENDING"
    assert (await api("DELETE", "sessions", whole["id"])).code == 202
    await reaches(api, small["id"], "RUNNING", headers)


async def test_one_owners_full_queue_does_not_hold_another_owner(api: Api) -> None:
    gina = await new_user(api, "gina", max_concurrent_sessions=1)
    running = await create(api, gina, name="gina-1", max_wait_seconds=60)
    assert running["status"] == "RUNNING", running
    queued = await create(api, gina, name="gina-2", enqueue_only=True)

    async def waits() -> bool:
        session = await info(api, queued["id"], gina)
        return session["status_info"] == "max_concurrent_sessions 1 reached"

    await until(waits, "gina's second session to wait for her limit")
    hank = await new_user(api, "hank")
    later = await create(api, hank, name="hank-1", max_wait_seconds=60)
    assert later["status"] == "RUNNING", later  # created after gina-2, started before it
    assert (await info(api, queued["id"], gina))["status"] == "PENDING"


# --- depends_on ----------------------------------------------------------------------------------


async def test_depends_on_names_only_the_callers_own_sessions(api: Api) -> None:
    mine = await create(api, name="mine-dep", enqueue_only=True)
    ivan = await new_user(api, "ivan", max_concurrent_sessions=0)
    theirs = await create(api, ivan, name="ivan-dep", enqueue_only=True)
    cases: list[tuple[dict[str, Any], int]] = [
        ({"depends_on": ["no-such-session"]}, 404),
        ({"depends_on": [theirs["id"]]}, 404),  # another owner's session is not found
        ({"depends_on": ["ivan-dep"]}, 404),
        ({"depends_on": "mine-dep"}, 400),
        ({"depends_on": [3]}, 400),
        ({"depends_on": ["x"]}, 400),
    ]
    for body, code in cases:
        answer = await api("POST", "sessions", body={**body, "enqueue_only": True})
        assert answer.code == code, (body, answer.body)
        assert "depends_on" in answer.body["message"]
    # Resolved to ids, each once, by name or by id.
    child = await create(
        api, name="child-dep", depends_on=["mine-dep", mine["id"]], enqueue_only=True
    )
    assert child["depends_on"] == [mine["id"]]
    # Ivan may not lean on the owner's sessions either.
    answer = await api(
        "POST", "sessions", body={"depends_on": [mine["id"]], "enqueue_only": True}, headers=ivan
    )
    assert answer.code == 404


@BOTH_STORES
async def test_a_dependent_waits_and_starts_after_its_dependency_succeeds(
    api: Api, sessions_app: Any
) -> None:
    parent = await create(api, name="parent", max_wait_seconds=60)
    assert parent["status"] == "RUNNING", parent
    child = await create(api, name="child", depends_on=["parent"], enqueue_only=True)

    async def waits() -> dict[str, Any] | None:
        session = await info(api, child["id"])
        return (
            session
            if session["status_info"] == f"waiting for dependencies: {parent['id']}"
            else None
        )

    assert (await until(waits, "the child to wait for its parent"))["status"] == "PENDING"
    await inject_result(sessions_app, parent["id"], "SUCCESS")
    assert (await api("DELETE", "sessions", parent["id"])).code == 202
    await reaches(api, parent["id"], "TERMINATED")
    await reaches(api, child["id"], "RUNNING")
    history = (await api("GET", "sessions", child["id"], "status-history")).body["history"]
    assert [h["to"] for h in history][:2] == ["PENDING", "SCHEDULED"]


async def test_a_dependency_that_ends_otherwise_cancels_its_dependents(
    api: Api, sessions_app: Any
) -> None:
    failed = await create(api, name="fails", max_wait_seconds=60)
    undefined = await create(api, name="undefined", max_wait_seconds=60)
    crashed = await create(api, name="crashes", max_wait_seconds=60)
    assert {failed["status"], undefined["status"], crashed["status"]} == {"RUNNING"}
    on_failed = await create(api, name="on-failed", depends_on=["fails"], enqueue_only=True)
    transitive = await create(api, name="on-on-failed", depends_on=["on-failed"], enqueue_only=True)
    on_undefined = await create(
        api, name="on-undefined", depends_on=["undefined"], enqueue_only=True
    )
    on_crashed = await create(api, name="on-crashed", depends_on=["crashes"], enqueue_only=True)

    await inject_result(sessions_app, failed["id"], "FAILURE")
    assert (await api("DELETE", "sessions", failed["id"])).code == 202
    assert (await api("DELETE", "sessions", undefined["id"])).code == 202  # result stays UNDEFINED
    # A real crash: the kernel kills itself, the sweeper finds it gone and marks ERROR.
    await api(
        "POST",
        "sessions",
        "crashes",
        "execute",
        body={"mode": "query", "code": "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"},
    )
    await reaches(api, crashed["id"], "ERROR")

    cancelled = await reaches(api, on_failed["id"], "CANCELLED")
    assert cancelled["status_info"] == (
        f"dependency {failed['id']} ended TERMINATED with result FAILURE"
    )
    cancelled = await reaches(api, transitive["id"], "CANCELLED")
    assert cancelled["status_info"] == f"dependency {on_failed['id']} ended CANCELLED"
    cancelled = await reaches(api, on_undefined["id"], "CANCELLED")
    assert cancelled["status_info"] == (
        f"dependency {undefined['id']} ended TERMINATED with result UNDEFINED"
    )
    cancelled = await reaches(api, on_crashed["id"], "CANCELLED")
    assert cancelled["status_info"] == f"dependency {crashed['id']} ended ERROR"


async def test_recursive_destroy_takes_the_dependents_along(api: Api) -> None:
    root = await create(api, name="root-rec", max_wait_seconds=60)
    assert root["status"] == "RUNNING", root
    middle = await create(api, name="middle-rec", depends_on=["root-rec"], enqueue_only=True)
    leaf = await create(api, name="leaf-rec", depends_on=["middle-rec"], enqueue_only=True)
    bystander = await create(api, name="bystander", enqueue_only=True)

    gone = await api("DELETE", "sessions", "root-rec", recursive="true")
    assert gone.code == 202 and gone.body["id"] == root["id"], gone.body
    # The dependents ended within the call, with the recursive destroy as their reason.
    for session in (middle, leaf):
        ended = await info(api, session["id"])
        assert ended["status"] == "CANCELLED", ended
        assert ended["status_info"] == f"recursive destroy of {root['id']}"
    await reaches(api, root["id"], "TERMINATED")
    assert (await info(api, bystander["id"]))["status"] not in ("CANCELLED", "TERMINATED")


async def test_the_dependency_graph_shows_both_directions_to_its_owner_only(api: Api) -> None:
    root = await create(api, name="graph-root", max_wait_seconds=60)
    middle = await create(api, name="graph-mid", depends_on=["graph-root"], enqueue_only=True)
    leaf = await create(api, name="graph-leaf", depends_on=["graph-mid"], enqueue_only=True)
    other = await create(api, name="graph-other", depends_on=["graph-root"], enqueue_only=True)
    await create(api, name="graph-apart", enqueue_only=True)

    graph = await api("GET", "sessions", "graph-mid", "dependency-graph")
    assert graph.code == 200, graph.body
    assert graph.body["session_id"] == middle["id"]
    # Transitively both ways from the middle: its dependency, and its dependent; the root's other
    # dependent is not on a path through the middle, and the unrelated session is absent.
    assert {n["name"] for n in graph.body["nodes"]} == {"graph-root", "graph-mid", "graph-leaf"}
    assert {(e["from"], e["to"]) for e in graph.body["edges"]} == {
        (middle["id"], root["id"]),
        (leaf["id"], middle["id"]),
    }
    from_root = await api("GET", "sessions", "graph-root", "dependency-graph")
    assert {n["id"] for n in from_root.body["nodes"]} == {
        root["id"],
        middle["id"],
        leaf["id"],
        other["id"],
    }
    assert all(n["status"] and n["result"] for n in from_root.body["nodes"])

    keypair = await api("POST", "keypairs", body={"user": "graph-stranger"})
    stranger = {
        "Authorization": f"Keypair {keypair.body['access_key']}:{keypair.body['secret_key']}"
    }
    hidden = await api("GET", "sessions", middle["id"], "dependency-graph", headers=stranger)
    assert hidden.code == 404


# --- the real engine -----------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.usefixtures("docker_cleanup")
@pytest.mark.parametrize("sessions_config", ["docker"], indirect=True)
async def test_four_creates_against_a_limit_of_two_on_docker(
    api: Api, sessions_app: Any, docker_client: docker.DockerClient
) -> None:
    headers = await new_user(api, "docker-crowd", max_concurrent_sessions=2)
    answers = await asyncio.gather(
        *(
            api(
                "POST",
                "sessions",
                body={
                    "name": f"dock-{i}",
                    "resources": {"cpu": 0.25, "mem": "512m"},
                    "enqueue_only": True,
                },
                headers=headers,
            )
            for i in range(4)
        )
    )
    assert [a.code for a in answers] == [201] * 4, [a.body for a in answers]
    label = {"label": f"{LABEL_INSTALLATION}={sessions_app.installation_id}"}

    def settled(pending: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            sessions = await sessions_of(api, headers)
            counts = census(sessions)
            assert counts["occupying"] <= 2, counts
            waiting = [s for s in sessions if s["status"] == "PENDING"]
            return (
                counts.get("RUNNING", 0) == 2
                and counts["occupying"] == 2
                and len(waiting) == pending
                and all(s["status_info"] == "max_concurrent_sessions 2 reached" for s in waiting)
            )

        return check

    await until(settled(2), "2 RUNNING and 2 PENDING with the reason")
    containers = await asyncio.to_thread(docker_client.containers.list, filters=label)
    assert len(containers) == 2
    first = next(s for s in await sessions_of(api, headers) if s["status"] == "RUNNING")
    assert (await api("DELETE", "sessions", first["id"], headers=headers)).code == 202
    await reaches(api, first["id"], "TERMINATED", headers)
    await until(settled(1), "one more to start after one ended")
    containers = await asyncio.to_thread(docker_client.containers.list, filters=label)
    assert len(containers) == 2
    sessions = await sessions_of(api, headers)
    assert await max_occupancy_in_history(api, sessions, headers=headers) == 2
