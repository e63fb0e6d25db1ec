"""Identity.from_jwt: verified identities from real signed tokens, and every refusal.

Keys are generated here (RSA, EC P-256, Ed25519), JWK sets are real files,
dicts and a real HTTP server on 127.0.0.1; the forged tokens (``alg: none``,
HS256 signed with a public key) are built by hand, byte by byte.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from jwt.algorithms import ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

import guardeddb
from guardeddb import Identity, IdentityError, QueryBlocked, _jwt

from .fix_db import Backend
from .fix_otel import Otel

ISSUER = "https://idp.example.com/realms/shop"
AUDIENCE = "guardeddb-api"
HMAC_SECRET = b"a-shared-secret-of-at-least-32-bytes!!"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@functools.cache
def _rsa(n: int = 0) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@functools.cache
def _ec(curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1() if curve == "P-256" else ec.SECP384R1())


@functools.cache
def _ed() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def _jwk(key: PrivateKey, kid: str | None, **extra: Any) -> dict[str, Any]:
    """The public JWK of ``key``, as an identity provider publishes it."""
    jwk: dict[str, Any]
    if isinstance(key, rsa.RSAPrivateKey):
        jwk = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
    elif isinstance(key, ec.EllipticCurvePrivateKey):
        jwk = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    return {**jwk, **extra}


def _claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice@example.com",
        "azp": "support-bot",
        "roles": ["support", "reader"],
        "sid": "sess-42",
        "jti": "tok-1",
        "iat": now,
        "exp": now + 300,
    }
    claims.update(over)
    return {k: v for k, v in claims.items() if v is not None}


def _token(
    key: PrivateKey | bytes, alg: str = "RS256", kid: str | None = "rsa1", **over: Any
) -> str:
    headers = {"kid": kid} if kid is not None else None
    return jwt.encode(_claims(**over), key, algorithm=alg, headers=headers)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    """A token built by hand, for the attacks PyJWT's encode would not produce."""
    head = _b64(json.dumps(header).encode())
    body = _b64(json.dumps(claims).encode())
    return f"{head}.{body}.{_b64(signature)}"


def _hs256_forgery(secret: bytes, kid: str = "rsa1", **over: Any) -> str:
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    body = _b64(json.dumps(_claims(**over)).encode())
    mac = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(mac)}"


def _jwks(*keys: dict[str, Any]) -> dict[str, Any]:
    return {"keys": list(keys)}


def _write(path: Path, document: dict[str, Any]) -> Path:
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def jwks_file(tmp_path: Path) -> Path:
    """A JWKS file with one RSA, one EC and one Ed25519 key."""
    return _write(
        tmp_path / "jwks.json",
        _jwks(_jwk(_rsa(), "rsa1"), _jwk(_ec(), "ec1"), _jwk(_ed(), "ed1")),
    )


def _verify(token: str | bytes, jwks: Any, **kwargs: Any) -> Identity:
    kwargs.setdefault("issuer", ISSUER)
    kwargs.setdefault("audience", AUDIENCE)
    return Identity.from_jwt(token, jwks=jwks, **kwargs)


def _refused(token: str | bytes, jwks: Any, reason: str, **kwargs: Any) -> IdentityError:
    with pytest.raises(IdentityError) as info:
        _verify(token, jwks, **kwargs)
    assert info.value.reason == reason, str(info.value)
    return info.value


# -- the JWKS server -----------------------------------------------------------


@dataclass
class JWKSServer:
    """A real HTTP server on 127.0.0.1 that counts the JWKS requests it answers."""

    url: str = ""
    document: Any = field(default_factory=dict)
    status: int = 200
    requests: int = 0


@pytest.fixture
def jwks_server() -> Iterator[JWKSServer]:
    state = JWKSServer(document=_jwks(_jwk(_rsa(), "rsa1")))

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            state.requests += 1
            body = (
                state.document
                if isinstance(state.document, bytes)
                else json.dumps(state.document).encode()
            )
            self.send_response(state.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_port}/{uuid.uuid4().hex}/jwks.json"
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


# -- verified identities -------------------------------------------------------


