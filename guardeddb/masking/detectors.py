"""Value detectors: find sensitive values inside text and mask only those spans.

Card numbers are Luhn-checked, IBANs mod-97-checked, SSNs range-checked, so
order numbers and dates are left alone. Every pattern has bounded
repetition and starts only at a boundary, so a hostile megabyte cell is
scanned in linear time; private keys are found by their header and masked
up to their footer (or to the end of the text when it is missing).
"""

from __future__ import annotations

import bisect
import datetime
import decimal
import functools
import ipaddress
import itertools
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import NoneType
from typing import Any, TypeVar

from .operators import REDACTED, email, last4

__all__ = ["DETECTORS", "Detector", "Scanner"]

_T = TypeVar("_T")


_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)


@functools.lru_cache(maxsize=4096)
def _luhn(digits: str) -> bool:
    """The Luhn check of ASCII ``digits`` (remembered: hostile text repeats)."""
    total = sum(map(int, digits[-1::-2])) + sum(_DOUBLED[int(c)] for c in digits[-2::-2])
    return total % 10 == 0


def _card_spans(text: str) -> list[tuple[int, int]]:
    """The card numbers in a run of digit groups ("4111 1111 1111 1111 0").

    A card starts where a group starts and ends where one ends, with an
    issuer's prefix and length and a valid Luhn digit; the longest such
    stretch from each group wins. Each group is looked at from at most 19
    digits on, so a run of any length costs time in proportion to it.
    """
    parts = _DIGIT_GROUP.findall(text)
    digits = "".join(parts)
    if not digits.isascii():
        digits = "".join(str(int(c)) for c in digits)  # unicode decimal digits
    cum = [0, *itertools.accumulate(map(len, parts))]
    groups: list[tuple[int, int]] | None = None  # where each group is: when a card is found
    spans: list[tuple[int, int]] = []
    g = 0
    while g < len(parts):
        start = cum[g]
        if cum[-1] - start < 12:
            break  # too few digits left for any card
        if digits[start] not in "23456":
            g += 1  # no issuer's numbers start so
            continue
        lengths = _brand_lengths(digits[start : start + 4])
        best = None
        last = bisect.bisect_right(cum, start + 19) - 2  # the last group within 19 digits
        for h in range(last, g - 1, -1):
            n = cum[h + 1] - start
            if n in lengths and _luhn(digits[start : start + n]):
                best = h
                break
        if best is None:
            g += 1
            continue
        if groups is None:
            groups = [m.span() for m in _DIGIT_GROUP.finditer(text)]
        spans.append((groups[g][0], groups[best][1]))
        g = best + 1
    return spans


_DIGIT_GROUP = re.compile(r"\d+")


def _brand_lengths(ascii_digits: str) -> range | tuple[int, ...]:
    """The lengths a card number starting so may have (its issuer's range)."""
    d = ascii_digits
    two, four = int(d[:2]), int(d[:4])
    if d[0] == "4":
        return (13, 16, 19)  # Visa
    if 51 <= two <= 55 or 2221 <= four <= 2720:
        return (16,)  # Mastercard
    if two in (34, 37):
        return (15,)  # American Express
    if d.startswith("6011") or two == 65 or 644 <= int(d[:3]) <= 649 or two == 62:
        return range(16, 20)  # Discover, UnionPay
    if 3528 <= four <= 3589:
        return range(16, 20)  # JCB
    if 300 <= int(d[:3]) <= 305 or two in (36, 38, 39):
        return range(14, 20)  # Diners Club
    if two == 50 or 56 <= two <= 69:
        return range(12, 20)  # Maestro
    return ()


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
    return 7 <= sum(map(str.isdigit, text)) <= 15


def _ipv6_ok(text: str) -> bool:
    colons = text.count(":")
    if colons < 2 or (colons < 7 and "::" not in text):
        return False  # fewer than 8 groups need "::" (times like 10:22:33 have none)
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
    exhaustive: bool = False  # spans finds every value in the match: go on after it


