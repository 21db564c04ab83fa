"""The base of every action: who asks, and the name the audit log and metrics know it by."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..identity import Caller


@dataclass(frozen=True, kw_only=True)
class Action:
    caller: Caller
    operation: ClassVar[str] = "action"

    def target(self) -> str | None:
        """What the action is about, for the audit log (a session ref, an id)."""
        return None


@dataclass(frozen=True, kw_only=True)
class SessionRefAction(Action):
    """An action on one session, named by id or by one of the caller's own session names."""

    ref: str
    #: An admin acting for another key (ignored for, and refused to, non-admins).
    owner_access_key: str | None = None

    def target(self) -> str | None:
        return self.ref