@pytest.mark.parametrize(
    ("alg", "kid", "key"),
    [
        ("RS256", "rsa1", _rsa),
        ("RS512", "rsa1", _rsa),
        ("PS256", "rsa1", _rsa),
        ("ES256", "ec1", _ec),
        ("EdDSA", "ed1", _ed),
    ],
)
def test_signed_token_gives_verified_identity(
    jwks_file: Path, alg: str, kid: str, key: Any
) -> None:
    """A token signed by a key of the set becomes a verified identity from its claims."""
    token = _token(key(), alg, kid)
    ident = _verify(token, jwks_file)
    assert (ident.user, ident.agent, ident.roles, ident.session) == (
        "alice@example.com",
        "support-bot",
        frozenset({"support", "reader"}),
        "sess-42",
    )
    assert ident.verified is True  # only from_jwt can say so
    assert dict(ident.attributes) == {"iss": ISSUER, "jti": "tok-1"}
    assert token not in repr(ident) and token not in repr(dict(ident.attributes))
    assert ident.span_attributes["enduser.id"] == "alice@example.com"


def test_jwks_as_dict_pyjwkset_and_pathlike(jwks_file: Path) -> None:
    """The key set may be a dict, a PyJWKSet, a str path or a Path."""
    token = _token(_rsa())
    document = json.loads(jwks_file.read_text())
    for jwks in (document, jwt.PyJWKSet.from_dict(document), str(jwks_file), jwks_file):
        assert _verify(token, jwks).user == "alice@example.com"


def test_user_falls_back_to_email_or_is_chosen(jwks_file: Path) -> None:
    """sub is the user; without sub the email is; user_claim picks another claim."""
    with_email = _token(_rsa(), email="alice.smith@example.com")
    assert _verify(with_email, jwks_file).user == "alice@example.com"
    assert _verify(with_email, jwks_file, user_claim="email").user == "alice.smith@example.com"
    no_sub = _token(_rsa(), sub=None, email="bob@example.com")
    assert _verify(no_sub, jwks_file).user == "bob@example.com"
    named = _token(_rsa(), preferred_username="alice")
    assert _verify(named, jwks_file, user_claim="preferred_username").user == "alice"


@pytest.mark.parametrize(
    ("claims", "roles_claim", "roles"),
    [
        ({"roles": ["a", "b"]}, "roles", {"a", "b"}),
        ({"roles": "a b  c"}, "roles", {"a", "b", "c"}),
        ({"roles": "a,b, c"}, "roles", {"a", "b", "c"}),
        ({"roles": None}, "roles", set()),
        ({"realm_access": {"roles": ["finance"]}}, "realm_access.roles", {"finance"}),
        (
            {"resource_access": {"shop": {"roles": ["admin"]}}},
            "resource_access.shop.roles",
            {"admin"},
        ),
        ({"https://example.com/roles": ["auditor"]}, "https://example.com/roles", {"auditor"}),
        ({"scope": "openid profile"}, "scope", {"openid", "profile"}),
    ],
)
def test_roles_from_lists_strings_and_nested_paths(
    jwks_file: Path, claims: dict[str, Any], roles_claim: str, roles: set[str]
) -> None:
    """Roles come from a list, a space or comma separated string, or a dotted path
    (Keycloak's realm_access.roles); a namespaced claim name with dots is found as is."""
    token = _token(_rsa(), **claims)
    assert _verify(token, jwks_file, roles_claim=roles_claim).roles == frozenset(roles)


def test_agent_from_azp_client_id_or_configured_claim(jwks_file: Path) -> None:
    """The agent is agent_claim when given, else azp, else client_id."""
    assert _verify(_token(_rsa()), jwks_file).agent == "support-bot"
    client = _token(_rsa(), azp=None, client_id="etl-job")
    assert _verify(client, jwks_file).agent == "etl-job"
    acting = _token(_rsa(), act={"sub": "claude-agent"})
    assert _verify(acting, jwks_file, agent_claim="act.sub").agent == "claude-agent"
    assert _verify(_token(_rsa(), azp=None), jwks_file).agent is None


def test_token_without_kid_uses_the_only_key(tmp_path: Path) -> None:
    """No kid is fine when the set has exactly one signing key, refused otherwise."""
    one = _write(tmp_path / "one.json", _jwks(_jwk(_rsa(), None)))
    assert _verify(_token(_rsa(), kid=None), one).verified
    two = _write(tmp_path / "two.json", _jwks(_jwk(_rsa(), "rsa1"), _jwk(_ec(), "ec1")))
    err = _refused(_token(_rsa(), kid=None), two, "unknown_kid")
    assert "2 keys" in str(err)


