"""Masking operators: small callables from a raw value to a masked one.

Every operator is total (it never raises, whatever the value's type) and
never hands a raw value back: what it cannot mask meaningfully it redacts.
Where it can, it keeps the value's type (``hash`` of an integer is an
integer), so rows still fit the code that reads them.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Callable
from typing import Any

__all__ = [
    "OPERATORS",
    "Operator",
    "email",
    "fixed",
    "hash_with",
    "last4",
    "null",
    "partial",
    "redact",
]

Operator = Callable[[Any], Any]
_NOT_DIGITS = re.compile(r"\D+")
REDACTED = "[REDACTED]"
_log = logging.getLogger("guardeddb")


def redact(value: Any) -> Any:
    """Text becomes ``[REDACTED]``, bytes become empty, anything else NULL."""
    if value is None:
        return None
    if isinstance(value, str):
        return REDACTED
    if isinstance(value, bytes | bytearray | memoryview):
        return b""
    return None


def null(value: Any) -> None:
    """Every value becomes NULL."""
    return None


def fixed(replacement: Any) -> Operator:
    """Every non-NULL value becomes ``replacement``."""

    def op(value: Any) -> Any:
        return None if value is None else replacement

    return op


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).decode("utf-8", "replace")
    return str(value)


def partial(keep_first: int = 1, keep_last: int = 0, fill: str = "*") -> Operator:
    """Keep the first and last characters, fill the rest (``Ad*********``)."""

    def op(value: Any) -> Any:
        text = _text(value)
        if text is None:
            return None
        n = len(text)
        if n <= keep_first + keep_last:
            return fill * n  # too short to show any of it safely
        return text[:keep_first] + fill * (n - keep_first - keep_last) + text[n - keep_last :]

    return op


def email(value: Any) -> Any:
    """``ada@example.com`` becomes ``a***@example.com``; non-emails are redacted."""
    text = value if type(value) is str else _text(value)
    if text is None:
        return None
    local, at, domain = text.rpartition("@")
    if not at or not local or not domain:
        return redact(text)
    return f"{local[0]}***@{domain}"


def last4(value: Any) -> Any:
    """Only the last four digits stay: ``************4242``."""
    text = value if type(value) is str else _text(value)
    if text is None:
        return None
    digits = text if text.isdigit() else _NOT_DIGITS.sub("", text)
    if len(digits) <= 4:
        return "*" * len(text)
    return "*" * (len(digits) - 4) + digits[-4:]


def hash_with(key: bytes, column: str | None = None) -> Operator:
    """A keyed HMAC-SHA256 pseudonym: stable for one key, so joins and counts
    still work; without the key it cannot be reversed or recomputed.

    With ``column``, the key is first bound to that column's name, so a
    pseudonym of one column never equals another's (or a literal's) for the
    same value: no lookup table can be built from other outputs.
    """
    if column is not None:
        key = hmac.new(key, b"column:" + column.lower().encode(), hashlib.sha256).digest()

    def op(value: Any) -> Any:
        if value is None:
            return None
        if isinstance(value, bool):
            raw = b"b:" + str(value).encode()
        elif isinstance(value, int):
            digest = hmac.new(key, b"i:" + str(value).encode(), hashlib.sha256).digest()
            return int.from_bytes(digest[:8], "big") >> 1  # stays a (positive) integer
        elif isinstance(value, bytes | bytearray | memoryview):
            return hmac.new(key, b"y:" + bytes(value), hashlib.sha256).digest()
        else:
            raw = b"s:" + str(value).encode("utf-8", "surrogatepass")
        return "h_" + hmac.new(key, raw, hashlib.sha256).hexdigest()[:24]

    return op


_process_key: bytes | None = None


def hash_key(configured: str | None, env_var: str | None) -> bytes:
    """The key for ``hash``: from the policy, else the environment variable,
    else a random key for this process (pseudonyms then hold within the
    process only, and a warning says so): never a built-in constant."""
    global _process_key
    if configured:
        return configured.encode()
    value = os.environ.get(env_var or "GUARDEDDB_HASH_KEY")
    if value:
        return value.encode()
    if _process_key is None:
        _process_key = secrets.token_bytes(32)
        _log.warning(
            "guardeddb: no masking hash key configured (masking.hash_key or %s); "
            "hash pseudonyms are stable within this process only",
            env_var or "GUARDEDDB_HASH_KEY",
        )
    return _process_key


#: Operators a policy can name without parameters.
OPERATORS: dict[str, Operator] = {
    "redact": redact,
    "null": null,
    "email": email,
    "last4": last4,
    "partial": partial(),
}
