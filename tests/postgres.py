"""PostgreSQL fixtures: a real server the tests start themselves, and a fresh database per test.

There is no systemd here, so the session-scoped ``postgres_server`` runs Debian's own binaries:
``initdb`` into a temporary directory owned by an unprivileged user (PostgreSQL refuses to run as
root), then a server listening on 127.0.0.1 only, at a free port (its unix socket stays in that
directory), with password authentication, durability off (the data dies with the run) and a time
zone that is not UTC (so code that trusts the server's zone fails here). ``postgres_url`` creates
a uniquely named database for one test and drops it afterwards.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

MISSING = (
    "PostgreSQL server binaries not found: install Debian's postgresql (scripts/setup.sh does)"
)
#: The unprivileged user Debian's package creates; used only when the tests run as root.
SERVER_USER = "postgres"
DIR_PREFIX = "jsess-pg-"


@dataclass(frozen=True)
class PostgresServer:
    """A running server: where it listens and how to log in as its superuser."""

    host: str
    port: int
    user: str
    password: str

    def url(self, database: str, driver: str = "postgresql+psycopg") -> str:
        return f"{driver}://{self.user}:{self.password}@{self.host}:{self.port}/{database}"

    def connect(self, database: str = "postgres") -> psycopg.Connection:
        """An autocommit connection (CREATE/DROP DATABASE cannot run in a transaction)."""
        return psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=database,
            autocommit=True,
        )


def find_bindir() -> Path:
    """The newest installed major version's bin directory (Debian keeps them out of PATH)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: (
            int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0
        ),
    )
    if not found:
        pytest.fail(MISSING, pytrace=False)
    bindir = Path(found[-1]).parent
    if not (bindir / "pg_ctl").exists():
        pytest.fail(MISSING, pytrace=False)
    return bindir


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _as_server_user() -> tuple[list[str], int | None, int | None]:
    """The command prefix and ids that drop root to the server's user (nothing when not root)."""
    if os.geteuid() != 0:
        return [], None, None
    try:
        account = pwd.getpwnam(SERVER_USER)
    except KeyError:
        pytest.fail(
            f"no {SERVER_USER!r} system user to run PostgreSQL as: {MISSING}", pytrace=False
        )
    return ["runuser", "-u", SERVER_USER, "--"], account.pw_uid, account.pw_gid


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_abandoned_servers(bindir: Path, prefix: list[str]) -> None:
    """Stop and remove servers left by test runs that were killed before their teardown.

    Each server's directory records the pid of the test process that owns it; only directories
    of this fixture whose owner is gone are touched (another run's live server is left alone).
    """
    for owner_file in Path(tempfile.gettempdir()).glob(f"{DIR_PREFIX}*/owner.pid"):
        root = owner_file.parent
        try:
            owner = int(owner_file.read_text())
        except (OSError, ValueError):
            continue
        if _pid_alive(owner):
            continue
        if (root / "data" / "postmaster.pid").exists():
            _stop(bindir, prefix, root / "data", mode="immediate")
        shutil.rmtree(root, ignore_errors=True)


def _stop(bindir: Path, prefix: list[str], data: Path, mode: str) -> None:
    command = [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-m", mode, "-w", "stop"]
    subprocess.run(command, capture_output=True, check=False)


def _run(command: list[str], what: str) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"{what} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A real PostgreSQL server for the whole test run, stopped and removed at its end."""
    bindir = find_bindir()
    prefix, uid, gid = _as_server_user()
    stop_abandoned_servers(bindir, prefix)
    root = Path(tempfile.mkdtemp(prefix=DIR_PREFIX))
    (root / "owner.pid").write_text(str(os.getpid()))
    data, log = root / "data", root / "server.log"
    password = secrets.token_urlsafe(24)
    pwfile = root / "pwfile"
    pwfile.write_text(password + "\n")
    if uid is not None and gid is not None:
        os.chown(root, uid, gid)
        os.chown(pwfile, uid, gid)
    pwfile.chmod(0o600)
    started = False
    try:
        _run(
            [
                *prefix,
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                f"--pwfile={pwfile}",
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
            "initdb",
        )
        pwfile.unlink()
        with (data / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# jupyter_sessions tests: loopback only, throwaway data\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{root}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\n"
                # Not UTC on purpose: code that trusts the server's zone for times shows up.
                "timezone = 'Asia/Seoul'\n"
            )
        # A free port may be taken between the probe and the server's bind: try a few.
        for attempt in range(3):
            port = free_port()
            command = [*prefix, str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log)]
            command += ["-o", f"-p {port}", "-w", "start"]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode == 0:
                break
            if attempt == 2:
                server_log = log.read_text() if log.exists() else ""
                pytest.fail(f"pg_ctl start failed:\n{done.stdout}{done.stderr}\n{server_log}")
        started = True
        server = PostgresServer("127.0.0.1", port, "postgres", password)
        with server.connect() as connection:
            assert connection.execute("SELECT 1").fetchone() == (1,)
        yield server
    finally:
        if started:
            _stop(bindir, prefix, data, mode="fast")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """A SQLAlchemy URL of a fresh, empty database for this test alone; dropped afterwards."""
    name = f"jsess_{secrets.token_hex(6)}"
    with postgres_server.connect() as connection:
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    yield postgres_server.url(name)
    with postgres_server.connect() as connection:
        # FORCE: a connection a test leaked must not keep its database alive.
        connection.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh store's URL on each backend in turn: a test taking it runs on both (DESIGN §7)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/store.db"
    url: str = request.getfixturevalue("postgres_url")
    return url