_SEP = r"[ ._/-]"  # what people put between a card's digit groups
_CARD_RUN = rf"\d+(?:{_SEP}\d+)*"  # digit groups: where card numbers are

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
        # Any separator or prefix ("ref-4539..."): the issuer prefix, the length
        # and the Luhn digit decide, not the text around the number.
        re.compile(rf"(?<!\d){_CARD_RUN}"),
        frozenset({"d7"}),
        mask=lambda s: str(last4(s)),
        spans=_card_spans,
        exhaustive=True,
    ),
    Detector(
        "us_ssn",
        re.compile(
            r"(?<!\d)(?!000|666|9\d\d)\d{3}([- .])(?!00)\d{2}\1(?!0000)\d{4}(?!\d)"
            # Nine bare digits only where the text says it is one.
            r"|(?<![A-Za-z])(?i:ssn|social\ssecurity(?:\s(?:no|number))?)\W{0,4}"
            r"((?!000|666|9\d\d)\d{3}(?!00)\d{2}(?!0000)\d{4})(?!\d)"
        ),
        frozenset({"d7"}),
        spans=lambda s: [_last_digits(s, 9)],
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
            r"|\(\d{3}\) ?\d{3}[-. ]\d{4}|\d{3}(?:[-.]\d{3}[-.]| \d{3} )\d{4})(?![\w])"
            # Digits without separators only where the text says it is a phone.
            r"|(?i:phone|tel|mobile|cell|fax|sms|whatsapp)[^\d\n]{0,12}(\d{10,12})(?!\d)"
        ),
        frozenset({"d7"}),
        _phone_ok,
        spans=lambda s: _phone_spans(s),
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
            r"(?i)(?<![A-Z0-9])(?:AKIA|ASIA|AIDA|AROA|AGPA|ANPA|ANVA|AIPA|A3T[A-Z0-9]|ABIA|ACCA)"
            r"[A-Z0-9]{16}(?![A-Z0-9])"
        ),
        frozenset({"aws"}),
    ),
    Detector(
        "aws_secret_key",
        # 40 base64 characters near "aws" (detect-secrets' rule).
        re.compile(r"(?i)aws[^\n]{0,20}?(?<![A-Za-z0-9/+])([A-Za-z0-9/+]{40})(?![A-Za-z0-9/+=])"),
        frozenset({"aws"}),
        group=1,
    ),
    Detector(
        "api_token",
        # Vendor tokens by their documented prefixes.
        re.compile(
            r"(?i)(?<![A-Za-z0-9_-])(?:gh[pousr]_[A-Za-z0-9]{30,255}"
            r"|github_pat_[A-Za-z0-9_]{20,255}|glpat-[A-Za-z0-9_-]{20,255}"
            r"|xox[abprse]-[A-Za-z0-9-]{10,255}|xapp-\d-[A-Za-z0-9-]{10,255}"
            r"|[sr]k_(?:live|test)_[A-Za-z0-9]{10,255}|whsec_[A-Za-z0-9]{24,255}"
            r"|sk-(?:proj-|ant-)?[A-Za-z0-9_-]{32,255}|npm_[A-Za-z0-9]{36}"
            r"|pypi-[A-Za-z0-9_-]{50,255}|SG\.[A-Za-z0-9_-]{20,24}\.[A-Za-z0-9_-]{40,50}"
            r"|AIza[A-Za-z0-9_-]{35})(?![A-Za-z0-9_-])"
            r"|hooks\.slack\.com/services/[A-Za-z0-9/]{20,255}"
        ),
        frozenset({"tok"}),
    ),
    Detector(
        "basic_auth",
        # The password of user:password@host in a URL.
        re.compile(r"(?i)[a-z][a-z0-9+.-]{0,20}://[^\s:/@]{1,128}:([^\s/@]{1,256})@"),
        frozenset({"url"}),
        mask=lambda s: s[: s.index(":", s.index("://") + 3) + 1] + REDACTED + "@",
    ),
    Detector(
        "secret",
        re.compile(
            r"(?i)(?:(?:password|passwd|passphrase|pwd|secret(?:[_-]?key)?|api[_-]?key|access[_-]?key|"
            r"private[_-]?key|access[_-]?token|auth[_-]?token|refresh[_-]?token|"
            r"client[_-]?secret|token|credentials?)[\"']?\s{0,5}(?:=>|:=|->|[:=])"
            # An HTTP Authorization header's credentials, whatever the scheme.
            r"|(?:proxy-)?authorization:\s{0,5}(?:basic|bearer|token|negotiate)\s)\s{0,5}"
            r"(\"[^\"\n]{1,256}\"|'[^'\n]{1,256}'|[^\s'\",;&]{1,256})"
        ),
        frozenset({"eq", "colon", "arrow"}),
        group=1,
    ),
]


