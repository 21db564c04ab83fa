"""Template actions: stored ``POST sessions`` bodies with typed, whole-value parameters.

A template's ``body`` is a ``POST sessions`` body in which any value (at any depth) may be a
placeholder ``{"$param": "<name>"}``; ``parameters`` declares each name's type (number, integer,
string, boolean) and optional default. Instantiating replaces each placeholder by the whole value
given for it, checked against its type. There is no string interpolation: a parameter never
becomes part of a string, so it can only ever be what its field accepts anyway.

``from_json`` checks shapes; what needs state (visibility, ownership) belongs to
``templates.TemplateService``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import InvalidRequest
from .base import Action
from .lifecycle import CREATE_FIELDS

PLACEHOLDER_KEY = "$param"
PARAM_TYPES = ("number", "integer", "string", "boolean")
PARAM_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
DECLARATION_FIELDS = frozenset({"type", "default", "description"})
TEMPLATE_FIELDS = frozenset({"name", "body", "parameters", "shared"})
MAX_TEMPLATE_NAME = 128
MAX_PARAMETERS = 64
#: Fields of ``POST sessions/from-template`` besides the overrides (any ``POST sessions`` field).
FROM_TEMPLATE_FIELDS = frozenset({"template_id", "parameters"})


def is_placeholder(value: Any) -> bool:
    return isinstance(value, Mapping) and PLACEHOLDER_KEY in value


def _placeholder_name(value: Mapping[str, Any], where: str) -> str:
    """The parameter a placeholder names; it must be exactly ``{"$param": "<name>"}``."""
    name = value.get(PLACEHOLDER_KEY)
    if len(value) != 1 or not isinstance(name, str) or not PARAM_NAME.match(name):
        raise InvalidRequest(
            f"body.{where}: a placeholder is a whole value, exactly "
            '{"$param": "<parameter name>"}',
            field=f"body.{where}",
        )
    return name


def placeholders(value: Any, where: str = "") -> dict[str, str]:
    """Every placeholder in ``value``: parameter name → where it first appears."""
    found: dict[str, str] = {}
    if is_placeholder(value):
        found[_placeholder_name(value, where)] = where
    elif isinstance(value, Mapping):
        for key, item in value.items():
            for name, at in placeholders(item, f"{where}.{key}" if where else str(key)).items():
                found.setdefault(name, at)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            for name, at in placeholders(item, f"{where}[{index}]").items():
                found.setdefault(name, at)
    return found


def check_value(name: str, kind: str, value: Any) -> Any:
    """``value`` if it is of the parameter's declared type, else a 400 naming the parameter."""
    if kind == "boolean":
        ok = isinstance(value, bool)
    elif kind == "integer":
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif kind == "number":
        ok = (
            isinstance(value, int | float)
            and not isinstance(value, bool)
            and math.isfinite(float(value))
        )
    else:
        ok = isinstance(value, str)
    if not ok:
        raise InvalidRequest(
            f"template parameter {name!r} must be a{'n' if kind == 'integer' else ''} {kind}, "
            f"not {_json_type(value)}",
            field=f"parameters.{name}",
            expected=kind,
        )
    return value


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def parse_parameters(raw: Any) -> dict[str, dict[str, Any]]:
    """Declared parameters: name → ``{"type", "default"?, "description"?}``, defaults checked."""
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise InvalidRequest(
            'parameters must be an object like {"cpu": {"type": "number", "default": 1}}',
            field="parameters",
        )
    if len(raw) > MAX_PARAMETERS:
        raise InvalidRequest(f"at most {MAX_PARAMETERS} parameters", field="parameters")
    declared: dict[str, dict[str, Any]] = {}
    for name, declaration in raw.items():
        where = f"parameters.{name}"
        if not isinstance(name, str) or not PARAM_NAME.match(name):
            raise InvalidRequest(
                f"{where}: a parameter name is 1-64 letters, digits or '_', not starting with "
                "a digit",
                field=where,
            )
        if not isinstance(declaration, Mapping):
            raise InvalidRequest(f"{where} must be an object with a type", field=where)
        unknown = sorted(set(declaration) - DECLARATION_FIELDS)
        if unknown:
            raise InvalidRequest(f"{where}: unknown fields: {', '.join(unknown)}", field=where)
        kind = declaration.get("type")
        if kind not in PARAM_TYPES:
            raise InvalidRequest(
                f"{where}.type must be one of: {', '.join(PARAM_TYPES)}", field=f"{where}.type"
            )
        entry: dict[str, Any] = {"type": kind}
        if "default" in declaration:
            try:
                entry["default"] = check_value(name, kind, declaration["default"])
            except InvalidRequest as exc:
                raise InvalidRequest(
                    f"{where}.default: {exc.message}", field=f"{where}.default"
                ) from None
        description = declaration.get("description")
        if description is not None:
            if not isinstance(description, str) or len(description) > 1000:
                raise InvalidRequest(
                    f"{where}.description must be a string of at most 1000 characters",
                    field=f"{where}.description",
                )
            entry["description"] = description
        declared[name] = entry
    return declared


