"""Verified identities from signed OIDC/OAuth tokens, behind ``Identity.from_jwt``.

Private and imported only by ``from_jwt``, so ``import guardeddb`` never needs
PyJWT. PyJWT checks signatures and times; this module decides which key and
which algorithm may be used *before* it does (RFC 8725: never let the token
pick them), checks issuer and audience itself for precise messages, and turns
every refusal, whatever its cause, into an ``IdentityError`` that says why.

JWK sets come from a file (re-read when its mtime or size changes), a dict,
an http(s) URL (one ``jwt.PyJWKClient`` per URL, kept here so every call
shares its cache) or any object with PyJWKClient's ``get_jwk_set``. A token
whose ``kid`` is not in a fetched set forces one refetch (key rotation), at
most once per ``JWKS_REFRESH_COOLDOWN`` seconds per source, so a stream of
made-up ``kid`` values cannot turn into a stream of requests to the issuer.
"""

from __future__ import annotations

import base64
import json
import os
import re
import threading
import time
import urllib.error
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

import jwt
from jwt import PyJWK, PyJWKSet

from .errors import IdentityError

if TYPE_CHECKING:
    from .identity import Identity

__all__ = [
    "ASYMMETRIC_ALGORITHMS",
    "JWKS_LIFESPAN",
    "JWKS_REFRESH_COOLDOWN",
    "JWKS_TIMEOUT",
    "MAX_TOKEN_BYTES",
    "JWKSLike",
    "JWKSSource",
    "verify",
]

#: Longer tokens are refused before any parsing (real ones are 1-4 KiB).
MAX_TOKEN_BYTES = 16 * 1024
#: Seconds a fetched JWK set is reused before it is fetched again.
JWKS_LIFESPAN = 300.0
#: Least seconds between two refetches that an unknown ``kid`` forces.
JWKS_REFRESH_COOLDOWN = 30.0
#: Seconds to wait for a JWKS URL.
JWKS_TIMEOUT = 10.0
#: Most JWKS URLs and files whose keys are kept.
_MAX_SOURCES = 64

# The key type each algorithm needs: checked before verifying, so an RSA
# public key is never used as an HMAC secret (algorithm confusion).
_KEY_TYPE = {
    **dict.fromkeys(("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"), "RSA"),
    **dict.fromkeys(("ES256", "ES384", "ES512"), "EC"),
    "EdDSA": "OKP",
    **dict.fromkeys(("HS256", "HS384", "HS512"), "oct"),
}
_CURVES = {
    "ES256": ("P-256",),
    "ES384": ("P-384",),
    "ES512": ("P-521",),
    "EdDSA": ("Ed25519", "Ed448"),
}
ASYMMETRIC_ALGORITHMS: tuple[str, ...] = tuple(a for a, k in _KEY_TYPE.items() if k != "oct")

# JWS compact serialization: three base64url parts (the last empty only for
# alg none, refused below). Anything else is refused before PyJWT sees it.
_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_JWE = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]*){4}")
_ROLE_SPLIT = re.compile(r"[\s,]+")


@runtime_checkable
class JWKSSource(Protocol):
    """What ``from_jwt`` needs of a JWKS client: ``jwt.PyJWKClient`` has it."""

    def get_jwk_set(self, refresh: bool = False) -> PyJWKSet: ...


#: What ``from_jwt(jwks=...)`` accepts.
JWKSLike = str | os.PathLike[str] | Mapping[str, Any] | PyJWKSet | JWKSSource


def _refuse(reason: str, message: str) -> IdentityError:
    return IdentityError(f"token refused: {message}", reason=reason)


# -- where the keys come from ----------------------------------------------


class _Keys:
    """One source of keys: the current set, and a refetch when ``kid`` misses."""

    def current(self) -> PyJWKSet:
        raise NotImplementedError

    def refetched(self) -> PyJWKSet | None:
        """A fresh set, or None when this source cannot (or may not yet) refetch."""
        return None


class _Static(_Keys):
    def __init__(self, keys: PyJWKSet) -> None:
        self._keys = keys

    def current(self) -> PyJWKSet:
        return self._keys


