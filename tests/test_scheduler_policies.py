"""The scheduler's plan, as pure functions: ordering (FIFO, LIFO, DRF, priority), placement
(concentrated, dispersed, multi-node spread), the owner's quota holding their queue, and no
head-of-line blocking (small sessions pass a big one; after ``reserve_after`` the big one gets an
agent reserved, which then takes nothing else)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from jupyter_sessions.repository.scheduling import GroupData, OwnerQuota
from jupyter_sessions.scheduler import AgentState, Pending, plan_pass, spread_kernels
from jupyter_sessions.types import ResourceSlot

T0 = datetime(2026, 1, 1, tzinfo=UTC)
GIB = 2**30


def slots(cpu: float, mem_gib: float = 1) -> ResourceSlot:
    return ResourceSlot({"cpu": Decimal(str(cpu)), "mem": Decimal(int(mem_gib * GIB))})


def pending(
    sid: str,
    cpu: float,
    *,
    owner: str = "alice",
    at: int = 0,
    priority: int = 0,
    waited: int = 0,
    spread: tuple[str, ...] | None = None,
) -> Pending:
    created = T0 + timedelta(seconds=at)
    return Pending(
        id=sid,
        owner=owner,
        priority=priority,
        created_at=created,
        since=created,
        wanted=slots(cpu) * (len(spread) if spread else 1),
        spread=spread,
        each=slots(cpu),
    )


def agents(*cpus: float, used: tuple[float, ...] = ()) -> dict[str, list[AgentState]]:
    states = [
        AgentState(f"a{i + 1}", slots(cpu, 64), slots(used[i], 0) if i < len(used) else slots(0, 0))
        for i, cpu in enumerate(cpus)
    ]
    return {"default": states}


def plan(
    items: list[Pending],
    found: dict[str, list[AgentState]],
    *,
    ordering: str = "fifo",
    placement: str = "concentrated",
    owners: dict[str, OwnerQuota] | None = None,
    now_after: int = 1,
    reserve_after: float = 60,
    reservations: dict[str, str] | None = None,
) -> object:
    return plan_pass(
        items,
        found,
        owners if owners is not None else {},
        {"default": GroupData("default", ordering=ordering, placement=placement)},
        now=T0 + timedelta(seconds=now_after),
        reserve_after=reserve_after,
        reservations=reservations,
    )


def placed(result: object) -> list[tuple[str, str]]:
    return list(result.placements)  # type: ignore[attr-defined]


def test_fifo_and_lifo_take_the_queue_from_either_end() -> None:
    items = [pending(f"s{i}", 1, at=i) for i in range(3)]
    # Room for two of three.
    assert [s for s, _a in placed(plan(items, agents(2)))] == ["s0", "s1"]
    assert [s for s, _a in placed(plan(items, agents(2), ordering="lifo"))] == ["s2", "s1"]


def test_priority_comes_before_the_order() -> None:
    items = [pending("old", 1, at=0), pending("urgent", 1, at=5, priority=10)]
    assert [s for s, _a in placed(plan(items, agents(1)))] == ["urgent"]


def test_drf_serves_the_owner_with_the_smallest_dominant_share_first() -> None:
    # bob already holds half the group's CPUs; alice holds nothing. FIFO would take bob's first.
    owners = {"bob": OwnerQuota(usage=slots(2, 0)), "alice": OwnerQuota()}
    items = [
        pending("bob-1", 1, owner="bob", at=0),
        pending("bob-2", 1, owner="bob", at=1),
        pending("alice-1", 1, owner="alice", at=2),
        pending("alice-2", 1, owner="alice", at=3),
    ]
    fifo = plan(
        items,
        agents(4, used=(2,)),
        owners={k: OwnerQuota(usage=v.usage) for k, v in owners.items()},
    )
    assert [s for s, _a in placed(fifo)] == ["bob-1", "bob-2"]
    drf = plan(items, agents(4, used=(2,)), ordering="drf", owners=owners)
    assert [s for s, _a in placed(drf)] == ["alice-1", "alice-2"]


def test_drf_alternates_between_equal_owners() -> None:
    items = [pending(f"b{i}", 1, owner="bob", at=i) for i in range(3)]
    items += [pending(f"c{i}", 1, owner="carol", at=10 + i) for i in range(3)]
    result = plan(items, agents(8), ordering="drf")
    order = [s[0] for s, _a in placed(result)]
    assert order == ["b", "c", "b", "c", "b", "c"]


def test_concentrated_packs_and_dispersed_spreads() -> None:
    items = [pending(f"s{i}", 1, at=i) for i in range(4)]
    packed = plan(items, agents(4, 4))
    assert [a for _s, a in placed(packed)] == ["a1", "a1", "a1", "a1"]
    spread = plan(items, agents(4, 4), placement="dispersed")
    assert [a for _s, a in placed(spread)] == ["a1", "a2", "a1", "a2"]
    # Concentrated prefers the agent that is fuller already.
    fuller = plan([pending("s", 1)], agents(4, 4, used=(0, 2)))
    assert placed(fuller) == [("s", "a2")]


def test_a_big_session_does_not_block_small_ones_behind_it() -> None:
    items = [pending("big", 3, at=0)] + [pending(f"small{i}", 1, at=1 + i) for i in range(2)]
    result = plan(items, agents(2, 2, used=(1, 1)))
    assert sorted(s for s, _a in placed(result)) == ["small0", "small1"]
    assert result.waits["big"] == "no agent has 3 cpu free"  # type: ignore[attr-defined]


def test_a_big_session_that_waited_long_enough_gets_an_agent_reserved() -> None:
    big = pending("big", 3, at=0)
    smalls = [pending(f"small{i}", 0.5, at=1 + i) for i in range(4)]
    # Not yet waited reserve_after: smalls fill both agents (concentrated).
    early = plan([big, *smalls], agents(4, 4, used=(2, 2)))
    assert len(placed(early)) == 4
    # Waited long enough: one agent is reserved for it, so smalls go elsewhere only.
    late = plan([big, *smalls], agents(4, 4, used=(2, 2)), now_after=120)
    reserved = late.reservations  # type: ignore[attr-defined]
    assert list(reserved.values()) == ["big"]
    agent = next(iter(reserved))
    assert all(a != agent for _s, a in placed(late))
    assert f"agent {agent} is reserved for it" in late.waits["big"]  # type: ignore[attr-defined]
    # Next pass: the reservation holds while big waits; once its agent drains, big starts there.
    drained = {
        "default": [AgentState("a1", slots(4, 64)), AgentState("a2", slots(4, 64), slots(3, 0))]
    }
    after = plan([big, pending("small9", 0.5, at=9)], drained, now_after=200, reservations=reserved)
    assert ("big", agent) in placed(after)
    assert after.reservations == {}  # type: ignore[attr-defined]


def test_an_owner_waiting_on_their_quota_holds_their_later_sessions_only() -> None:
    owners = {"alice": OwnerQuota(max_concurrent_sessions=1, sessions=1), "bob": OwnerQuota()}
    items = [
        pending("alice-1", 1, owner="alice", at=0),
        pending("alice-2", 0.5, owner="alice", at=1),
        pending("bob-1", 1, owner="bob", at=2),
    ]
    result = plan(items, agents(4), owners=owners)
    assert placed(result) == [("bob-1", "a1")]
    assert result.waits["alice-1"] == "max_concurrent_sessions 1 reached"  # type: ignore[attr-defined]
    assert result.waits["alice-2"] == "max_concurrent_sessions 1 reached"  # type: ignore[attr-defined]
    total = {"carol": OwnerQuota(total_resource_slots=slots(1, 100))}
    held = plan(
        [pending("carol-1", 2, owner="carol"), pending("carol-2", 0.5, owner="carol", at=1)],
        agents(4),
        owners=total,
    )
    assert placed(held) == []
    assert held.waits["carol-2"].startswith("waiting behind an earlier session")  # type: ignore[attr-defined]


def test_quota_counts_what_this_pass_placed() -> None:
    owners = {"alice": OwnerQuota(max_concurrent_sessions=2)}
    items = [pending(f"s{i}", 0.5, at=i) for i in range(4)]
    result = plan(items, agents(8), owners=owners)
    assert [s for s, _a in placed(result)] == ["s0", "s1"]


def test_multi_node_clusters_spread_their_kernels() -> None:
    names = ("main1", "sub1", "sub2")
    assert spread_kernels(
        names, slots(1), [("a1", slots(4, 64), slots(0, 0)), ("a2", slots(4, 64), slots(0, 0))]
    ) == {
        "main1": "a1",
        "sub1": "a2",
        "sub2": "a1",
    }
    # Kernels that fit nowhere: the cluster waits, naming its kernels.
    result = plan([pending("c", 3, spread=names)], agents(2, 2))
    assert placed(result) == []
    assert result.waits["c"] == "no agents have room for 3 kernels of 3 cpu, 1g mem each"  # type: ignore[attr-defined]
    fits = plan([pending("c", 1, spread=names), pending("s", 1, at=1)], agents(2, 2))
    assert fits.kernel_agents["c"] == {"main1": "a1", "sub1": "a2", "sub2": "a1"}  # type: ignore[attr-defined]
    assert ("s", "a2") in placed(fits)  # a2 has 1 cpu left after the cluster


def test_a_shape_that_fits_nowhere_is_not_tried_again_in_the_same_pass() -> None:
    items = [pending(f"big{i}", 3, at=i) for i in range(1000)] + [pending("small", 1, at=2000)]
    result = plan(items, agents(2, 2))
    assert placed(result) == [("small", "a1")]
    assert len(result.waits) == 1000  # type: ignore[attr-defined]


def test_one_reservation_per_group_at_a_time() -> None:
    bigs = [pending(f"big{i}", 3, at=i) for i in range(3)]
    result = plan(
        [*bigs, pending("small", 1, at=9)], agents(4, 4, 4, used=(2, 2, 2)), now_after=999
    )
    assert list(result.reservations.values()) == ["big0"]  # type: ignore[attr-defined]
    # The small session still finds an unreserved agent.
    assert len(placed(result)) == 1 and placed(result)[0][0] == "small"
