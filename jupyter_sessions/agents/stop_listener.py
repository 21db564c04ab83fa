"""Stop what listens on a TCP port inside a session, if jupyter_sessions started it.

Run inside the container (``python3 -I -c <this source> check|stop <port>``, as the kernel's
user) to take over a service left running by a server that restarted, and to shut it down: the
new server holds no handle on its process.
Standard library only. The listening sockets come from ``/proc/net/tcp{,6}``, their processes
from ``/proc/<pid>/fd``. A process is stopped only when its process group is one that the agent's
``exec`` made (its leader's pid is in a ``/tmp/jsess-exec-*.pid`` file): the group gets SIGTERM,
then SIGKILL after a grace period. Anything else holding the port (the kernel, a process of the
user's own) is left alone and named in the answer, one JSON line: ``check`` answers
``{"ours": [pgid, ...], "foreign": [pid, ...]}``, ``stop`` ``{"stopped": [...], "foreign": [...]}``.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import sys
import time

LISTEN = "0A"
GRACE_SECONDS = 5.0


def listening_inodes(port: int) -> set[str]:
    """Socket inodes of the TCP listeners on ``port`` (IPv4 and IPv6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table, encoding="ascii") as rows:
                next(rows, None)
                for row in rows:
                    fields = row.split()
                    listening = len(fields) > 9 and fields[3] == LISTEN
                    if listening and int(fields[1].rsplit(":", 1)[1], 16) == port:
                        found.add(fields[9])
        except OSError:
            continue
    return found


def holders(inodes: set[str]) -> set[int]:
    """Pids with one of these sockets open (only our own processes can be read: fine)."""
    wanted = {f"socket:[{inode}]" for inode in inodes}
    pids = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for fd in os.listdir(f"/proc/{entry}/fd"):
                if os.readlink(f"/proc/{entry}/fd/{fd}") in wanted:
                    pids.add(int(entry))
                    break
        except OSError:
            continue
    return pids


def exec_groups() -> set[int]:
    """Process groups the agent's ``exec`` started (their leaders wrote these pid files)."""
    leaders = set()
    for path in glob.glob("/tmp/jsess-exec-*.pid"):  # noqa: S108 - the container's own /tmp
        try:
            with open(path, encoding="ascii") as pidfile:
                leaders.add(int(pidfile.read().strip()))
        except (OSError, ValueError):
            continue
    return leaders


def protected_groups() -> set[int]:
    """The groups of the container's init and of its children (the kernel): never ours to
    signal, whatever a stale pid file says (``exec``'d processes have no parent in here)."""
    groups = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                # The command may hold spaces and parentheses: the fields after the last ")".
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            if entry == "1" or parent == 1:
                groups.add(os.getpgid(int(entry)))
        except (OSError, ValueError, IndexError):
            continue
    return groups


def alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check(port: int) -> dict[str, list[int]]:
    """Who listens on ``port``: process groups an ``exec`` of ours started, and other pids."""
    ours, groups, foreign = exec_groups() - protected_groups(), set(), set()
    for pid in holders(listening_inodes(port)):
        try:
            pgid = os.getpgid(pid)
        except ProcessLookupError:
            continue
        if pgid in ours and pgid != os.getpgid(0):
            groups.add(pgid)
        else:
            foreign.add(pid)
    return {"ours": sorted(groups), "foreign": sorted(foreign)}


def stop(port: int) -> dict[str, list[int]]:
    """TERM, then KILL, the groups of ours that listen on ``port``; others are only named."""
    found = check(port)
    groups = found["ours"]
    for pgid in groups:
        try:
            os.killpg(pgid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + GRACE_SECONDS
    while any(alive(g) for g in groups) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pgid in groups:
        if alive(pgid):
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                continue
    return {"stopped": groups, "foreign": found["foreign"]}


if __name__ == "__main__":
    operation = {"check": check, "stop": stop}[sys.argv[1]]
    print(json.dumps(operation(int(sys.argv[2]))), flush=True)
