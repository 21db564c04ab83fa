"""The store on a real SQLite file: migrations equal the models, names, transitions, history."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from jupyter_sessions.errors import Conflict, InvalidStatus, NotFound
from jupyter_sessions.repository import Database, Scope, SessionRepository
from jupyter_sessions.repository.orm import Base
from jupyter_sessions.repository.repository import NewKernel, NewSession
from jupyter_sessions.types import SessionStatus

S = SessionStatus


@pytest.fixture
def database(tmp_path: Path):
    db = Database(f"sqlite:///{tmp_path}/store.db")
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


def test_store_file_is_private_and_in_wal_mode(database: Database, tmp_path: Path) -> None:
    assert (tmp_path / "store.db").stat().st_mode & 0o077 == 0
    with database.engine.connect() as connection:
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


async def test_owner_keypair_is_made_once(repository: SessionRepository) -> None:
    first = await repository.ensure_owner_keypair("alice")
    second = await repository.ensure_owner_keypair("alice")
    assert first.access_key == second.access_key and first.is_admin
    assert await repository.installation_id() == await repository.installation_id()
