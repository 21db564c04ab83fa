"""The database handle: engine set-up, migrations on start-up, and running work off the event loop.

SQLAlchemy here is synchronous; every unit of work runs in a small thread pool so the event loop
never blocks. SQLite gets one writer thread (its own rule anyway) and WAL so readers never wait.
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
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

T = TypeVar("T")
MIGRATIONS_DIR = Path(__file__).parent / "migrations"


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
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        if self.is_sqlite and self.url.database not in (None, "", ":memory:"):
            path = Path(self.url.database or "")
            path.parent.mkdir(parents=True, exist_ok=True)
            # The file holds keypair secrets: readable by the server's user alone.
            path.touch(mode=0o600, exist_ok=True)
            os.chmod(path, 0o600)
        self.engine: Engine = create_engine(
            self.url,
            pool_pre_ping=not self.is_sqlite,
            connect_args={"check_same_thread": False} if self.is_sqlite else {},
        )
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._executor = ThreadPoolExecutor(
            max_workers=1 if self.is_sqlite else 4, thread_name_prefix="jupyter-sessions-db"
        )

    def migrate(self) -> None:
        """Bring the schema to the newest migration (blocking; called once at start-up)."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        with self.engine.begin() as connection:
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