def _phone_spans(text: str) -> list[tuple[int, int]]:
    """A phone written with separators or +, or the digits after a keyword."""
    if text[0].isalpha():
        return [_last_digits(text, sum(c.isdigit() for c in text))]
    return [(0, len(text))] if _phone_ok(text) else []


def _last_digits(text: str, n: int) -> tuple[int, int]:
    """Where the value is in a match that starts with a keyword: its digits."""
    end = len(text)
    start = end
    count = 0
    while start > 0 and count < n:
        start -= 1
        if text[start].isdigit():
            count += 1
    return (start, end) if count == n else (0, end)


#: The built-in detectors by name (``private_key`` is found by its header).
DETECTORS: dict[str, Detector | None] = {d.name: d for d in _D}
DETECTORS["private_key"] = None

_PEM_BEGIN = re.compile(
    r"(?i)-{4,5} ?BEGIN (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY(?: BLOCK)? ?-{4,5}"
    r"|PuTTY-User-Key-File-\d{1,2}:"
)
_PEM_END = re.compile(
    r"(?i)-{4,5} ?END (?:[A-Z0-9]{1,20} ){0,3}PRIVATE KEY(?: BLOCK)? ?-{4,5}"
    r"|Private-MAC: ?[0-9a-f]{1,128}"
)
_TOKEN_CLUE = re.compile(
    r"gh[pousr]_|github_pat_|glpat-|xox[abprse]-|xapp-|[sr]k_(?:live|test)_|whsec_|sk-|npm_|pypi-|sg\."
    r"|aiza|hooks\.slack"
)
# Where _TOKEN_CLUE can match, by its fixed start ("rk_", "sk_" and "sk-" by "k_"
# and "sk-"), to find cells that may hold a token in bulk.
_TOKEN_PREFIXES = (
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xox",
    "xapp-",
    "k_live_",
    "k_test_",
    "whsec_",
    "sk-",
    "npm_",
    "pypi-",
    "sg.",
    "aiza",
    "hooks.slack",
)
_NO_DIGITS = str.maketrans("", "", "0123456789")
_AWS_PREFIXES = (
    "akia",
    "asia",
    "aida",
    "aroa",
    "agpa",
    "anpa",
    "anva",
    "aipa",
    "a3t",
    "abia",
    "acca",
    "aws",
)

_AWS_CLUE = re.compile("|".join(_AWS_PREFIXES))


# The clues, as bits of one int: a detector runs on a text when its hints'
# bits and the text's clues share one (an int test, where sets cost a hash).
_CLUE_BITS = {
    name: 1 << i
    for i, name in enumerate(
        ("d7", "at", "colon", "eq", "arrow", "dot", "pem", "jwt", "aws", "tok", "url")
    )
}
_D7, _AT, _COLON, _EQ, _ARROW, _DOT, _PEM, _JWT, _AWS, _TOK, _URL = _CLUE_BITS.values()
_NON_DIGIT_BYTES = bytes(c for c in range(256) if not 0x30 <= c <= 0x39)


def _bits(hints: Iterable[str]) -> int:
    """The clue bits of ``hints``."""
    out = 0
    for h in hints:
        out |= _CLUE_BITS[h]
    return out


