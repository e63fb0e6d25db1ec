"""Sign-in for the console: who may look, and proof that a form came from it.

There is no anonymous access. A person signs in by posting a token: the
operator's bearer token (from the environment, compared in constant time) or
a signed OIDC/JWT token verified by ``Identity.from_jwt``. The session lives
in this process's memory; the browser holds only its id, signed with a
random per-process key, in an HttpOnly, SameSite=Strict cookie, so a restart
signs everyone out and nothing the cookie says can be forged. Every form
carries a CSRF token derived from the session (or, before sign-in, from a
signed pre-session cookie), checked on every POST.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import IdentityError
from ..identity import Identity

__all__ = ["MIN_TOKEN", "Auth", "Session"]

#: The shortest operator token accepted: a short one could be guessed.
MIN_TOKEN = 16
#: How long a session lasts (a JWT's own expiry, when sooner, wins).
SESSION_SECONDS = 8 * 3600
#: Sessions kept at once: sign-ins beyond it push out the oldest.
MAX_SESSIONS = 1000


@dataclass(frozen=True)
class Session:
    """A signed-in person: who, until when, and the nonce forms are bound to."""

    identity: Identity
    nonce: str
    expires: float


def _expiry(token: str) -> float:
    """A verified JWT's ``exp`` (``from_jwt`` requires one): the session ends with it."""
    try:
        body = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        return float(claims["exp"])
    except (ValueError, KeyError, TypeError, IndexError):
        return 0.0  # no usable expiry: the session is over at once (fails closed)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class Auth:
    """Who may sign in, and the sessions of those who did."""

    def __init__(
        self,
        token: str | None = None,
        operator: Identity | None = None,
        jwt: Mapping[str, Any] | None = None,
    ) -> None:
        if token is not None and len(token) < MIN_TOKEN:
            raise ValueError(f"the console token must be at least {MIN_TOKEN} characters")
        if token is not None and (operator is None or not operator.user):
            raise ValueError("a console token needs the operator's identity (a user)")
        if token is None and jwt is None:
            raise ValueError("the console needs a token or a JWKS to sign people in")
        self._token = token
        self._operator = operator
        self._jwt = dict(jwt) if jwt is not None else None
        self._key = secrets.token_bytes(32)
        self._sessions: dict[str, Session] = {}
        self._lock = threading.Lock()

    def authenticate(self, presented: str) -> tuple[Identity, float] | None:
        """The identity a presented token proves and until when, or None."""
        presented = presented.strip()
        if not presented:
            return None
        if self._token is not None and hmac.compare_digest(
            presented.encode("utf-8", "surrogatepass"), self._token.encode("utf-8")
        ):
            assert self._operator is not None
            return self._operator, time.time() + SESSION_SECONDS
        if self._jwt is not None and presented.count(".") == 2:
            try:
                ident = Identity.from_jwt(presented, **self._jwt)
            except (IdentityError, ValueError):
                return None
            return ident, min(time.time() + SESSION_SECONDS, _expiry(presented))
        return None

    def _sign(self, purpose: str, value: str) -> str:
        mac = hmac.new(self._key, f"{purpose}:{value}".encode(), hashlib.sha256).digest()
        return _b64(mac)

    def start(self, ident: Identity, expires: float) -> str:
        """A new session; returns the cookie value that names it."""
        nonce = secrets.token_urlsafe(24)
        with self._lock:
            now = time.time()
            for key in [k for k, s in self._sessions.items() if s.expires <= now]:
                del self._sessions[key]
            while len(self._sessions) >= MAX_SESSIONS:
                del self._sessions[next(iter(self._sessions))]
            self._sessions[nonce] = Session(ident, nonce, expires)
        return f"{nonce}.{self._sign('session', nonce)}"

    def session(self, cookie: str | None) -> Session | None:
        """The live session a cookie names, or None (unsigned, unknown, expired)."""
        if not cookie or cookie.count(".") != 1:
            return None
        nonce, mac = cookie.split(".")
        if not hmac.compare_digest(mac, self._sign("session", nonce)):
            return None
        with self._lock:
            found = self._sessions.get(nonce)
            if found is not None and found.expires <= time.time():
                del self._sessions[nonce]
                return None
        return found

    def end(self, session: Session) -> None:
        with self._lock:
            self._sessions.pop(session.nonce, None)

    def csrf(self, nonce: str) -> str:
        """The CSRF token of the session (or pre-session) ``nonce``."""
        return self._sign("csrf", nonce)

    def csrf_ok(self, nonce: str, given: object) -> bool:
        return isinstance(given, str) and hmac.compare_digest(given, self.csrf(nonce))

    def login_csrf(self, nonce: str) -> str:
        """The sign-in form's CSRF token, bound to its pre-session cookie."""
        return self._sign("login-csrf", nonce)

    def login_csrf_ok(self, nonce: str, given: object) -> bool:
        return isinstance(given, str) and hmac.compare_digest(given, self.login_csrf(nonce))

    def pre_session(self) -> str:
        """A signed nonce for the sign-in form's cookie (its CSRF binding)."""
        nonce = secrets.token_urlsafe(16)
        return f"{nonce}.{self._sign('login', nonce)}"

    def pre_nonce(self, cookie: str | None) -> str | None:
        if not cookie or cookie.count(".") != 1:
            return None
        nonce, mac = cookie.split(".")
        return nonce if hmac.compare_digest(mac, self._sign("login", nonce)) else None
