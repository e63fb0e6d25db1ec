"""The shape of a statement: its text with the values an analysis never reads
taken out, so that texts differing only in those values share one analysis.

Agents inline literals (``WHERE id = 4711``), so nearly every text they send
is new; what guardeddb decides about it is not. A literal is taken out of the
shape only where no fact can depend on its value, and only when its spelling
is so plain that no tokenizer or server reads it otherwise:

- the statement is one SELECT, INSERT, UPDATE, DELETE or WITH, nothing after
  it but a semicolon, and the text holds no NUL (the marker below);
- the literal is a plain number (``4711``, ``3.5``) or a single-quoted string
  of letters, digits, spaces and ``_.,:@+-/`` (no quote, backslash, ``%``,
  non-ASCII: nothing that escapes, binds or normalizes);
- it stands where only a value can: compared (``= <> != < > <= >=``) with a
  column name, in an ``IN (...)`` list after a column name, in a ``VALUES``
  row, or as ``LIMIT``/``OFFSET``; followed by a clause or boolean boundary.

Everything else (function arguments, ``LIKE`` patterns, constants compared
with constants, ``ORDER BY 2``, SET values) stays in the shape verbatim, so
texts that differ there have different shapes. The analysis checks a shape
once more before it shares it (``analysis.py``): the facts of the text with
every taken-out literal replaced by a placeholder must equal the facts of
the first text, or the shape is never shared.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlglot import Token, TokenType

__all__ = ["Shape", "shape_of", "with_placeholders"]

_T = TokenType

_PLAIN_NUMBER = re.compile(r"[0-9]{1,18}(?:\.[0-9]{1,18})?\Z")
_PLAIN_STRING = re.compile(r"'[A-Za-z0-9 _.,:@+\-/]{0,256}'\Z")

_STATEMENTS = frozenset({_T.SELECT, _T.INSERT, _T.UPDATE, _T.DELETE, _T.WITH})
_COMPARISONS = frozenset({_T.EQ, _T.NEQ, _T.GT, _T.GTE, _T.LT, _T.LTE})
_NAMES = frozenset({_T.VAR, _T.IDENTIFIER})
#: What may come right before a column reference whose comparison is a
#: whole operand: ``WHERE c``, ``AND c``, ``(c``, ``SET c``; not ``1::c``,
#: ``COLLATE c`` or ``INTERVAL '1' c``.
_NAME_STARTS = frozenset(
    {_T.WHERE, _T.AND, _T.OR, _T.L_PAREN, _T.COMMA, _T.SET, _T.ON, _T.NOT, _T.HAVING}
)
#: What may follow a compared value: the comparison is over when these come.
_BOUNDARIES = frozenset(
    {
        _T.AND,
        _T.OR,
        _T.R_PAREN,
        _T.COMMA,
        _T.SEMICOLON,
        _T.ORDER_BY,
        _T.GROUP_BY,
        _T.LIMIT,
        _T.OFFSET,
        _T.HAVING,
        _T.WHERE,
        _T.RETURNING,
        _T.UNION,
        _T.EXCEPT,
        _T.INTERSECT,
    }
)
_MARK = "\x00"
_PAD = 4
_LITERALS = frozenset({_T.NUMBER, _T.STRING})
_ENDS = _BOUNDARIES | {None}
_LIMIT_ENDS = frozenset({None, _T.OFFSET, _T.SEMICOLON})

#: (shape key, (start, end) of each value taken out, the tokens taken out)
Shape = tuple[str, tuple[tuple[int, int], ...], tuple[Token, ...]]


def _plain(sql: str, tok: Token) -> bool:
    raw = sql[tok.start : tok.end + 1]
    if tok.token_type is _T.NUMBER:
        return _PLAIN_NUMBER.match(raw) is not None
    if tok.token_type is _T.STRING:
        return _PLAIN_STRING.match(raw) is not None
    return False


def _column(types: Sequence[TokenType | None], i: int) -> bool:
    """Token ``i`` ends a bare column reference (``c`` or ``t.c``) that
    starts an operand. ``types`` has a None before and after the tokens."""
    if types[i] not in _NAMES:
        return False
    before = types[i - 1]
    if before is _T.DOT:
        return types[i - 2] in _NAMES and types[i - 3] in _NAME_STARTS
    return before in _NAME_STARTS


def _group(sql: str, tokens: Sequence[Token], types: Sequence[TokenType | None], at: int) -> int:
    """The index of the ``)`` closing a group of plain literals whose ``(``
    is at ``at`` (``(1, 'a', 2)``), or 0 when the group holds anything else."""
    j = at + 1
    while True:
        if types[j] not in _LITERALS or not _plain(sql, tokens[j - _PAD]):
            return 0
        nxt = types[j + 1]
        if nxt is _T.R_PAREN:
            return j + 1
        if nxt is not _T.COMMA:
            return 0
        j += 2


def shape_of(sql: str, tokens: Sequence[Token]) -> Shape | None:
    """The shape key of ``sql`` and the spans of the values taken out of it;
    None when nothing is taken out or the statement is not one to share."""
    if not tokens or tokens[0].token_type not in _STATEMENTS or _MARK in sql:
        return None
    # Indexes below are into ``types``: token i is types[i + _PAD], and the
    # Nones at both ends stand for "nothing there".
    types: list[TokenType | None] = [None] * _PAD
    types += [t.token_type for t in tokens]
    types += [None, None]
    pad = _PAD
    last = len(tokens) - 1 + pad
    semicolon = _T.SEMICOLON
    if semicolon in types and types.index(semicolon) != last:
        return None
    listed: set[int] = set()
    rows: set[int] = set()  # the ``)`` of each VALUES row taken out
    if _T.L_PAREN in types:
        for i, kind in enumerate(types):
            if kind is not _T.L_PAREN:
                continue
            before = types[i - 1]
            if before is _T.IN:
                if not _column(types, i - 2 if types[i - 2] is not _T.NOT else i - 3):
                    continue
            elif before is _T.COMMA and types[i - 2] is _T.R_PAREN:
                if i - 2 not in rows:  # a later VALUES row, after one of ours
                    continue
            elif before is not _T.VALUES:
                continue
            close = _group(sql, tokens, types, i)
            if not close:
                continue
            if before is _T.IN and types[close + 1] not in _ENDS:
                continue
            listed.update(range(i + 1, close, 2))
            if before is not _T.IN:
                rows.add(close)
    spans: list[tuple[int, int]] = []
    values: list[Token] = []
    for i in range(pad, last + 1):
        kind = types[i]
        if kind not in _LITERALS:
            continue
        tok = tokens[i - pad]
        if not _plain(sql, tok):
            continue
        before = types[i - 1]
        if (
            i in listed
            or (before in _COMPARISONS and _column(types, i - 2) and types[i + 1] in _ENDS)
            or (
                kind is _T.NUMBER
                and (before is _T.LIMIT or before is _T.OFFSET)
                and types[i + 1] in _LIMIT_ENDS
            )
        ):
            spans.append((tok.start, tok.end + 1))
            values.append(tok)
    if not spans:
        return None
    # a string and a number stay apart in the key (MySQL compares them apart)
    key = _spliced(sql, spans, [_MARK + ("'" if sql[a] == "'" else "0") for a, _ in spans])
    return key, tuple(spans), tuple(values)


def with_placeholders(sql: str, spans: Sequence[tuple[int, int]], mark: str) -> str:
    """``sql`` with each taken-out value replaced by the placeholder ``mark``."""
    return _spliced(sql, spans, [mark] * len(spans))


def _spliced(sql: str, spans: Sequence[tuple[int, int]], marks: Sequence[str]) -> str:
    parts: list[str] = []
    at = 0
    for (start, end), mark in zip(spans, marks, strict=True):
        parts.append(sql[at:start])
        parts.append(mark)
        at = end
    parts.append(sql[at:])
    return "".join(parts)