def test_issuer_and_audience_lists(jwks_file: Path) -> None:
    """issuer and audience may each be several accepted values; aud may be a list."""
    token = _token(_rsa(), aud=["other-api", AUDIENCE])
    ident = _verify(token, jwks_file, issuer=["https://other", ISSUER], audience=[AUDIENCE])
    assert ident.user == "alice@example.com"
    assert _verify(token, jwks_file, audience=AUDIENCE).verified


def test_no_issuer_check_when_none_given(jwks_file: Path) -> None:
    """issuer=None skips the issuer check (the signature still binds the key owner)."""
    assert _verify(_token(_rsa(), iss="https://anyone"), jwks_file, issuer=None).verified


def test_leeway_tolerates_clock_skew(jwks_file: Path) -> None:
    """A token a few seconds past exp passes with leeway, and not without."""
    token = _token(_rsa(), exp=int(time.time()) - 5)
    _refused(token, jwks_file, "expired")
    assert _verify(token, jwks_file, leeway=60).verified


def test_jwks_file_cached_by_mtime_and_size(tmp_path: Path) -> None:
    """An unchanged file (same mtime and size) is not read again; a changed one is."""
    path = _write(tmp_path / "jwks.json", _jwks(_jwk(_rsa(), "rsa1")))
    token = _token(_rsa())
    assert _verify(token, path).verified
    st_before = path.stat()
    path.write_text(" " * st_before.st_size)  # same size, not JSON
    os.utime(path, ns=(st_before.st_atime_ns, st_before.st_mtime_ns))
    assert _verify(token, path).verified  # served from the cache: the file was not re-read
    os.utime(path, ns=(st_before.st_atime_ns, st_before.st_mtime_ns + 1_000_000_000))
    _refused(token, path, "jwks_unavailable")
    _write(path, _jwks(_jwk(_rsa(), "rsa1"), _jwk(_ed(), "ed1")))  # rotation: a new key
    assert _verify(_token(_ed(), "EdDSA", "ed1"), path).verified


def test_hs256_only_when_asked_and_with_a_secret() -> None:
    """HS256 needs algorithms naming it AND a symmetric key in the set."""
    secret = _jwks(HMACAlgorithm.to_jwk(HMAC_SECRET, as_dict=True) | {"kid": "hs1"})
    token = _token(HMAC_SECRET, "HS256", "hs1")
    _refused(token, secret, "algorithm")  # default: asymmetric only
    assert _verify(token, secret, algorithms=["HS256"]).verified


# -- the JWKS URL ------------------------------------------------------------------


def test_jwks_url_fetched_once_and_cached(jwks_server: JWKSServer) -> None:
    """Two tokens with a known kid cost one request; the client is shared per URL.
    Garbage and unsigned tokens are refused before any key is fetched."""
    _refused("garbage", jwks_server.url, "malformed")
    _refused(_forge({"alg": "none", "kid": "x"}, _claims()), jwks_server.url, "algorithm")
    _refused(_hs256_forgery(b"guess"), jwks_server.url, "algorithm")
    assert jwks_server.requests == 0
    assert _verify(_token(_rsa()), jwks_server.url).user == "alice@example.com"
    assert _verify(_token(_rsa(), sub="bob"), jwks_server.url).user == "bob"
    assert jwks_server.requests == 1


