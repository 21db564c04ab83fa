"""TemplateService: session templates (stored ``POST sessions`` bodies) and creating from them.

Visibility: an admin's template is shared with everyone by default (``shared``), a user's is
their own; a template someone may not see answers 404 like one that does not exist. Only its
owner or an admin changes or deletes it (a shared template others see answers 403 to them).

Creating from a template instantiates its body (typed whole-value placeholders, see
``actions/templates.py``), lays the request's overrides over it, and hands the result to exactly
the path of ``POST sessions``: ``CreateSessionParams.from_json`` and
``SessionService.create_from_params``, for the caller. So a template never widens what the
caller may create: the same validation, allowlist and resource policy apply.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .actions.lifecycle import CreateFromParamsAction, CreateSessionParams, CreateSessionResult
from .actions.templates import (
    CreateFromTemplateAction,
    CreateTemplateAction,
    DeleteTemplateAction,
    GetTemplateAction,
    ListTemplatesAction,
    ModifyTemplateAction,
    check_references,
    instantiate,
    placeholders,
)
from .errors import InvalidRequest, NotFound, PermissionDenied
from .identity import Caller
from .repository.repository import TemplateData

if TYPE_CHECKING:
    from .service import SessionService


def can_see(template: TemplateData, caller: Caller) -> bool:
    return caller.is_admin or template.shared or template.owner_access_key == caller.access_key


def can_change(template: TemplateData, caller: Caller) -> bool:
    return caller.is_admin or template.owner_access_key == caller.access_key


class TemplateService:
    """One coroutine per template action; sessions are made by the session service."""

    def __init__(self, service: SessionService) -> None:
        self.service = service
        self.repository = service.repository

    async def _visible(self, template_id: str, caller: Caller) -> TemplateData:
        try:
            template = await self.repository.get_template(template_id)
        except NotFound:
            template = None
        if template is None or not can_see(template, caller):
            raise NotFound(f"no template {template_id!r}")
        return template

    async def _changeable(self, template_id: str, caller: Caller) -> TemplateData:
        template = await self._visible(template_id, caller)
        if not can_change(template, caller):
            raise PermissionDenied("only the template's owner or an admin may change it")
        return template

    @staticmethod
    def _check_shared(shared: bool, caller: Caller) -> None:
        if shared and not caller.is_admin:
            raise PermissionDenied("only admins share templates with everyone", field="shared")

    @staticmethod
    def _dry_run(body: dict[str, Any], parameters: dict[str, Any]) -> None:
        """When every placeholder has a default, the defaults must make a valid create body."""
        if any("default" not in parameters[name] for name in placeholders(body)):
            return
        try:
            CreateSessionParams.from_json(instantiate(body, parameters, {}))
        except InvalidRequest as exc:
            raise InvalidRequest(
                f"with its parameters' defaults, the body is not a valid POST sessions body: "
                f"{exc.message}",
                **exc.details,
            ) from None

    async def list_templates(self, action: ListTemplatesAction) -> list[TemplateData]:
        caller = action.caller
        return await self.repository.list_templates(None if caller.is_admin else caller.access_key)

    async def get_template(self, action: GetTemplateAction) -> TemplateData:
        return await self._visible(action.template_id, action.caller)

    async def create_template(self, action: CreateTemplateAction) -> TemplateData:
        spec, caller = action.spec, action.caller
        shared = caller.is_admin if spec.shared is None else spec.shared
        self._check_shared(shared, caller)
        self._dry_run(spec.body, spec.parameters)
        return await self.repository.create_template(
            name=spec.name,
            owner_access_key=caller.access_key,
            shared=shared,
            body=spec.body,
            parameters=spec.parameters,
        )

    async def modify_template(self, action: ModifyTemplateAction) -> TemplateData:
        caller = action.caller
        template = await self._changeable(action.template_id, caller)
        values = dict(action.changes.values)
        if "shared" in values:
            self._check_shared(values["shared"], caller)
        body = values.get("body", template.body)
        parameters = values.get("parameters", template.parameters)
        check_references(body, parameters)
        self._dry_run(body, parameters)
        return await self.repository.update_template(template.id, values)

    async def delete_template(self, action: DeleteTemplateAction) -> None:
        template = await self._changeable(action.template_id, action.caller)
        await self.repository.delete_template(template.id)

    async def create_from_template(self, action: CreateFromTemplateAction) -> CreateSessionResult:
        request, caller = action.request, action.caller
        template = await self._visible(request.template_id, caller)
        body = instantiate(template.body, template.parameters, request.parameters)
        body.update(request.overrides)
        params = CreateSessionParams.from_json(body)
        return await self.service.create_from_params(
            CreateFromParamsAction(caller=caller, params=params)
        )
