"""Identity: keypair users as confined guests of a real server, keypairs and resource policies as
admin resources, and sessions that stay their owner's (on the real Docker engine)."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.auth.identity import IdentityProvider, User
from tornado.httpclient import HTTPClientError
from tornado.simple_httpclient import HTTPTimeoutError
from tornado.websocket import WebSocketHandler

from jupyter_sessions.errors import Conflict, InvalidRequest, NotFound
from jupyter_sessions.handlers import default_handlers
from jupyter_sessions.handlers.accounts import account_handlers
from jupyter_sessions.handlers.openapi import build_document, implemented_methods, openapi_path
from jupyter_sessions.identity import (
    KeypairAuthorizer,
    KeypairIdentityProvider,
    KeypairUser,
)
from jupyter_sessions.repository import Database
from jupyter_sessions.repository.accounts import AccountRepository
from jupyter_sessions.repository.repository import SessionRepository

from .conftest import Api

# Until tests/conftest.py lists "tests.postgres" in pytest_plugins:

INVALID = "invalid keypair"
MALFORMED = "malformed Authorization header"


async def new_keypair(api: Api, user: str, **fields: Any) -> dict[str, Any]:
    answer = await api("POST", "keypairs", body={"user": user, **fields})
    assert answer.code == 201, answer.body
    return dict(answer.body)


def keypair_auth(keypair: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Keypair {keypair['access_key']}:{keypair['secret_key']}"}


async def fetch(jp_fetch: Any, method: str, *parts: str, **kwargs: Any) -> Any:
    """A request to any route of the server (not only ours); never raises on 4xx."""
    if method in ("POST", "PUT", "PATCH"):
        kwargs.setdefault("body", b"{}")
    if method == "DELETE":
        kwargs["allow_nonstandard_methods"] = True
    try:
        return await jp_fetch(*parts, method=method, **kwargs)
    except HTTPClientError as error:
        assert error.response is not None, error
        return error.response


# --- the wrappers --------------------------------------------------------------------------------


async def test_the_configured_provider_and_authorizer_are_wrapped_not_replaced(
    jp_serverapp: Any, api: Api
) -> None:
    settings = jp_serverapp.web_app.settings
    provider, authorizer = settings["identity_provider"], settings["authorizer"]
    assert isinstance(provider, KeypairIdentityProvider)
    assert isinstance(provider, IdentityProvider)  # code such as PATCH /api/me checks this
    assert type(provider.inner) is jp_serverapp.identity_provider_class
    assert jp_serverapp.identity_provider is provider
    # Everything else is the original's: its token, its traits, its login handlers.
    assert provider.token == provider.inner.token and provider.token
    assert provider.get_handlers() == provider.inner.get_handlers()
    assert provider.cookie_name == provider.inner.cookie_name
    assert isinstance(authorizer, KeypairAuthorizer) and isinstance(authorizer, Authorizer)
    assert jp_serverapp.authorizer is authorizer
    assert type(authorizer.inner) is jp_serverapp.authorizer_class
    # The owner's token still works, on our routes and on Jupyter's.
    assert (await api("GET", "sessions")).code == 200


async def test_the_authorizer_confines_keypair_users(jp_serverapp: Any) -> None:
    authorizer = jp_serverapp.web_app.settings["authorizer"]
    guest = KeypairUser(username="AKIAGUEST", access_key="AKIAGUEST", keypair_user="guest")
    admin = KeypairUser(
        username="AKIAADMIN", access_key="AKIAADMIN", keypair_user="boss", is_admin=True
    )
    for resource in ("contents", "kernels", "terminals", "kernelspecs", "config", "api", "me"):
        for action in ("read", "write", "execute"):
            assert authorizer.is_authorized(None, guest, action, resource) is False
            assert authorizer.is_authorized(None, admin, action, resource) is False
    for resource in ("jupyter_sessions:sessions", "jupyter_sessions:files"):
        assert authorizer.is_authorized(None, guest, "write", resource) is True
    assert authorizer.is_authorized(None, guest, "read", "jupyter_sessions:admin") is False
    assert authorizer.is_authorized(None, admin, "read", "jupyter_sessions:admin") is True
    # Anyone else is the configured authorizer's to judge (the default allows all).
    owner = User(username="someone")
    assert authorizer.is_authorized(None, owner, "write", "contents") is True


# --- keypair authentication ----------------------------------------------------------------------


async def test_bad_keypair_credentials_answer_401_json(api: Api) -> None:
    keypair = await new_keypair(api, "alice")
    ak, sk = keypair["access_key"], keypair["secret_key"]
    cases = {
        "wrong secret": (f"Keypair {ak}:{sk[:-1]}{'A' if sk[-1] != 'A' else 'B'}", INVALID),
        "unknown key": (f"Keypair AKIA{'Z' * 16}:{sk}", INVALID),
        "no credentials": ("Keypair", MALFORMED),
        "no colon": (f"Keypair {ak}{sk}", MALFORMED),
        "no access key": (f"Keypair :{sk}", MALFORMED),
        "no secret": (f"Keypair {ak}:", MALFORMED),
        "space in secret": (f"Keypair {ak}:{sk[:5]} {sk[5:]}", MALFORMED),
        "bad access key": (f"Keypair AK/../x:{sk}", MALFORMED),
    }
    for case, (header, needle) in cases.items():
        for method in ("GET", "POST"):
            body = {"enqueue_only": True} if method == "POST" else None
            answer = await api(method, "sessions", headers={"Authorization": header}, body=body)
            assert answer.code == 401, (case, method, answer.code, answer.body)
            assert answer.body["reason"] == "unauthenticated", case
            assert needle in answer.body["message"], (case, answer.body)
            assert "Set-Cookie" not in answer.headers, case
    # The right secret works, with the scheme in any case, and sets no cookie either.
    for scheme in ("Keypair", "keypair", "KEYPAIR"):
        answer = await api("GET", "sessions", headers={"Authorization": f"{scheme} {ak}:{sk}"})
        assert answer.code == 200, (scheme, answer.body)
        assert "Set-Cookie" not in answer.headers
    # Revocation holds for the very next request, with the same answer as a wrong secret
    # (nothing tells a guesser which keys exist or were revoked).
    assert (await api("DELETE", "keypairs", ak)).code == 200
    answer = await api("GET", "sessions", headers=keypair_auth(keypair))
    assert answer.code == 401
    assert (
        answer.body["message"]
        == (await api("GET", "sessions", headers={"Authorization": cases["unknown key"][0]})).body[
            "message"
        ]
    )


async def test_a_keypair_request_needs_no_xsrf_cookie_and_never_falls_back(
    api: Api, jp_serverapp: Any
) -> None:
    admin = await new_keypair(api, "root-like", is_admin=True)
    # A POST with no XSRF cookie or header: token-authenticated, so accepted.
    answer = await api("POST", "keypairs", body={"user": "bob"}, headers=keypair_auth(admin))
    assert answer.code == 201, answer.body
    # A bad Keypair header is not rescued by a valid token elsewhere in the request.
    token = jp_serverapp.identity_provider.token
    answer = await api("GET", "sessions", headers={"Authorization": "Keypair nope"}, token=token)
    assert answer.code == 401


async def test_a_keypair_user_is_confined_to_the_sessions_api(
    api: Api, jp_fetch: Any, jp_serverapp: Any
) -> None:
    guest = await new_keypair(api, "guest")
    admin = await new_keypair(api, "admin-guest", is_admin=True)
    kernel_body = json.dumps({"name": "python3"}).encode()
    foreign = [
        ("GET", ("api", "contents")),
        ("PUT", ("api", "contents", "evil.txt")),
        ("GET", ("api", "kernels")),
        ("POST", ("api", "kernels")),
        ("GET", ("api", "terminals")),
        ("POST", ("api", "terminals")),
        ("GET", ("api", "kernelspecs")),
        ("GET", ("api", "sessions")),
        ("GET", ("api", "config", "notebook")),
        ("GET", ("api", "me")),
        ("PATCH", ("api", "me")),
        ("GET", ("api", "status")),
    ]
    token = jp_serverapp.identity_provider.token
    for keypair in (guest, admin):
        for method, parts in foreign:
            kwargs: dict[str, Any] = {"headers": keypair_auth(keypair)}
            if parts == ("api", "kernels") and method == "POST":
                kwargs["body"] = kernel_body
            response = await fetch(jp_fetch, method, *parts, **kwargs)
            assert response.code == 403, (keypair["user"], method, parts, response.code)
            assert "Set-Cookie" not in response.headers, (method, parts)
            # Not even with the server's token in the URL: a Keypair header is the credential.
            response = await fetch(jp_fetch, method, *parts, params={"token": token}, **kwargs)
            assert response.code == 403, ("with token", method, parts, response.code)
    # The owner's token still reaches them.
    for parts in (("api", "contents"), ("api", "kernels"), ("api", "terminals"), ("api", "me")):
        response = await fetch(jp_fetch, "GET", *parts)
        assert response.code == 200, parts
    # Jupyter's PATCH /api/me insists on an IdentityProvider instance: the wrapper is one.
    response = await fetch(
        jp_fetch, "PATCH", "api", "me", body=json.dumps({"display_name": "Owner"}).encode()
    )
    assert response.code == 200, response.body
    assert json.loads(response.body)["identity"]["display_name"] == "Owner"
    # And the guest reaches the sessions API.
    assert (await api("GET", "sessions", headers=keypair_auth(guest))).code == 200
    assert (await api("GET", "images", headers=keypair_auth(guest))).code == 200


async def test_admin_routes_need_an_admin_keypair(api: Api) -> None:
    guest = await new_keypair(api, "guest")
    admin = await new_keypair(api, "deputy", is_admin=True)
    owner_key = (await api("GET", "keypairs")).body["keypairs"][0]["access_key"]
    samples = {"{access_key}": owner_key, "{name}": "default"}
    admin_routes = [*account_handlers]
    admin_routes += [(p, h) for p, h in default_handlers if h.auth_resource.endswith(":admin")]
    checked = 0
    for pattern, handler in admin_routes:
        path = openapi_path(pattern)
        for placeholder, value in samples.items():
            path = path.replace(placeholder, value)
        for method in implemented_methods(handler):
            body = {} if method in ("post", "patch") else None
            answer = await api(
                method.upper(), *path.strip("/").split("/"), headers=keypair_auth(guest), body=body
            )
            assert answer.code == 403, (method, path, answer.code, answer.body)
            assert "message" in answer.body
            checked += 1
    assert checked >= 9
    for path in ("keypairs", "resource-policies", "audit-log", "agents"):
        answer = await api("GET", *path.split("/"), headers=keypair_auth(admin))
        assert answer.code == 200, (path, answer.body)
    # The owner's keypair stays, whoever asks.
    answer = await api("DELETE", "keypairs", owner_key, headers=keypair_auth(admin))
    assert answer.code == 409


# --- keypairs ---------------------------------------------------------------------------------


async def test_keypairs_are_made_listed_and_revoked_and_secrets_shown_once(api: Api) -> None:
    listed = await api("GET", "keypairs")
    assert listed.code == 200 and listed.body["total"] == 1
    [owner] = listed.body["keypairs"]
    assert owner["user"] == "owner" and owner["is_owner"] and owner["is_admin"]

    created = await api("POST", "keypairs", body={"user": "alice@example.org"})
    assert created.code == 201, created.body
    alice = created.body
    assert re.fullmatch(r"AKIA[A-Z0-9]{16}", alice["access_key"])
    assert len(alice["secret_key"]) == 40
    assert alice["user"] == "alice@example.org"
    assert alice["is_admin"] is False and alice["is_owner"] is False and alice["is_active"]
    assert alice["resource_policy"] == "default" and alice["revoked_at"] is None
    assert created.headers["Cache-Control"] == "no-store"

    listed = await api("GET", "keypairs")
    assert listed.body["total"] == 2
    assert [k["access_key"] for k in listed.body["keypairs"]] == [
        owner["access_key"],
        alice["access_key"],
    ]
    text = json.dumps(listed.body)
    assert alice["secret_key"] not in text and "secret" not in text

    revoked = await api("DELETE", "keypairs", alice["access_key"])
    assert revoked.code == 200
    assert revoked.body["revoked_at"] and revoked.body["is_active"] is False
    assert "secret_key" not in revoked.body
    again = await api("DELETE", "keypairs", alice["access_key"])
    assert again.code == 200 and again.body["revoked_at"] == revoked.body["revoked_at"]
    assert (await api("DELETE", "keypairs", "AKIANOSUCHKEY0000000")).code == 404
    refused = await api("DELETE", "keypairs", owner["access_key"])
    assert refused.code == 409 and "owner" in refused.body["message"]

    audit = await api("GET", "audit-log")
    assert audit.code == 200
    text = json.dumps(audit.body)
    assert alice["secret_key"] not in text
    actions = [(e["action"], e["target"], e["outcome"]) for e in audit.body["entries"]]
    assert ("create_keypair", "alice@example.org", "success") in actions
    assert ("revoke_keypair", owner["access_key"], "failure") in actions


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "user"),
        ({"user": ""}, "user"),
        ({"user": "has space"}, "user"),
        ({"user": 7}, "user"),
        ({"user": "x" * 129}, "user"),
        ({"user": "ok", "is_admin": "yes"}, "is_admin"),
        ({"user": "ok", "resource_policy": "no-such-policy"}, "resource_policy"),
        ({"user": "ok", "resource_policy": "../x"}, "resource_policy"),
        ({"user": "ok", "secret_key": "mine"}, "secret_key"),
        (["user"], "JSON object"),
    ],
)
async def test_bad_keypair_requests_get_400_naming_the_field(
    api: Api, body: Any, needle: str
) -> None:
    answer = await api("POST", "keypairs", body=body)
    assert answer.code == 400, answer.body
    assert needle in answer.body["message"]
    assert (await api("GET", "keypairs")).body["total"] == 1


# --- resource policies ----------------------------------------------------------------------


async def test_resource_policies_are_made_changed_and_bound_to_keypairs(api: Api) -> None:
    listed = await api("GET", "resource-policies")
    assert listed.code == 200
    assert [p["name"] for p in listed.body["resource_policies"]] == ["default"]
    assert listed.body["total"] == 1
    default = listed.body["resource_policies"][0]
    assert default["max_concurrent_sessions"] is None and default["total_resource_slots"] == {}

    body = {
        "name": "students",
        "max_concurrent_sessions": 2,
        "total_resource_slots": {"cpu": 4, "mem": "8g"},
        "max_pending_sessions": 5,
        "max_session_resources": {"cpu": "0.5", "mem": "512m"},
        "idle_timeout": 3600,
        "max_session_lifetime": 86400,
        "max_containers_per_session": 1,
        "storage_quota": "10g",
        "max_images": 3,
    }
    created = await api("POST", "resource-policies", body=body)
    assert created.code == 201, created.body
    policy = created.body
    assert policy["total_resource_slots"] == {"cpu": 4, "mem": 8 * 2**30}
    assert policy["max_session_resources"] == {"cpu": 0.5, "mem": 512 * 2**20}
    assert policy["storage_quota"] == 10 * 2**30
    assert policy["idle_timeout"] == 3600 and policy["max_images"] == 3
    assert (await api("POST", "resource-policies", body={"name": "students"})).code == 409

    changed = await api(
        "PATCH",
        "resource-policies",
        "students",
        body={"max_concurrent_sessions": None, "total_resource_slots": {"cpu": 8}},
    )
    assert changed.code == 200, changed.body
    assert changed.body["max_concurrent_sessions"] is None
    assert changed.body["total_resource_slots"] == {"cpu": 8}
    assert changed.body["max_pending_sessions"] == 5  # untouched
    fetched = await api("GET", "resource-policies", "students")
    assert fetched.code == 200 and fetched.body == changed.body
    assert (await api("GET", "resource-policies", "nobody")).code == 404
    missing = await api("PATCH", "resource-policies", "nobody", body={"max_images": 1})
    assert missing.code == 404

    student = await new_keypair(api, "carol", resource_policy="students")
    assert student["resource_policy"] == "students"
    listed = await api("GET", "keypairs")
    assert {k["user"]: k["resource_policy"] for k in listed.body["keypairs"]}["carol"] == (
        "students"
    )


@pytest.mark.parametrize(
    ("method", "body", "needle"),
    [
        ("POST", {"name": "p1", "total_resource_slots": {"gpu": 1}}, "total_resource_slots.gpu"),
        (
            "POST",
            {"name": "p1", "max_session_resources": {"mem": "lots"}},
            "max_session_resources.mem",
        ),
        ("POST", {"name": "p1", "total_resource_slots": {"cpu": -1}}, "total_resource_slots.cpu"),
        ("POST", {"name": "p1", "total_resource_slots": [1]}, "total_resource_slots"),
        ("POST", {"name": "p1", "max_concurrent_sessions": -1}, "max_concurrent_sessions"),
        ("POST", {"name": "p1", "max_concurrent_sessions": 1.5}, "max_concurrent_sessions"),
        ("POST", {"name": "p1", "max_images": True}, "max_images"),
        ("POST", {"name": "p1", "idle_timeout": 0}, "idle_timeout"),
        ("POST", {"name": "p1", "max_containers_per_session": 2**40}, "max_containers"),
        ("POST", {"name": "p1", "storage_quota": "big"}, "storage_quota"),
        ("POST", {"name": "p1", "colour": "blue"}, "colour"),
        ("POST", {"max_images": 1}, "name"),
        ("POST", {"name": "has space"}, "name"),
        ("PATCH", {"total_resource_slots": {"gpu": 1}}, "total_resource_slots.gpu"),
        ("PATCH", {"max_pending_sessions": "3"}, "max_pending_sessions"),
        ("PATCH", {}, "nothing to change"),
        ("PATCH", {"name": "renamed"}, "renamed"),
        ("PATCH", {"colour": "blue"}, "colour"),
    ],
)
async def test_bad_policy_requests_get_400_naming_the_field(
    api: Api, method: str, body: Any, needle: str
) -> None:
    path = ("resource-policies",) if method == "POST" else ("resource-policies", "default")
    answer = await api(method, *path, body=body)
    assert answer.code == 400, answer.body
    assert needle in answer.body["message"], answer.body
    listed = (await api("GET", "resource-policies")).body
    assert listed["total"] == 1
    assert listed["resource_policies"][0]["total_resource_slots"] == {}


# --- the audit log -------------------------------------------------------------------------------


async def test_the_audit_log_shows_the_newest_actions_with_who_did_them(api: Api) -> None:
    guest = await new_keypair(api, "dave")
    assert (await api("GET", "sessions", headers=keypair_auth(guest))).code == 200
    assert (await api("GET", "keypairs", headers=keypair_auth(guest))).code == 403
    # Read at once: the service flushes the queued entries before it reads.
    answer = await api("GET", "audit-log")
    assert answer.code == 200
    entries = answer.body["entries"]
    assert answer.body["total"] == len(entries)
    newest = entries[0]
    assert newest["action"] == "match_sessions"
    assert newest["access_key"] == guest["access_key"] and newest["outcome"] == "success"
    assert entries[1]["action"] == "create_keypair" and entries[1]["target"] == "dave"
    assert [e["at"] for e in entries] == sorted((e["at"] for e in entries), reverse=True)
    assert len((await api("GET", "audit-log", limit=1)).body["entries"]) == 1
    for limit in ("0", "1001", "many"):
        assert (await api("GET", "audit-log", limit=limit)).code == 400


# --- the owner under JupyterHub ------------------------------------------------------------------


@pytest.fixture
def under_jupyterhub(
    sessions_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> Iterator[str]:
    monkeypatch.setenv("JUPYTERHUB_USER", "hub-user")
    sessions_config.pop("owner_name")
    yield "hub-user"


async def test_under_jupyterhub_the_hub_user_is_the_owner(under_jupyterhub: str, api: Api) -> None:
    listed = await api("GET", "keypairs")
    assert listed.code == 200, listed.body
    [owner] = listed.body["keypairs"]
    assert owner["user"] == under_jupyterhub and owner["is_owner"] and owner["is_admin"]
    guest = await new_keypair(api, "visitor")
    assert (await api("GET", "sessions", headers=keypair_auth(guest))).code == 200


# --- the repository on both backends -----------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/store.db"
    else:
        url = request.getfixturevalue("postgres_url")
    db = Database(url)
    db.migrate()
    yield db
    db.close()


async def test_account_repository(database: Database) -> None:
    accounts = AccountRepository(database)
    owner = await SessionRepository(database).ensure_owner_keypair("owner")

    made = await accounts.create_keypair("erin")
    assert "secret" not in repr(made)  # results may be logged: the secret is not in their repr
    found = await accounts.credentials(made.keypair.access_key)
    assert found is not None and found.secret_key == made.secret_key
    assert await accounts.credentials("AKIANOSUCHKEY0000000") is None
    keys = [await accounts.create_keypair("erin") for _ in range(5)]
    assert len({k.keypair.access_key for k in keys}) == 5
    assert len({k.secret_key for k in keys}) == 5
    assert [k.access_key for k in await accounts.list_keypairs()][:2] == [
        owner.access_key,
        made.keypair.access_key,
    ]

    revoked = await accounts.revoke_keypair(made.keypair.access_key)
    assert revoked.revoked_at is not None
    found = await accounts.credentials(made.keypair.access_key)
    assert found is not None and found.keypair.revoked_at == revoked.revoked_at
    with pytest.raises(Conflict):
        await accounts.revoke_keypair(owner.access_key)
    with pytest.raises(NotFound):
        await accounts.revoke_keypair("AKIANOSUCHKEY0000000")
    with pytest.raises(InvalidRequest) as bad_policy:
        await accounts.create_keypair("erin", resource_policy="missing")
    assert bad_policy.value.details["field"] == "resource_policy"

    policy = await accounts.create_policy(
        "lab", {"max_concurrent_sessions": 3, "total_resource_slots": {"cpu": 2}}
    )
    assert policy.max_concurrent_sessions == 3 and policy.max_images is None
    with pytest.raises(Conflict):
        await accounts.create_policy("lab", {})
    changed = await accounts.modify_policy(
        "lab", {"max_images": 4, "max_concurrent_sessions": None}
    )
    assert changed.max_images == 4 and changed.max_concurrent_sessions is None
    assert changed.total_resource_slots == {"cpu": 2}
    with pytest.raises(NotFound):
        await accounts.modify_policy("nope", {"max_images": 1})
    assert [p.name for p in await accounts.list_policies()] == ["default", "lab"]

    bound = await accounts.create_keypair("frank", is_admin=True, resource_policy="lab")
    assert bound.keypair.is_admin
    assert (await accounts.policy_of(bound.keypair.access_key)).name == "lab"
    assert (await accounts.policy_of(owner.access_key)).name == "default"

    # Racing creations of one name: one wins, the others are a clean Conflict.
    outcomes = await asyncio.gather(
        *(accounts.create_policy("race", {}) for _ in range(4)), return_exceptions=True
    )
    assert sum(not isinstance(o, BaseException) for o in outcomes) == 1
    assert all(isinstance(o, Conflict) for o in outcomes if isinstance(o, BaseException))


# --- sessions stay their owner's (real Docker engine) -------------------------------------------


@pytest.fixture
def with_kernel_image(sessions_config: dict[str, Any], kernel_image: str) -> str:
    """Set before the server starts: the tests below list it before the server's fixtures."""
    sessions_config["default_image"] = kernel_image
    return kernel_image