def _clues(text: str) -> int:
    """Which detectors could match ``text`` at all (clue bits), from cheap
    substring tests: most text cells (names, cities, statuses) hold none."""
    clues = 0
    if text.isascii():
        digits = len(text.encode().translate(None, _NON_DIGIT_BYTES))
    else:
        digits = len(text) - len(text.translate(_NO_DIGITS))
        if digits < 7:
            digits = sum(c.isdecimal() for c in text)  # Arabic-Indic, fullwidth, ... digits
    if digits >= 7:
        clues = _D7  # cards, SSNs, IBANs, phones all have 7 digits or more
    if "@" in text:
        clues |= _AT
    if ":" in text:
        clues |= _COLON
        if "://" in text:
            clues |= _URL
    if "=" in text:
        clues |= _EQ
    if "->" in text:
        clues |= _ARROW
    if digits >= 4 and "." in text:
        clues |= _DOT
    if "BEGIN" in text or "PuTTY" in text or "begin" in text:
        clues |= _PEM
    if len(text) >= 17:  # the shortest JWT; an AWS key id is 20
        low = text.lower()
        if "eyj" in low:
            clues |= _JWT
        if _AWS_CLUE.search(low):
            clues |= _AWS
        if (
            "_" in low or "-" in low or "sg." in low or "aiza" in low or "hooks.slack" in low
        ) and _TOKEN_CLUE.search(low):  # each of its prefixes has one of these
            clues |= _TOK
    return clues


# Fewer cells with clues than this are scanned one by one: joining them per
# detector costs more than it saves.
_JOIN_FROM = 8
_CELL_SEP = "\x00"  # between a column's cells in one scan: no batch pattern matches it


def _cell_bound(pattern: re.Pattern[str]) -> re.Pattern[str]:
    """``pattern`` unable to match a NUL, so a match over cells joined by NUL
    stays inside one cell: a NUL is added to every negated class and taken
    out of ``\\W``. Lookarounds see a NUL where a lone cell has its edge,
    and no lookaround of the detectors tests for one, so they decide alike."""
    source = pattern.pattern.replace("[^", "[^\\x00").replace("\\W", "[^\\w\\x00]")
    return re.compile(source, pattern.flags)


# The batch patterns. A card needs 12 digits or more in its run: runs with
# fewer (every "Customer 12") are not matched only to be found to hold none.
_BATCH_PATTERNS = {d.name: _cell_bound(d.pattern) for d in _D}
# Written to start with a digit (the lookbehind after it), so the regex
# engine skips to the next digit in C instead of trying every position.
_BATCH_PATTERNS["credit_card"] = re.compile(rf"\d(?<!\d\d)(?=(?:{_SEP}?\d){{11}})\d*(?:{_SEP}\d+)*")
# Two detectors also match after a keyword ("SSN 078051120", "tel
# 2125550142"). In ASCII text that holds none of their keywords, only their
# other branch can match, and these are that branch alone, written to start
# with what a match starts with: the same matches, found without the engine
# trying every position. (Non-ASCII text can spell a keyword with case folds,
# "\u017fsn": it gets the whole pattern.)
_KEYWORDLESS: dict[str, tuple[tuple[str, ...], re.Pattern[str]]] = {
    "us_ssn": (
        ("ssn", "social"),
        re.compile(
            r"\d(?<!\d\d)(?<!(?=000|666|9\d\d)\d)\d{2}([- .])(?!00)\d{2}\1(?!0000)\d{4}(?!\d)"
        ),
    ),
    "phone": (
        ("phone", "tel", "mobile", "cell", "fax", "sms", "whatsapp"),
        re.compile(
            r"[+(\d](?<![\w+][+(\d])(?:(?<=\+)\d[\d .()-]{5,19}\d"
            r"|(?<=\()\d{3}\) ?\d{3}[-. ]\d{4}|(?<=\d)\d{2}(?:[-.]\d{3}[-.]| \d{3} )\d{4})(?![\w])"
        ),
    ),
}
# Values of these types hold no text to scan.
_NOT_TEXT = frozenset(
    {
        NoneType,
        bool,
        int,
        float,
        complex,
        decimal.Decimal,
        datetime.date,
        datetime.datetime,
        datetime.time,
        datetime.timedelta,
        uuid.UUID,
    }
)


