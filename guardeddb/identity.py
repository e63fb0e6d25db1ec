"""Who is running a query: the Identity, carried through contextvars.

Shaped like structlog's ``contextvars`` module: a context manager for code,
``bind_identity``/``reset_identity`` tokens for frameworks (middleware that
enters on request start and leaves on request end). Threads and asyncio tasks
each see their own identity because contextvars are copied per task and are
empty in a new thread.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # PyJWT is optional: only from_jwt imports it, lazily
    from ._jwt import JWKSLike

__all__ = [
    "Identity",
    "bind_identity",
    "current_identity",
    "identity",
    "reset_identity",
]

_EMPTY: Mapping[str, Any] = MappingProxyType({})

#: Bounds on what an identity may hold: it goes into every span, audit
#: record and approval key, so a 5 MB agent name is refused here, once.
MAX_FIELD = 1024  # characters of user, agent, session, each role, attribute key or text value
MAX_ROLES = 256
MAX_ATTRIBUTES = 64

# Set only while Identity.from_jwt builds the identity a token proved: the
# one way to construct ``verified=True`` (per thread and task, as a contextvar).
_minting: contextvars.ContextVar[bool] = contextvars.ContextVar("guardeddb_minting", default=False)


def _text(name: str, value: Any, *, optional: bool = True) -> None:
    """A field's value is None (when optional) or a non-empty bounded string."""
    if value is None and optional:
        return
    if not isinstance(value, str):
        raise TypeError(f"Identity {name} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise ValueError(
            f"Identity {name} is empty: an empty string is no identity (pass None instead)"
        )
    if len(value) > MAX_FIELD:
        raise ValueError(
            f"Identity {name} is {len(value)} characters long; at most {MAX_FIELD} are accepted"
        )