def parse_body(raw: Any) -> dict[str, Any]:
    """A template body: a ``POST sessions`` body (its top-level fields), placeholders allowed."""
    if not isinstance(raw, Mapping):
        raise InvalidRequest("body must be an object: a POST sessions body", field="body")
    if is_placeholder(raw):
        raise InvalidRequest("body itself cannot be a placeholder", field="body")
    unknown = sorted(str(k) for k in set(raw) - CREATE_FIELDS)
    if unknown:
        raise InvalidRequest(
            f"body: unknown fields: {', '.join(unknown)} (a template body is a POST sessions body)",
            fields=unknown,
        )
    return dict(raw)


def check_references(body: Mapping[str, Any], parameters: Mapping[str, Any]) -> None:
    """Every placeholder names a declared parameter."""
    for name, where in placeholders(body).items():
        if name not in parameters:
            raise InvalidRequest(
                f"body.{where} uses parameter {name!r}, which is not declared in parameters",
                field=f"body.{where}",
            )


def _template_name(raw: Any) -> str:
    if (
        not isinstance(raw, str)
        or not 1 <= len(raw) <= MAX_TEMPLATE_NAME
        or not raw.isprintable()
        or raw != raw.strip()
    ):
        raise InvalidRequest(
            f"name must be 1-{MAX_TEMPLATE_NAME} printable characters, without leading or "
            "trailing spaces",
            field="name",
        )
    return raw


def _shared(raw: Any) -> bool | None:
    if raw is None:
        return None
    if not isinstance(raw, bool):
        raise InvalidRequest("shared must be true or false", field="shared")
    return raw