def test_new_kid_refetches_once_then_cools_down(
    jwks_server: JWKSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rotated-in key is fetched on first sight; made-up kids do not hammer the issuer."""
    assert _verify(_token(_rsa()), jwks_server.url).verified
    jwks_server.document = _jwks(_jwk(_rsa(), "rsa1"), _jwk(_ec(), "ec2"))
    assert _verify(_token(_ec(), "ES256", "ec2"), jwks_server.url).verified
    assert jwks_server.requests == 2
    for i in range(5):
        _refused(_token(_rsa(), kid=f"made-up-{i}"), jwks_server.url, "unknown_kid")
    assert jwks_server.requests == 2  # within the cooldown: no refetch
    monkeypatch.setattr(_jwt, "JWKS_REFRESH_COOLDOWN", 0.0)
    _refused(_token(_rsa(), kid="made-up-again"), jwks_server.url, "unknown_kid")
    assert jwks_server.requests == 3


def test_jwks_url_refetched_after_its_lifespan(
    jwks_server: JWKSServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cached set expires after JWKS_LIFESPAN seconds and is fetched again."""
    monkeypatch.setattr(_jwt, "JWKS_LIFESPAN", 0.2)
    assert _verify(_token(_rsa()), jwks_server.url).verified
    time.sleep(0.3)
    assert _verify(_token(_rsa()), jwks_server.url).verified
    assert jwks_server.requests == 2


def test_pyjwkclient_object_as_jwks(jwks_server: JWKSServer) -> None:
    """A caller's own PyJWKClient is used as it is, with its own cache."""
    client = jwt.PyJWKClient(jwks_server.url)
    assert _verify(_token(_rsa()), client).verified
    assert _verify(_token(_rsa()), client).verified
    assert jwks_server.requests == 1
    _refused(_token(_rsa(), kid="nope"), client, "unknown_kid")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_unreachable_jwks_url_refuses() -> None:
    """Nothing listening at the JWKS URL: refused, naming the URL."""
    url = f"http://127.0.0.1:{_closed_port()}/jwks.json"
    err = _refused(_token(_rsa()), url, "jwks_unavailable")
    assert url in str(err)


@pytest.mark.parametrize(
    ("status", "document"),
    [(500, {"error": "down"}), (200, b"<html>not json</html>"), (200, ["a", "list"])],
)
def test_jwks_url_answering_garbage_refuses(
    jwks_server: JWKSServer, status: int, document: Any
) -> None:
    """An error status, a body that is not JSON, or JSON that is not a set: refused."""
    jwks_server.status = status
    jwks_server.document = document
    _refused(_token(_rsa()), jwks_server.url, "jwks_unavailable")


# -- refusals ------------------------------------------------------------------


def test_expired_token_refused(jwks_file: Path) -> None:
    """exp in the past: refused, saying when it expired."""
    err = _refused(_token(_rsa(), exp=1_600_000_000), jwks_file, "expired")
    assert "2020-09-13T12:26:40+00:00" in str(err)


def test_not_yet_valid_token_refused(jwks_file: Path) -> None:
    """nbf in the future: refused."""
    _refused(_token(_rsa(), nbf=int(time.time()) + 3600), jwks_file, "not_yet_valid")


def test_token_without_exp_refused(jwks_file: Path) -> None:
    """A token that never expires is not accepted as proof of identity."""
    err = _refused(_token(_rsa(), exp=None), jwks_file, "claims")
    assert "'exp'" in str(err)


def test_wrong_signature_refused(jwks_file: Path) -> None:
    """Signed by another key under a known kid, or a payload edited after signing."""
    _refused(_token(_rsa(1), kid="rsa1"), jwks_file, "signature")
    head, _, sig = _token(_rsa()).split(".")
    edited = _b64(json.dumps(_claims(sub="mallory", roles=["admin"])).encode())
    _refused(f"{head}.{edited}.{sig}", jwks_file, "signature")


def test_unknown_kid_refused(jwks_file: Path) -> None:
    """A kid that no key in the set has: refused."""
    err = _refused(_token(_rsa(), kid="who"), jwks_file, "unknown_kid")
    assert "'who'" in str(err)


def test_encryption_key_is_not_a_signing_key(tmp_path: Path) -> None:
    """A key published for encryption (use: enc) never verifies a signature."""
    path = _write(tmp_path / "enc.json", _jwks(_jwk(_rsa(), "rsa1", use="enc")))
    _refused(_token(_rsa()), path, "unknown_kid")


def test_wrong_or_missing_issuer_refused(jwks_file: Path) -> None:
    """iss other than expected, or absent when an issuer is required: refused."""
    err = _refused(_token(_rsa(), iss="https://evil.example"), jwks_file, "issuer")
    assert "https://evil.example" in str(err) and ISSUER in str(err)
    _refused(_token(_rsa(), iss=None), jwks_file, "issuer")


def test_wrong_or_missing_audience_refused(jwks_file: Path) -> None:
    """aud for another service, absent when required, or present when none is expected."""
    _refused(_token(_rsa(), aud="billing-api"), jwks_file, "audience")
    _refused(_token(_rsa(), aud=["a", "b"]), jwks_file, "audience")
    _refused(_token(_rsa(), aud=None), jwks_file, "audience")
    err = _refused(_token(_rsa()), jwks_file, "audience", audience=None)
    assert "audience=" in str(err)  # RFC 7519: a present aud must name the recipient
    _refused(_token(_rsa(), aud=42), jwks_file, "audience")


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("signature", [b"", b"anything"])
def test_alg_none_refused(jwks_file: Path, alg: str, signature: bytes) -> None:
    """Unsigned tokens are refused in any spelling, whatever the algorithms list."""
    forged = _forge({"alg": alg, "kid": "rsa1"}, _claims(), signature)
    _refused(forged, jwks_file, "algorithm")
    with pytest.raises(ValueError, match="none"):
        _verify(forged, jwks_file, algorithms=[alg])


def test_hs256_signed_with_the_public_key_refused(jwks_file: Path) -> None:
    """Algorithm confusion: an HMAC over the RSA public key (PEM or JWK) is refused,
    by default and even when HS256 is allowed, since the key is not a secret."""
    public = _rsa().public_key()
    pem = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for secret in (pem, der, json.dumps(_jwk(_rsa(), "rsa1")).encode()):
        forged = _hs256_forgery(secret)
        err = _refused(forged, jwks_file, "algorithm")
        assert "HS256" in str(err)
        err = _refused(forged, jwks_file, "algorithm", algorithms=["RS256", "HS256"])
        assert "algorithm confusion" in str(err)


def test_key_embedded_in_the_header_is_ignored(jwks_file: Path) -> None:
    """A token carrying its own key (jwk, jku, x5u headers) and signed by it is
    refused: keys come only from the configured set."""
    attacker = _rsa(2)
    headers = {
        "kid": "rsa1",
        "jwk": _jwk(attacker, "rsa1"),
        "jku": "http://127.0.0.1:1/evil.json",
        "x5u": "http://127.0.0.1:1/evil.pem",
    }
    forged = jwt.encode(_claims(sub="mallory"), attacker, algorithm="RS256", headers=headers)
    _refused(forged, jwks_file, "signature")


def test_key_type_must_match_the_algorithm(tmp_path: Path, jwks_file: Path) -> None:
    """An RS256 token naming an EC key, an ES256 token naming a P-384 key, or a key
    that declares another alg: refused before verifying."""
    # The EC key's kid on an RSA-signed token.
    err = _refused(_token(_rsa(), "RS256", "ec1"), jwks_file, "algorithm")
    assert "algorithm confusion" in str(err)
    p384 = _write(tmp_path / "p384.json", _jwks(_jwk(_ec("P-384"), "ec1")))
    _refused(_forge({"alg": "ES256", "kid": "ec1"}, _claims(), b"x" * 64), p384, "algorithm")
    pinned = _write(tmp_path / "pinned.json", _jwks(_jwk(_rsa(), "rsa1", alg="RS512")))
    _refused(_token(_rsa(), "RS256"), pinned, "algorithm")
    assert _verify(_token(_rsa(), "RS512"), pinned).verified


def test_algorithms_list_is_enforced(jwks_file: Path) -> None:
    """A token whose alg the caller's algorithms list leaves out is refused."""
    err = _refused(_token(_rsa()), jwks_file, "algorithm", algorithms=["ES256"])
    assert "'RS256' is not allowed" in str(err)
    assert _verify(_token(_ec(), "ES256", "ec1"), jwks_file, algorithms=["ES256"]).verified


def test_bad_algorithms_argument_is_a_programming_error(jwks_file: Path) -> None:
    """Misconfiguration raises TypeError/ValueError at once, never accepts a token."""
    token = _token(_rsa())
    with pytest.raises(ValueError, match="at least one"):
        _verify(token, jwks_file, algorithms=[])
    with pytest.raises(TypeError, match="list"):
        _verify(token, jwks_file, algorithms="RS256")
    with pytest.raises(ValueError, match="unsupported"):
        _verify(token, jwks_file, algorithms=["RS1"])
    with pytest.raises(TypeError, match="jwks"):
        _verify(token, 42)
    with pytest.raises(TypeError, match="audience"):
        _verify(token, jwks_file, audience=[AUDIENCE, 7])


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "a..c",
        "a.b.c.d.e",
        "eyJhbGciOiJSUzI1NiJ9.e30.c2ln ",
        " eyJhbGciOiJSUzI1NiJ9.e30.c2ln",
        "eyJhbGciOiJSUzI1NiJ9.e30.c2ln\n",
        "Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln",
        "ey+J.e30.c2ln",
        "éé.e30.c2ln",
        _b64(b"not json") + ".e30.c2ln",
        _b64(b"[1, 2]") + ".e30.c2ln",
        _b64(b'{"kid": "rsa1"}') + ".e30.c2ln",
        _b64(b'{"alg": 256}') + ".e30.c2ln",
        _b64(b'{"alg": "RS256", "kid": 7}') + ".e30.c2ln",
        _b64(b'{"alg": "RS256", "kid": "rsa1", "crit": ["exp"]}') + ".e30.c2ln",
    ],
)
def test_malformed_tokens_refused(jwks_file: Path, token: str) -> None:
    """Wrong shapes, stray whitespace, a Bearer prefix, bad headers, JWE: refused."""
    _refused(token, jwks_file, "malformed")


