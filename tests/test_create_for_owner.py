"""``owner_access_key`` at create: an admin makes a session that a keypair user owns."""

from __future__ import annotations

import pytest

from .conftest import Api
from .test_identity import keypair_auth, new_keypair


@pytest.mark.docker
async def test_an_admin_creates_a_session_another_key_owns(
    kernel_image: str, docker_cleanup: None, api: Api
) -> None:
    keypair = await new_keypair(api, "for-whom")
    guest = keypair_auth(keypair)
    made = await api(
        "POST",
        "sessions",
        body={
            "name": "made-for-guest",
            "owner_access_key": keypair["access_key"],
            "enqueue_only": True,
        },
    )
    assert made.code == 201, made.body
    assert made.body["owner_access_key"] == keypair["access_key"]
    # The guest owns it: by name in their own list; the admin's own list stays empty.
    mine = await api("GET", "sessions", "made-for-guest", headers=guest)
    assert mine.code == 200 and mine.body["id"] == made.body["id"]
    assert (await api("GET", "sessions")).body["total"] == 0

    # A non-admin can't create for anyone else, nor can anyone create for an unknown key.
    other = await new_keypair(api, "not-an-admin")
    refused = await api(
        "POST",
        "sessions",
        body={"name": "not-mine", "owner_access_key": keypair["access_key"]},
        headers=keypair_auth(other),
    )
    assert refused.code == 403, refused.body
    unknown = await api(
        "POST", "sessions", body={"name": "for-nobody", "owner_access_key": "AKIANOSUCHKEY0000000"}
    )
    assert unknown.code == 404, unknown.body
    # A revoked key gets no new sessions, with the field named.
    assert (await api("DELETE", "keypairs", other["access_key"])).code == 200
    revoked = await api(
        "POST", "sessions", body={"name": "for-revoked", "owner_access_key": other["access_key"]}
    )
    assert revoked.code == 400 and "revoked" in revoked.body["message"], revoked.body
    assert (await api("DELETE", "sessions", made.body["id"], forced="true")).code in (200, 202)