_NOT_DIGIT_BYTES = bytes(c for c in range(256) if not 0x30 <= c <= 0x39 and c != 0)
# What _clues looks for, and the clue each gives: in the text as it is, and
# (in text of 17 characters or more) lowercased; a token prefix is a
# candidate that _TOKEN_CLUE confirms.
_CLUE_NEEDLES = (
    ("@", _AT),
    (":", _COLON),
    ("://", _URL),
    ("=", _EQ),
    ("->", _ARROW),
    ("BEGIN", _PEM),
    ("PuTTY", _PEM),
    ("begin", _PEM),
)
_LOWER_NEEDLES = (
    ("eyj", _JWT),
    *((p, _AWS) for p in _AWS_PREFIXES),
    *((p, _TOK) for p in _TOKEN_PREFIXES),
)


def _column_clues(cells: Sequence[str], joined: str) -> dict[int, int]:
    """The clues of each cell that has any (by index, in order), ``joined``
    being the cells joined by NUL, exactly as :func:`_clues` gives them. On
    ASCII text they are found in bulk: digit counts from one
    bytes.translate, substrings by find over the joined text (or by ``in``
    per cell where most cells hold one), so a cell costs no Python call."""
    if not joined.isascii():
        return {i: got for i, text in enumerate(cells) if (got := _clues(text))}
    digits = list(map(len, joined.encode().translate(None, _NOT_DIGIT_BYTES).split(b"\0")))
    most = max(digits)
    found: dict[int, int] = {}
    if most >= 7:
        found = dict.fromkeys([i for i, n in enumerate(digits) if n >= 7], _D7)
    get = found.get
    lengths = list(map(len, cells))
    starts: list[int] | None = None
    for needle, bit in (*_CLUE_NEEDLES, (".", _DOT)) if most >= 4 else _CLUE_NEEDLES:
        at = joined.find(needle)
        if at < 0:
            continue
        if joined.count(needle) * 8 > len(cells):
            # In most cells: a membership test per cell beats a find and a
            # bisect per cell.
            for i, cell in enumerate(cells):
                if needle in cell and (bit != _DOT or digits[i] >= 4):
                    found[i] = get(i, 0) | bit
            continue
        if starts is None:
            starts = [0, *itertools.accumulate(map((1).__add__, lengths))]
        while at >= 0:
            i = bisect.bisect_right(starts, at) - 1
            if bit != _DOT or digits[i] >= 4:  # "dot" needs 4 digits too
                found[i] = get(i, 0) | bit
            at = joined.find(needle, starts[i + 1])
    # _clues looks for the rest in text of 17 characters or more, lowercased:
    # only those cells are joined to be searched.
    long = [i for i, n in enumerate(lengths) if n >= 17] if max(lengths) >= 17 else []
    if long:
        low = (
            joined if len(long) == len(cells) else _CELL_SEP.join([cells[i] for i in long])
        ).lower()
        low_starts: list[int] | None = None
        for needle, bit in _LOWER_NEEDLES:
            at = low.find(needle)
            if at < 0:
                continue
            if low_starts is None:
                low_starts = [
                    0,
                    *itertools.accumulate(map((1).__add__, map(lengths.__getitem__, long))),
                ]
            while at >= 0:
                j = bisect.bisect_right(low_starts, at) - 1
                found[long[j]] = get(long[j], 0) | bit
                at = low.find(needle, low_starts[j + 1])
    for i, bits in found.items():
        if bits & _TOK and not _TOKEN_CLUE.search(cells[i].lower()):
            found[i] = bits & ~_TOK  # a looser prefix ("xk_live_") than the clue
    return {i: found[i] for i in sorted(found) if found[i]}


