"""Who is calling: the server's owner, or a keypair user; and what a keypair user may reach.

Stock jupyter_server gives every token-authenticated request a fresh anonymous user; sessions need
a stable owner, so any request Jupyter itself authenticates (token, login cookie, JupyterHub)
belongs to the server's owner: one configured user, admin, whose keypair row is made on first
start.

Other people share the server with ``Authorization: Keypair <access_key>:<secret_key>``. They are
guests of the Jupyter server, not its users, so the server's configured identity provider and
authorizer (JupyterHub's, under a hub) are wrapped, never replaced:

- ``KeypairIdentityProvider`` delegates everything to the original, except a request carrying a
  Keypair header. That request is checked against the store (constant-time compare, read off the
  event loop, never cached, so a revocation holds for the next request) and is token-authenticated
  (no XSRF cookie, no login cookie set). It never falls back to the request's other credentials.
  A Keypair header is honoured only by this extension's own handlers: several Jupyter and
  JupyterLab handlers are ``@web.authenticated`` without any authorizer check (JupyterLab's build
  and extension manager, settings, ``PATCH /api/me``), so elsewhere such a request has no user.
- ``KeypairAuthorizer`` lets a keypair user reach ``jupyter_sessions:*`` resources only, and
  ``jupyter_sessions:admin`` only with an admin keypair; everyone else is the original's to judge.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from jupyter_server.auth.authorizer import Authorizer
from jupyter_server.auth.identity import IdentityProvider, User

from .errors import Unauthenticated
from .repository.repository import KeypairData

if TYPE_CHECKING:
    from .repository.accounts import KeypairCredentials

RESOURCE_PREFIX = "jupyter_sessions:"
ADMIN_RESOURCE = "jupyter_sessions:admin"
KEYPAIR_SCHEME = "keypair"
#: Where a handler keeps the keypair user it authenticated (read by is_token_authenticated).
_HANDLER_ATTR = "_jupyter_sessions_keypair_user"
_ACCESS_KEY = re.compile(r"^[A-Za-z0-9]{4,64}$")
_SECRET_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")
#: Compared against when the access key is unknown, so that path costs a compare too.
_DUMMY_SECRET = b"x" * 40
INVALID_KEYPAIR = "invalid keypair: unknown or revoked access key, or wrong secret key"
MALFORMED_KEYPAIR = "malformed Authorization header: expected 'Keypair <access_key>:<secret_key>'"

CredentialsLookup = Callable[[str], Awaitable["KeypairCredentials | None"]]


@dataclass(frozen=True)
class Caller:
    """The principal an action runs for."""

    access_key: str
    user: str
    is_admin: bool


@dataclass
class KeypairUser(User):
    """The Jupyter user of a keypair-authenticated request (a guest: see KeypairAuthorizer)."""

    access_key: str = ""
    keypair_user: str = ""
    is_admin: bool = False


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
        if isinstance(jupyter_user, KeypairUser):
            return Caller(
                access_key=jupyter_user.access_key,
                user=jupyter_user.keypair_user,
                is_admin=jupyter_user.is_admin,
            )
        return self.owner


# --- the Keypair header -------------------------------------------------------------------------


def carries_keypair(handler: Any) -> bool:
    """Whether the request's Authorization header uses the Keypair scheme (well-formed or not)."""
    header = handler.request.headers.get("Authorization", "")
    scheme = header.strip().split(None, 1)[0] if header.strip() else ""
    return scheme.lower() == KEYPAIR_SCHEME


def parse_keypair_header(header: str) -> tuple[str, str]:
    """``(access_key, secret_key)`` from ``Keypair <access_key>:<secret_key>``, else 401."""
    parts = header.strip().split(None, 1)
    if len(parts) != 2 or parts[0].lower() != KEYPAIR_SCHEME:
        raise Unauthenticated(MALFORMED_KEYPAIR)
    access_key, sep, secret_key = parts[1].strip().partition(":")
    if not sep or not _ACCESS_KEY.match(access_key) or not _SECRET_KEY.match(secret_key):
        raise Unauthenticated(MALFORMED_KEYPAIR)
    return access_key, secret_key


def _is_ours(handler: Any) -> bool:
    """Whether this extension's own code handles the request (the only place keypairs count)."""
    return type(handler).__module__.split(".", 1)[0] == __name__.split(".", 1)[0]


def keypair_may(user: KeypairUser, resource: str) -> bool:
    """What a keypair user may reach: this extension's resources; admin ones with an admin key."""
    if not resource.startswith(RESOURCE_PREFIX):
        return False
    return resource != ADMIN_RESOURCE or user.is_admin


# --- wrappers -----------------------------------------------------------------------------------


