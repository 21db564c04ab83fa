"""Benchmark: one scheduling pass with 10,000 PENDING sessions and 20 synthetic agents, next to a
pass with 100 PENDING sessions (the baseline), measured in the same run.

    .venv/bin/python benchmarks/scheduling_pass.py [--pending 10000] [--agents 20] [--drf]

Two figures for each size:

- *plan*: ``scheduler.plan_pass`` alone (ordering, validators, placement, reservations), in memory;
- *pass*: ``Scheduler.schedule()`` against a real SQLite store holding that many PENDING sessions
  of 200 owners: read the queue, one usage snapshot, the plan, the waiting reasons written in one
  transaction, and one admission transaction per placed session. The agents are synthetic (they
  report a capacity of 16 cpu and 64g; nothing is started: the service's ``start`` only counts).

A second pass over the same queue (nothing changed: nothing admitted, no reason rewritten) is
timed too. Prints seconds per pass, sessions placed, and the ratio of each 10,000 figure to its
baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

# Run from a checkout: the package is imported from the tree this script sits in.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from jupyter_sessions.agents.base import (
    Agent,
    AgentInfo,
    AgentRegistry,
    ImageInfo,
    KernelHandle,
    KernelSpec,
)
from jupyter_sessions.errors import AgentError
from jupyter_sessions.events import EventHub
from jupyter_sessions.kernels.connection import KernelConnections
from jupyter_sessions.repository import Database, SessionRepository
from jupyter_sessions.repository.orm import KernelRow, KeypairRow, SessionRow
from jupyter_sessions.repository.repository import DEFAULT_POLICY, SessionData
from jupyter_sessions.repository.scheduling import GroupData, OwnerQuota
from jupyter_sessions.scheduler import AgentState, Pending, Scheduler, plan_pass
from jupyter_sessions.service import ServiceConfig, SessionService
from jupyter_sessions.types import ResourceSlot

CAPACITY = ResourceSlot({"cpu": Decimal(16), "mem": Decimal(64 * 2**30)})
SHAPES = [(Decimal("0.5"), 2**29), (Decimal(1), 2**30), (Decimal(2), 2**31), (Decimal(4), 2**32)]
OWNERS = 200


class SyntheticAgent(Agent):
    """Reports a capacity; starts nothing (the benchmark's service never calls it)."""

    kind = "synthetic"

    async def info(self) -> AgentInfo:
        return AgentInfo(reachable=True, capacity=CAPACITY, detail="synthetic")

    async def create_kernel(self, spec: KernelSpec) -> KernelHandle:
        raise AgentError("a synthetic agent places sessions only; it runs nothing")

    def kernel_ref(self, session_id: str, kernel_name: str) -> str:
        return session_id

    async def destroy_kernel(self, container_ref: str, *, forced: bool = False) -> None:
        return None

    async def has_image(self, image: str) -> bool:
        return True

    async def remove_session_storage(self, session_id: str) -> None:
        return None

    async def kernel_exists(self, container_id: str) -> bool:
        return False

    async def list_images(self) -> list[ImageInfo]:
        return []

    async def usage(self, container_ref: str) -> dict[str, Any] | None:
        return None

    async def logs(self, container_ref: str, *, tail: int | None = None) -> str:
        return ""

    async def exec(self, container_ref: str, argv: list[str], *, environ: Any = None) -> Any:
        raise AgentError("a synthetic agent places sessions only; it runs nothing")


class CountingService(SessionService):
    """The real service, except that an admitted session is counted instead of started."""

    started = 0

    def start(self, session: SessionData, agent: Agent) -> None:
        self.started += 1

    def announce(self, session: SessionData) -> None:
        return None


def synthetic_pending(n: int, seed: int) -> list[Pending]:
    rng = random.Random(seed)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    items = []
    for i in range(n):
        cpu, mem = rng.choice(SHAPES)
        at = base + timedelta(seconds=i)
        items.append(
            Pending(
                id=f"s{i:06d}",
                owner=f"o{rng.randrange(OWNERS):03d}",
                priority=rng.choice((0, 0, 0, 10)),
                created_at=at,
                since=at,
                wanted=ResourceSlot({"cpu": cpu, "mem": Decimal(mem)}),
            )
        )
    return items


def time_plan(n: int, agents: int, ordering: str, repeat: int) -> tuple[float, int]:
    items = synthetic_pending(n, seed=n)
    times, placed = [], 0
    for _ in range(repeat):
        states = {"default": [AgentState(f"a{i:02d}", CAPACITY) for i in range(agents)]}
        owners = {f"o{i:03d}": OwnerQuota(max_concurrent_sessions=30) for i in range(OWNERS)}
        started = time.perf_counter()
        plan = plan_pass(
            items,
            states,
            owners,
            {"default": GroupData("default", ordering=ordering)},
            now=datetime(2026, 1, 2, tzinfo=UTC),
            reserve_after=60,
        )
        times.append(time.perf_counter() - started)
        placed = len(plan.placements)
    return statistics.median(times), placed


def fill_store(db: Database, n: int) -> None:
    def work(session: Any) -> None:
        for i in range(OWNERS):
            session.add(
                KeypairRow(
                    access_key=f"AKIABENCH{i:011d}",
                    secret_key="x",
                    user=f"u{i}",
                    resource_policy=DEFAULT_POLICY,
                )
            )
        session.flush()
        rng = random.Random(n)
        base = datetime(2026, 1, 1, tzinfo=UTC)
        for i in range(n):
            cpu, mem = rng.choice(SHAPES)
            sid = f"00000000-0000-4000-8000-{i:012d}"
            session.add(
                SessionRow(
                    id=sid,
                    name=f"bench-{i}",
                    owner_access_key=f"AKIABENCH{rng.randrange(OWNERS):011d}",
                    status="PENDING",
                    image="bench",
                    resources={"cpu": float(cpu), "mem": mem},
                    created_at=base + timedelta(seconds=i),
                    status_changed_at=base + timedelta(seconds=i),
                )
            )
            session.add(KernelRow(id=f"k{sid[1:]}", session_id=sid, name="main1", status="PENDING"))

    db.run_sync(work)


async def time_pass(n: int, agents: int, workdir: Path) -> tuple[float, float, int]:
    db = Database(f"sqlite:///{workdir / f'bench-{n}.db'}")
    db.migrate()
    repository = SessionRepository(db)
    await repository.ensure_owner_keypair("bench")
    await asyncio.get_running_loop().run_in_executor(None, fill_store, db, n)
    registry = AgentRegistry([SyntheticAgent(f"a{i:02d}") for i in range(agents)])
    service = CountingService(
        repository,
        registry,
        KernelConnections(),
        EventHub(),
        ServiceConfig("bench", ["bench"], ResourceSlot({}), ResourceSlot({})),
    )
    scheduler = Scheduler(service, repository, registry)
    started = time.perf_counter()
    await scheduler.schedule()
    elapsed = time.perf_counter() - started
    placed = service.started
    # A second pass: nothing changed, so nothing is admitted and no reason is written again.
    started = time.perf_counter()
    await scheduler.schedule()
    again = time.perf_counter() - started
    db.close()
    return elapsed, again, placed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pending", type=int, default=10_000)
    parser.add_argument("--baseline", type=int, default=100)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--drf", action="store_true", help="order by DRF instead of FIFO")
    args = parser.parse_args()
    ordering = "drf" if args.drf else "fifo"
    print(f"{args.agents} synthetic agents of 16 cpu / 64g, {OWNERS} owners, ordering {ordering}")
    base_plan, base_placed = time_plan(args.baseline, args.agents, ordering, repeat=20)
    big_plan, big_placed = time_plan(args.pending, args.agents, ordering, repeat=3)
    print(f"plan  {args.baseline:>6} pending: {base_plan * 1000:9.1f} ms ({base_placed} placed)")
    print(f"plan  {args.pending:>6} pending: {big_plan * 1000:9.1f} ms ({big_placed} placed)")
    print(f"plan  ratio: {big_plan / base_plan:.1f}x for {args.pending / args.baseline:.0f}x")
    with tempfile.TemporaryDirectory() as tmp:
        base_pass, _base_again, base_started = asyncio.run(
            time_pass(args.baseline, args.agents, Path(tmp))
        )
        big_pass, big_again, big_started = asyncio.run(
            time_pass(args.pending, args.agents, Path(tmp))
        )
    print(f"pass  {args.baseline:>6} pending: {base_pass:9.3f} s ({base_started} admitted)")
    print(f"pass  {args.pending:>6} pending: {big_pass:9.3f} s ({big_started} admitted)")
    print(f"pass  ratio: {big_pass / base_pass:.1f}x for {args.pending / args.baseline:.0f}x")
    # (The baseline's second pass finds its queue empty: every one of its sessions fitted.)
    print(f"again {args.pending:>6} pending: {big_again:9.3f} s (nothing changed)")
    print(f"again ratio: {big_again / base_pass:.1f}x the baseline's first pass")


if __name__ == "__main__":
    main()
