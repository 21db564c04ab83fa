"""Session templates through the REST API: CRUD, visibility, typed whole-value parameters, and
creating from a template exactly as POST sessions would (same validation, same policy).

The server runs the local agent (image "local"); most tests hold the scheduler so the sessions
they make stay PENDING, and one runs a session from a template to the end.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from .conftest import Api

ABSENT_ID = "0e1b7a6c-8f0e-4a57-9f5c-3c2f1d1a2b3c"


@pytest.fixture
def sessions_config(sessions_config: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    sessions_config["agents"] = [
        {"id": "local", "kind": "local", "root_dir": str(tmp_path / "local-agent")}
    ]
    return sessions_config


async def hold(app: Any) -> None:
    """Stop the scheduler: sessions made from templates stay PENDING (nothing runs)."""
    await app.ensure_started()
    await app.scheduler.stop()


async def keypair(api: Api, user: str, **fields: Any) -> dict[str, str]:
    answer = await api("POST", "keypairs", body={"user": user, **fields})
    assert answer.code == 201, answer.body
    return {"Authorization": f"Keypair {answer.body['access_key']}:{answer.body['secret_key']}"}


async def new_template(api: Api, headers: dict[str, str] | None = None, **body: Any) -> Any:
    answer = await api("POST", "templates", body=body, headers=headers)
    assert answer.code == 201, answer.body
    return answer.body


CPU_TEMPLATE: dict[str, Any] = {
    "name": "cpu sized",
    "body": {
        "resources": {"cpu": {"$param": "cpu"}, "mem": "256m"},
        "tag": {"$param": "tag"},
        "enqueue_only": True,
    },
    "parameters": {
        "cpu": {"type": "number", "default": 0.5, "description": "cores"},
        "tag": {"type": "string"},
    },
}


async def test_templates_are_made_listed_changed_and_deleted(api: Api) -> None:
    assert (await api("GET", "templates")).body == {"templates": [], "total": 0}
    made = await new_template(api, **CPU_TEMPLATE)
    assert made["name"] == "cpu sized" and made["mine"] is True
    assert made["shared"] is True  # an admin's template is everyone's by default
    assert made["body"] == CPU_TEMPLATE["body"]
    assert made["parameters"]["cpu"] == {"type": "number", "default": 0.5, "description": "cores"}
    assert made["owner_access_key"] and made["created_at"] == made["updated_at"]

    listed = await api("GET", "templates")
    assert listed.code == 200 and [t["id"] for t in listed.body["templates"]] == [made["id"]]
    fetched = await api("GET", "templates", made["id"])
    assert fetched.code == 200 and fetched.body == made

    changed = await api(
        "PATCH",
        "templates",
        made["id"],
        body={
            "name": "renamed",
            "parameters": {**CPU_TEMPLATE["parameters"], "extra": {"type": "boolean"}},
        },
    )
    assert changed.code == 200, changed.body
    assert changed.body["name"] == "renamed" and "extra" in changed.body["parameters"]
    assert changed.body["body"] == made["body"] and changed.body["updated_at"] >= made["updated_at"]
    # A change that would leave a placeholder undeclared is refused, and nothing is written.
    dangling = await api("PATCH", "templates", made["id"], body={"parameters": {}})
    assert dangling.code == 400 and "'cpu'" in dangling.body["message"], dangling.body
    assert (await api("GET", "templates", made["id"])).body == changed.body

    gone = await api("DELETE", "templates", made["id"])
    assert gone.code == 204
    assert (await api("GET", "templates", made["id"])).code == 404
    assert (await api("DELETE", "templates", made["id"])).code == 404
    assert (await api("PATCH", "templates", made["id"], body={"name": "x"})).code == 404


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"body": {}}, "name is required"),
        ({"name": "t"}, "body is required"),
        ({"name": "", "body": {}}, "name"),
        ({"name": " padded", "body": {}}, "name"),
        ({"name": "t", "body": {}, "colour": "blue"}, "colour"),
        ({"name": "t", "body": []}, "body must be an object"),
        ({"name": "t", "body": {"colour": "blue"}}, "colour"),
        ({"name": "t", "body": {"tag": {"$param": "x"}}}, "'x'"),
        (
            {
                "name": "t",
                "body": {"tag": {"$param": "x", "more": 1}},
                "parameters": {"x": {"type": "string"}},
            },
            "whole value",
        ),
        ({"name": "t", "body": {"tag": {"$param": 5}}}, "whole value"),
        ({"name": "t", "body": {}, "parameters": {"x": {"type": "float"}}}, "parameters.x.type"),
        ({"name": "t", "body": {}, "parameters": {"x": {}}}, "parameters.x.type"),
        ({"name": "t", "body": {}, "parameters": {"x": "number"}}, "parameters.x"),
        ({"name": "t", "body": {}, "parameters": {"1x": {"type": "string"}}}, "parameter name"),
        (
            {"name": "t", "body": {}, "parameters": {"x": {"type": "integer", "default": 1.5}}},
            "parameters.x.default",
        ),
        (
            {"name": "t", "body": {}, "parameters": {"x": {"type": "number", "default": True}}},
            "parameters.x.default",
        ),
        ({"name": "t", "body": {}, "parameters": {"x": {"type": "string", "min": 1}}}, "min"),
        ({"name": "t", "body": {}, "parameters": []}, "parameters"),
        ({"name": "t", "body": {}, "shared": "yes"}, "shared"),
        # With every parameter defaulted, the defaults must make a valid POST sessions body.
        (
            {
                "name": "t",
                "body": {"resources": {"mem": {"$param": "m"}}},
                "parameters": {"m": {"type": "string", "default": "lots"}},
            },
            "resources.mem",
        ),
        ({"name": "t", "body": {"name": "x"}}, "name must be 4-64"),
        ({"name": "t", "body": {"depends_on": ["x"]}}, "depends_on"),
    ],
)
async def test_bad_templates_get_400_naming_the_problem(api: Api, body: Any, needle: str) -> None:
    answer = await api("POST", "templates", body=body)
    assert answer.code == 400, answer.body
    assert needle in answer.body["message"], answer.body
    assert (await api("GET", "templates")).body["total"] == 0


async def test_visibility_admins_share_users_keep_their_own(api: Api) -> None:
    alice, bob = await keypair(api, "alice"), await keypair(api, "bob")
    admins = await new_template(api, name="for everyone", body={"tag": "a"})
    alices = await new_template(api, headers=alice, name="alice only", body={"tag": "b"})
    assert alices["shared"] is False and alices["mine"] is True

    seen_by_bob = await api("GET", "templates", headers=bob)
    assert [t["id"] for t in seen_by_bob.body["templates"]] == [admins["id"]]
    shown = seen_by_bob.body["templates"][0]
    assert shown["mine"] is False and shown["owner_access_key"] is None  # whose key: not shown
    for method, body in (("GET", None), ("PATCH", {"name": "mine"}), ("DELETE", None)):
        answer = await api(method, "templates", alices["id"], body=body, headers=bob)
        assert answer.code == 404, (method, answer.body)
        absent = await api(method, "templates", ABSENT_ID, body=body, headers=bob)
        assert absent.code == 404 and absent.body["message"].startswith("no template")
    # A shared template is usable by all, changed by its owner or an admin only.
    assert (await api("GET", "templates", admins["id"], headers=bob)).code == 200
    patched = await api("PATCH", "templates", admins["id"], body={"name": "x"}, headers=bob)
    assert patched.code == 403, patched.body
    assert (await api("DELETE", "templates", admins["id"], headers=bob)).code == 403
    # Only admins share.
    refused = await api(
        "POST", "templates", body={"name": "n", "body": {}, "shared": True}, headers=alice
    )
    assert refused.code == 403 and "share" in refused.body["message"]
    refused = await api("PATCH", "templates", alices["id"], body={"shared": True}, headers=alice)
    assert refused.code == 403
    # Admins see every template, with its owner, and may change any.
    everything = await api("GET", "templates")
    assert {t["id"] for t in everything.body["templates"]} == {admins["id"], alices["id"]}
    assert all(t["owner_access_key"] for t in everything.body["templates"])
    assert (await api("PATCH", "templates", alices["id"], body={"name": "by admin"})).code == 200
    mine = await api("GET", "templates", alices["id"], headers=alice)
    assert mine.body["name"] == "by admin"
    assert (await api("DELETE", "templates", alices["id"], headers=alice)).code == 204


async def test_creating_from_a_template_fills_parameters_by_type(
    api: Api, sessions_app: Any
) -> None:
    await hold(sessions_app)
    template = await new_template(api, **CPU_TEMPLATE)
    tid = template["id"]

    made = await api(
        "POST",
        "sessions",
        "from-template",
        body={"template_id": tid, "parameters": {"cpu": 1, "tag": "$(rm -rf /) {cpu}"}},
    )
    assert made.code == 201, made.body
    session = made.body
    assert session["status"] == "PENDING"
    assert session["resources"] == {"cpu": 1, "mem": 256 * 2**20}
    assert session["tag"] == "$(rm -rf /) {cpu}"  # a whole value, never interpreted
    # Defaults fill what is not given; top-level fields of the request override the template's.
    second = await api(
        "POST",
        "sessions",
        "from-template",
        body={
            "template_id": tid,
            "parameters": {"tag": "two"},
            "name": "from-tpl",
            "resources": {"cpu": 0.25},
        },
    )
    assert second.code == 201, second.body
    assert second.body["name"] == "from-tpl" and second.body["tag"] == "two"
    assert second.body["resources"] == {"cpu": 0.25, "mem": 2**30}  # replaced as a whole

    for parameters, needle in [
        ({"cpu": "2", "tag": "t"}, "template parameter 'cpu' must be a number, not a string"),
        ({"cpu": True, "tag": "t"}, "'cpu' must be a number, not a boolean"),
        ({"tag": 5}, "'tag' must be a string, not an integer"),
        ({}, "template parameter 'tag' is required"),
        ({"tag": "t", "gpu": 1}, "unknown template parameter 'gpu'"),
        ({"tag": "t", "cpu": 100000}, "largest agent"),
    ]:
        answer = await api(
            "POST",
            "sessions",
            "from-template",
            body={"template_id": tid, "parameters": parameters},
        )
        expected = 403 if needle == "largest agent" else 400
        assert answer.code == expected and needle in answer.body["message"], answer.body
    for body, status, needle in [
        ({}, 400, "template_id"),
        ({"template_id": 5}, 400, "template_id"),
        ({"template_id": tid, "parameters": [1]}, 400, "parameters"),
        ({"template_id": tid, "parameters": {"tag": "t"}, "colour": "x"}, 400, "colour"),
        ({"template_id": tid, "parameters": {"tag": "t"}, "image": "evil:1"}, 400, "allowed"),
        ({"template_id": ABSENT_ID}, 404, "no template"),
    ]:
        answer = await api("POST", "sessions", "from-template", body=body)
        assert answer.code == status and needle in answer.body["message"], (body, answer.body)
    listed = await api("GET", "sessions")
    assert listed.body["total"] == 2  # nothing was made by the refused requests


async def test_a_template_never_widens_the_callers_policy(api: Api, sessions_app: Any) -> None:
    await hold(sessions_app)
    policy = {"name": "tiny", "max_session_resources": {"cpu": 1}, "max_pending_sessions": 1}
    assert (await api("POST", "resource-policies", body=policy)).code == 201
    user = await keypair(api, "tiny-user", resource_policy="tiny")
    big = await new_template(
        api,
        name="big",
        body={"resources": {"cpu": {"$param": "cpu"}}, "enqueue_only": True},
        parameters={"cpu": {"type": "number", "default": 2}},
    )
    refused = await api(
        "POST", "sessions", "from-template", body={"template_id": big["id"]}, headers=user
    )
    assert refused.code == 403 and "max_session_resources" in refused.body["message"]
    allowed = await api(
        "POST",
        "sessions",
        "from-template",
        body={"template_id": big["id"], "parameters": {"cpu": 1}},
        headers=user,
    )
    assert allowed.code == 201, allowed.body
    assert allowed.body["owner_access_key"] != big["owner_access_key"]  # the caller's own
    full = await api(
        "POST",
        "sessions",
        "from-template",
        body={"template_id": big["id"], "parameters": {"cpu": 1}},
        headers=user,
    )
    assert full.code == 429, full.body  # max_pending_sessions holds too
    # The same user's own private template is no way around it either.
    own = await new_template(
        api, headers=user, name="mine", body={"resources": {"cpu": 3}, "enqueue_only": True}
    )
    answer = await api(
        "POST", "sessions", "from-template", body={"template_id": own["id"]}, headers=user
    )
    assert answer.code == 403, answer.body


async def test_a_session_from_a_template_runs_with_its_parameters(api: Api) -> None:
    template = await new_template(
        api,
        name="runnable",
        body={
            "name": {"$param": "name"},
            "environ": {"GREETING": {"$param": "greeting"}},
            "bootstrap_script": "echo prepared > prepared.txt",
            "max_wait_seconds": 60,
        },
        parameters={"name": {"type": "string"}, "greeting": {"type": "string", "default": "hi"}},
    )
    answer = await api(
        "POST",
        "sessions",
        "from-template",
        body={"template_id": template["id"], "parameters": {"name": "tpl-run"}},
    )
    assert answer.code == 201, answer.body
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 240
    while answer.body["status"] not in ("RUNNING", "ERROR") and loop.time() < deadline:
        await asyncio.sleep(0.2)
        answer = await api("GET", "sessions", "tpl-run")
    assert answer.body["status"] == "RUNNING", answer.body
    result = await api(
        "POST",
        "sessions",
        "tpl-run",
        "execute",
        body={
            "mode": "query",
            "code": "import os; print(os.environ['GREETING'], open('prepared.txt').read())",
        },
    )
    assert result.code == 200 and result.body["status"] == "finished", result.body
    assert result.body["console"][0][1].split() == ["hi", "prepared"]
    # The audit log names the action the caller took.
    audit = await api("GET", "audit-log", limit="50")
    assert "create_from_template" in [entry["action"] for entry in audit.body["entries"]]
    gone = await api("DELETE", "sessions", "tpl-run")
    assert gone.code == 202
