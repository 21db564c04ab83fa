"""Statuses, transitions, resources and names: the value types every layer relies on."""

from __future__ import annotations

from decimal import Decimal

import pytest

from jupyter_sessions.errors import InvalidRequest, InvalidStatus
from jupyter_sessions.types import (
    OCCUPYING_STATUSES,
    TERMINAL_STATUSES,
    TRANSITIONS,
    ResourceSlot,
    SessionStatus,
    check_transition,
    validate_session_name,
)

S = SessionStatus


def test_every_status_has_an_entry_and_terminal_ones_lead_nowhere() -> None:
    assert set(TRANSITIONS) == set(SessionStatus)
    for status in TERMINAL_STATUSES:
        assert TRANSITIONS[status] == frozenset()
    assert S.ERROR not in TERMINAL_STATUSES  # ERROR can be restarted or destroyed
    assert TRANSITIONS[S.ERROR] >= {S.RESTARTING, S.TERMINATING}


def test_the_gaps_of_the_reference_are_closed() -> None:
    check_transition(S.PREPARED, S.CREATING)  # missing in Backend.AI's session map
    check_transition(S.PENDING, S.CANCELLED)


def test_illegal_transition_names_the_current_status() -> None:
    with pytest.raises(InvalidStatus) as info:
        check_transition(S.TERMINATED, S.RUNNING)
    assert "TERMINATED" in info.value.message
    assert info.value.status_code == 409


def test_occupying_statuses_count_everything_that_may_hold_a_container() -> None:
    assert S.PENDING not in OCCUPYING_STATUSES
    assert {S.SCHEDULED, S.CREATING, S.RUNNING, S.ERROR, S.TERMINATING} <= OCCUPYING_STATUSES


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"mem": "1g"}, {"mem": Decimal(2**30)}),
        ({"mem": "512m"}, {"mem": Decimal(512 * 2**20)}),
        ({"mem": "1.5k"}, {"mem": Decimal(1536)}),
        ({"mem": 1024}, {"mem": Decimal(1024)}),
        ({"cpu": "0.5"}, {"cpu": Decimal("0.5")}),
        ({"cpu": 2, "cuda.device": 1}, {"cpu": Decimal(2), "cuda.device": Decimal(1)}),
    ],
)
def test_resource_units(raw: dict[str, object], expected: dict[str, Decimal]) -> None:
    assert dict(ResourceSlot.parse(raw).amounts) == expected


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ({"cpu": "2g"}, "resources.cpu"),
        ({"mem": "lots"}, "resources.mem"),
        ({"mem": -1}, "resources.mem"),
        ({"gpu": 1}, "resources.gpu"),
        ({"cpu": True}, "resources.cpu"),
        ({"cpu": float("nan")}, "resources.cpu"),
    ],
)
def test_malformed_resources_name_the_field(raw: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        ResourceSlot.parse(raw)
    assert field in info.value.message


def test_resources_compare_slot_by_slot() -> None:
    small = ResourceSlot.parse({"cpu": 1, "mem": "1g"})
    limit = ResourceSlot.parse({"cpu": 2, "mem": "512m"})
    assert not small.fits_in(limit)
    assert small.exceeding(limit) == ["mem"]
    assert (small + small).to_json() == {"cpu": 2, "mem": 2 * 2**30}


@pytest.mark.parametrize("name", ["abcd", "my-session.1", "a_b_c_d", "x" * 64])
def test_good_names(name: str) -> None:
    assert validate_session_name(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "abc",
        "x" * 65,
        "-abc",
        "abc-",
        "has space",
        "../etc",
        "0e1b7a6c-8f0e-4a57-9f5c-3c2f1d1a2b3c",
        "transit-status",
        "from-template",
    ],
)
def test_bad_names(name: str) -> None:
    with pytest.raises(InvalidRequest):
        validate_session_name(name)
