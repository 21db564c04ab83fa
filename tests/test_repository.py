"""The store on both backends (a real SQLite file, a real PostgreSQL server): migrations equal the
models, names, transitions, history, and what concurrency must not break."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import IntegrityError

from jupyter_sessions.errors import Conflict, InvalidStatus, NotFound
from jupyter_sessions.repository import Database, Scope, SessionRepository
from jupyter_sessions.repository.db import MIGRATIONS_DIR
from jupyter_sessions.repository.orm import Base
from jupyter_sessions.repository.repository import NewKernel, NewSession
from jupyter_sessions.types import SessionStatus

# Until tests/conftest.py lists "tests.postgres" in pytest_plugins:

S = SessionStatus


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path}/store.db")
    db.migrate()
    yield db
    db.close()


@pytest.fixture
def database(any_store_url: str) -> Iterator[Database]:
    """A migrated store on each backend: every test that takes it runs on both."""
    db = Database(any_store_url)
    db.migrate()
    yield db
    db.close()


@pytest.fixture
def repository(database: Database) -> SessionRepository:
    return SessionRepository(database)


def new_session(owner: str, name: str) -> NewSession:
    return NewSession(
        name=name,
        owner_access_key=owner,
        image="img:1",
        type="interactive",
        resources={"cpu": 1},
        cluster_mode="single-node",
        cluster_size=1,
        scaling_group="default",
        tag=None,
        priority=0,
        params={},
        kernels=(NewKernel("main1", "main", 1),),
    )


def test_migrations_create_exactly_the_models(database: Database) -> None:
    with database.engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    assert diff == []


def test_sqlite_store_file_is_private_and_in_wal_mode(
    sqlite_database: Database, tmp_path: Path
) -> None:
    assert (tmp_path / "store.db").stat().st_mode & 0o077 == 0
    with sqlite_database.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


async def test_names_are_unique_per_owner_among_active_sessions(
    repository: SessionRepository,
) -> None:
    owner = (await repository.ensure_owner_keypair("alice")).access_key
    first = await repository.create_session(new_session(owner, "analysis"))
    with pytest.raises(Conflict):
        await repository.create_session(new_session(owner, "analysis"))
    await repository.transit(first.id, S.CANCELLED, "user-requested")
    again = await repository.create_session(new_session(owner, "analysis"))
    assert again.id != first.id


async def test_transitions_are_checked_and_every_one_is_logged(
    repository: SessionRepository,
) -> None:
    owner = (await repository.ensure_owner_keypair("alice")).access_key
    session = await repository.create_session(new_session(owner, "logged"))
    for target in (S.SCHEDULED, S.PREPARING, S.PREPARED, S.CREATING, S.RUNNING):
        session = await repository.transit(session.id, target, f"to {target}")
    with pytest.raises(InvalidStatus) as info:
        await repository.transit(session.id, S.PENDING, "back")
    assert "RUNNING" in info.value.message
    history = await repository.status_history(session.id)
    assert [(h.from_status, h.to_status) for h in history] == [
        (None, "PENDING"),
        ("PENDING", "SCHEDULED"),
        ("SCHEDULED", "PREPARING"),
        ("PREPARING", "PREPARED"),
        ("PREPARED", "CREATING"),
        ("CREATING", "RUNNING"),
    ]
    assert all(h.at.tzinfo is not None for h in history)
    stored = await repository.get(session.id)
    assert stored.status is S.RUNNING and stored.kernels[0].status is S.RUNNING


async def test_guarded_transition_refuses_an_unexpected_current_status(
    repository: SessionRepository,
) -> None:
    owner = (await repository.ensure_owner_keypair("alice")).access_key
    session = await repository.create_session(new_session(owner, "guarded"))
    with pytest.raises(InvalidStatus):
        await repository.transit(session.id, S.ERROR, "x", expected={S.CREATING})
    assert (await repository.get(session.id)).status is S.PENDING


async def test_scope_hides_other_owners_sessions(repository: SessionRepository) -> None:
    owner = (await repository.ensure_owner_keypair("alice")).access_key
    session = await repository.create_session(new_session(owner, "private"))
    found = await repository.resolve(session.id, Scope(owner), name_owner=owner)
    assert found.id == session.id
    with pytest.raises(NotFound):
        await repository.resolve(session.id, Scope("someone-else"), name_owner="someone-else")
    with pytest.raises(NotFound):
        await repository.resolve("private", Scope("someone-else"), name_owner="someone-else")
    by_name = await repository.resolve("private", Scope(owner), name_owner=owner)
    assert by_name.id == session.id


async def test_match_is_a_prefix_of_name_or_id_with_wildcards_escaped(
    repository: SessionRepository,
) -> None:
    owner = (await repository.ensure_owner_keypair("alice")).access_key
    a = await repository.create_session(new_session(owner, "train-a"))
    await repository.create_session(new_session(owner, "trainXb"))
    found, total = await repository.list_sessions(Scope(owner), match="train-")
    assert total == 1 and found[0].id == a.id
    found, _ = await repository.list_sessions(Scope(owner), match="train_")
    assert found == []  # '_' is literal, not a LIKE wildcard
    found, _ = await repository.list_sessions(Scope(owner), match=a.id[:8])
    assert [s.id for s in found] == [a.id]
    found, _ = await repository.list_sessions(Scope(owner), match=a.id[:8].upper())
    assert [s.id for s in found] == [a.id]  # ids are case-insensitive hex
    for literal in ("train%", "%", "train\\"):
        found, _ = await repository.list_sessions(Scope(owner), match=literal)
        assert found == [], literal


async def test_match_of_a_name_is_case_sensitive_on_every_backend(
    repository: SessionRepository,
) -> None:
    """Names are case-sensitive (two sessions may be "Data" and "data"), and so is their match."""
    owner = (await repository.ensure_owner_keypair("alice")).access_key
    upper = await repository.create_session(new_session(owner, "Data-prep"))
    lower = await repository.create_session(new_session(owner, "data-prep"))
    found, _ = await repository.list_sessions(Scope(owner), match="Data")
    assert [s.id for s in found] == [upper.id]
    found, _ = await repository.list_sessions(Scope(owner), match="data")
    assert [s.id for s in found] == [lower.id]
    found, total = await repository.list_sessions(Scope(owner), match="DATA")
    assert found == [] and total == 0


async def test_owner_keypair_is_made_once(repository: SessionRepository) -> None:
    first = await repository.ensure_owner_keypair("alice")
    second = await repository.ensure_owner_keypair("alice")
    assert first.access_key == second.access_key and first.is_admin
    assert await repository.installation_id() == await repository.installation_id()


async def test_concurrent_guarded_transitions_let_exactly_one_win(
    repository: SessionRepository,
) -> None:
    """Two actors racing on one session (a destroy and a start): one moves it, one is refused."""
    owner = (await repository.ensure_owner_keypair("alice")).access_key
    for round_ in range(10):
        session = await repository.create_session(new_session(owner, f"race-{round_:02d}"))
        outcomes = await asyncio.gather(
            *(
                repository.transit(session.id, target, "racing", expected={S.PENDING})
                for target in (S.SCHEDULED, S.CANCELLED, S.ERROR, S.SCHEDULED)
            ),
            return_exceptions=True,
        )
        won = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, InvalidStatus)]
        assert len(won) == 1 and len(refused) == 3, outcomes
        history = await repository.status_history(session.id)
        assert [(h.from_status, h.to_status) for h in history] == [
            (None, "PENDING"),
            ("PENDING", str(won[0].status)),
        ]
        assert (await repository.get(session.id)).status is won[0].status


async def test_concurrent_creations_of_one_name_make_one_session(
    repository: SessionRepository,
) -> None:
    owner = (await repository.ensure_owner_keypair("alice")).access_key
    outcomes = await asyncio.gather(
        *(repository.create_session(new_session(owner, "contended")) for _ in range(6)),
        return_exceptions=True,
    )
    made = [o for o in outcomes if not isinstance(o, BaseException)]
    assert len(made) == 1, outcomes
    assert all(isinstance(o, Conflict) for o in outcomes if o not in made), outcomes
    _, total = await repository.list_sessions(Scope(owner))
    assert total == 1


async def test_only_a_taken_name_is_a_name_conflict(repository: SessionRepository) -> None:
    """Other integrity errors (a reused id, an unknown owner) are not reported as a taken name."""
    owner = (await repository.ensure_owner_keypair("alice")).access_key
    first = await repository.create_session(new_session(owner, "original"))
    reused_id = dataclasses.replace(new_session(owner, "another"), id=first.id)
    with pytest.raises(IntegrityError):
        await repository.create_session(reused_id)
    with pytest.raises(IntegrityError):
        await repository.create_session(new_session("AKNOBODY", "orphan"))
    with pytest.raises(Conflict) as info:
        await repository.create_session(new_session(owner, "original"))
    assert info.value.details == {"field": "name"}


async def test_times_come_back_in_utc_and_json_round_trips(
    repository: SessionRepository,
) -> None:
    owner = (await repository.ensure_owner_keypair("alice")).access_key
    params = {"environ": {"LANG": "ko_KR.UTF-8", "GREETING": "안녕 \\ % _"}, "ports": [8080, 8888]}
    resources = {"cpu": 0.5, "mem": 512 * 2**20, "cuda.device": 1}
    request = dataclasses.replace(new_session(owner, "round-trip"), params=params)
    request = dataclasses.replace(request, resources=resources)
    before = datetime.now(UTC)
    session = await repository.create_session(request)
    stored = await repository.get(session.id)
    assert stored.params == params and stored.resources == resources
    for moment in (stored.created_at, stored.status_changed_at, stored.kernels[0].created_at):
        assert moment.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=60) < moment < before + timedelta(seconds=60)
    [entry] = await repository.status_history(session.id)
    assert entry.at.utcoffset() == timedelta(0) and entry.at == stored.created_at


def test_managers_sharing_a_postgresql_store_migrate_it_together(
    request: pytest.FixtureRequest,
) -> None:
    """Several managers may start at once on one server store; a bare postgresql:// URL works."""
    url: str = request.getfixturevalue("postgres_url")
    bare = url.replace("postgresql+psycopg://", "postgresql://")
    databases = [Database(bare) for _ in range(4)]
    try:
        with ThreadPoolExecutor(len(databases)) as pool:
            list(pool.map(Database.migrate, databases))
        head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
        with databases[0].engine.connect() as connection:
            versions = connection.exec_driver_sql("SELECT version_num FROM alembic_version")
            assert versions.scalars().all() == [head]
            diff = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert diff == []
    finally:
        for database in databases:
            database.close()
