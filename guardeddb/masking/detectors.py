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


def _card_spans(text: str) -> list[tuple[int, int]]:
    """The card numbers in a run of digit groups ("4111 1111 1111 1111 0").

    A card starts where a group starts and ends where one ends, with 13 to 19
    Luhn-valid digits; the longest such stretch from each group wins. Order
    numbers whose checksum fails are left alone.
    """
    groups: list[tuple[int, int, str]] = []  # (start, end, digits) of each group
    for m in _DIGIT_GROUP.finditer(text):
        groups.append((m.start(), m.end(), m.group()))
    spans: list[tuple[int, int]] = []
    g = 0
    while g < len(groups):
        digits = ""
        best = None
        for h in range(g, len(groups)):
            digits += groups[h][2]
            if len(digits) > 19:
                break
            if len(digits) >= 13 and _luhn(digits):
                best = h
        if best is None:
            g += 1
            continue
        spans.append((groups[g][0], groups[best][1]))
        g = best + 1
    return spans


_DIGIT_GROUP = re.compile(r"\d+")


def _iban_ok(text: str) -> bool:
    s = text.replace(" ", "").upper()
    if not 15 <= len(s) <= 34:
        return False
    moved = s[4:] + s[:4]
    try:
        return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1
    except ValueError:
        return False


def _iban_spans(text: str) -> list[tuple[int, int]]:
    """The IBAN a match starts with: the longest prefix ending at a group
    boundary that passes mod-97 ("GB82 WEST 1234 5698 7654 32 0" holds one)."""
    ends = [i for i, c in enumerate(text) if c == " "] + [len(text)]
    for end in sorted(ends, reverse=True):
        if _iban_ok(text[:end]):
            return [(0, end)]
    return []


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
    hints: frozenset[str]  # prefilter clues of which one must be in the text
    valid: Callable[[str], bool] = _always
    mask: Callable[[str], str] = lambda _: REDACTED
    group: int = 0  # the part of the match to mask
    # Where inside a match the values are, when a match may hold several or
    # need trimming (card numbers); by default the whole (valid) match.
    spans: Callable[[str], list[tuple[int, int]]] | None = None


_D = [
    Detector(
        "email",
        re.compile(
            r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]{1,64}@"
            r"[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){0,8}\.[A-Za-z]{2,24}(?![A-Za-z0-9-])"
        ),
        frozenset({"at"}),
        mask=lambda s: str(email(s)),
    ),
    Detector(
        "credit_card",
        re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,40}(?![\d])"),
        frozenset({"d7"}),
        mask=lambda s: str(last4(s)),
        spans=_card_spans,
    ),
    Detector(
        "us_ssn",
        re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}([- ]?)(?!00)\d{2}\1(?!0000)\d{4}(?![\d])"),
        frozenset({"d7"}),
    ),
    Detector(
        "iban",
        re.compile(r"(?i)(?<![A-Za-z0-9])[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,40}(?![A-Za-z0-9])"),
        frozenset({"d7"}),
        spans=_iban_spans,
    ),
    Detector(
        "phone",
        re.compile(
            r"(?<![\w+])(?:\+\d[\d .()-]{5,19}\d"
            r"|\(\d{3}\) ?\d{3}[-. ]\d{4}|\d{3}[-.]\d{3}[-.]\d{4})(?![\w])"
        ),
        frozenset({"d7"}),
        _phone_ok,
    ),
    Detector(
        "ipv4",
        re.compile(
            r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}"
            r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])"
        ),
        frozenset({"dot"}),
    ),
    Detector(
        "ipv6",
        re.compile(r"(?<![0-9A-Fa-f:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![0-9A-Fa-f:])"),
        frozenset({"colon"}),
        _ipv6_ok,
    ),
    Detector(
        "jwt",
        # Case-insensitive: an upper- or lower-cased token must not slip through.
        re.compile(
            r"(?i)(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{5,4096}\.eyJ[A-Za-z0-9_-]{5,8192}"
            r"\.[A-Za-z0-9_-]{0,2048}"
        ),
        frozenset({"jwt"}),
    ),
    Detector(
        "aws_access_key",
        re.compile(
            r"(?i)(?<![A-Z0-9])(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA)[A-Z0-9]{16}(?![A-Z0-9])"
        ),
        frozenset({"aws"}),
    ),
    Detector(
        "secret",
        re.compile(
            r"(?i)(?<![A-Za-z0-9])(?:password|passwd|pwd|secret|api[_-]?key|access[_-]?token|"
            r"auth[_-]?token|client[_-]?secret|token)[\"']?\s{0,5}[:=]\s{0,5}"
            r"(\"[^\"\n]{1,256}\"|'[^'\n]{1,256}'|[^\s'\",;&]{1,256})"
        ),
        frozenset({"eq", "colon"}),
        group=1,
    ),
]