class _Remote(_Keys):
    """A JWKS client's cached set, plus refetches spaced by the cooldown."""

    def __init__(self, client: JWKSSource, name: str) -> None:
        self._client = client
        self._name = name
        self._lock = threading.Lock()
        self._last_refetch: float | None = None

    def _fetch(self, refresh: bool) -> PyJWKSet:
        try:
            keys = self._client.get_jwk_set(refresh=refresh)
        except Exception as exc:  # any failure to get keys is a refusal, never a pass
            _close_http_errors(exc)
            why = f"JWKS {self._name} cannot be fetched: {exc}"
            raise _refuse("jwks_unavailable", why) from exc
        if not isinstance(keys, PyJWKSet):
            raise _refuse("jwks_unavailable", f"JWKS {self._name} did not give a JWK set")
        return keys

    def current(self) -> PyJWKSet:
        return self._fetch(False)

    def refetched(self) -> PyJWKSet | None:
        with self._lock:
            now = time.monotonic()
            if self._last_refetch is not None and now - self._last_refetch < JWKS_REFRESH_COOLDOWN:
                return None
            self._last_refetch = now
            return self._fetch(True)


def _close_http_errors(exc: BaseException | None) -> None:
    """Release the connection an HTTPError holds (older PyJWT leaves it to the GC)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, urllib.error.HTTPError):
            exc.close()
        exc, seen = exc.__cause__ or exc.__context__, seen + 1


_K = TypeVar("_K")
_V = TypeVar("_V")


class _Bounded(OrderedDict[_K, _V]):
    """A small LRU map: sources stay cached, but never without bound."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit
        self.lock = threading.Lock()

    def remember(self, key: _K, make: Callable[[], _V]) -> _V:
        with self.lock:
            if key in self:
                self.move_to_end(key)
                return self[key]
        value = make()  # outside the lock: building may read a file
        with self.lock:
            self[key] = value
            while len(self) > self._limit:
                self.popitem(last=False)
        return value


_urls: _Bounded[str, _Remote] = _Bounded(_MAX_SOURCES)
_files: _Bounded[tuple[str, int, int], _Static] = _Bounded(_MAX_SOURCES)
_clients: weakref.WeakKeyDictionary[JWKSSource, _Remote] = weakref.WeakKeyDictionary()
_clients_lock = threading.Lock()


def _parse_set(document: Any, where: str) -> PyJWKSet:
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise _refuse("jwks_unavailable", f"{where} is not a JWK set (no 'keys' list)")
    try:
        return PyJWKSet.from_dict(dict(document))
    except Exception as exc:  # PyJWKSetError, a key PyJWT cannot load, ...
        raise _refuse("jwks_unavailable", f"{where} has no usable key: {exc}") from exc


def _file_keys(path: str) -> _Static:
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _refuse("jwks_unavailable", f"JWKS file {path} cannot be read: {exc}") from exc

    def load() -> _Static:
        try:
            with open(path, "rb") as f:
                document = json.load(f)
        except (OSError, ValueError, RecursionError) as exc:
            raise _refuse("jwks_unavailable", f"JWKS file {path} cannot be read: {exc}") from exc
        return _Static(_parse_set(document, f"JWKS file {path}"))

    return _files.remember((path, st.st_mtime_ns, st.st_size), load)


def _url_keys(url: str) -> _Remote:
    def make() -> _Remote:
        client = jwt.PyJWKClient(
            url, cache_jwk_set=True, lifespan=JWKS_LIFESPAN, timeout=JWKS_TIMEOUT
        )
        return _Remote(client, url)

    return _urls.remember(url, make)


def _client_keys(client: JWKSSource) -> _Remote:
    try:
        with _clients_lock:
            remote = _clients.get(client)
            if remote is None:
                remote = _clients[client] = _Remote(client, type(client).__name__)
            return remote
    except TypeError:  # not weakly referenceable: no cooldown memory across calls
        return _Remote(client, type(client).__name__)


