"""Value detectors: find sensitive values inside text and mask only those spans.

Card numbers are Luhn-checked, IBANs mod-97-checked, SSNs range-checked, so
order numbers and dates are left alone. Every pattern has bounded
repetition and starts only at a boundary, so a hostile megabyte cell is
scanned in linear time; private keys are found by their header and masked
up to their footer (or to the end of the text when it is missing).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .operators import REDACTED, email, last4

__all__ = ["DETECTORS", "Detector", "Scanner"]


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _card_ok(text: str) -> bool:
    digits = "".join(c for c in text if c.isdigit())
    return 13 <= len(digits) <= 19 and _luhn(digits)


def _iban_ok(text: str) -> bool:
    s = text.replace(" ", "").upper()
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:
        return False


def _phone_ok(text: str) -> bool:
    return 7 <= sum(c.isdigit() for c in text) <= 15


def _ipv6_ok(text: str) -> bool:
    if text.count(":") < 2:
        return False
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _always(text: str) -> bool:
    return True


@dataclass(frozen=True)
class Detector:
    """One kind of sensitive value: how to find it, check it and mask it."""

    name: str
    pattern: re.Pattern[str]
    hint: Callable[[str], bool]  # cheap test: could the text hold one at all?
    valid: Callable[[str], bool] = _always
    mask: Callable[[str], str] = lambda _: REDACTED
    group: int = 0  # the part of the match to mask


def _has_digit(text: str) -> bool:
    return any(c.isdigit() for c in text)


_D = [
    Detector(
        "email",
        re.compile(
            r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@"
            r"[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}(?![A-Za-z0-9-])"
        ),
        lambda t: "@" in t,
        mask=lambda s: str(email(s)),
    ),
    Detector(
        "credit_card",
        re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])"),
        _has_digit,
        _card_ok,
        lambda s: str(last4(s)),
    ),
    Detector(
        "us_ssn",
        re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ]?)(?!00)\d{2}\1(?!0000)\d{4}(?![\d])"),
        _has_digit,
    ),
    Detector(
        "iban",
        re.compile(r"(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}(?![A-Za-z0-9])"),
        _has_digit,
        _iban_ok,
    ),
    Detector(
        "phone",
        re.compile(
            r"(?<![\w+])(?:\+\d[\d .()-]{5,19}\d"
            r"|\(\d{3}\) ?\d{3}[-. ]\d{4}|\d{3}[-.]\d{3}[-.]\d{4})(?![\w])"
        ),
        _has_digit,
        _phone_ok,
    ),
    Detector(
        "ipv4",
        re.compile(
            r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
            r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])"
        ),
        lambda t: "." in t,
    ),
    Detector(
        "ipv6",
        re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Fa-f:])"),
        lambda t: "::" in t or t.count(":") >= 2,
        _ipv6_ok,
    ),
    Detector(
        "jwt",
        re.compile(
            r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{5,4096}\.eyJ[A-Za-z0-9_-]{5,8192}\.[A-Za-z0-9_-]{0,2048}"
        ),
        lambda t: "eyJ" in t,
    ),
    Detector(
        "aws_access_key",
        re.compile(
            r"(?<![A-Z0-9])(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA)[A-Z0-9]{16}(?![A-Z0-9])"
        ),
        lambda t: "A" in t,
    ),
    Detector(
        "secret",
        re.compile(
            r"(?i)(?<![A-Za-z0-9])(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|"
            r"auth[_-]?token|client[_-]?secret|token)[\"']?\s{0,5}[:=]\s{0,5}"
            r"(\"[^\"\n]{1,256}\"|'[^'\n]{1,256}'|[^\s'\",;&]{1,256})"
        ),
        lambda t: "=" in t or ":" in t,
        group=1,
    ),
]

#: The built-in detectors by name (``private_key`` is found by its header).
DETECTORS: dict[str, Detector | None] = {d.name: d for d in _D}
DETECTORS["private_key"] = None

_PEM_BEGIN = re.compile(r"-----BEGIN (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY-----")
_PREFILTER = re.compile(r"[\d@:=]|eyJ|-----BEGIN|A[KSIRGNP][IDOP]A")


class Scanner:
    """The enabled detectors, run together over one text at a time."""

    __slots__ = ("_detectors", "_pem", "names")

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(names)
        unknown = [n for n in self.names if n not in DETECTORS]
        if unknown:
            raise ValueError(f"unknown detectors: {', '.join(unknown)}")
        self._pem = "private_key" in self.names
        self._detectors = [d for n in self.names if (d := DETECTORS[n]) is not None]

    def scan(self, text: str) -> tuple[str, int]:
        """``text`` with every detected value masked, and how many were."""
        if not _PREFILTER.search(text):
            return text, 0
        spans: list[tuple[int, int, str]] = []
        if self._pem:
            at = 0
            while (begin := _PEM_BEGIN.search(text, at)) is not None:
                footer = _PEM_END.search(text, begin.end())
                at = footer.end() if footer else len(text)
                spans.append((begin.start(), at, REDACTED))
        for det in self._detectors:
            if not det.hint(text):
                continue
            for m in det.pattern.finditer(text):
                value = m.group(det.group)
                if value and det.valid(value):
                    spans.append((m.start(det.group), m.end(det.group), det.mask(value)))
        if not spans:
            return text, 0
        spans.sort(key=lambda s: (s[0], -s[1]))
        out: list[str] = []
        pos = count = 0
        for start, end, masked in spans:
            if start < pos:
                continue  # inside a span already masked (an email in a JWT, ...)
            out.append(text[pos:start])
            out.append(masked)
            pos = end
            count += 1
        out.append(text[pos:])
        return "".join(out), count