#: The built-in detectors by name (``private_key`` is found by its header).
DETECTORS: dict[str, Detector | None] = {d.name: d for d in _D}
DETECTORS["private_key"] = None

_PEM_BEGIN = re.compile(r"-----BEGIN (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY-----")
_NO_DIGITS = str.maketrans("", "", "0123456789")
_AWS_PREFIXES = ("akia", "asia", "aida", "aroa", "agpa", "anpa", "anva", "aipa")


def _clues(text: str) -> set[str]:
    """Which detectors could match ``text`` at all, from cheap substring tests:
    most text cells (names, cities, statuses) hold none of these clues."""
    clues: set[str] = set()
    digits = len(text) - len(text.translate(_NO_DIGITS))
    if digits >= 7:
        clues.add("d7")  # cards, SSNs, IBANs, phones all have 7 digits or more
    if "@" in text:
        clues.add("at")
    if ":" in text:
        clues.add("colon")
    if "=" in text:
        clues.add("eq")
    if digits >= 4 and "." in text:
        clues.add("dot")
    if "-----BEGIN" in text:
        clues.add("pem")
    if len(text) >= 17:  # the shortest JWT; an AWS key id is 20
        low = text.lower()
        if "eyj" in low:
            clues.add("jwt")
        if any(p in low for p in _AWS_PREFIXES):
            clues.add("aws")
    return clues


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
        clues = _clues(text)
        if not clues:
            return text, 0
        spans: list[tuple[int, int, str]] = []
        if self._pem and "pem" in clues:
            at = 0
            while (begin := _PEM_BEGIN.search(text, at)) is not None:
                footer = _PEM_END.search(text, begin.end())
                at = footer.end() if footer else len(text)
                spans.append((begin.start(), at, REDACTED))
        for det in self._detectors:
            if not det.hints & clues:
                continue
            at = 0
            while (m := det.pattern.search(text, at)) is not None:
                value = m.group(det.group)
                base = m.start(det.group)
                at = m.end()
                if not value:
                    continue
                if det.spans is not None:
                    # The match may hold several values, or one and a tail:
                    # go on right after the last value found inside it.
                    found = det.spans(value)
                    for a, b in found:
                        spans.append((base + a, base + b, det.mask(value[a:b])))
                    at = base + found[-1][1] if found else base + 1
                elif det.valid(value):
                    spans.append((base, m.end(det.group), det.mask(value)))
        if not spans:
            return text, 0
        spans.sort(key=lambda s: (s[0], -s[1]))
        out: list[str] = []
        pos = count = 0
        for start, end, masked in spans:
            if start < pos:
                # Overlapping a span already masked (an email in a JWT, an SSN
                # in a run of digits): its tail beyond that span goes too.
                if end > pos:
                    out.append(REDACTED)
                    pos = end
                continue
            out.append(text[pos:start])
            out.append(masked)
            pos = end
            count += 1
        out.append(text[pos:])
        return "".join(out), count