def test_payload_that_is_not_a_claims_object_refused(jwks_file: Path) -> None:
    """A validly signed payload that is not a JSON object is still refused."""
    head = _b64(json.dumps({"alg": "RS256", "kid": "rsa1"}).encode())
    for body in (b"[1]", b"not json", b'"text"'):
        signing_input = f"{head}.{_b64(body)}".encode()
        sig = RSAAlgorithm(RSAAlgorithm.SHA256).sign(signing_input, _rsa())
        _refused(f"{head}.{_b64(body)}.{_b64(sig)}", jwks_file, "malformed")


def test_bad_claim_types_refused(jwks_file: Path) -> None:
    """Claims of the wrong type are refused rather than coerced."""
    _refused(_token(_rsa(), roles={"admin": True}), jwks_file, "claims")
    _refused(_token(_rsa(), roles=["ok", 7]), jwks_file, "claims")
    _refused(_token(_rsa(), sub=12345), jwks_file, "claims")
    _refused(_token(_rsa(), sid=["x"]), jwks_file, "claims")
    _refused(_token(_rsa(), exp="tomorrow"), jwks_file, "malformed")  # PyJWT: DecodeError
    _refused(_token(_rsa(), sub=None, azp=None), jwks_file, "claims")


def test_binary_garbage_and_non_text_refused(jwks_file: Path) -> None:
    """Bytes that are not ASCII, and values that are not tokens at all: refused."""
    _refused(b"\x00\xff\xfe.\x80.\x81", jwks_file, "malformed")
    _refused(os.urandom(512), jwks_file, "malformed")
    for value in (None, 42, ["a.b.c"]):
        _refused(value, jwks_file, "malformed")  # type: ignore[arg-type]
    token = _token(_rsa())
    assert _verify(token.encode(), jwks_file).verified  # ASCII bytes are a token


