"""Who is calling: the server's owner (Jupyter's token or login cookie) and, later, keypair users.

Stock jupyter_server gives every token-authenticated request a fresh anonymous user; sessions need
a stable owner, so any request Jupyter authenticates belongs to the server's owner: one configured
user, admin, whose keypair row is made on first start.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import Unauthenticated
from .repository.repository import KeypairData


@dataclass(frozen=True)
class Caller:
    """The principal an action runs for."""

    access_key: str
    user: str
    is_admin: bool


class IdentityResolver:
    """Maps an authenticated Jupyter user to a Caller."""

    def __init__(self) -> None:
        self._owner: Caller | None = None

    def set_owner(self, keypair: KeypairData) -> None:
        self._owner = Caller(access_key=keypair.access_key, user=keypair.user, is_admin=True)

    @property
    def owner(self) -> Caller:
        if self._owner is None:
            raise Unauthenticated("the sessions extension has not finished starting")
        return self._owner

    def caller_for(self, jupyter_user: object | None) -> Caller:
        """The Caller for a request Jupyter authenticated (``None`` means it did not)."""
        if jupyter_user is None:
            raise Unauthenticated("authentication required")
        return self.owner
