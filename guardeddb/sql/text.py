"""Sanitized query text and query summaries, from sqlglot's tokens.

Both follow the OpenTelemetry database semantic conventions: every literal
becomes ``?`` (signs included, all-literal ``IN`` lists collapse to ``(?)``,
comments dropped, placeholders and everything else kept as written), and the
summary names the operations and their targets in order of appearance
(``INSERT orders SELECT customers``), case preserved, at most 255 characters.
A CTE's name is not a target (what it reads is); ``CALL proc(...)`` is
summarized ``CALL proc``, and ``proc`` is the statement's stored procedure.

Working on tokens rather than on a parse tree keeps the user's spelling and
whitespace, and still works for statements no parser understands: a query
that cannot even be tokenized falls back to a regex that replaces anything
that could be a literal, so a secret never reaches a span because the SQL
was odd.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import NamedTuple

from sqlglot import Token, TokenType
from sqlglot.dialects.dialect import Dialect

__all__ = ["MAX_SUMMARY", "MAX_TOKENIZED", "Summarized", "sanitize_and_summarize"]

MAX_SUMMARY = 255
#: Longer statements are sanitized by the regex fallback alone: tokenizing
#: megabytes of SQL for a span attribute is not worth the time.
MAX_TOKENIZED = 1 << 20

_T = TokenType
_LITERALS = frozenset(
    {
        _T.STRING,
        _T.NUMBER,
        _T.HEX_STRING,
        _T.BIT_STRING,
        _T.BYTE_STRING,
        _T.NATIONAL_STRING,
        _T.RAW_STRING,
        _T.HEREDOC_STRING,
        _T.UNICODE_STRING,
        _T.NATIONAL_RAW_STRING,
    }
)
_QUOTED = _LITERALS | {_T.IDENTIFIER}
_OPERANDS = frozenset({_T.VAR, _T.IDENTIFIER, _T.R_PAREN, _T.R_BRACKET, _T.PLACEHOLDER})
_PUNCT = frozenset(
    {_T.L_PAREN, _T.R_PAREN, _T.COMMA, _T.SEMICOLON, _T.DOT, _T.EQ, _T.STAR, _T.L_BRACE}
)

_OPERATIONS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE", "MERGE", "REPLACE", "UPSERT"})
# Words after which an operation keyword continues the statement rather than
# starting a new operation (UNION SELECT, FOR UPDATE, ON DUPLICATE KEY UPDATE,
# DO UPDATE, WHEN MATCHED THEN DELETE).
_NOT_OPERATION_AFTER = frozenset(
    {"UNION", "INTERSECT", "EXCEPT", "MINUS", "ALL", "DISTINCT", "KEY", "FOR", "DO", "THEN", "ON"}
)
_DDL = frozenset({"CREATE", "ALTER", "DROP", "TRUNCATE"})
_CALLS = frozenset({"EXEC", "EXECUTE", "CALL"})
_OBJECT_TYPES = frozenset(
    {
        "TABLE",
        "INDEX",
        "VIEW",
        "PROCEDURE",
        "FUNCTION",
        "TRIGGER",
        "DATABASE",
        "SCHEMA",
        "SEQUENCE",
        "USER",
        "ROLE",
        "TYPE",
        "EXTENSION",
        "DOMAIN",
        "EVENT",
        "POLICY",
        "PUBLICATION",
        "SUBSCRIPTION",
        "SERVER",
        "TABLESPACE",
    }
)
_DDL_MODIFIERS = frozenset(
    {
        "OR",
        "REPLACE",
        "UNIQUE",
        "CLUSTERED",
        "NONCLUSTERED",
        "TEMP",
        "TEMPORARY",
        "GLOBAL",
        "LOCAL",
        "UNLOGGED",
        "MATERIALIZED",
        "RECURSIVE",
        "VIRTUAL",
        "FOREIGN",
        "ONLINE",
        "OFFLINE",
        "IF",
        "NOT",
        "EXISTS",
        "CONCURRENTLY",
        "ONLY",
    }
)
_TABLE_AFTER = frozenset({"FROM", "JOIN", "INTO", "USING"})
_SKIP_BEFORE_NAME = frozenset({"ONLY", "LATERAL", "IGNORE", "LOW_PRIORITY", "DELAYED", "QUICK"})
_FROM_LIST_ENDS = frozenset(
    {
        "WHERE",
        "GROUP",
        "ORDER",
        "HAVING",
        "LIMIT",
        "UNION",
        "INTERSECT",
        "EXCEPT",
        "ON",
        "SET",
        "WINDOW",
        "RETURNING",
        "JOIN",
        "VALUES",
        "OFFSET",
        "FETCH",
        "FOR",
        "QUALIFY",
    }
)

_FALLBACK = re.compile(
    r"""
      '(?:[^'\\]|''|\\.)*(?:'|$)             # single-quoted string, maybe unterminated
    | "(?:[^"\\]|""|\\.)*(?:"|$)             # double-quoted (a string in MySQL)
    | \$\$.*?(?:\$\$|$)                      # PostgreSQL dollar quoting
    | \b0[xX][0-9a-fA-F]+\b                  # hex
    | (?<![\w$:])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?   # numbers
    """,
    re.S | re.X,
)
_FALLBACK_WORD = re.compile(r"\s*([A-Za-z]+)")


def _upper(tok: Token) -> str:
    """The keyword a token spells, or '' for quoted identifiers and literals."""
    return "" if tok.token_type in _QUOTED else tok.text.upper()


def _strip_comments(gap: str, hash_comments: bool) -> str:
    """Keep only the whitespace of the text between two tokens.

    The tokenizer consumed everything else, so what lies between tokens is
    whitespace and comments; comments may hold anything, so they go.
    """
    if gap.isspace() or not gap:
        return gap
    out: list[str] = []
    i, n = 0, len(gap)
    while i < n:
        c = gap[i]
        if (c == "-" and gap.startswith("--", i)) or (c == "#" and hash_comments):
            j = gap.find("\n", i)
            i = n if j < 0 else j
        elif c == "/" and gap.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if gap.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                elif gap.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                else:
                    i += 1
        else:
            if c.isspace():
                out.append(c)
            i += 1
    return "".join(out)


def _is_placeholder_number(tokens: Sequence[Token], i: int) -> bool:
    """``$1``, ``:1`` and ``?1`` are parameter markers, not literals."""
    if i == 0:
        return False
    prev = tokens[i - 1]
    return (
        prev.token_type in (_T.PARAMETER, _T.COLON, _T.PLACEHOLDER)
        and prev.end + 1 == tokens[i].start
    )


def _sanitize(sql: str, tokens: Sequence[Token], hash_comments: bool) -> str:
    out: list[str] = []
    pos = 0
    n = len(tokens)
    i = 0
    while i < n:
        tok = tokens[i]
        tt = tok.token_type
        start = tok.start
        replace = tt in _LITERALS and not (tt is _T.NUMBER and _is_placeholder_number(tokens, i))
        if (
            tt in (_T.DASH, _T.PLUS)
            and i + 1 < n
            and tokens[i + 1].token_type in (_T.NUMBER, _T.DOT)
            and tokens[i + 1].start == tok.end + 1
            and (i == 0 or tokens[i - 1].token_type not in _OPERANDS)
        ):
            # A sign glued to a number is part of the literal: -12 -> ?
            out.append(_strip_comments(sql[pos:start], hash_comments))
            i += 1
            pos = start = tokens[i].start
            if tokens[i].token_type is _T.NUMBER:
                out.append("?")
                pos = tokens[i].end + 1
                i += 1
            continue
        if (
            tt is _T.DOT
            and i + 1 < n
            and tokens[i + 1].token_type is _T.NUMBER
            and tokens[i + 1].start == tok.end + 1
            and (i == 0 or tokens[i - 1].token_type not in _OPERANDS)
        ):
            # .01 is one literal, which the tokenizer splits in two.
            out.append(_strip_comments(sql[pos:start], hash_comments))
            out.append("?")
            pos = tokens[i + 1].end + 1
            i += 2
            continue
        if tt is _T.IN and i + 1 < n and tokens[i + 1].token_type is _T.L_PAREN:
            # IN (1, 2, 'x') -> IN (?): literal lists only; parameter lists stay.
            j = i + 2
            literal_only = True
            while j < n and tokens[j].token_type is not _T.R_PAREN:
                t = tokens[j].token_type
                if (
                    t in _LITERALS
                    or t is _T.COMMA
                    or (
                        t in (_T.DASH, _T.PLUS, _T.DOT)
                        and j + 1 < n
                        and tokens[j + 1].token_type
                        in (
                            _T.NUMBER,
                            _T.DOT,
                        )
                    )
                ):
                    j += 1
                else:
                    literal_only = False
                    break
            if literal_only and j < n and j > i + 2:
                out.append(_strip_comments(sql[pos:start], hash_comments))
                out.append(sql[start : tokens[i + 1].end + 1])
                out.append("?)")
                pos = tokens[j].end + 1
                i = j + 1
                continue
        out.append(_strip_comments(sql[pos:start], hash_comments))
        out.append("?" if replace else sql[start : tok.end + 1])
        pos = tok.end + 1
        i += 1
    out.append(_strip_comments(sql[pos:], hash_comments))
    return "".join(out)


class _Summary:
    """Collects summary words, refusing any that would pass the length cap."""

    __slots__ = ("full", "length", "words")

    def __init__(self) -> None:
        self.words: list[str] = []
        self.length = 0
        self.full = False

    def add(self, word: str) -> None:
        if self.full:
            return
        extra = len(word) + (1 if self.words else 0)
        if self.length + extra > MAX_SUMMARY:
            self.full = True
            return
        self.words.append(word)
        self.length += extra


def _read_name(
    sql: str, tokens: Sequence[Token], i: int, relation: bool = True
) -> tuple[str | None, int]:
    """A possibly qualified name starting at ``tokens[i]``, as written.

    With ``relation``, a name followed by ``(`` is a table function, not a
    table; after INTO or CREATE TABLE the parenthesis is a column list.
    """
    n = len(tokens)
    while i < n and _upper(tokens[i]) in _SKIP_BEFORE_NAME:
        i += 1
    if i >= n or tokens[i].token_type in _PUNCT or tokens[i].token_type in _LITERALS:
        return None, i
    first = i
    while i + 2 < n and tokens[i + 1].token_type is _T.DOT:
        i += 2
    if relation and i + 1 < n and tokens[i + 1].token_type is _T.L_PAREN:
        return None, i + 1  # a table function, not a table
    return sql[tokens[first].start : tokens[i].end + 1], i + 1


def _cte_names(tokens: Sequence[Token]) -> frozenset[str]:
    """Names a WITH clause defines (``WITH x AS (...)``, ``, y (a, b) AS
    MATERIALIZED (...)``): they name no collection, so they are no targets.

    Unquoted names are compared case-folded, as the servers compare them.
    """
    names: set[str] = set()
    n = len(tokens)
    for i in range(n - 2):
        if _upper(tokens[i]) not in ("WITH", "RECURSIVE") and tokens[i].token_type is not _T.COMMA:
            continue
        name_tok = tokens[i + 1]
        if name_tok.token_type not in (_T.VAR, _T.IDENTIFIER) and not name_tok.text.isidentifier():
            continue
        j = i + 2
        if j < n and tokens[j].token_type is _T.L_PAREN:  # a column list
            depth = 0
            while j < n:
                depth += {_T.L_PAREN: 1, _T.R_PAREN: -1}.get(tokens[j].token_type, 0)
                j += 1
                if depth == 0:
                    break
        if j < n and _upper(tokens[j]) == "AS":
            k = j + 1
            while k < n and _upper(tokens[k]) in ("NOT", "MATERIALIZED"):
                k += 1
            if k < n and tokens[k].token_type is _T.L_PAREN:
                names.add(_fold(name_tok))
    return frozenset(names)


def _fold(tok: Token) -> str:
    """A name as the server compares it: quoted exactly, unquoted case-folded."""
    return tok.text if tok.token_type is _T.IDENTIFIER else tok.text.lower()


def _summarize_statement(
    sql: str, tokens: Sequence[Token], out: _Summary, procedure: list[str]
) -> None:
    """Add one statement's operations and targets to ``out``; a CALL's
    procedure name goes to ``procedure`` too."""
    n = len(tokens)
    first = _upper(tokens[0])
    if first in _DDL or first in _CALLS:
        out.add(tokens[0].text)
        i = 1
        object_type = None
        while i < n:
            word = _upper(tokens[i])
            if first in _DDL and word in _OBJECT_TYPES and object_type is None:
                object_type = word
                out.add(tokens[i].text)
            elif word not in _DDL_MODIFIERS:
                break
            i += 1
        if first in _CALLS or object_type is not None or first == "TRUNCATE":
            name, _ = _read_name(sql, tokens, i, relation=False)
            if name:
                out.add(name)
                if first == "CALL":
                    procedure.append(name)
        return

    ctes = _cte_names(tokens) if first == "WITH" else frozenset()

    def target(name: str | None, at: int) -> str | None:
        """``name`` unless it is one token naming a CTE of this statement."""
        if name is None or not ctes:
            return name
        tok = tokens[at]
        return None if tok.end + 1 - tok.start == len(name) and _fold(tok) in ctes else name

    depth = 0
    from_depths: list[int] = []
    prev = ""
    i = 0
    found_operation = False
    while i < n:
        tok = tokens[i]
        tt = tok.token_type
        word = _upper(tok)
        if tt is _T.L_PAREN:
            depth += 1
        elif tt is _T.R_PAREN:
            depth -= 1
            while from_depths and from_depths[-1] > depth:
                from_depths.pop()
        elif (
            word in _OPERATIONS
            and prev not in _NOT_OPERATION_AFTER
            and not (i + 1 < n and tokens[i + 1].token_type is _T.L_PAREN)
        ):
            out.add(tok.text)
            found_operation = True
            if word == "UPDATE":
                name, i = _read_name(sql, tokens, i + 1)
                if name:
                    out.add(name)
                prev = word
                continue
        elif word in _TABLE_AFTER:
            name, j = _read_name(sql, tokens, i + 1, relation=word != "INTO")
            name = target(name, j - 1)
            if name:
                out.add(name)
            if word == "FROM":
                from_depths.append(depth)
            i, prev = j, word
            continue
        elif tt is _T.COMMA and from_depths and from_depths[-1] == depth:
            name, j = _read_name(sql, tokens, i + 1)
            if name:
                if target(name, j - 1):
                    out.add(name)
                i, prev = j, ","
                continue
        elif word in _FROM_LIST_ENDS and from_depths and from_depths[-1] == depth:
            from_depths.pop()
        prev = word
        i += 1
    if not found_operation and tokens[0].token_type not in _QUOTED:
        out.add(tokens[0].text)  # BEGIN, COMMIT, SET, SHOW, PRAGMA, GRANT, ...


class Summarized(NamedTuple):
    """What the text of a query says for telemetry and audit."""

    sanitized: str  # db.query.text: every literal replaced by ?
    summary: str  # db.query.summary; '' when nothing could be named
    tokens: list[Token] | None  # None: the text could not be tokenized
    procedure: str = ""  # db.stored_procedure.name of a lone CALL


def _fallback(sql: str) -> Summarized:
    sanitized = _FALLBACK.sub("?", sql)
    m = _FALLBACK_WORD.match(sql)
    return Summarized(sanitized, (m.group(1) if m else ""), None)


def _call_tails(sql: str, tokens: list[Token], dialect: Dialect) -> list[Token]:
    """``tokens`` with the raw tail of each ``CALL`` tokenized too.

    sqlglot keeps what follows a command keyword as one string token (with
    an unreliable start offset); read as one literal, ``CALL proc(1)`` would
    lose its procedure name. A tail that cannot be tokenized stays one
    literal, sanitized whole. Only for text and summary: the analysis reads
    commands with its own expansion.
    """
    out: list[Token] = []
    for i, tok in enumerate(tokens):
        prev = tokens[i - 1] if i else None
        if (
            tok.token_type is _T.STRING
            and prev is not None
            and prev.token_type is _T.COMMAND
            and prev.text.upper() == "CALL"
        ):
            start = sql.find(tok.text, prev.end + 1)
            try:
                tail = dialect.tokenize(tok.text) if start >= 0 else None
            except Exception:  # a tail the tokenizer cannot read: one literal
                tail = None
            if tail is not None and not any(t.token_type is _T.SEMICOLON for t in tail):
                out.extend(
                    Token(t.token_type, t.text, t.line, t.col, t.start + start, t.end + start)
                    for t in tail
                )
                continue
        out.append(tok)
    return out


def sanitize_and_summarize(
    sql: str, dialect: Dialect, tokens: list[Token] | None = None
) -> Summarized:
    """Sanitized text, summary, tokens and procedure of ``sql`` in ``dialect``;
    never raises. ``tokens``: the text's tokens when the caller has them.

    ``tokens`` is None when the text could not be tokenized (or is too long
    to try): the caller must then treat the statement as not understood.
    """
    if len(sql) > MAX_TOKENIZED:
        return _fallback(sql)
    if tokens is None:
        try:
            tokens = dialect.tokenize(sql)
        except Exception:  # any tokenizer failure: sanitize by the fallback
            return _fallback(sql)
    hash_comments = "#" in dialect.tokenizer_class.COMMENTS
    shown = (
        _call_tails(sql, tokens, dialect)
        if _T.COMMAND in {t.token_type for t in tokens}
        else tokens
    )
    sanitized = _sanitize(sql, shown, hash_comments)
    summary = _Summary()
    procedures: list[str] = []
    start = count = 0
    for i, tok in enumerate([*shown, None]):
        if tok is None or tok.token_type is _T.SEMICOLON:
            if i > start:
                count += 1
                if summary.words and not summary.full:
                    summary.words[-1] += ";"
                    summary.length += 1
                _summarize_statement(sql, shown[start:i], summary, procedures)
            start = i + 1
    text = " ".join(summary.words).rstrip(";")
    procedure = procedures[0] if count == 1 and procedures else ""
    return Summarized(sanitized, text, tokens, procedure)