SAMPLE_ID = "0e1b7a6c-8f0e-4a57-9f5c-3c2f1d1a2b3c"


def concrete(pattern: str, values: dict[str, str]) -> str:
    """A route's path with each ``{placeholder}`` filled (by a value for it, else ``{ref}``'s)."""
    path = openapi_path(pattern)
    return re.sub(r"\{(\w+)\}", lambda m: values.get(m.group(1), values["ref"]), path)


def sample(schema: dict[str, Any], document: dict[str, Any]) -> Any:
    """A small value that fits ``schema``: bodies that pass validation reach the session lookup."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return sample(document["components"]["schemas"][name], document)
    if "enum" in schema:
        return schema["enum"][0]
    if "default" in schema:
        return schema["default"]
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next(k for k in kind if k != "null")
    if kind == "object":
        properties = schema.get("properties", {})
        wanted = list(schema.get("required", []))
        if not wanted and schema.get("minProperties") and properties:
            wanted = [next(iter(properties))]
        body = {key: sample(properties.get(key, {"type": "string"}), document) for key in wanted}
        if "enqueue_only" in properties:
            body["enqueue_only"] = True  # a create answers at once instead of waiting
        return body
    if kind in ("integer", "number"):
        return schema.get("minimum", 1)
    if kind == "boolean":
        return False
    if kind == "array":
        return []
    return "sample_1"  # a name, and also code that would run if a kernel were reached


def request_body(document: dict[str, Any], path: str, method: str) -> Any:
    operation = document["paths"][path][method]
    content = operation.get("requestBody", {}).get("content", {})
    schema = content.get("application/json", {}).get("schema")
    return sample(schema, document) if schema else {}


async def probe_http(
    jp_fetch: Any, method: str, path: str, headers: dict[str, str], body: Any, **params: str
) -> tuple[int, str]:
    """Status and body of any route, streamed ones included (read for a few seconds)."""
    chunks: list[bytes] = []
    kwargs: dict[str, Any] = {
        "method": method,
        "headers": headers,
        "params": params or None,
        "streaming_callback": chunks.append,
        "request_timeout": 5,
        "raise_error": False,
    }
    if method in ("POST", "PATCH", "PUT"):
        kwargs["body"] = json.dumps(body)
    if method == "DELETE":
        kwargs["allow_nonstandard_methods"] = True
    status_lines: list[str] = []
    kwargs["header_callback"] = lambda line: status_lines.append(line) if not status_lines else None
    try:
        response = await jp_fetch("jupyter-sessions", "api", *path.strip("/").split("/"), **kwargs)
    except HTTPTimeoutError:
        # A stream that stays open (the SSE route `events`): its status line and what it sent
        # so far are its answer.
        return int(status_lines[0].split()[1]), b"".join(chunks).decode(errors="replace")
    return response.code, b"".join(chunks).decode(errors="replace")


async def probe_ws(jp_ws_fetch: Any, path: str, headers: dict[str, str]) -> tuple[str, Any, str]:
    """How a WebSocket route answers: refused at the handshake, or what it sent until it closed."""
    try:
        connection = await jp_ws_fetch(
            "jupyter-sessions", "api", *path.strip("/").split("/"), headers=dict(headers)
        )
    except HTTPClientError as error:
        return "refused", error.code, ""
    received: list[str] = []
    try:
        connection.write_message(json.dumps({"mode": "query", "code": "print(40 + 2)"}))
        while True:
            message = await asyncio.wait_for(connection.read_message(), 10)
            if message is None:
                break
            received.append(message if isinstance(message, str) else message.decode())
    except TimeoutError:
        return "open", None, "".join(received)
    finally:
        connection.close()
    return "closed", connection.close_code, "".join(received)


@pytest.mark.docker
async def test_a_second_user_sees_none_of_the_owners_sessions(
    with_kernel_image: str,
    docker_cleanup: None,
    api: Api,
    jp_fetch: Any,
    jp_ws_fetch: Any,
) -> None:
    answer = await api(
        "POST",
        "sessions",
        body={"name": "owners-private-work", "tag": "owner-only-tag", "enqueue_only": True},
    )
    assert answer.code == 201, answer.body
    owners = answer.body
    owner_key = owners["owner_access_key"]
    second = keypair_auth(await new_keypair(api, "second-user"))

    listed = await api("GET", "sessions", headers=second)
    assert listed.code == 200 and listed.body == {"sessions": [], "total": 0}
    matched = await api("GET", "sessions", headers=second, match="owners")
    assert matched.body["total"] == 0
    for ref in (owners["id"], owners["name"]):
        for method, suffix in (("GET", ()), ("DELETE", ()), ("GET", ("status-history",))):
            answer = await api(method, "sessions", ref, *suffix, headers=second)
            assert answer.code == 404, (method, ref, suffix, answer.body)
    # Acting for the owner's key is for admins.
    answer = await api("GET", "sessions", headers=second, owner_access_key=owner_key)
    assert answer.code == 403
    answer = await api("GET", "sessions", owners["id"], headers=second, owner_access_key=owner_key)
    assert answer.code == 403

    # Every route, as the second user, aimed at the owner's session: never the owner's data.
    # A route's answer for the owner's session must be the answer for a session that does not
    # exist (a 400 from checking the request before the lookup tells nothing either).
    secrets_of_owner = [owners["name"], owners["tag"], owner_key]
    owner_values = {"ref": owners["id"], "access_key": owner_key, "name": "default"}
    absent_values = {"ref": str(uuid.uuid4()), "access_key": "AKIA" + "Q" * 16, "name": "absent"}
    document = build_document(default_handlers)
    walked = 0
    for pattern, handler in default_handlers:
        has_placeholder = "{" in openapi_path(pattern)
        path, control = concrete(pattern, owner_values), concrete(pattern, absent_values)
        leaks = secrets_of_owner if has_placeholder else [*secrets_of_owner, owners["id"]]
        for method in implemented_methods(handler):
            body = request_body(document, openapi_path(pattern), method)
            for params in ({}, {"owner_access_key": owner_key}):
                code, text = await probe_http(
                    jp_fetch, method.upper(), path, second, body, **params
                )
                where = (method, path, params, code, text[:300])
                assert code != 500, where
                for secret in leaks:
                    assert secret not in text, ("leaked", secret, where)
                if has_placeholder:
                    control_code, _ = await probe_http(
                        jp_fetch, method.upper(), control, second, body, **params
                    )
                    assert code == control_code, (where, control_code)
                    assert code in (400, 401, 403, 404), where
                walked += 1
        if isinstance(handler, type) and issubclass(handler, WebSocketHandler):
            seen = await probe_ws(jp_ws_fetch, path, second)
            unseen = await probe_ws(jp_ws_fetch, control, second)
            assert (seen[0], seen[1]) == (unseen[0], unseen[1]), (path, seen, unseen)
            assert seen[0] != "open" and seen[1] not in (None, 1000), (path, seen)
            for secret in secrets_of_owner:
                assert secret not in seen[2], ("leaked over WebSocket", path, seen)
    assert walked >= 10

    # The owner's session is untouched by all that.
    after = await api("GET", "sessions", owners["id"])
    assert after.code == 200
    assert after.body["status"] not in ("CANCELLED", "TERMINATING", "TERMINATED"), after.body
    assert (await api("GET", "sessions", "owners-private-work")).code == 200


@pytest.mark.docker
async def test_a_keypair_user_owns_what_they_create_and_keeps_it_when_revoked(
    with_kernel_image: str, docker_cleanup: None, api: Api
) -> None:
    keypair = await new_keypair(api, "guest-user")
    guest = keypair_auth(keypair)
    answer = await api(
        "POST", "sessions", body={"name": "guest-work", "enqueue_only": True}, headers=guest
    )
    assert answer.code == 201, answer.body
    session = answer.body
    assert session["owner_access_key"] == keypair["access_key"]
    assert (await api("GET", "sessions", "guest-work", headers=guest)).body["id"] == session["id"]
    listed = await api("GET", "sessions", headers=guest)
    assert [s["id"] for s in listed.body["sessions"]] == [session["id"]]

    # The owner is admin: sees it by id, by name when acting for the key, and in that key's list.
    by_id = await api("GET", "sessions", session["id"])
    assert by_id.code == 200 and by_id.body["owner_access_key"] == keypair["access_key"]
    assert (await api("GET", "sessions", "guest-work")).code == 404  # names are per owner
    by_name = await api("GET", "sessions", "guest-work", owner_access_key=keypair["access_key"])
    assert by_name.code == 200 and by_name.body["id"] == session["id"]
    assert (await api("GET", "sessions")).body["total"] == 0
    theirs = await api("GET", "sessions", owner_access_key=keypair["access_key"])
    assert [s["id"] for s in theirs.body["sessions"]] == [session["id"]]

    # Revoking the key locks its user out at once; the session keeps going.
    assert (await api("DELETE", "keypairs", keypair["access_key"])).code == 200
    assert (await api("GET", "sessions", session["id"], headers=guest)).code == 401
    after = await api("GET", "sessions", session["id"])
    assert after.code == 200
    assert after.body["status"] not in ("CANCELLED", "TERMINATING", "TERMINATED"), after.body
