"""A labelled corpus for the value detectors: sensitive values in realistic
text, and realistic text that holds none.

Deterministic (one seeded ``random.Random``, no network), so a test failure
or a benchmark figure can be reproduced exactly. Each item is a ``Sample``:
the text, the entities it holds (empty for a negative) and, for a positive,
the secret values that must not survive masking.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import string
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Sample", "negatives", "positives"]


@dataclass(frozen=True)
class Sample:
    """One labelled text: ``secrets`` must be gone after masking."""

    text: str
    entities: frozenset[str]
    secrets: tuple[str, ...] = ()
    kind: str = ""  # for a negative, what it is (order number, UUID, ...)


_FULLWIDTH = str.maketrans("0123456789", "".join(chr(0xFF10 + i) for i in range(10)))
_ALNUM = string.ascii_letters + string.digits
_UPPER_DIGITS = string.ascii_uppercase + string.digits


def _luhn_digit(body: str) -> str:
    """The check digit that makes ``body`` + it Luhn-valid."""
    total = 0
    for i, c in enumerate(reversed(body)):
        d = int(c)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def _luhn_ok(digits: str) -> bool:
    return _luhn_digit(digits[:-1]) == digits[-1]


def _card(rng: random.Random) -> str:
    """A Luhn-valid number of a random issuer, as bare digits."""
    prefix, length = rng.choice(
        [
            ("4", 16),
            ("4", 13),
            ("51", 16),
            ("55", 16),
            ("2221", 16),
            ("2720", 16),
            ("34", 15),
            ("37", 15),
            ("6011", 16),
            ("65", 16),
            ("3528", 16),
            ("3589", 16),
        ]
    )
    body = prefix + "".join(rng.choice(string.digits) for _ in range(length - len(prefix) - 1))
    return body + _luhn_digit(body)


def _group(digits: str, sep: str) -> str:
    """A card written as people write it: 4-4-4-4, or 4-6-5 for Amex."""
    if not sep:
        return digits
    sizes = [4, 6, 5] if len(digits) == 15 else [4] * (len(digits) // 4) + [len(digits) % 4]
    parts, at = [], 0
    for n in sizes:
        if n:
            parts.append(digits[at : at + n])
            at += n
    return sep.join(parts)


def _iban(rng: random.Random, country: str, bban_len: int) -> str:
    """A mod-97-valid IBAN (compact) with a numeric-and-letters BBAN."""
    bank = "".join(rng.choice(string.ascii_uppercase) for _ in range(4))
    bban = bank + "".join(rng.choice(string.digits) for _ in range(bban_len - 4))
    if country in ("DE", "ES", "BE", "PL", "SE", "IT", "CH", "FR"):  # all-digit BBANs
        bban = "".join(rng.choice(string.digits) for _ in range(bban_len))
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    return f"{country}{check:02d}{bban}"


_IBAN_COUNTRIES = [
    ("GB", 18),
    ("DE", 18),
    ("FR", 23),
    ("ES", 20),
    ("NL", 14),
    ("IT", 23),
    ("BE", 12),
    ("CH", 17),
    ("PL", 24),
    ("SE", 20),
]


def _iban_spaced(iban: str) -> str:
    return " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwt(rng: random.Random) -> str:
    header = {"alg": rng.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"}
    claims = {
        "sub": str(rng.randrange(10**6)),
        "name": rng.choice(["Ada", "Grace", "Linus", "Margaret"]),
        "iat": 1_700_000_000 + rng.randrange(10**7),
    }
    sig = bytes(rng.randrange(256) for _ in range(32))
    return ".".join(
        (
            _b64url(json.dumps(header).encode()),
            _b64url(json.dumps(claims).encode()),
            _b64url(sig),
        )
    )


def _rand(rng: random.Random, alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


_NAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy"]
_DOMAINS = [
    "example.com",
    "mail.example.co.uk",
    "corp.acme.io",
    "xn--bcher-kva.de",
    "eu.mx.contoso.org",
    "students.univ-lyon.fr",
]


def _email(rng: random.Random) -> str:
    user = rng.choice(_NAMES)
    style = rng.randrange(4)
    if style == 1:
        user += "+" + rng.choice(["news", "billing", "test42"])
    elif style == 2:
        user += "." + rng.choice(_NAMES) + str(rng.randrange(100))
    elif style == 3:
        user = user.upper()[0] + user[1:] + "_" + str(rng.randrange(1000))
    return f"{user}@{rng.choice(_DOMAINS)}"


def _ssn(rng: random.Random) -> str:
    area = rng.choice([a for a in range(1, 900) if a != 666])
    return f"{area:03d}-{rng.randrange(1, 100):02d}-{rng.randrange(1, 10000):04d}"


def _phone(rng: random.Random) -> tuple[str, str]:
    """(as written, the part that must be gone)."""
    # Area codes in service: a phone-number library rejects unassigned ones.
    area = rng.choice([212, 213, 305, 312, 415, 503, 617, 646, 702, 206, 303, 512, 404, 718])
    mid, last = rng.randrange(200, 999), rng.randrange(10000)
    form = rng.randrange(9)
    if form == 8:
        p = f"{area} {mid} {last:04d}"
    elif form == 6:
        return f"{area}{mid}{last:04d}", f"{area}{mid}{last:04d}"
    elif form == 7:
        p = f"+1-{area}-{mid}-{last:04d}"
    elif form == 0:
        p = f"+1{area}{mid}{last:04d}"
    elif form == 1:
        p = f"+44 20 7946 {last:04d}"
    elif form == 2:
        p = f"({area}) {mid}-{last:04d}"
    elif form == 3:
        p = f"{area}-{mid}-{last:04d}"
    elif form == 4:
        p = f"{area}.{mid}.{last:04d}"
    else:
        p = f"+49 30 {mid}{last:04d}"
    return p, p


def _ipv6(rng: random.Random) -> str:
    groups = [f"{rng.randrange(65536):x}" for _ in range(8)]
    if rng.random() < 0.5:
        return "2001:db8:" + ":".join(groups[2:4]) + "::" + groups[7]
    return ":".join(groups)


def _pem(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(["RSA ", "EC ", "DSA ", "OPENSSH ", "ENCRYPTED ", ""])
    body = "\n".join(_rand(rng, _ALNUM + "+/", 64) for _ in range(4))
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----", body


def _pgp(rng: random.Random) -> tuple[str, str]:
    body = "\n".join(_rand(rng, _ALNUM + "+/", 64) for _ in range(4))
    return (
        "-----BEGIN PGP PRIVATE KEY BLOCK-----\nVersion: GnuPG v2\n\n"
        f"{body}\n=ab12\n-----END PGP PRIVATE KEY BLOCK-----",
        body,
    )


_POSITIVE_MAKERS: list[tuple[str, Callable[[random.Random], tuple[str, str]]]] = []


def _positive(
    entity: str,
) -> Callable[
    [Callable[[random.Random], tuple[str, str]]], Callable[[random.Random], tuple[str, str]]
]:
    def register(
        fn: Callable[[random.Random], tuple[str, str]],
    ) -> Callable[[random.Random], tuple[str, str]]:
        _POSITIVE_MAKERS.append((entity, fn))
        return fn

    return register


@_positive("email")
def _p_email(rng: random.Random) -> tuple[str, str]:
    e = _email(rng)
    t = rng.choice(
        [
            "Contact: {v}",
            "please reply to <{v}> before Friday",
            "From: {v}\nSubject: invoice",
            "cc {v}, thanks!",
            "mailto:{v}",
            '{{"email": "{v}", "active": true}}',
        ]
    )
    return t.format(v=e), e.split("@")[0]


@_positive("credit_card")
def _p_card(rng: random.Random) -> tuple[str, str]:
    digits = _card(rng)
    v = _group(digits, rng.choice(["", " ", "-", ".", " ", "", "_", "/"]))
    if rng.random() < 0.1:
        v = v.translate(_FULLWIDTH)  # digits typed on a CJK keyboard
    t = rng.choice(
        [
            "card {v} exp 12/27",
            "ref-{v}",
            "Paid with {v} on 2024-03-02",
            "cc={v}",
            "PAN:{v}",
            "customer card number is {v}, cvv withheld",
            '{{"card": "{v}"}}',
        ]
    )
    return t.format(v=v), v


@_positive("us_ssn")
def _p_ssn(rng: random.Random) -> tuple[str, str]:
    s = _ssn(rng)
    form = rng.randrange(6)
    if form == 5:
        v = s.replace("-", " ")
        t = rng.choice(["SSN {v}", "ssn: {v}", "social security {v}"])
    elif form == 3:
        v = s.replace("-", "")
        t = rng.choice(["SSN: {v}", "ssn={v}", "Social Security Number {v}"])
    elif form == 4:
        v = s
        t = "id-{v}"
    else:
        v = s
        t = rng.choice(["SSN {v} on file", "applicant ssn: {v}", "tax id {v} verified"])
    return t.format(v=v), v


@_positive("iban")
def _p_iban(rng: random.Random) -> tuple[str, str]:
    country, n = rng.choice(_IBAN_COUNTRIES)
    iban = _iban(rng, country, n)
    v = _iban_spaced(iban) if rng.random() < 0.5 else iban
    t = rng.choice(["IBAN: {v}", "please wire to {v} by Monday", "Account {v} (EUR)", "iban={v}"])
    return t.format(v=v), v


@_positive("phone")
def _p_phone(rng: random.Random) -> tuple[str, str]:
    v, secret = _phone(rng)
    if v.isdigit():  # bare digits are a phone only where the text says so
        t = rng.choice(["Phone: {v}", "tel {v}", "mobile={v}", "cell {v}"])
    else:
        t = rng.choice(["call me at {v}", "Tel: {v}", "mobile {v} after 6pm", "phone={v}"])
    return t.format(v=v), secret


@_positive("ipv4")
def _p_ipv4(rng: random.Random) -> tuple[str, str]:
    v = ".".join(str(rng.randrange(1, 255)) for _ in range(4))
    t = rng.choice(
        ["login from {v}", "client={v} status=200", "X-Forwarded-For: {v}", "ban {v}/32"]
    )
    return t.format(v=v), v


@_positive("ipv6")
def _p_ipv6(rng: random.Random) -> tuple[str, str]:
    v = _ipv6(rng)
    t = rng.choice(["peer [{v}]:443", "from {v} denied", "addr={v}"])
    return t.format(v=v), v


@_positive("jwt")
def _p_jwt(rng: random.Random) -> tuple[str, str]:
    v = _jwt(rng)
    t = rng.choice(["Authorization: Bearer {v}", "session {v}", "?id_token={v}&state=1"])
    return t.format(v=v), v.split(".")[1]


@_positive("aws_access_key")
def _p_akia(rng: random.Random) -> tuple[str, str]:
    v = rng.choice(["AKIA", "ASIA"]) + _rand(rng, _UPPER_DIGITS, 16)
    t = rng.choice(["aws_access_key_id = {v}", "key {v} rotated", "AccessKeyId: {v}"])
    return t.format(v=v), v


@_positive("aws_secret_key")
def _p_aws_secret(rng: random.Random) -> tuple[str, str]:
    v = _rand(rng, _ALNUM + "/+", 40)
    t = rng.choice(
        [
            "aws_secret_access_key = {v}",
            "AWS_SECRET_ACCESS_KEY={v}",
            '"aws_secret_access_key": "{v}"',
            "aws secret: {v}",
            '"SecretAccessKey": "{v}"',
            "secret_key = {v}  # aws",
        ]
    )
    return t.format(v=v), v


@_positive("api_token")
def _p_token(rng: random.Random) -> tuple[str, str]:
    kind = rng.randrange(10)
    if kind == 8:
        v = "whsec_" + _rand(rng, _ALNUM, 32)
    elif kind == 9:
        v = "xapp-1-A" + _rand(rng, _UPPER_DIGITS, 10) + "-" + _rand(rng, string.digits, 13)
        v += "-" + _rand(rng, "abcdef0123456789", 64)
    elif kind == 6:
        v = "https://hooks.slack.com/services/T" + _rand(rng, _UPPER_DIGITS, 8)
        v += "/B" + _rand(rng, _UPPER_DIGITS, 8) + "/" + _rand(rng, _ALNUM, 24)
        return f"webhook {v}", v.rsplit("/", 1)[1]
    elif kind == 7:
        v = "xoxb-" + _rand(rng, string.digits, 12) + "-" + _rand(rng, _ALNUM, 24)
    elif kind == 0:
        v = "ghp_" + _rand(rng, _ALNUM, 36)
    elif kind == 1:
        v = "github_pat_" + _rand(rng, _ALNUM, 22) + "_" + _rand(rng, _ALNUM, 59)
    elif kind == 2:
        v = "xoxb-" + "-".join(_rand(rng, string.digits, 12) for _ in range(2)) + "-"
        v += _rand(rng, _ALNUM, 24)
    elif kind == 3:
        v = rng.choice(["sk_live_", "rk_live_", "sk_test_"]) + _rand(rng, _ALNUM, 24)
    elif kind == 4:
        v = "xoxp-" + _rand(rng, string.digits, 11) + "-" + _rand(rng, _ALNUM, 32)
    else:
        v = "gho_" + _rand(rng, _ALNUM, 36)
    t = rng.choice(["export TOKEN_X {v}", "used {v} in CI", "header: {v}", "`{v}`"])
    return t.format(v=v), v


@_positive("private_key")
def _p_key(rng: random.Random) -> tuple[str, str]:
    block, body = _pem(rng) if rng.random() < 0.7 else _pgp(rng)
    return f"deploy key follows\n{block}\n-- ops", body.splitlines()[1]


@_positive("secret")
def _p_password(rng: random.Random) -> tuple[str, str]:
    v = rng.choice(["hunter2", "S3cr3t!pass", "correct-horse-battery", "Tr0ub4dor&3"])
    v += str(rng.randrange(1000))
    t = rng.choice(
        [
            "password={v}",
            "password => '{v}'",
            "db_password: {v}",
            'PASSWORD = "{v}"',
            "passwd={v}&user=bob",
            "client_secret: {v}",
            "api_key={v}",
        ]
    )
    return t.format(v=v), v.rstrip("&")


@_positive("secret")
def _p_auth_header(rng: random.Random) -> tuple[str, str]:
    scheme = rng.choice(["Basic", "Bearer", "Token"])
    if scheme == "Basic":
        v = base64.b64encode(f"{rng.choice(_NAMES)}:{_rand(rng, _ALNUM, 12)}".encode()).decode()
    else:
        v = _rand(rng, _ALNUM + "-_.", rng.randrange(20, 48))
    t = rng.choice(["Authorization: {s} {v}", "curl -H 'authorization: {s} {v}' https://api"])
    return t.format(s=scheme, v=v), v


@_positive("basic_auth")
def _p_basic(rng: random.Random) -> tuple[str, str]:
    pw = _rand(rng, _ALNUM, rng.randrange(8, 20))
    scheme = rng.choice(["https", "postgresql", "mysql", "redis", "amqp"])
    v = f"{scheme}://{rng.choice(_NAMES)}:{pw}@db.internal.example:5432/app"
    t = rng.choice(["DATABASE_URL={v}", "connecting to {v}", "url: {v}"])
    return t.format(v=v), pw


def positives(per_entity: int = 40, seed: int = 11) -> list[Sample]:
    """``per_entity`` labelled positives of each entity (14 entities)."""
    rng = random.Random(seed)
    out: list[Sample] = []
    for entity, make in _POSITIVE_MAKERS:
        for _ in range(per_entity):
            text, secret = make(rng)
            out.append(Sample(text, frozenset({entity}), (secret,)))
    return out


# -- negatives ---------------------------------------------------------------


def _n_order(rng: random.Random) -> str:
    return rng.choice(
        [
            f"Order #{rng.randrange(10**5, 10**8)} shipped",
            f"ORD-{rng.randrange(2019, 2027)}-{rng.randrange(10**6):06d}",
            f"PO {rng.randrange(10**9, 10**10)} approved",
            f"order_id={rng.randrange(10**11, 10**12)}",
        ]
    )


def _n_invoice(rng: random.Random) -> str:
    return rng.choice(
        [
            f"INV-{rng.randrange(2019, 2027)}-{rng.randrange(10**5):05d}",
            f"Invoice {rng.randrange(10**6, 10**7)}/{rng.randrange(2019, 2027)}",
            f"invoice no. {_rand(rng, string.ascii_uppercase, 2)}{rng.randrange(10**8):08d}",
        ]
    )


def _n_timestamp(rng: random.Random) -> str:
    y, mo, d = rng.randrange(2015, 2027), rng.randrange(1, 13), rng.randrange(1, 29)
    h, mi, s = rng.randrange(24), rng.randrange(60), rng.randrange(60)
    return rng.choice(
        [
            f"{y}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}Z",
            f"{y}-{mo:02d}-{d:02d} {h:02d}:{mi:02d}:{s:02d}.{rng.randrange(10**6):06d}+00:00",
            f"created {d:02d}/{mo:02d}/{y} {h:02d}:{mi:02d}",
            f"ts={rng.randrange(1_500_000_000_000, 1_800_000_000_000)}",
            f"epoch {rng.randrange(1_500_000_000, 1_800_000_000)}",
            f"{y}{mo:02d}{d:02d}{h:02d}{mi:02d}{s:02d}",
        ]
    )


def _n_uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    u = f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"
    return rng.choice([f"request {u} done", f"id={u}", u.upper(), f"trace_id {h}"])


def _n_version(rng: random.Random) -> str:
    a, b, c = rng.randrange(0, 30), rng.randrange(0, 40), rng.randrange(0, 200)
    return rng.choice(
        [
            f"v{a}.{b}.{c}",
            f"upgraded to {a}.{b}.{c}-rc.{rng.randrange(1, 5)}",
            f"requires python>={a % 4 + 3}.{b % 13}",
            f"build {a}.{b}.{c}+{rng.randrange(10**4)}",
            f"Chrome/{rng.randrange(90, 130)}.0.{rng.randrange(4000, 7000)}.{rng.randrange(300)}",
        ]
    )


def _n_price(rng: random.Random) -> str:
    amount = rng.randrange(100, 10**8) / 100
    return rng.choice(
        [
            f"${amount:,.2f}",
            f"total EUR {amount:.2f}",
            f"{amount:,.2f} USD incl. VAT",
            f"price: {amount:.2f}",
        ]
    )


def _n_tracking(rng: random.Random) -> str:
    kind = rng.randrange(3)
    if kind == 0:
        return f"UPS 1Z{_rand(rng, _UPPER_DIGITS, 6)}{_rand(rng, string.digits, 10)}"
    digits = "9" + rng.choice(["4", "2", "3"]) + _rand(rng, string.digits, rng.randrange(18, 21))
    if kind == 1:
        return f"USPS tracking {digits}"
    return "tracking: " + " ".join(digits[i : i + 4] for i in range(0, len(digits), 4))


def _n_isbn(rng: random.Random) -> str:
    body = "978" + _rand(rng, string.digits, 9)
    total = sum(int(c) * (1 if i % 2 == 0 else 3) for i, c in enumerate(body))
    isbn = body + str((10 - total % 10) % 10)
    return rng.choice(
        [f"ISBN {isbn}", f"ISBN-13: {isbn[:3]}-{isbn[3]}-{isbn[4:8]}-{isbn[8:12]}-{isbn[12]}"]
    )


def _n_product(rng: random.Random) -> str:
    return rng.choice(
        [
            f"SKU {rng.randrange(10**5, 10**6)}-{rng.randrange(100):02d}",
            f"part no. {_rand(rng, string.ascii_uppercase, 3)}-{rng.randrange(10**4):04d}"
            f"-{rng.randrange(10**3):03d}",
            f"model {rng.randrange(100, 999)}-{rng.randrange(10, 99)}",
            f"EAN {rng.randrange(10**12, 10**13)}",
        ]
    )


def _n_sha(rng: random.Random) -> str:
    h = hashlib.sha1(str(rng.random()).encode()).hexdigest()
    return rng.choice([f"commit {h}", f"Merge {h[:7]} into main", f"sha256:{h}{h[:24]}"])


def _n_base64(rng: random.Random) -> str:
    data = bytes(rng.randrange(256) for _ in range(rng.randrange(30, 120)))
    return f'<img src="data:image/png;base64,{base64.b64encode(b"PNG" + data).decode()}">'


def _n_sql(rng: random.Random) -> str:
    return rng.choice(
        [
            f"SELECT id, name FROM customers WHERE id = {rng.randrange(10**6)}",
            "UPDATE orders SET status = 'shipped' WHERE order_id = 1042",
            f"INSERT INTO events (kind, at) VALUES ('login', '2024-0{rng.randrange(1, 9)}-01')",
            "SELECT count(*) FROM users WHERE created_at > now() - interval '7 days'",
            "DELETE FROM sessions WHERE expires_at < CURRENT_TIMESTAMP",
        ]
    )


def _n_log(rng: random.Random) -> str:
    ms = rng.randrange(1, 2000)
    return rng.choice(
        [
            f"INFO  worker-{rng.randrange(8)} processed {rng.randrange(10**4)} jobs in {ms}ms",
            f"WARN retry {rng.randrange(1, 5)}/5 after {ms} ms (status=503)",
            f"GET /api/v2/items/{rng.randrange(10**6)}?page={rng.randrange(50)} 200 {ms}ms",
            f"pid={rng.randrange(1, 65536)} rss={rng.randrange(10**5, 10**7)}kB",
            f"[{rng.randrange(10**9, 10**10)}] cache hit ratio 0.{rng.randrange(100):02d}",
        ]
    )


def _n_non_luhn(rng: random.Random) -> str:
    while True:
        digits = _card(rng)
        bad = digits[:-1] + str((int(digits[-1]) + rng.randrange(1, 10)) % 10)
        if not _luhn_ok(bad):
            break
    return rng.choice([f"account {bad}", f"ref {_group(bad, ' ')}", f"ticket-{bad}"])


def _n_bad_iban(rng: random.Random) -> str:
    country, n = rng.choice(_IBAN_COUNTRIES)
    iban = _iban(rng, country, n)
    check = (int(iban[2:4]) + rng.randrange(1, 96)) % 97
    bad = f"{iban[:2]}{max(check, 2):02d}{iban[4:]}"
    if bad == iban:
        bad = f"{iban[:2]}{(int(iban[2:4]) + 1) % 97:02d}{iban[4:]}"
    return rng.choice([f"IBAN {bad}", f"ref {_iban_spaced(bad)}"])


def _n_prose(rng: random.Random) -> str:
    return rng.choice(
        [
            "The meeting moved to 3pm; bring the Q3 numbers.",
            "Password reset link expired, please request a new one.",
            "Token bucket refilled at 100 req/s.",
            "Delivered to front desk at 10:42, signed by J. Smith.",
            "See section 4.2.1 of the spec for details.",
            "401 Unauthorized: missing Authorization header (expected Bearer scheme)",
            f"Qty {rng.randrange(100, 999)} boxes of {rng.randrange(100, 999)},"
            f" {rng.randrange(1000, 9999)} g",
            f"Room {rng.randrange(100, 999)}, floor {rng.randrange(1, 30)}",
        ]
    )


_NEGATIVE_MAKERS: list[tuple[str, Callable[[random.Random], str]]] = [
    ("order number", _n_order),
    ("invoice id", _n_invoice),
    ("timestamp", _n_timestamp),
    ("uuid", _n_uuid),
    ("version", _n_version),
    ("price", _n_price),
    ("tracking number", _n_tracking),
    ("isbn", _n_isbn),
    ("product code", _n_product),
    ("git sha", _n_sha),
    ("base64 image", _n_base64),
    ("sql", _n_sql),
    ("log line", _n_log),
    ("non-luhn number", _n_non_luhn),
    ("bad-checksum iban", _n_bad_iban),
    ("prose", _n_prose),
]


def negatives(per_kind: int = 150, seed: int = 12) -> list[Sample]:
    """``per_kind`` texts of each kind that hold no sensitive value."""
    rng = random.Random(seed)
    return [
        Sample(make(rng), frozenset(), (), kind)
        for kind, make in _NEGATIVE_MAKERS
        for _ in range(per_kind)
    ]


@dataclass
class Score:
    """Recall per entity and false positives per negative kind."""

    found: dict[str, int]
    total: dict[str, int]
    flagged: dict[str, int]
    checked: dict[str, int]
    misses: list[str]
    false_positives: list[str]

    @property
    def recall(self) -> float:
        return sum(self.found.values()) / max(1, sum(self.total.values()))

    @property
    def fp_rate(self) -> float:
        return sum(self.flagged.values()) / max(1, sum(self.checked.values()))

    def table(self) -> str:
        """The per-entity and per-kind breakdown, one line each."""
        lines = [f"recall {self.recall:.4f}, false-positive rate {self.fp_rate:.4f}"]
        lines += [
            f"  {e:16} recall {self.found[e] / self.total[e]:.3f} ({self.found[e]}/{self.total[e]})"
            for e in self.total
        ]
        lines += [
            f"  {k:18} FP {self.flagged[k] / n:.3f} ({self.flagged[k]}/{n})"
            for k, n in self.checked.items()
        ]
        return "\n".join(lines)


def score(
    mask: Callable[[str], str],
    pos: list[Sample],
    neg: list[Sample],
) -> Score:
    """How ``mask`` (text -> masked text) does on the corpus: a positive is
    found when none of its secrets survives; a negative is a false positive
    when its text changes at all."""
    s = Score({}, {}, {}, {}, [], [])
    for p in pos:
        e = next(iter(p.entities))
        s.total[e] = s.total.get(e, 0) + 1
        out = mask(p.text)
        if any(secret in out for secret in p.secrets):
            s.found.setdefault(e, 0)
            s.misses.append(f"{e}: {p.text!r} -> {out!r}")
        else:
            s.found[e] = s.found.get(e, 0) + 1
    for n in neg:
        s.checked[n.kind] = s.checked.get(n.kind, 0) + 1
        s.flagged.setdefault(n.kind, 0)
        out = mask(n.text)
        if out != n.text:
            s.flagged[n.kind] += 1
            s.false_positives.append(f"{n.kind}: {n.text!r} -> {out!r}")
    return s