def _source(jwks: JWKSLike) -> _Keys:
    if isinstance(jwks, PyJWKSet):
        return _Static(jwks)
    if isinstance(jwks, Mapping):
        return _Static(_parse_set(jwks, "the JWKS document"))
    if isinstance(jwks, str) and jwks.lower().startswith(("https://", "http://")):
        return _url_keys(jwks)
    if isinstance(jwks, str | os.PathLike):
        return _file_keys(os.fspath(jwks))
    if isinstance(jwks, JWKSSource):
        return _client_keys(jwks)
    raise TypeError(
        "jwks must be a JWKS file path, an http(s) URL, a JWKS dict or a PyJWKClient, "
        f"not {type(jwks).__name__}"
    )


def _signing_keys(keys: PyJWKSet) -> list[PyJWK]:
    return [k for k in keys.keys if k.public_key_use in ("sig", None)]


def _pick(keys: PyJWKSet, kid: str | None) -> PyJWK | None:
    signing = _signing_keys(keys)
    if kid is None:
        return signing[0] if len(signing) == 1 else None
    return next((k for k in signing if k.key_id == kid), None)


def _find_key(source: _Keys, kid: str | None) -> PyJWK:
    keys = source.current()
    key = _pick(keys, kid)
    if key is None and kid is not None:
        fresh = source.refetched()  # the issuer may have rotated its keys
        if fresh is not None:
            key = _pick(fresh, kid)
    if key is not None:
        return key
    if kid is None:
        count = len(_signing_keys(keys))
        raise _refuse(
            "unknown_kid", f"the token names no key (no 'kid') and the JWK set has {count} keys"
        )
    raise _refuse("unknown_kid", f"unknown key id {kid!r}: no such key in the JWK set")


# -- algorithms and keys -----------------------------------------------------


def _allowed(algorithms: Iterable[str] | None) -> frozenset[str]:
    if algorithms is None:
        return frozenset(ASYMMETRIC_ALGORITHMS)
    if isinstance(algorithms, str | bytes):
        raise TypeError("algorithms must be a list of names, e.g. ['RS256']")
    names = frozenset(algorithms)
    if not names:
        raise ValueError("algorithms must name at least one algorithm")
    if any(not isinstance(a, str) or a.lower() == "none" for a in names):
        raise ValueError("algorithm 'none' is never accepted")
    unknown = names - _KEY_TYPE.keys()
    if unknown:
        raise ValueError(f"unsupported algorithms {sorted(unknown)}; known: {sorted(_KEY_TYPE)}")
    return names


def _check_key(key: PyJWK, alg: str) -> None:
    """The key must be of the type ``alg`` needs, and agree with its own ``alg``."""
    data: Mapping[str, Any] = getattr(key, "_jwk_data", None) or {}
    name = repr(key.key_id) if key.key_id else "(no kid)"
    want = _KEY_TYPE[alg]
    if key.key_type != want:
        raise _refuse(
            "algorithm",
            f"algorithm confusion: the token says {alg}, which needs a {want} key, "
            f"but key {name} is {key.key_type}",
        )
    if alg in _CURVES and data.get("crv") not in _CURVES[alg]:
        raise _refuse("algorithm", f"key {name} (curve {data.get('crv')}) cannot verify {alg}")
    declared = data.get("alg")
    if declared is not None and declared != alg:
        raise _refuse("algorithm", f"key {name} is for {declared}, the token says {alg}")


# -- the token ---------------------------------------------------------------


def _text(token: object) -> str:
    if isinstance(token, bytes | bytearray | memoryview):
        raw = bytes(token)
        if len(raw) > MAX_TOKEN_BYTES:
            raise _refuse("too_large", f"token of {len(raw)} bytes (at most {MAX_TOKEN_BYTES})")
        try:
            token = raw.decode("ascii")
        except UnicodeDecodeError:
            raise _refuse("malformed", "token is not ASCII") from None
    if not isinstance(token, str):
        raise _refuse("malformed", f"token must be str or bytes, not {type(token).__name__}")
    if len(token) > MAX_TOKEN_BYTES:
        raise _refuse("too_large", f"token of {len(token)} characters (at most {MAX_TOKEN_BYTES})")
    if not token:
        raise _refuse("malformed", "empty token")
    if _COMPACT.fullmatch(token):
        return token
    if _JWE.fullmatch(token):
        raise _refuse("malformed", "encrypted tokens (JWE) are not supported; pass a signed JWT")
    raise _refuse("malformed", "not a JWT (expected three base64url parts joined by dots)")