def test_huge_token_refused_before_parsing(jwks_file: Path) -> None:
    """Tokens over 16 KiB are refused by length, even when validly signed."""
    big = _token(_rsa(), padding="x" * _jwt.MAX_TOKEN_BYTES)
    _refused(big, jwks_file, "too_large")
    _refused(big.encode(), jwks_file, "too_large")
    _refused("a" * (10 * 1024 * 1024), jwks_file, "too_large")


_B64URL = st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)


@functools.cache
def _fuzz_jwks() -> jwt.PyJWKSet:
    return jwt.PyJWKSet.from_dict(_jwks(_jwk(_rsa(), "rsa1"), _jwk(_ed(), "ed1")))


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.text(),
        st.binary(),
        st.builds(lambda a, b, c: f"{a}.{b}.{c}", _B64URL, _B64URL, _B64URL),
        st.builds(
            lambda h, p, s: f"{_b64(json.dumps(h).encode())}.{_b64(json.dumps(p).encode())}.{s}",
            _JSON,
            _JSON,
            _B64URL,
        ),
    )
)
def test_arbitrary_input_is_always_refused(token: str | bytes) -> None:
    """Any text or bytes that no issuer signed raises IdentityError, never another
    exception and never an identity."""
    with pytest.raises(IdentityError):
        Identity.from_jwt(token, jwks=_fuzz_jwks(), audience=AUDIENCE)