@dataclass(frozen=True, eq=True)
class Identity:
    """The caller of a query: a user, the agent acting for them, their roles.

    Frozen and hashable so that decisions and span attributes can be cached
    per identity; equality and the hash cover every field, ``attributes``
    (a token's issuer) included. Each text field is None or a non-empty
    string of at most ``MAX_FIELD`` characters: ``Identity(user="")`` raises
    ValueError rather than meaning "nobody" to one check and "someone" to
    another. ``verified=True`` comes only from ``Identity.from_jwt``; passing
    it in code raises ValueError, so ``require_identity: verified`` means a
    token was checked.
    """

    user: str | None = None
    agent: str | None = None
    roles: frozenset[str] = frozenset()
    session: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=lambda: _EMPTY, hash=False)
    verified: bool = False  # True only for identities built from a signed token

    __module__ = "guardeddb"

    def __hash__(self) -> int:
        # Computed once: decisions are cached per (statement, identity).
        cached: int = self.__dict__["_hash"]
        return cached

    def __post_init__(self) -> None:
        # Accept any iterable of roles (a list from YAML, a set from code) but
        # store a frozenset so the identity stays hashable; a lone string is
        # one role, not a set of characters.
        if self.verified is not False and not (self.verified is True and _minting.get()):
            raise ValueError(
                "verified=True is set only by Identity.from_jwt, from a token it checked"
            )
        for name in ("user", "agent", "session"):
            _text(name, getattr(self, name))
        roles: Iterable[str] = self.roles
        if isinstance(roles, str):
            roles = (roles,)
        roles = frozenset(roles)
        if len(roles) > MAX_ROLES:
            raise ValueError(f"Identity has {len(roles)} roles; at most {MAX_ROLES} are accepted")
        for role in roles:
            _text("role", role, optional=False)
        attributes = dict(self.attributes)
        if len(attributes) > MAX_ATTRIBUTES:
            raise ValueError(f"Identity has more than {MAX_ATTRIBUTES} attributes")
        for key, value in attributes.items():
            _text("attribute name", key, optional=False)
            if isinstance(value, str) and len(value) > MAX_FIELD:
                raise ValueError(f"Identity attribute {key!r} is longer than {MAX_FIELD}")
        object.__setattr__(self, "roles", roles)
        object.__setattr__(self, "attributes", MappingProxyType(attributes))
        object.__setattr__(self, "_span_attributes", self._build_span_attributes())
        shown = tuple(sorted((k, repr(v)) for k, v in attributes.items()))
        object.__setattr__(
            self,
            "_hash",
            hash((self.user, self.agent, self.roles, self.session, shown, self.verified)),
        )

    def _build_span_attributes(self) -> Mapping[str, Any]:
        attrs: dict[str, Any] = {}
        if self.user is not None:
            attrs["enduser.id"] = self.user
        if self.agent is not None:
            attrs["gen_ai.agent.name"] = self.agent
        if self.roles:
            attrs["user.roles"] = tuple(sorted(self.roles))
        if self.session is not None:
            attrs["guardeddb.identity.session"] = self.session
        return MappingProxyType(attrs)

    @classmethod
    def from_jwt(
        cls,
        token: str | bytes,
        *,
        jwks: JWKSLike,
        issuer: str | Iterable[str] | None = None,
        audience: str | Iterable[str] | None = None,
        user_claim: str = "sub",
        roles_claim: str = "roles",
        agent_claim: str | None = None,
        algorithms: Iterable[str] | None = None,
        leeway: float = 0,
    ) -> Identity:
        """The verified identity a signed OIDC/OAuth token proves.

        ``jwks`` is a JWKS file path, an http(s) URL (fetched and cached), a
        JWKS dict or a ``jwt.PyJWKClient``. The user is ``user_claim`` (else
        ``sub``, else ``email``), the agent ``agent_claim`` (else ``azp``,
        else ``client_id``), roles come from ``roles_claim`` (a dotted path
        such as ``realm_access.roles`` works), the session from ``sid``.
        Only asymmetric algorithms are accepted unless ``algorithms`` names
        others. Raises ``guardeddb.IdentityError`` saying why a token is
        refused; needs the ``jwt`` extra (PyJWT).
        """
        try:
            from . import _jwt
        except ModuleNotFoundError as exc:
            if exc.name != "jwt":
                raise
            raise ModuleNotFoundError(
                "Identity.from_jwt needs PyJWT: pip install 'guardeddb[jwt]'", name="jwt"
            ) from exc
        minting = _minting.set(True)
        try:
            return _jwt.verify(
                cls,
                token,
                jwks=jwks,
                issuer=issuer,
                audience=audience,
                user_claim=user_claim,
                roles_claim=roles_claim,
                agent_claim=agent_claim,
                algorithms=algorithms,
                leeway=leeway,
            )
        finally:
            _minting.reset(minting)

    @property
    def span_attributes(self) -> Mapping[str, Any]:
        """The OTel attributes that name this identity (built once)."""
        attrs: Mapping[str, Any] = self.__dict__["_span_attributes"]
        return attrs


_current: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "guardeddb_identity", default=None
)


def current_identity() -> Identity | None:
    """The identity bound in this context (thread or task), or None."""
    return _current.get()


def bind_identity(ident: Identity | None) -> contextvars.Token[Identity | None]:
    """Bind ``ident`` for this context; pass the token to ``reset_identity``."""
    return _current.set(ident)


def reset_identity(token: contextvars.Token[Identity | None]) -> None:
    """Restore the identity that was bound before ``bind_identity``."""
    _current.reset(token)


@contextmanager
def identity(
    ident: Identity | None = None,
    /,
    *,
    user: str | None = None,
    agent: str | None = None,
    roles: Iterable[str] = (),
    session: str | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> Iterator[Identity]:
    """Run the block as ``ident`` (or as the identity the keywords describe).

    Nested blocks replace the outer identity and restore it on exit, also when
    the block raises.
    """
    if ident is None:
        ident = Identity(
            user=user,
            agent=agent,
            roles=frozenset(roles),
            session=session,
            attributes=attributes or _EMPTY,
        )
    elif user or agent or roles or session or attributes:
        raise TypeError("pass either an Identity or keyword fields, not both")
    token = _current.set(ident)
    try:
        yield ident
    finally:
        _current.reset(token)