def _header(text: str) -> tuple[str, str | None]:
    # Decoded here rather than by jwt.get_unverified_header, which decodes all
    # three parts; PyJWT checks the whole token again when it verifies it.
    head = text.partition(".")[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(head + "=" * (-len(head) % 4)))
    except (ValueError, RecursionError) as exc:  # binascii.Error is a ValueError
        raise _refuse("malformed", f"unreadable header: {exc}") from None
    if not isinstance(header, dict):
        raise _refuse("malformed", "the header is not a JSON object")
    alg, kid = header.get("alg"), header.get("kid")
    if not isinstance(alg, str):
        raise _refuse("malformed", "the header names no algorithm ('alg')")
    if kid is not None and not isinstance(kid, str):
        raise _refuse("malformed", "the header's 'kid' is not a string")
    if "crit" in header:  # RFC 7515 4.1.11: unknown critical extensions must be refused
        why = f"critical header extensions are not supported: {header['crit']}"
        raise _refuse("malformed", why)
    return alg, kid


def _check_alg(alg: str, allowed: frozenset[str]) -> None:
    if alg.lower() == "none":
        raise _refuse("algorithm", "unsigned token (alg 'none')")
    if alg not in allowed:
        hint = ""
        if _KEY_TYPE.get(alg) == "oct":
            hint = " (symmetric: accepted only when algorithms names it and the key is a secret)"
        why = f"algorithm {alg!r} is not allowed{hint}; allowed: {sorted(allowed)}"
        raise _refuse("algorithm", why)


def _when(value: Any) -> str:
    try:
        return datetime.fromtimestamp(float(value), UTC).isoformat(timespec="seconds")
    except (TypeError, ValueError, OverflowError, OSError):
        return repr(value)


def _decode(text: str, key: PyJWK, alg: str, leeway: float) -> dict[str, Any]:
    try:
        claims: dict[str, Any] = jwt.decode(
            text,
            key.key,
            algorithms=[alg],
            options={"require": ["exp"], "verify_aud": False, "verify_iss": False},
            leeway=leeway,
        )
    except jwt.ExpiredSignatureError:
        exp = jwt.decode(text, options={"verify_signature": False}).get("exp")
        raise _refuse("expired", f"expired at {_when(exp)} (exp)") from None
    except jwt.ImmatureSignatureError as exc:
        raise _refuse("not_yet_valid", f"not yet valid: {exc}") from None
    except jwt.InvalidSignatureError:
        why = f"the signature does not verify with key {key.key_id!r}"
        raise _refuse("signature", why) from None
    except jwt.MissingRequiredClaimError as exc:
        raise _refuse("claims", f"the token has no {exc.claim!r} claim") from None
    except jwt.DecodeError as exc:
        raise _refuse("malformed", str(exc)) from None
    except jwt.InvalidAlgorithmError as exc:
        raise _refuse("algorithm", str(exc)) from None
    except jwt.InvalidTokenError as exc:  # a bad iat, sub or jti type, ...
        raise _refuse("claims", str(exc)) from None
    return claims


def _accepted(value: str | Iterable[str] | None, what: str) -> frozenset[str] | None:
    """The caller's issuer or audience as a set; a wrong type is the caller's bug."""
    if value is None:
        return None
    values = frozenset((value,) if isinstance(value, str) else value)
    if not all(isinstance(v, str) for v in values):
        raise TypeError(f"{what} must be a string or a list of strings")
    return values


