"""Who is running a query: the Identity, carried through contextvars.

Shaped like structlog's ``contextvars`` module: a context manager for code,
``bind_identity``/``reset_identity`` tokens for frameworks (middleware that
enters on request start and leaves on request end). Threads and asyncio tasks
each see their own identity because contextvars are copied per task and are
empty in a new thread. A generator shares its caller's context, so a
``with identity()`` block records its frame: paused at a ``yield``, the block
binds nothing for the caller (``_Binding.holds``).
"""

from __future__ import annotations

import contextvars
import inspect
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from contextlib import ContextDecorator
from dataclasses import dataclass, field
from types import FrameType, MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # PyJWT is optional: only from_jwt imports it, lazily
    from ._jwt import JWKSLike

__all__ = [
    "Identity",
    "IdentityScope",
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


class _Binding:
    """One identity bound in a context: by ``bind_identity`` (``frame`` None,
    it holds until reset) or by a ``with identity()`` block in ``frame``, on
    ``thread`` in ``task``, over ``prev`` (the binding it replaced)."""

    __slots__ = ("frame", "ident", "prev", "task", "thread")

    def __init__(
        self,
        ident: Identity | None,
        prev: _Binding | None,
        frame: FrameType | None = None,
    ) -> None:
        self.ident = ident
        self.prev = prev
        self.frame = frame
        self.thread = threading.get_ident() if frame is not None else 0
        self.task = _task() if frame is not None else None

    def holds(self) -> bool:
        """Whether the binding applies to the code running now.

        A generator runs in its caller's context, so a ``with identity()``
        inside it that is paused at a ``yield`` would stay bound for the
        caller. The block's frame tells: it is on the running stack while
        its code runs (the generator's frame is linked to whoever resumed
        it). Off the stack on the same thread and task, the block is
        paused (or gone) and does not apply; on another thread or task the
        context was copied (``to_thread``, a child task) and it does.
        """
        frame = self.frame
        if self.task is _CLOSED:
            return False
        if frame is None:
            return True
        f: FrameType | None = sys._getframe(2)
        while f is not None:
            if f is frame:
                return True
            f = f.f_back
        return self.thread != threading.get_ident() or self.task is not _task()


_PAUSABLE = inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR
_CLOSED = object()  # the task of a binding whose block was exited out of place


def _task() -> object | None:
    """The asyncio task or greenlet running now, or None."""
    aio = sys.modules.get("asyncio")
    if aio is not None and aio._get_running_loop() is not None:
        task: object | None = aio.current_task()
        if task is not None:
            return task
    green = sys.modules.get("greenlet")
    if green is not None:
        current: Callable[[], object] = green.getcurrent
        return current()
    return None


# Generators whose pause is meant to hand the identity to the caller: a
# contextlib.contextmanager / asynccontextmanager, a pytest yield fixture.
_LENDERS = ("contextlib", "_pytest.", "pytest_asyncio")


def _lends(frame: FrameType) -> bool:
    """Whether the generator running ``frame`` was resumed by a context
    manager's ``__enter__`` (or a test fixture), whose caller runs inside
    the block by design: there the identity is lent until the block exits."""
    resumer = frame.f_back
    name = resumer.f_globals.get("__name__", "") if resumer is not None else ""
    return isinstance(name, str) and (name == "contextlib" or name.startswith(_LENDERS[1:]))


class _Current:
    """The identity contextvar, read through the bindings that apply now."""

    __slots__ = ("var",)

    def __init__(self) -> None:
        self.var: contextvars.ContextVar[_Binding | None] = contextvars.ContextVar(
            "guardeddb_identity", default=None
        )

    def get(self) -> Identity | None:
        """The innermost binding that applies to the running code (see ``holds``)."""
        b = self.var.get()
        while b is not None:
            if b.frame is None:
                if b.task is not _CLOSED:
                    return b.ident
            elif b.holds():
                return b.ident
            b = b.prev
        return None

    def set(self, ident: Identity | None) -> contextvars.Token[_Binding | None]:
        return self.var.set(_Binding(ident, self.var.get()))

    def reset(self, token: contextvars.Token[_Binding | None]) -> None:
        self.var.reset(token)


_current = _Current()


def current_identity() -> Identity | None:
    """The identity bound in this context (thread or task), or None."""
    return _current.get()


def bind_identity(ident: Identity | None) -> contextvars.Token[Any]:
    """Bind ``ident`` for this context; pass the token to ``reset_identity``.

    For frameworks that enter on request start and leave on request end in
    different frames: unlike ``identity()``, the binding is not tied to a
    frame, so it holds until reset, also for code a paused generator left.
    """
    return _current.set(ident)


def reset_identity(token: contextvars.Token[Any]) -> None:
    """Restore the identity that was bound before ``bind_identity``."""
    _current.reset(token)


_MISPLACED = (
    "guardeddb.identity() exited in another context, or out of order, than it was "
    "entered in: a generator or coroutine paused inside 'with guardeddb.identity(...)' "
    "was resumed elsewhere, or closed after its caller bound another identity. "
    "The identity applied only while the generator ran, never to its caller; the "
    "caller's binding is left as it is. Enter identity() around the code that consumes "
    "the generator instead of inside it"
)


class IdentityScope(ContextDecorator):
    """``with guardeddb.identity(...)``: binds the identity for the block's
    frame (see ``_Binding.holds``) and checks, on exit, that it is leaving
    the context and the binding it made."""

    __slots__ = ("_binding", "_token", "ident")

    def __init__(self, ident: Identity) -> None:
        self.ident = ident
        self._token: contextvars.Token[_Binding | None] | None = None
        self._binding: _Binding | None = None

    def _recreate_cm(self) -> IdentityScope:
        return IdentityScope(self.ident)  # as a decorator: one scope per call

    def __enter__(self) -> Identity:
        if self._token is not None:
            raise RuntimeError("this guardeddb.identity() block is already entered")
        var = _current.var
        frame = sys._getframe(1)
        # Only a generator's frame can pause inside the block and leave it
        # bound for its caller; any other frame is on the stack until exit,
        # so its binding needs no check on every read (the hot path).
        paused = frame.f_code.co_flags & _PAUSABLE and not _lends(frame)
        self._binding = _Binding(self.ident, var.get(), frame if paused else None)
        self._token = var.set(self._binding)
        return self.ident

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        token, binding = self._token, self._binding
        self._token = self._binding = None
        if token is None or binding is None:
            return
        if _current.var.get() is not binding:
            binding.task = _CLOSED  # left under another binding: it never holds again
            raise RuntimeError(_MISPLACED)
        try:
            _current.var.reset(token)
        except ValueError:  # "created in a different Context"
            binding.task = _CLOSED
            raise RuntimeError(_MISPLACED) from None


def identity(
    ident: Identity | None = None,
    /,
    *,
    user: str | None = None,
    agent: str | None = None,
    roles: Iterable[str] = (),
    session: str | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> IdentityScope:
    """Run the block as ``ident`` (or as the identity the keywords describe).

    Nested blocks replace the outer identity and restore it on exit, also when
    the block raises. The identity applies to the code of the block (and what
    it calls, threads and tasks it starts); a generator paused inside the
    block does not lend it to its caller, and a block exited in another
    context or out of order raises RuntimeError.
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
    return IdentityScope(ident)
