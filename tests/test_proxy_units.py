"""The proxy's and the catalog's pure parts: tokens, host names, header rules, argv building."""

from __future__ import annotations

import base64
import json

import pytest

from jupyter_sessions.errors import InvalidRequest, Unauthenticated
from jupyter_sessions.proxy import (
    ProxyTokens,
    check_path,
    parse_host,
    request_headers,
    response_headers,
    service_host_label,
    without_query_param,
)
from jupyter_sessions.services import (
    DEFAULT_SERVICES,
    build_argv,
    check_environ,
    parse_catalog,
    parse_preopen_ports,
)

SID = "0e1b7a6c-8f0e-4a57-9f5c-3c2f1d1a2b3c"


def test_tokens_round_trip_and_refuse_tampering_expiry_and_the_wrong_kind() -> None:
    tokens = ProxyTokens(ttl=60)
    claims = tokens.verify(tokens.mint(SID, "http", "AK1"), "url")
    assert (claims.session_id, claims.service, claims.access_key) == (SID, "http", "AK1")
    token = tokens.mint(SID, "http", "AK1")
    payload, signature = token.split(".")
    other = json.dumps({"t": "url", "s": SID, "n": "jupyter", "k": "AK1", "e": 9e9}).encode()
    forged = base64.urlsafe_b64encode(other).rstrip(b"=").decode() + "." + signature
    for bad in (forged, payload + ".x", "", "a.b.c", None, token + "x"):
        with pytest.raises(Unauthenticated):
            tokens.verify(bad, "url")
    with pytest.raises(Unauthenticated):
        tokens.verify(token, "cookie")
    with pytest.raises(Unauthenticated, match="expired"):
        ProxyTokens(secret=tokens._secret, ttl=-1).verify(
            ProxyTokens(secret=tokens._secret, ttl=-1).mint(SID, "http", "AK1"), "url"
        )
    with pytest.raises(Unauthenticated):
        ProxyTokens().verify(token, "url")  # another server's secret


def test_host_names_name_exactly_one_session_and_service() -> None:
    label = service_host_label(SID, "my-app")
    assert parse_host(f"{label}.localhost", "localhost") == (SID, "my-app")
    assert parse_host(f"{label.upper()}.LOCALHOST", "localhost") == (SID, "my-app")
    assert parse_host(f"{label}.apps.example.com", "apps.example.com") == (SID, "my-app")
    for host in ("localhost", f"{label}.evil.com", f"x{label}.localhost", f"{SID}.localhost"):
        assert parse_host(host, "localhost") is None, host


def test_request_headers_lose_credentials_and_hop_by_hop_headers() -> None:
    out = request_headers(
        [
            ("Host", "h.localhost"),
            ("Authorization", "token secret"),
            ("Cookie", "jsess-proxy=abc; app=1; login=x"),
            ("Connection", "keep-alive, X-Hop"),
            ("X-Hop", "1"),
            ("Upgrade", "h2c"),
            ("X-Forwarded-For", "10.0.0.1"),
            ("Accept", "*/*"),
        ],
        drop_cookies=["jsess-proxy", "login"],
        remote_ip="127.0.0.1",
        scheme="http",
    )
    names = {name.lower(): value for name, value in out}
    assert "authorization" not in names and "x-hop" not in names and "upgrade" not in names
    assert names["cookie"] == "app=1" and names["accept"] == "*/*"
    assert names["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
    assert names["x-forwarded-host"] == "h.localhost"


def test_response_headers_lose_cors_grants_and_cookie_domains() -> None:
    out = response_headers(
        [
            ("Set-Cookie", "a=1; Domain=localhost; Path=/"),
            ("Access-Control-Allow-Origin", "*"),
            ("Transfer-Encoding", "chunked"),
            ("Content-Type", "text/html"),
        ]
    )
    assert out == [("Set-Cookie", "a=1; Path=/"), ("Content-Type", "text/html")]


def test_only_paths_are_proxied_and_the_token_leaves_the_url() -> None:
    assert check_path("/a/b?c=1")
    for bad in ("http://127.0.0.1:8888/api", "//evil.com/x", "*", ""):
        assert not check_path(bad)
    assert without_query_param("/p?jsess-token=t&x=1", "jsess-token") == "/p?x=1"
    assert without_query_param("/p?jsess-token=t", "jsess-token") == "/p"


def test_the_catalog_and_requests_are_checked_before_anything_runs() -> None:
    catalog = parse_catalog(
        [
            *DEFAULT_SERVICES,
            {
                "name": "app",
                "port": 9000,
                "command": ["app", "--port={port}", "--base={base_url}"],
                "arguments": {"--level": "[a-z]+", "--debug": ""},
                "environ": ["MODE"],
            },
        ],
        "config",
    )
    app = catalog["app"]
    argv = build_argv(app, 9001, "/base/", {"--level": "info", "--debug": True})
    assert argv == ["app", "--port=9001", "--base=/base/", "--level=info", "--debug"]
    for arguments in (
        {"--level": "info; rm -rf /"},
        {"--level": "a\nb"},
        {"--other": "x"},
        {"--level": 3},
        {"--debug": "yes"},
    ):
        with pytest.raises(InvalidRequest):
            build_argv(app, 9001, "/", arguments)
    assert check_environ(app, {"MODE": "fast"}) == {"MODE": "fast"}
    with pytest.raises(InvalidRequest):
        check_environ(app, {"PATH": "/tmp"})
    for bad in (
        [{"name": "Bad_Name", "port": 9000}],
        [{"name": "x", "port": 5001}],
        [{"name": "x", "port": 9000, "protocol": "udp"}],
        [{"name": "x", "port": 9000, "command": "sh -c evil"}],
        [{"name": "x", "port": 9000, "arguments": {"--a": "("}}],
        "not json",
    ):
        with pytest.raises(InvalidRequest):
            parse_catalog(bad, "config")
    assert parse_preopen_ports([8080, 9090]) == (8080, 9090)
    for bad_ports in ([22], [5000], [8080, 8080], list(range(2000, 2009)), [True], "8080"):
        with pytest.raises(InvalidRequest):
            parse_preopen_ports(bad_ports)
