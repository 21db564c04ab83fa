"""AccountRepository: keypairs and resource policies, the tables behind who calls and how much.

Like every repository it hands out dataclasses, never ORM rows, and runs its units of work with
``Database.run`` off the event loop. A keypair's secret leaves the store in two places only: the
result of ``create_keypair`` (the one time a client sees it) and ``credentials``, which the
identity provider uses to check a request. Listing and revoking never carry it.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DataError, IntegrityError
from sqlalchemy.orm import Session

from ..errors import Conflict, InvalidRequest, NotFound
from .db import Database
from .orm import KeypairRow, ResourcePolicyRow, utcnow
from .repository import DEFAULT_POLICY, KeypairData

#: Backend.AI's shapes: ``AKIA`` + 16 upper-case letters and digits; 40-character secrets.
ACCESS_KEY_PREFIX = "AKIA"
ACCESS_KEY_LENGTH = 20
SECRET_KEY_LENGTH = 40
_ACCESS_KEY_ALPHABET = string.ascii_uppercase + string.digits

#: The limits of a resource policy (DESIGN §4), in the order the API shows them.
POLICY_LIMITS: tuple[str, ...] = (
    "max_concurrent_sessions",
    "total_resource_slots",
    "max_pending_sessions",
    "max_session_resources",
    "idle_timeout",
    "max_session_lifetime",
    "max_containers_per_session",
    "storage_quota",
    "max_images",
)
#: Limits that are resource slots (``{}`` means no limit); the others are integers or None.
SLOT_LIMITS = frozenset({"total_resource_slots", "max_session_resources"})


def new_access_key() -> str:
    body = "".join(
        secrets.choice(_ACCESS_KEY_ALPHABET)
        for _ in range(ACCESS_KEY_LENGTH - len(ACCESS_KEY_PREFIX))
    )
    return ACCESS_KEY_PREFIX + body


def new_secret_key() -> str:
    """40 URL-safe characters (240 random bits); never contains ':' (the header's separator)."""
    secret = secrets.token_urlsafe(SECRET_KEY_LENGTH * 3 // 4)
    assert len(secret) == SECRET_KEY_LENGTH
    return secret


@dataclass(frozen=True)
class ResourcePolicyData:
    """A named set of limits; ``None`` (or ``{}`` for slots) means unlimited."""

    name: str
    max_concurrent_sessions: int | None
    total_resource_slots: dict[str, Any]
    max_pending_sessions: int | None
    max_session_resources: dict[str, Any]
    idle_timeout: int | None
    max_session_lifetime: int | None
    max_containers_per_session: int | None
    storage_quota: int | None
    max_images: int | None
    created_at: datetime

    @classmethod
    def of(cls, row: ResourcePolicyRow) -> ResourcePolicyData:
        return cls(
            name=row.name,
            max_concurrent_sessions=row.max_concurrent_sessions,
            total_resource_slots=dict(row.total_resource_slots or {}),
            max_pending_sessions=row.max_pending_sessions,
            max_session_resources=dict(row.max_session_resources or {}),
            idle_timeout=row.idle_timeout,
            max_session_lifetime=row.max_session_lifetime,
            max_containers_per_session=row.max_containers_per_session,
            storage_quota=row.storage_quota,
            max_images=row.max_images,
            created_at=row.created_at,
        )


@dataclass(frozen=True)
class KeypairCredentials:
    """A keypair with its secret: only for checking a request, or answering its creation."""

    keypair: KeypairData
    secret_key: str = field(repr=False)


def keypair_data(row: KeypairRow) -> KeypairData:
    return KeypairData(
        access_key=row.access_key,
        user=row.user,
        is_admin=row.is_admin,
        is_owner=row.is_owner,
        resource_policy=row.resource_policy,
        created_at=row.created_at,
        revoked_at=row.revoked_at,
    )


def _check_limit_names(limits: Mapping[str, Any]) -> None:
    unknown = set(limits) - set(POLICY_LIMITS)
    if unknown:
        # The actions validate bodies; reaching here is a programming error, not a client's.
        raise ValueError(f"unknown policy limits: {sorted(unknown)}")


def _out_of_range(exc: DataError) -> InvalidRequest:
    return InvalidRequest(
        "a limit is larger than this store can hold", detail=str(exc.orig).splitlines()[0]
    )


class AccountRepository:
    """Keypairs (who may call) and resource policies (how much they may use)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # --- keypairs ----------------------------------------------------------------------------

    async def credentials(self, access_key: str) -> KeypairCredentials | None:
        """The keypair and its secret, to authenticate a request (revoked ones included)."""

        def work(db: Session) -> KeypairCredentials | None:
            row = db.get(KeypairRow, access_key)
            if row is None:
                return None
            return KeypairCredentials(keypair_data(row), row.secret_key)

        return await self.db.run(work)

    async def get_keypair(self, access_key: str) -> KeypairData:
        def work(db: Session) -> KeypairData:
            row = db.get(KeypairRow, access_key)
            if row is None:
                raise NotFound(f"no keypair {access_key!r}")
            return keypair_data(row)

        return await self.db.run(work)

    async def list_keypairs(self) -> list[KeypairData]:
        """Every keypair, revoked ones included, oldest first (the owner's comes first)."""

        def work(db: Session) -> list[KeypairData]:
            rows = db.scalars(
                select(KeypairRow).order_by(KeypairRow.created_at, KeypairRow.access_key)
            ).all()
            return [keypair_data(r) for r in rows]

        return await self.db.run(work)

    async def create_keypair(
        self, user: str, *, is_admin: bool = False, resource_policy: str = DEFAULT_POLICY
    ) -> KeypairCredentials:
        """A new keypair for ``user``; an unknown policy is a 400 naming ``resource_policy``."""

        def work(db: Session) -> KeypairCredentials:
            if db.get(ResourcePolicyRow, resource_policy) is None:
                raise InvalidRequest(
                    f"resource_policy: no policy named {resource_policy!r}", field="resource_policy"
                )
            access_key = new_access_key()
            while db.get(KeypairRow, access_key) is not None:
                access_key = new_access_key()
            row = KeypairRow(
                access_key=access_key,
                secret_key=new_secret_key(),
                user=user,
                is_admin=is_admin,
                is_owner=False,
                resource_policy=resource_policy,
                created_at=utcnow(),
            )
            db.add(row)
            db.flush()
            return KeypairCredentials(keypair_data(row), row.secret_key)

        return await self.db.run(work)

    async def revoke_keypair(self, access_key: str) -> KeypairData:
        """Mark a keypair revoked (once; revoking again keeps the first time). Its sessions stay.

        The server owner's keypair cannot be revoked (409): the owner would lose every session.
        """

        def work(db: Session) -> KeypairData:
            row = db.get(KeypairRow, access_key, with_for_update=True)
            if row is None:
                raise NotFound(f"no keypair {access_key!r}")
            if row.is_owner:
                raise Conflict("the server owner's keypair cannot be revoked", field="access_key")
            if row.revoked_at is None:
                row.revoked_at = utcnow()
            db.flush()
            return keypair_data(row)

        return await self.db.run(work)

    # --- resource policies -------------------------------------------------------------------

    async def list_policies(self) -> list[ResourcePolicyData]:
        def work(db: Session) -> list[ResourcePolicyData]:
            rows = db.scalars(select(ResourcePolicyRow).order_by(ResourcePolicyRow.name)).all()
            return [ResourcePolicyData.of(r) for r in rows]

        return await self.db.run(work)

    async def get_policy(self, name: str) -> ResourcePolicyData:
        def work(db: Session) -> ResourcePolicyData:
            row = db.get(ResourcePolicyRow, name)
            if row is None:
                raise NotFound(f"no resource policy {name!r}")
            return ResourcePolicyData.of(row)

        return await self.db.run(work)

    async def policy_of(self, access_key: str) -> ResourcePolicyData:
        """The policy a keypair is bound to (for whoever enforces it)."""

        def work(db: Session) -> ResourcePolicyData:
            keypair = db.get(KeypairRow, access_key)
            if keypair is None:
                raise NotFound(f"no keypair {access_key!r}")
            row = db.get(ResourcePolicyRow, keypair.resource_policy)
            if row is None:
                raise NotFound(f"no resource policy {keypair.resource_policy!r}")
            return ResourcePolicyData.of(row)

        return await self.db.run(work)

    async def create_policy(self, name: str, limits: Mapping[str, Any]) -> ResourcePolicyData:
        """A new policy; limits left out are unlimited. A taken name is a Conflict (409)."""
        _check_limit_names(limits)

        def work(db: Session) -> ResourcePolicyData:
            if db.get(ResourcePolicyRow, name) is not None:
                raise Conflict(f"a resource policy named {name!r} already exists", field="name")
            row = ResourcePolicyRow(
                name=name,
                total_resource_slots={},
                max_session_resources={},
                created_at=utcnow(),
            )
            for key, value in limits.items():
                setattr(row, key, value)
            db.add(row)
            db.flush()
            return ResourcePolicyData.of(row)

        try:
            return await self.db.run(work)
        except IntegrityError:
            # Only the primary key can refuse this row: another writer took the name first.
            raise Conflict(
                f"a resource policy named {name!r} already exists", field="name"
            ) from None
        except DataError as exc:
            raise _out_of_range(exc) from None

    async def modify_policy(self, name: str, changes: Mapping[str, Any]) -> ResourcePolicyData:
        """Change the given limits of a policy; the others keep their values."""
        _check_limit_names(changes)

        def work(db: Session) -> ResourcePolicyData:
            row = db.get(ResourcePolicyRow, name, with_for_update=True)
            if row is None:
                raise NotFound(f"no resource policy {name!r}")
            for key, value in changes.items():
                setattr(row, key, value)
            db.flush()
            return ResourcePolicyData.of(row)

        try:
            return await self.db.run(work)
        except DataError as exc:
            raise _out_of_range(exc) from None