def _object(body: Any, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise InvalidRequest("the request body must be a JSON object")
    unknown = sorted(str(k) for k in set(body) - allowed)
    if unknown:
        raise InvalidRequest(f"unknown fields: {', '.join(unknown)}", fields=unknown)
    return body


@dataclass(frozen=True)
class TemplateSpec:
    """A well-formed ``POST templates`` body. ``shared`` None: the default (admins share)."""

    name: str
    body: dict[str, Any]
    parameters: dict[str, dict[str, Any]]
    shared: bool | None = None

    @classmethod
    def from_json(cls, raw: Any) -> TemplateSpec:
        raw = _object(raw, TEMPLATE_FIELDS)
        for required in ("name", "body"):
            if required not in raw:
                raise InvalidRequest(f"{required} is required", field=required)
        body = parse_body(raw["body"])
        parameters = parse_parameters(raw.get("parameters"))
        check_references(body, parameters)
        return cls(_template_name(raw["name"]), body, parameters, _shared(raw.get("shared")))


@dataclass(frozen=True)
class TemplateChanges:
    """A well-formed ``PATCH templates/{id}`` body: whole values for the fields given.

    Placeholders are checked against the parameters the template will have after the change,
    by the service (it knows the stored half).
    """

    values: Mapping[str, Any]

    @classmethod
    def from_json(cls, raw: Any) -> TemplateChanges:
        raw = _object(raw, TEMPLATE_FIELDS)
        if not raw:
            raise InvalidRequest(
                f"nothing to change: give one of {', '.join(sorted(TEMPLATE_FIELDS))}"
            )
        values: dict[str, Any] = {}
        if "name" in raw:
            values["name"] = _template_name(raw["name"])
        if "body" in raw:
            values["body"] = parse_body(raw["body"])
        if "parameters" in raw:
            values["parameters"] = parse_parameters(raw["parameters"])
        if "shared" in raw:
            shared = _shared(raw["shared"])
            if shared is None:
                raise InvalidRequest("shared must be true or false", field="shared")
            values["shared"] = shared
        return cls(values)


@dataclass(frozen=True)
class FromTemplateRequest:
    """A well-formed ``POST sessions/from-template`` body."""

    template_id: str
    parameters: dict[str, Any]
    #: Top-level ``POST sessions`` fields that replace the template's (literal values).
    overrides: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, raw: Any) -> FromTemplateRequest:
        raw = _object(raw, FROM_TEMPLATE_FIELDS | CREATE_FIELDS)
        template_id = raw.get("template_id")
        if not isinstance(template_id, str) or not template_id:
            raise InvalidRequest("template_id is required", field="template_id")
        parameters = raw.get("parameters") or {}
        if not isinstance(parameters, Mapping):
            raise InvalidRequest(
                "parameters must be an object of parameter values", field="parameters"
            )
        overrides = {k: v for k, v in raw.items() if k not in FROM_TEMPLATE_FIELDS}
        return cls(template_id, dict(parameters), overrides)


def instantiate(
    body: Mapping[str, Any], declared: Mapping[str, Mapping[str, Any]], given: Mapping[str, Any]
) -> dict[str, Any]:
    """The template's body with every placeholder replaced by its parameter's whole value.

    Unknown, wrongly typed or missing (without default) parameters are a 400 naming them.
    """
    for name in given:
        if name not in declared:
            known = ", ".join(sorted(declared)) or "none"
            raise InvalidRequest(
                f"unknown template parameter {name!r} (declared: {known})",
                field=f"parameters.{name}",
            )
    values: dict[str, Any] = {}
    for name, declaration in declared.items():
        if name in given:
            values[name] = check_value(name, declaration["type"], given[name])
        elif "default" in declaration:
            values[name] = declaration["default"]
    missing = sorted(set(placeholders(body)) - set(values))
    if missing:
        raise InvalidRequest(
            f"template parameter {missing[0]!r} is required (it has no default)",
            field=f"parameters.{missing[0]}",
            missing=missing,
        )

    def substitute(value: Any) -> Any:
        if is_placeholder(value):
            return values[value[PLACEHOLDER_KEY]]
        if isinstance(value, Mapping):
            return {key: substitute(item) for key, item in value.items()}
        if isinstance(value, list):
            return [substitute(item) for item in value]
        return value

    return {key: substitute(value) for key, value in body.items()}


# --- actions -------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class ListTemplatesAction(Action):
    operation: ClassVar[str] = "list_templates"


@dataclass(frozen=True, kw_only=True)
class TemplateRefAction(Action):
    template_id: str

    def target(self) -> str | None:
        return self.template_id


@dataclass(frozen=True, kw_only=True)
class GetTemplateAction(TemplateRefAction):
    operation: ClassVar[str] = "get_template"


@dataclass(frozen=True, kw_only=True)
class CreateTemplateAction(Action):
    operation: ClassVar[str] = "create_template"
    spec: TemplateSpec

    def target(self) -> str | None:
        return self.spec.name


@dataclass(frozen=True, kw_only=True)
class ModifyTemplateAction(TemplateRefAction):
    operation: ClassVar[str] = "modify_template"
    changes: TemplateChanges


@dataclass(frozen=True, kw_only=True)
class DeleteTemplateAction(TemplateRefAction):
    operation: ClassVar[str] = "delete_template"


@dataclass(frozen=True, kw_only=True)
class CreateFromTemplateAction(Action):
    operation: ClassVar[str] = "create_from_template"
    request: FromTemplateRequest

    def target(self) -> str | None:
        return self.request.template_id