class _Delegating:
    """Every attribute the wrapper class does not define itself is the wrapped object's.

    The wrappers subclass Jupyter's base classes (code checks ``isinstance``), yet must behave as
    the configured object in everything else: its traits, token, cookies, login handlers.
    Instances are made by ``wrap`` without running the traitlets constructors, so the wrapper
    holds no trait state of its own that could drift from the original's.
    """

    _own: ClassVar[frozenset[str]] = frozenset({"inner"})
    inner: Any

    def __getattribute__(self, name: str) -> Any:
        if name in type(self)._own or (name.startswith("__") and name.endswith("__")):
            return object.__getattribute__(self, name)
        return getattr(object.__getattribute__(self, "inner"), name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in type(self)._own:
            object.__setattr__(self, name, value)
        else:
            setattr(object.__getattribute__(self, "inner"), name, value)

    def __delattr__(self, name: str) -> None:
        if name in type(self)._own:
            object.__delattr__(self, name)
        else:
            delattr(object.__getattribute__(self, "inner"), name)


class KeypairIdentityProvider(_Delegating, IdentityProvider):
    """The configured identity provider, plus Keypair authentication on this extension's routes."""

    _own = frozenset(
        {
            "inner",
            "lookup",
            "get_user",
            "is_token_authenticated",
            "should_check_origin",
            "_keypair_user",
        }
    )
    lookup: CredentialsLookup

    @classmethod
    def wrap(cls, inner: IdentityProvider, lookup: CredentialsLookup) -> KeypairIdentityProvider:
        self = object.__new__(cls)
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "lookup", lookup)
        return self

    def get_user(self, handler: Any) -> User | Awaitable[User | None] | None:
        """The original's answer (sync or async, untouched), unless the request uses a keypair."""
        if not carries_keypair(handler):
            return self.inner.get_user(handler)
        if not _is_ours(handler):
            return None
        return self._keypair_user(handler)

    async def _keypair_user(self, handler: Any) -> KeypairUser:
        try:
            access_key, secret_key = parse_keypair_header(
                handler.request.headers.get("Authorization", "")
            )
            found = await self.lookup(access_key)
            stored = found.secret_key.encode() if found is not None else _DUMMY_SECRET
            matches = hmac.compare_digest(stored, secret_key.encode())
            if found is None or not matches or found.keypair.revoked_at is not None:
                raise Unauthenticated(INVALID_KEYPAIR)
        except Unauthenticated:
            # No user; raised (not returned) so this extension's routes answer 401 JSON at once.
            handler.current_user = handler._jupyter_current_user = None
            raise
        keypair = found.keypair
        user = KeypairUser(
            username=keypair.access_key,
            name=keypair.user,
            display_name=keypair.user,
            access_key=keypair.access_key,
            keypair_user=keypair.user,
            is_admin=keypair.is_admin,
        )
        # Token-authenticated: a script's credential, so no XSRF cookie and no origin check.
        handler._token_authenticated = True
        setattr(handler, _HANDLER_ATTR, user)
        return user

    def is_token_authenticated(self, handler: Any) -> bool:
        if getattr(handler, _HANDLER_ATTR, None) is not None:
            return True
        return bool(self.inner.is_token_authenticated(handler))

    def should_check_origin(self, handler: Any) -> bool:
        if getattr(handler, _HANDLER_ATTR, None) is not None:
            return False
        return bool(self.inner.should_check_origin(handler))


class KeypairAuthorizer(_Delegating, Authorizer):
    """The configured authorizer, plus confinement of keypair users to ``jupyter_sessions:*``."""

    _own = frozenset({"inner", "is_authorized"})

    @classmethod
    def wrap(cls, inner: Authorizer) -> KeypairAuthorizer:
        self = object.__new__(cls)
        object.__setattr__(self, "inner", inner)
        return self

    def is_authorized(
        self, handler: Any, user: User, action: str, resource: str
    ) -> Awaitable[bool] | bool:
        if isinstance(user, KeypairUser):
            return keypair_may(user, resource)
        return self.inner.is_authorized(handler, user, action, resource)


def install_keypair_auth(
    serverapp: Any, extension_settings: dict[str, Any], lookup: CredentialsLookup
) -> KeypairIdentityProvider:
    """Wrap the server's identity provider and authorizer (at extension load; idempotent).

    Both the web application's settings and the extension's own copy of them are updated: the
    extension loader copies the latter back over the former after ``initialize_settings``.
    """
    settings = serverapp.web_app.settings
    provider = settings["identity_provider"]
    if isinstance(provider, KeypairIdentityProvider):
        provider = provider.inner
    authorizer = settings["authorizer"]
    if isinstance(authorizer, KeypairAuthorizer):
        authorizer = authorizer.inner
    wrapped_provider = KeypairIdentityProvider.wrap(provider, lookup)
    wrapped_authorizer = KeypairAuthorizer.wrap(authorizer)
    for target in (settings, extension_settings):
        target["identity_provider"] = wrapped_provider
        target["authorizer"] = wrapped_authorizer
    serverapp.identity_provider = wrapped_provider
    serverapp.authorizer = wrapped_authorizer
    return wrapped_provider
