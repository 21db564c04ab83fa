"""The database handle: engine set-up, migrations on start-up, and running work off the event loop.

SQLAlchemy here is synchronous; every unit of work runs in a small thread pool so the event loop
never blocks. SQLite gets one writer thread (its own rule anyway) and WAL so readers never wait.
PostgreSQL (``postgresql+psycopg://``; a bare ``postgresql://`` means psycopg 3 too) gets a few
threads, a connection pool sized to them, pre-ping so a restarted server costs no request, and
READ COMMITTED: the repository locks the rows it reads to modify them. Several managers may share
one PostgreSQL store; their migrations are serialised by an advisory lock.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
#: Worker threads (and pooled connections) for a server database; SQLite has one writer.
POSTGRES_WORKERS = 4
#: Any fixed 64-bit key: the advisory lock managers take while they migrate a shared store.
MIGRATION_LOCK_KEY = 0x6A7365737369_6F6E


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Database:
    """One engine and the executor its work runs on."""

    def __init__(self, url: str) -> None:
        self.url = make_url(url)
        if self.url.drivername == "postgresql":
            # SQLAlchemy's default driver is psycopg2; the dependency we ship is psycopg 3.
            self.url = self.url.set(drivername="postgresql+psycopg")
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.is_postgresql = self.url.get_backend_name() == "postgresql"
        if self.is_sqlite and self.url.database not in (None, "", ":memory:"):
            path = Path(self.url.database or "")
            path.parent.mkdir(parents=True, exist_ok=True)
            # The file holds keypair secrets: readable by the server's user alone.
            path.touch(mode=0o600, exist_ok=True)
            os.chmod(path, 0o600)
        workers = 1 if self.is_sqlite else POSTGRES_WORKERS
        options: dict[str, Any] = {"pool_pre_ping": not self.is_sqlite}
        if self.is_sqlite:
            options["connect_args"] = {"check_same_thread": False}
        elif self.is_postgresql:
            options.update(
                # One connection per worker thread, plus a little room for migrations and
                # tests that open their own; never more, so a shared server is not flooded.
                pool_size=workers,
                max_overflow=2,
                pool_timeout=30,
                # Close connections before a server or a proxy drops them as idle.
                pool_recycle=1800,
                isolation_level="READ COMMITTED",
                connect_args={"application_name": "jupyter-sessions", "connect_timeout": 10},
            )
        self.engine: Engine = create_engine(self.url, **options)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="jupyter-sessions-db"
        )

    def migrate(self) -> None:
        """Bring the schema to the newest migration (blocking; called once at start-up)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.engine.begin() as connection:
            if self.is_postgresql:
                # Managers sharing a store may start together: one migrates, the others wait
                # (the lock ends with this transaction) and then find the schema current.
                connection.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
            config.attributes["connection"] = connection
            command.upgrade(config, "head")

    def run_sync(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one transaction, committed when it returns."""
        with self._sessions.begin() as session:
            return work(session)

    async def run(self, work: Callable[[Session], T]) -> T:
        """Run ``work`` in one transaction on the database thread pool."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.run_sync, work)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.engine.dispose()