def _check_issuer(claims: Mapping[str, Any], accepted: frozenset[str] | None) -> None:
    if accepted is None:
        return
    got = claims.get("iss")
    if got is None:
        raise _refuse("issuer", f"the token names no issuer ('iss'); expected {_one(accepted)}")
    if not isinstance(got, str) or got not in accepted:
        raise _refuse("issuer", f"wrong issuer {got!r}; expected {_one(accepted)}")


def _check_audience(claims: Mapping[str, Any], accepted: frozenset[str] | None) -> None:
    got = claims.get("aud")
    if accepted is None:
        if got is not None:
            # RFC 7519 4.1.3: a recipient not named in a present 'aud' must refuse.
            raise _refuse(
                "audience", f"the token is for audience {got!r}; pass audience= to accept it"
            )
        return
    if got is None:
        raise _refuse("audience", f"the token names no audience ('aud'); expected {_one(accepted)}")
    named = [got] if isinstance(got, str) else got
    if not isinstance(named, list) or not all(isinstance(a, str) for a in named):
        raise _refuse("audience", "the token's 'aud' is neither a string nor a list of strings")
    if accepted.isdisjoint(named):
        raise _refuse("audience", f"wrong audience {got!r}; expected {_one(accepted)}")


def _one(values: frozenset[str]) -> str:
    return repr(next(iter(values))) if len(values) == 1 else f"one of {sorted(values)}"


# -- claims to identity ------------------------------------------------------


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    """``path`` as a claim name, else as a dotted path (``realm_access.roles``).

    The literal name wins so namespaced claims such as
    ``https://example.com/roles`` (Auth0) are found as they are.
    """
    if path in claims:
        return claims[path]
    node: Any = claims
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _string(claims: Mapping[str, Any], path: str) -> str | None:
    value = _claim(claims, path)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise _refuse("claims", f"claim {path!r} must be a non-empty string, not {value!r}")
    return value


def _roles(claims: Mapping[str, Any], path: str) -> frozenset[str]:
    value = _claim(claims, path)
    if value is None:
        return frozenset()
    if isinstance(value, str):
        return frozenset(r for r in _ROLE_SPLIT.split(value) if r)
    if isinstance(value, list) and all(isinstance(r, str) for r in value):
        return frozenset(r for r in value if r)
    raise _refuse("claims", f"claim {path!r} must be a list of strings or a string of roles")


def verify(
    cls: type[Identity],
    token: object,
    *,
    jwks: JWKSLike,
    issuer: str | Iterable[str] | None,
    audience: str | Iterable[str] | None,
    user_claim: str,
    roles_claim: str,
    agent_claim: str | None,
    algorithms: Iterable[str] | None,
    leeway: float,
) -> Identity:
    """The verified identity ``token`` proves, or ``IdentityError`` saying why not."""
    allowed = _allowed(algorithms)  # the caller's mistakes are TypeError/ValueError
    issuers = _accepted(issuer, "issuer")
    audiences = _accepted(audience, "audience")
    source = _source(jwks)
    try:
        text = _text(token)
        alg, kid = _header(text)
        _check_alg(alg, allowed)
        key = _find_key(source, kid)
        _check_key(key, alg)
        claims = _decode(text, key, alg, leeway)
        _check_issuer(claims, issuers)
        _check_audience(claims, audiences)
        user = _string(claims, user_claim)
        for fallback in ("sub", "email"):
            if user is None:
                user = _string(claims, fallback)
        if agent_claim is not None:
            agent = _string(claims, agent_claim)
        else:
            agent = _string(claims, "azp") or _string(claims, "client_id")
        if user is None and agent is None:
            raise _refuse("claims", "the token names no user (sub, email) and no agent (azp)")
        roles = _roles(claims, roles_claim)
        session = _string(claims, "sid")
        attributes = {k: claims[k] for k in ("iss", "jti") if isinstance(claims.get(k), str)}
    except IdentityError:
        raise
    except Exception as exc:  # fail closed: whatever went wrong, no identity
        raise _refuse("malformed", f"cannot be verified: {type(exc).__name__}: {exc}") from exc
    return cls(
        user=user,
        agent=agent,
        roles=roles,
        session=session,
        attributes=attributes,
        verified=True,
    )