_CLAIM_NAMES = st.sampled_from([*sorted(_claims()), "nbf", "email", "client_id"])


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_CLAIM_NAMES, _JSON))
def test_signed_arbitrary_claims_never_crash(claims: dict[str, Any]) -> None:
    """Validly signed tokens with claims of any shape give an identity or an
    IdentityError, never another exception."""
    head = _b64(json.dumps({"alg": "EdDSA", "kid": "ed1"}).encode())
    body = _b64(json.dumps({**_claims(), **claims}).encode())
    signature = _ed().sign(f"{head}.{body}".encode())  # by hand: encode() checks types
    token = f"{head}.{body}.{_b64(signature)}"
    try:
        ident = Identity.from_jwt(token, jwks=_fuzz_jwks(), issuer=ISSUER, audience=AUDIENCE)
    except IdentityError:
        return
    assert ident.verified and (ident.user or ident.agent)


# -- end to end ------------------------------------------------------------------


def test_require_verified_blocks_asserted_allows_signed(
    backend: Backend, table: str, otel: Otel, jwks_file: Path, tmp_path: Path
) -> None:
    """Under require_identity: verified an identity asserted in code is blocked, and
    one from a signed token runs, its span and audit record naming the token's
    user and agent."""
    audit = tmp_path / "audit.jsonl"
    conn = guardeddb.connect(
        backend.url,
        policy={"version": 1, "require_identity": "verified", "audit": {"jsonl": str(audit)}},
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    sql = backend.sql(f"SELECT name FROM {table} WHERE id = ?")
    try:
        cur = conn.cursor()
        with guardeddb.identity(user="alice@example.com", agent="support-bot"):
            with pytest.raises(QueryBlocked) as info:
                cur.execute(sql, (1,))
            assert info.value.decision.rule_id == "require_identity"
            assert "verified" in str(info.value)
        token = _token(_ec(), "ES256", "ec1", sub="carol@example.com", azp="report-agent")
        with guardeddb.identity(Identity.from_jwt(token, jwks=jwks_file, audience=AUDIENCE)):
            cur.execute(sql, (1,))
            assert [tuple(r) for r in cur.fetchall()] == [("Ada",)]
        cur.close()
    finally:
        conn.close()
    ran = [dict(s.attributes or {}) for s in otel.spans()]
    allowed = [a for a in ran if a.get("guardeddb.decision.action") == "allow"]
    assert len(allowed) == 1, ran
    assert allowed[0]["enduser.id"] == "carol@example.com"
    assert allowed[0]["gen_ai.agent.name"] == "report-agent"
    assert allowed[0]["user.roles"] == ("reader", "support")
    assert allowed[0]["guardeddb.identity.session"] == "sess-42"
    records = [json.loads(line) for line in audit.read_text().splitlines()]
    decided = [(r["decision"]["action"], r["identity"]) for r in records if "decision" in r]
    assert [(action, who["user"], who["verified"]) for action, who in decided] == [
        ("block", "alice@example.com", False),
        ("allow", "carol@example.com", True),
    ]


def test_verified_identity_as_connection_default(backend: Backend, table: str) -> None:
    """A verified identity passed to connect() is used when none is bound."""
    ident = _verify(_token(_rsa()), jwt.PyJWKSet.from_dict(_jwks(_jwk(_rsa(), "rsa1"))))
    conn = guardeddb.connect(
        backend.url, policy={"version": 1, "require_identity": "verified"}, identity=ident
    )
    try:
        cur = conn.cursor()
        cur.execute(backend.sql(f"SELECT count(*) FROM {table}"))
        assert cur.fetchone()[0] == 3
        cur.close()
    finally:
        conn.close()


def test_errors_and_import_without_pyjwt() -> None:
    """IdentityError is a guardeddb.Error; import guardeddb does not load PyJWT,
    and from_jwt without PyJWT says which extra to install."""
    assert issubclass(IdentityError, guardeddb.Error)
    assert "IdentityError" in guardeddb.__all__ and IdentityError.__module__ == "guardeddb"
    script = (
        "import sys\n"
        "import guardeddb\n"
        "assert 'jwt' not in sys.modules, 'PyJWT imported eagerly'\n"
        "sys.modules['jwt'] = None\n"
        "try:\n"
        "    guardeddb.Identity.from_jwt('a.b.c', jwks={})\n"
        "except ModuleNotFoundError as exc:\n"
        "    assert 'guardeddb[jwt]' in str(exc), exc\n"
        "else:\n"
        "    raise AssertionError('no error without PyJWT')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