class Scanner:
    """The enabled detectors, run together over one text at a time."""

    __slots__ = ("_batch", "_detectors", "_pem", "_runs", "names")

    def __init__(self, names: Iterable[str]) -> None:
        self.names = tuple(names)
        unknown = [n for n in self.names if n not in DETECTORS]
        if unknown:
            raise ValueError(f"unknown detectors: {', '.join(unknown)}")
        self._pem = "private_key" in self.names
        self._detectors = [d for n in self.names if (d := DETECTORS[n]) is not None]
        # Each detector with its hints' bits and its batch pattern.
        self._batch = [(d, _bits(d.hints), _BATCH_PATTERNS[d.name]) for d in self._detectors]
        # By a text's clues, the detectors that run on it (at most 2**10 sets).
        self._runs: dict[int, tuple[Detector, ...]] = {}

    def _run(self, clues: int) -> tuple[Detector, ...]:
        """The detectors whose hints ``clues`` has, in order (remembered)."""
        got = self._runs.get(clues)
        if got is None:
            got = self._runs[clues] = tuple(d for d, bits, _ in self._batch if bits & clues)
        return got

    def scan(self, text: str) -> tuple[str, int]:
        """``text`` with every detected value masked, and how many were."""
        clues = _clues(text)
        if not clues:
            return text, 0
        return self._scan(text, clues)

    def _scan(self, text: str, clues: int) -> tuple[str, int]:
        """:meth:`scan` of a ``text`` whose clues are known."""
        spans: list[tuple[int, int, str]] = []
        if self._pem and clues & _PEM:
            at = 0
            while (begin := _PEM_BEGIN.search(text, at)) is not None:
                footer = _PEM_END.search(text, begin.end())
                at = footer.end() if footer else len(text)
                spans.append((begin.start(), at, REDACTED))
        for det in self._runs.get(clues) or self._run(clues):
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
                    at = m.end() if det.exhaustive else base + found[-1][1] if found else base + 1
                elif det.valid(value):
                    spans.append((base, m.end(det.group), det.mask(value)))
        return _masked(text, spans)

    def scan_value(self, value: Any) -> tuple[Any, int]:
        """Any fetched value, masked where it is text: a ``str`` subclass is
        scanned as the text it holds and bytes-like values as UTF-8 (bytes
        that are not stay as they were), so a type guardeddb did not expect
        never skips the scan; other types (numbers, dates, ...) pass."""
        if type(value) is str:
            return self.scan(value)
        if isinstance(value, str):
            text, n = self.scan(str.__str__(value))  # the characters, not a __str__ override
            return (text if n else value), n
        if isinstance(value, bytes | bytearray | memoryview):
            text, n = self.scan(bytes(value).decode("utf-8", "surrogateescape"))
            if not n:
                return value, 0
            out = text.encode("utf-8", "surrogateescape")
            return (bytearray(out) if isinstance(value, bytearray) else out), n
        return value, 0

    def scan_column(self, values: Sequence[Any]) -> tuple[Sequence[Any], int]:
        """One fetched column's values masked, and how many values were.

        The Python types of the values decide: a column of numbers, dates or
        NULLs is not looked at; a column of plain ``str`` is scanned in one
        pass (see :meth:`scan_many`); anything else value by value with
        :meth:`scan_value`.
        """
        types = set(map(type, values))
        if types <= _NOT_TEXT:
            return values, 0
        if types == {str}:
            return self.scan_many(values)
        if types == {str, NoneType}:
            masked, n = self.scan_many([v if v is not None else "" for v in values])
            if not n:
                return values, 0
            return [None if v is None else m for v, m in zip(values, masked, strict=True)], n
        return _each(values, self.scan_value)

    def scan_many(self, cells: Sequence[str]) -> tuple[Sequence[str], int]:
        """``cells`` masked exactly as :meth:`scan` masks each, and how many
        values were; ``cells`` itself when nothing was found.

        The cells are joined by NUL (which no batch pattern can match) and
        looked at in bulk: first which cells hold any clue at all (most hold
        none), then each detector runs once over those cells joined, and its
        matches are mapped back to their cells by offset.
        """
        if len(cells) < 2:
            if not cells:
                return cells, 0
            text, n = self.scan(cells[0])
            return ([text] if n else cells), n
        joined = _CELL_SEP.join(cells)
        if joined.count(_CELL_SEP) != len(cells) - 1:
            return _each(cells, self.scan)  # a cell holds a NUL: no safe separator
        clued = _column_clues(cells, joined)
        if not clued:
            return cells, 0
        if len(clued) < _JOIN_FROM:
            out: list[str] | None = None
            n = 0
            for i, clues in clued.items():
                text, k = self._scan(cells[i], clues)
                if k:
                    if out is None:
                        out = list(cells)
                    out[i] = text
                    n += k
            return (cells if out is None else out), n
        picked = list(clued)
        masked, n = self._scan_joined([cells[i] for i in picked], list(clued.values()))
        if not n:
            return cells, 0
        out = list(cells)
        for i, text in zip(picked, masked, strict=True):
            out[i] = text
        return out, n

    def _scan_joined(
        self, cells: Sequence[str], clue_sets: Sequence[int]
    ) -> tuple[Sequence[str], int]:
        """``cells`` (each with its clues) masked: each detector's batch
        pattern runs once over the cells :meth:`scan` would run it on,
        joined by NUL, and its matches are mapped back by offset."""
        # By a detector's hints: the cells it runs on, joined, and where each starts.
        groups: dict[int, tuple[str, list[int], list[int]]] = {}

        def group(hints: int) -> tuple[str, list[int], list[int]]:
            got = groups.get(hints)
            if got is None:
                picked = [i for i, c in enumerate(clue_sets) if hints & c]
                texts = [cells[i] for i in picked]
                starts = [0, *itertools.accumulate(map((1).__add__, map(len, texts)))]
                got = groups[hints] = (_CELL_SEP.join(texts), picked, starts)
            return got

        found: dict[int, list[tuple[int, int, str]]] = {}
        lowered: dict[int, str] = {}  # a group's text lowercased, when asked for
        clues = 0
        for c in set(clue_sets):
            clues |= c
        if self._pem and clues & _PEM:
            joined, picked, starts = group(_PEM)
            at = 0
            while picked and (begin := _PEM_BEGIN.search(joined, at)) is not None:
                j = bisect.bisect_right(starts, begin.start()) - 1
                end = starts[j + 1] - 1
                footer = _PEM_END.search(joined, begin.end(), end)
                at = footer.end() if footer else end
                s = starts[j]
                found.setdefault(picked[j], []).append((begin.start() - s, at - s, REDACTED))
        for det, hints, pattern in self._batch:
            if not hints & clues:
                continue
            joined, picked, starts = group(hints)
            keywordless = _KEYWORDLESS.get(det.name)
            if keywordless is not None and joined.isascii():
                low = lowered.get(hints)
                if low is None:
                    low = lowered[hints] = joined.lower()
                if not any(word in low for word in keywordless[0]):
                    pattern = keywordless[1]
            at = 0
            while picked and (m := pattern.search(joined, at)) is not None:
                at = m.end()
                value = m.group(det.group)
                if not value:
                    continue
                j = bisect.bisect_right(starts, m.start()) - 1
                base = m.start(det.group)
                s = starts[j]
                cell = found.setdefault(picked[j], [])
                if det.spans is not None:
                    hits = det.spans(value)
                    for a, b in hits:
                        cell.append((base - s + a, base - s + b, det.mask(value[a:b])))
                    at = m.end() if det.exhaustive else base + hits[-1][1] if hits else base + 1
                elif det.valid(value):
                    cell.append((base - s, m.end(det.group) - s, det.mask(value)))
        n = 0
        out: list[str] | None = None
        for i, cell in found.items():
            if cell:
                if out is None:
                    out = list(cells)
                out[i], k = _masked(cells[i], cell)
                n += k
        return (cells if out is None else out), n


def _each(values: Sequence[_T], scan: Callable[[_T], tuple[_T, int]]) -> tuple[Sequence[_T], int]:
    """``values`` scanned one by one (``values`` itself when nothing was found)."""
    out = []
    n = 0
    for v in values:
        v, k = scan(v)
        out.append(v)
        n += k
    return (out if n else values), n


def _masked(text: str, spans: list[tuple[int, int, str]]) -> tuple[str, int]:
    """``text`` with ``spans`` (start, end, replacement) replaced, and how many."""
    if len(spans) < 2:
        if not spans:
            return text, 0
        start, end, masked = spans[0]
        return text[:start] + masked + text[end:], 1
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
