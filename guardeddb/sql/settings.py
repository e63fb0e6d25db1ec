"""What a guarded connection may change about its session: an allowlist per dialect.

A ``SET`` is judged by the variable it names, read from sqlglot's tokens
(comments dropped, quotes stripped, case folded, ``U&`` escapes decoded,
``@@session.``/``SESSION``/``LOCAL`` scopes normalized), never from the raw
text. Every variable not on the allowlist is class ``admin``, which both
presets block; a variable that changes how the server reads SQL text
(``standard_conforming_strings``, ``sql_mode``, ``NAMES``, character sets)
is a *kernel refusal*: refused under every policy, since after it the
analyzer and the server no longer read the same statement.

``search_path`` is deliberately not settable: table rules resolve unqualified
names by the search path the connection had when guardeddb looked at it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from sqlglot import Token, TokenType

__all__ = [
    "APPROVALS_TABLE",
    "AUDIT_HEAD_TABLE",
    "AUDIT_TABLE",
    "OWN_TABLES",
    "SETTABLE",
    "TOKENIZER_SETTINGS",
    "SetVerdict",
    "decode_unicode_identifier",
    "judge_set",
    "judge_variable",
]

#: guardeddb's own state (approvals store, PostgreSQL audit sink): out of
#: reach of every guarded connection, under every policy.
APPROVALS_TABLE = "guardeddb_approvals"
AUDIT_TABLE = "guardeddb_audit"
AUDIT_HEAD_TABLE = "guardeddb_audit_head"
OWN_TABLES = frozenset({APPROVALS_TABLE, AUDIT_TABLE, AUDIT_HEAD_TABLE})

#: Session variables an agent may set, per dialect (lower case). Reviewed:
#: none changes privileges, read-only mode, name resolution or tokenizing.
#: Timeouts may also be raised: downward-only enforcement is not done here
#: (``limits`` in the policy is where resource bounds belong).
SETTABLE: dict[str, frozenset[str]] = {
    "postgres": frozenset(
        {
            "application_name",
            "timezone",
            "datestyle",
            "intervalstyle",
            "extra_float_digits",
            "bytea_output",
            "client_min_messages",
        }
    ),
    "mysql": frozenset(
        {
            "autocommit",
            "time_zone",
            "net_read_timeout",
            "net_write_timeout",
            "group_concat_max_len",
            "lc_time_names",
            "transaction_isolation",
            "tx_isolation",
        }
    ),
    "sqlite": frozenset(),
}

#: Variables that change how the server tokenizes SQL: never settable.
TOKENIZER_SETTINGS: dict[str, frozenset[str]] = {
    "postgres": frozenset(
        {
            "standard_conforming_strings",
            "backslash_quote",
            "escape_string_warning",
            "client_encoding",
            "names",
        }
    ),
    "mysql": frozenset(
        {
            "sql_mode",
            "names",
            "character set",
            "charset",
            "collation_connection",
            "old_mode",
        }
    ),
    "sqlite": frozenset(),
}
_TOKENIZER_PREFIX = {"mysql": ("character_set_",)}

#: Character-set settings, and the values that keep every ASCII byte (quote,
#: backslash, semicolon) meaning what it means to the analyzer: in these
#: encodings a multibyte character is made of bytes >= 0x80 only. Drivers
#: and SQLAlchemy set them at connect (``SET NAMES utf8mb4``); GBK, BIG5,
#: SJIS and friends, whose second bytes can be a backslash, stay refused.
_CHARSET_SETTINGS = frozenset(
    {
        "names",
        "character set",
        "charset",
        "client_encoding",
        "character_set_client",
        "character_set_connection",
        "character_set_results",
        "collation_connection",
    }
)
_SAFE_CHARSETS: dict[str, frozenset[str]] = {
    "postgres": frozenset({"utf8", "unicode", "latin1"}),
    "mysql": frozenset({"utf8", "utf8mb3", "utf8mb4", "latin1", "ascii"}),
}

#: Variables whose change is a privilege change (class ``dcl``).
_DCL_SETTINGS = frozenset({"role", "session_authorization", "password", "default role"})

#: Transaction modes that keep a session as it is; ``WRITE`` is the one
#: that would undo a read-only session.
SAFE_TRANSACTION_MODES = frozenset(
    {
        "ISOLATION",
        "LEVEL",
        "SERIALIZABLE",
        "REPEATABLE",
        "READ",
        "COMMITTED",
        "UNCOMMITTED",
        "ONLY",
        "DEFERRABLE",
        "NOT",
        ",",
    }
)

_SCOPES = frozenset({"SESSION", "LOCAL"})
_ADMIN_SCOPES = frozenset({"GLOBAL", "PERSIST", "PERSIST_ONLY"})
_ASSIGN = frozenset({TokenType.EQ, TokenType.COLON_EQ})
_NOT_NAMES = frozenset(
    {
        TokenType.STRING,
        TokenType.NUMBER,
        TokenType.DOT,
        TokenType.EQ,
        TokenType.COMMA,
        TokenType.L_PAREN,
        TokenType.R_PAREN,
        TokenType.PARAMETER,
        TokenType.PLACEHOLDER,
    }
)


class SetVerdict:
    """What a SET/RESET/DISCARD does: kind, class, and a kernel refusal."""

    __slots__ = ("commits", "kind", "klass", "reason", "refused")

    def __init__(
        self,
        kind: str,
        klass: str,
        refused: str | None = None,
        reason: str | None = None,
        commits: bool = False,
    ) -> None:
        self.kind = kind
        self.klass = klass
        self.refused = refused  # refused under every policy
        self.reason = reason  # not understood (unparsed)
        # MySQL/MariaDB: switching autocommit on commits the open transaction
        self.commits = commits


_RANK = {"other": 0, "dcl": 1, "admin": 2}


def _stricter(a: SetVerdict, b: SetVerdict) -> SetVerdict:
    """A kernel refusal beats not understood, which beats any class."""
    for attr in ("refused", "reason"):
        if getattr(a, attr):
            return a
        if getattr(b, attr):
            return b
    chosen = b if _RANK[b.klass] > _RANK[a.klass] else a
    if (a.commits or b.commits) and not chosen.commits:
        return SetVerdict(chosen.kind, chosen.klass, commits=True)
    return chosen


def _word(tok: Token) -> str:
    """A token as a keyword (upper case), or '' for a quoted identifier or string."""
    if tok.token_type in (TokenType.IDENTIFIER, TokenType.STRING):
        return ""
    return tok.text.upper()


def _name(tok: Token) -> str:
    """A variable name as the server resolves it (lower case: variable names
    are case-insensitive in MySQL, and PostgreSQL folds GUC names)."""
    return tok.text.lower()


def judge_variable(name: str, dialect: str, value: Sequence[Token] = ()) -> SetVerdict:
    """The verdict for setting (or resetting) one session variable to ``value``."""
    name = " ".join(name.lower().split())
    if name in _CHARSET_SETTINGS and value and _safe_charset(value[0], name, dialect):
        return SetVerdict("set", "other")
    if name in TOKENIZER_SETTINGS.get(dialect, frozenset()) or name.startswith(
        _TOKENIZER_PREFIX.get(dialect, ())
    ):
        return SetVerdict(
            "set",
            "admin",
            refused=f"{name} changes how the server reads SQL text, so the analysis "
            "could no longer be trusted",
        )
    if name in _DCL_SETTINGS:
        kind = {"role": "set_role", "session_authorization": "set_session_authorization"}
        return SetVerdict(kind.get(name, "set"), "dcl")
    if name in SETTABLE.get(dialect, frozenset()):
        # Anything but a plain 0/OFF/FALSE may switch autocommit on, which
        # commits the open transaction: the engine commits it first itself.
        off = [_word(t) for t in value] in (["0"], ["OFF"], ["FALSE"])
        return SetVerdict("set", "other", commits=name == "autocommit" and not off)
    return SetVerdict("set", "admin")


def _safe_charset(tok: Token, name: str, dialect: str) -> bool:
    if tok.token_type not in (TokenType.VAR, TokenType.STRING, TokenType.IDENTIFIER):
        return False
    charset = tok.text.lower().replace("-", "")
    if name == "collation_connection":
        charset = charset.split("_", 1)[0]
    return charset in _SAFE_CHARSETS.get(dialect, frozenset())


def _modes(words: Sequence[str]) -> SetVerdict:
    """``SET [SESSION] TRANSACTION`` modes: isolation and READ ONLY are fine."""
    if words and all(w in SAFE_TRANSACTION_MODES for w in words):
        return SetVerdict("set", "other")
    return SetVerdict("set", "admin")


def _split(tokens: Sequence[Token]) -> list[list[Token]]:
    """Top-level comma-separated items (commas inside parentheses kept)."""
    items: list[list[Token]] = [[]]
    depth = 0
    for tok in tokens:
        tt = tok.token_type
        if tt in (TokenType.L_PAREN, TokenType.L_BRACKET, TokenType.L_BRACE):
            depth += 1
        elif tt in (TokenType.R_PAREN, TokenType.R_BRACKET, TokenType.R_BRACE):
            depth -= 1
        if tt is TokenType.COMMA and depth == 0:
            items.append([])
        else:
            items[-1].append(tok)
    return items


def _postgres(tokens: Sequence[Token]) -> SetVerdict:
    words = [_word(t) for t in tokens]
    first = words[0]
    if first == "DISCARD":
        return SetVerdict("set", "admin")  # DISCARD ALL also resets session characteristics
    if first == "RESET":
        rest = words[1:]
        if rest == ["ALL"]:
            return SetVerdict("set", "admin")
        if rest == ["ROLE"]:
            return SetVerdict("set_role", "dcl")
        if rest == ["SESSION", "AUTHORIZATION"]:
            return SetVerdict("set_session_authorization", "dcl")
        if len(tokens) == 2:
            return judge_variable(_name(tokens[1]), "postgres")
        if rest == ["TIME", "ZONE"]:
            return judge_variable("timezone", "postgres")
        return SetVerdict("set", "admin", reason="RESET of an unknown shape")
    # SET [SESSION | LOCAL] ...
    i = 1
    if (
        i < len(words)
        and words[i] in _SCOPES
        and not (
            words[i] == "SESSION"
            and i + 1 < len(words)
            and words[i + 1] in ("AUTHORIZATION", "CHARACTERISTICS")
        )
    ):
        i += 1
    rest = words[i:]
    if not rest:
        return SetVerdict("set", "admin", reason="SET without a target")
    if rest[0] == "ROLE":
        return SetVerdict("set_role", "dcl")
    if rest[:2] == ["SESSION", "AUTHORIZATION"]:
        return SetVerdict("set_session_authorization", "dcl")
    if rest[:4] == ["SESSION", "CHARACTERISTICS", "AS", "TRANSACTION"]:
        return _modes(rest[4:])
    if rest[0] == "TRANSACTION":
        return _modes(rest[1:])
    if rest[0] == "CONSTRAINTS":
        return SetVerdict("set", "other")  # deferral within one transaction; checked at commit
    if rest[:2] == ["TIME", "ZONE"]:
        return judge_variable("timezone", "postgres")
    if rest[0] == "NAMES":
        return judge_variable("names", "postgres", tokens[i + 1 :])
    if rest[0] in ("XML", "SCHEMA"):
        # SET XML OPTION (how strings parse as XML) and SET SCHEMA (search_path)
        return judge_variable("xmloption" if rest[0] == "XML" else "search_path", "postgres")
    # name [. name] {TO | =} value, ...  |  name FROM CURRENT
    parts: list[Token] = []
    j, n = i, len(tokens)
    while True:
        if j >= n or tokens[j].token_type in _NOT_NAMES:
            return SetVerdict("set", "admin", reason="SET of an unknown shape")
        parts.append(tokens[j])
        j += 1
        if j < n and tokens[j].token_type is TokenType.DOT:
            j += 1
            continue
        break
    if j >= n or not (tokens[j].token_type in _ASSIGN or _word(tokens[j]) in ("TO", "FROM")):
        return SetVerdict("set", "admin", reason="SET of an unknown shape")
    value = tokens[j + 1 :] if tokens[j].token_type in _ASSIGN or _word(tokens[j]) == "TO" else ()
    return judge_variable(".".join(_name(t) for t in parts), "postgres", value)


def _mysql_item(item: Sequence[Token], scope: str) -> tuple[SetVerdict, str]:
    """One assignment of a MySQL SET; returns its verdict and the scope that
    carries over to the next item (``SET GLOBAL a = 1, b = 2``)."""
    words = [_word(t) for t in item]
    if not item:
        return SetVerdict("set", "admin", reason="empty SET item"), scope
    i = 0
    if words[0] in _SCOPES | _ADMIN_SCOPES:
        scope = "admin" if words[0] in _ADMIN_SCOPES else "session"
        i = 1
    rest = words[i:]
    if rest[:1] == ["TRANSACTION"]:
        v = _modes(rest[1:])
        return (SetVerdict("set", "admin") if scope == "admin" else v), scope
    if rest[:1] == ["NAMES"] or rest[:1] == ["CHARSET"]:
        return judge_variable("names", "mysql", item[i + 1 :]), scope
    if rest[:2] == ["CHARACTER", "SET"]:
        return judge_variable("names", "mysql", item[i + 2 :]), scope
    if rest[:1] == ["PASSWORD"]:
        return SetVerdict("set", "dcl"), scope
    if rest[:1] == ["ROLE"] or rest[:2] == ["DEFAULT", "ROLE"]:
        return SetVerdict("set_role", "dcl"), scope
    if rest[:1] == ["STATEMENT"]:
        return SetVerdict("set", "admin", reason="SET STATEMENT ... FOR runs a statement"), scope
    toks = item[i:]
    item_scope = scope
    if toks and toks[0].token_type is TokenType.PARAMETER:
        # @user_variable = expr: the session's own scratch space.
        if (
            len(toks) >= 3
            and toks[1].token_type
            in (
                TokenType.VAR,
                TokenType.IDENTIFIER,
                TokenType.STRING,
            )
            and toks[2].token_type in _ASSIGN
        ):
            return SetVerdict("set", "other"), scope
        return SetVerdict("set", "admin", reason="user variable of an unknown shape"), scope
    if toks and toks[0].token_type is TokenType.SESSION_PARAMETER:
        # @@name, @@session.name, @@local.name, @@global.name
        toks = toks[1:]
        item_scope = "session"
        if len(toks) >= 2 and toks[1].token_type is TokenType.DOT:
            qual = toks[0].text.upper()
            if qual in _ADMIN_SCOPES:
                item_scope = "admin"
            elif qual not in _SCOPES:
                return SetVerdict("set", "admin", reason=f"unknown scope @@{qual}"), scope
            toks = toks[2:]
    if len(toks) < 2 or toks[1].token_type not in _ASSIGN:
        return SetVerdict("set", "admin", reason="SET of an unknown shape"), scope
    verdict = judge_variable(_name(toks[0]), "mysql", toks[2:])
    if item_scope == "admin" and not verdict.refused:
        verdict = SetVerdict(verdict.kind, "admin")
    return verdict, scope


def _mysql(tokens: Sequence[Token]) -> SetVerdict:
    words = [_word(t) for t in tokens]
    if words[0] != "SET":
        return SetVerdict("set", "admin", reason=f"{words[0]} is not a MySQL SET")
    verdict: SetVerdict | None = None
    scope = "session"
    for item in _split(tokens[1:]):
        v, scope = _mysql_item(item, scope)
        verdict = v if verdict is None else _stricter(verdict, v)
    return verdict or SetVerdict("set", "admin", reason="SET without a target")


def judge_set(tokens: Sequence[Token], dialect: str) -> SetVerdict | None:
    """The verdict for a SET/RESET/DISCARD statement's tokens, or None when
    the statement is none of those."""
    if not tokens:
        return None
    first = _word(tokens[0])
    if first not in ("SET", "RESET", "DISCARD"):
        return None
    if dialect == "postgres":
        return _postgres(tokens)
    if dialect == "mysql":
        return _mysql(tokens)
    return SetVerdict("set", "admin", reason=f"{first} is not a SQLite statement")


def decode_unicode_identifier(body: str, escape: str = "\\") -> str | None:
    """PostgreSQL ``U&"..."`` body decoded (``\\XXXX``, ``\\+XXXXXX``), None if malformed."""
    out: list[str] = []
    i, n = 0, len(body)
    while i < n:
        c = body[i]
        if c != escape:
            out.append(c)
            i += 1
            continue
        if body[i + 1 : i + 2] == escape:
            out.append(escape)
            i += 2
        elif body[i + 1 : i + 2] == "+" and re.fullmatch(r"[0-9A-Fa-f]{6}", body[i + 2 : i + 8]):
            out.append(chr(int(body[i + 2 : i + 8], 16)))
            i += 8
        elif re.fullmatch(r"[0-9A-Fa-f]{4}", body[i + 1 : i + 5]):
            out.append(chr(int(body[i + 1 : i + 5], 16)))
            i += 5
        else:
            return None
    return "".join(out)
