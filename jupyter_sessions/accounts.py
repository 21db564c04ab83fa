"""AccountService and AccountProcessors: keypairs, resource policies and the audit log.

Every action here is for admins. The handlers already require the ``jupyter_sessions:admin``
resource; the service checks ``caller.is_admin`` again, so the rule holds whoever calls it. Like
the session service it never imports tornado: handlers reach it only through its processors, which
time each action and record it in the audit log (never a secret: actions do not carry one).
Enforcing policies belongs to the scheduler; this module stores and serves them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .actions.accounts import (
    AuditLogResult,
    CreatedKeypair,
    CreateKeypairAction,
    CreateResourcePolicyAction,
    GetAuditLogAction,
    GetResourcePolicyAction,
    ListKeypairsAction,
    ListKeypairsResult,
    ListResourcePoliciesAction,
    ListResourcePoliciesResult,
    ModifyResourcePolicyAction,
    RevokeKeypairAction,
)
from .actions.base import Action
from .errors import PermissionDenied
from .processors import ActionMonitor, ActionProcessor
from .repository.accounts import AccountRepository, ResourcePolicyData
from .repository.repository import AuditEntry, KeypairData

AuditReader = Callable[[int], Awaitable[list[AuditEntry]]]
AuditFlush = Callable[[], Awaitable[None]]


class AccountService:
    """One coroutine per account action."""

    def __init__(
        self,
        repository: AccountRepository,
        *,
        read_audit: AuditReader,
        flush_audit: AuditFlush,
    ) -> None:
        self.repository = repository
        self._read_audit = read_audit
        #: Writes the audit entries still queued, so the log read next includes them.
        self._flush_audit = flush_audit

    @staticmethod
    def _require_admin(action: Action) -> None:
        if not action.caller.is_admin:
            raise PermissionDenied(f"{action.operation} is for admins only")

    async def list_keypairs(self, action: ListKeypairsAction) -> ListKeypairsResult:
        self._require_admin(action)
        keypairs = await self.repository.list_keypairs()
        return ListKeypairsResult(keypairs, len(keypairs))

    async def create_keypair(self, action: CreateKeypairAction) -> CreatedKeypair:
        self._require_admin(action)
        params = action.params
        created = await self.repository.create_keypair(
            params.user, is_admin=params.is_admin, resource_policy=params.resource_policy
        )
        return CreatedKeypair(created.keypair, created.secret_key)

    async def revoke_keypair(self, action: RevokeKeypairAction) -> KeypairData:
        """Revoked keys stop authenticating at once; their sessions keep running."""
        self._require_admin(action)
        return await self.repository.revoke_keypair(action.access_key)

    async def list_resource_policies(
        self, action: ListResourcePoliciesAction
    ) -> ListResourcePoliciesResult:
        self._require_admin(action)
        policies = await self.repository.list_policies()
        return ListResourcePoliciesResult(policies, len(policies))

    async def get_resource_policy(self, action: GetResourcePolicyAction) -> ResourcePolicyData:
        self._require_admin(action)
        return await self.repository.get_policy(action.name)

    async def create_resource_policy(
        self, action: CreateResourcePolicyAction
    ) -> ResourcePolicyData:
        self._require_admin(action)
        return await self.repository.create_policy(action.params.name, action.params.limits)

    async def modify_resource_policy(
        self, action: ModifyResourcePolicyAction
    ) -> ResourcePolicyData:
        self._require_admin(action)
        return await self.repository.modify_policy(action.name, action.changes.changes)

    async def get_audit_log(self, action: GetAuditLogAction) -> AuditLogResult:
        self._require_admin(action)
        await self._flush_audit()
        return AuditLogResult(await self._read_audit(action.limit))


class AccountProcessors:
    """One processor per account action, sharing the session processors' monitors."""

    def __init__(self, service: AccountService, monitors: list[ActionMonitor]) -> None:
        self.list_keypairs = ActionProcessor(service.list_keypairs, monitors)
        self.create_keypair = ActionProcessor(service.create_keypair, monitors)
        self.revoke_keypair = ActionProcessor(service.revoke_keypair, monitors)
        self.list_resource_policies = ActionProcessor(service.list_resource_policies, monitors)
        self.get_resource_policy = ActionProcessor(service.get_resource_policy, monitors)
        self.create_resource_policy = ActionProcessor(service.create_resource_policy, monitors)
        self.modify_resource_policy = ActionProcessor(service.modify_resource_policy, monitors)
        self.get_audit_log = ActionProcessor(service.get_audit_log, monitors)
