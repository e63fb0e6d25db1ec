"""What guardeddb knows about one SQL text, computed once and cached."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
from contextvars import ContextVar
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any

from sqlglot import Token, TokenType, exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ErrorLevel
from sqlglot.tokens import Tokenizer

from .classify import (
    Statement,
    called_names,
    classify,
    expand_commands,
    kernel_refusal,
    names_own_state,
    normalize_tokens,
    untokenizable,
)
from .lineage import Lineage
from .pgparse import second_opinion
from .pyformat import convert
from .settings import SAFE_TRANSACTION_MODES
from .shape import shape_of, with_placeholders
from .text import MAX_TOKENIZED, sanitize_and_summarize

__all__ = [
    "CACHE_SIZE",
    "CONVERTING",
    "MAX_CACHED_TEXT",
    "Analysis",
    "analyze",
    "cache_counts",
    "cache_for",
    "fresh",
    "oversized",
    "trees_of",
]

#: Distinct SQL texts kept per dialect; applications have a bounded set of
#: statements, and the cache must stay bounded when they do not.
CACHE_SIZE = 4096
MAX_CACHED_TEXT = 64 * 1024


# sqlglot logs a warning for every statement it reads as an opaque Command
# (PostgreSQL's SHOW, which SQLAlchemy sends at connect). guardeddb judges
# those itself (fail closed), so for its own parses the warning is noise in
# the application's logs; other sqlglot users still see it.
_PARSING: ContextVar[bool] = ContextVar("guardeddb_parsing", default=False)


class _OwnCommandFallbacks(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not (_PARSING.get() and "Falling back to parsing as a 'Command'" in str(record.msg))


logging.getLogger("sqlglot").addFilter(_OwnCommandFallbacks())
_log = logging.getLogger("guardeddb")

# sqlglot's parse errors name its own classes and print whole tokens
# (``<Token token_type: TokenType.WHERE, text: WHERE, ...>``); a refusal
# says what was wrong in the user's words, and never quotes a literal.
_TOKEN_REPR = re.compile(r"<Token token_type: TokenType\.(\w+), text: (.*?), line: \d+.*?>", re.S)
_MISSING_PART = re.compile(r"Required keyword: '\w+' missing for <class '[\w.]+'>")
_CLASS_REPR = re.compile(r"<class '[\w.]+'>")


def _token_words(m: re.Match[str]) -> str:
    kind, text = m[1], m[2]
    if kind.endswith("STRING") or kind == "NUMBER":
        return "a value"
    return repr(text[:40])


def parse_problem(exc: Exception) -> str:
    """Why sqlglot could not parse a statement, for a person: where, and what
    was expected, without parser class names or the values of literals."""
    errors = getattr(exc, "errors", None)
    if not errors or not isinstance(errors[0], dict):
        _log.debug("guardeddb: the SQL parser failed", exc_info=exc)
        return "parse error: the SQL parser could not read this statement"
    first = errors[0]
    what = str(first.get("description") or "not valid SQL")
    what = _TOKEN_REPR.sub(_token_words, what)
    what = _MISSING_PART.sub("an incomplete expression", what)
    what = _CLASS_REPR.sub("an expression", what)
    line, col = first.get("line"), first.get("col")
    where = f" at line {line}, column {col}" if line and col else ""
    return f"parse error{where}: {what[:1].lower()}{what[1:200]}"


@dataclass(frozen=True, slots=True, eq=False)
class Analysis:
    """Facts about a SQL text that do not depend on who runs it.

    ``eq=False``: each analysis is its own cache key (hashed by identity),
    so per-connection caches keyed by it cost one pointer hash.
    """

    text: str
    dialect: str
    sanitized: str  # every literal replaced by ?
    summary: str  # db.query.summary; '' when nothing could be named
    fingerprint: str  # stable id of the statement's shape
    statements: tuple[Statement, ...]
    #: (offset, text) of each ``%s``/``%(name)s`` read as a value, outside
    #: comments and strings: where client-side binding may substitute (_surface.py)
    placeholders: tuple[tuple[int, str], ...] = ()
    #: db.stored_procedure.name: the procedure a lone ``CALL`` runs, else ''
    procedure: str = ""
    #: the analysis of the first text of this one's shape (``sql/shape.py``),
    #: when this one is a copy of it; None for an analysis of its own
    shape: Analysis | None = None
    #: the text the statements were read from when it is not ``text``: as a
    #: pyformat driver given parameters sends it, values as `` ? ``
    #: (``sql/pyformat.py``); '' otherwise
    sent: str = ""

    @property
    def key(self) -> Analysis:
        """What caches of facts (decisions, mask plans, span attributes) key
        on: one object for every text of a shape."""
        return self.shape or self

    @property
    def unparsed(self) -> str | None:
        """Why some statement was not understood, or None when all were."""
        return next((s.unparsed for s in self.statements if s.unparsed), None)

    @property
    def kinds(self) -> frozenset[str]:
        return frozenset().union(*(s.kinds for s in self.statements))

    @property
    def classes(self) -> frozenset[str]:
        return frozenset().union(*(s.classes for s in self.statements))

    @property
    def tables(self) -> frozenset[str]:
        return frozenset().union(*(s.tables for s in self.statements))

    @property
    def functions(self) -> frozenset[str]:
        return frozenset().union(*(s.functions for s in self.statements))


@lru_cache(maxsize=32)
def _dialect(name: str) -> Dialect:
    return Dialect.get_or_raise(name)


_LOCAL = threading.local()


def _tokenize(name: str, text: str) -> list[Token]:
    """``Dialect.tokenize`` with a tokenizer kept per thread and dialect:
    building one costs as much as tokenizing a short statement."""
    kept: dict[str, Tokenizer] = _LOCAL.__dict__.setdefault("tokenizers", {})
    tokenizer = kept.get(name)
    if tokenizer is None:
        tokenizer = kept[name] = _dialect(name).tokenizer()
    return tokenizer.tokenize(text)


def _chunks(tokens: list[Token]) -> list[list[Token]]:
    """The tokens of each statement, split where sqlglot's parser splits.

    A chunk holding only a semicolon (its comments, ``SELECT 1; -- done``)
    is no statement and is left out.
    """
    chunks: list[list[Token]] = [[]]
    for tok in tokens:
        if tok.token_type is TokenType.SEMICOLON:
            chunks.append([])
        else:
            chunks[-1].append(tok)
    return [c for c in chunks if c]


def _words(chunk: list[Token]) -> list[str]:
    return [t.text.upper() if t.token_type is not TokenType.IDENTIFIER else "" for t in chunk]


def _transaction_control(chunk: list[Token]) -> Statement | None:
    """SAVEPOINT, RELEASE and START TRANSACTION, which sqlglot misreads.

    SQLAlchemy's nested transactions send the first two; recognizing their
    exact shape keeps them working without trusting a misparse.
    """
    words = _words(chunk)
    n = len(words)
    if (words[0] == "SAVEPOINT" and n == 2) or (
        words[0] == "RELEASE" and (n == 2 or (n == 3 and words[1] == "SAVEPOINT"))
    ):
        return Statement.simple("savepoint" if words[0] == "SAVEPOINT" else "release")
    if words[:2] == ["START", "TRANSACTION"] and all(w in _TRANSACTION_MODES for w in words[2:]):
        return Statement.simple("begin", "admin" if "WRITE" in words else "other")
    return None


# Transaction modes of START TRANSACTION: the ones that keep a session as it
# is (settings.py) plus READ WRITE and MySQL's WITH CONSISTENT SNAPSHOT.
_TRANSACTION_MODES = SAFE_TRANSACTION_MODES | {"WRITE", "WITH", "CONSISTENT", "SNAPSHOT"}


_PYFORMAT = frozenset({"s", "b", "t"})


def _placeholders(tokens: list[Token]) -> list[Token]:
    """``%s``, ``%b``, ``%t`` and ``%(name)s`` (psycopg, PyMySQL) as placeholders.

    The parser knows ``?`` but reads ``%s`` as a broken modulo; the tokens
    are rewritten so that parameterized statements parse as what they are.
    """
    out: list[Token] = []
    i, n = 0, len(tokens)
    while i < n:
        tok = tokens[i]
        if tok.token_type is TokenType.MOD and i + 1 < n:
            nxt = tokens[i + 1]
            end = None
            if (
                nxt.start == tok.end + 1
                and nxt.token_type is TokenType.VAR
                and nxt.text in _PYFORMAT
            ):
                end = i + 1
            elif (
                nxt.token_type is TokenType.L_PAREN
                and nxt.start == tok.end + 1
                and i + 3 < n
                and tokens[i + 2].token_type is TokenType.VAR
                and tokens[i + 3].token_type is TokenType.R_PAREN
                and i + 4 < n
                and tokens[i + 4].text in _PYFORMAT
                and tokens[i + 4].start == tokens[i + 3].end + 1
            ):
                end = i + 4
            if end is not None:
                last = tokens[end]
                out.append(
                    Token(
                        TokenType.PLACEHOLDER,
                        "?",
                        line=tok.line,
                        col=tok.col,
                        start=tok.start,
                        end=last.end,
                        comments=[*tok.comments, *last.comments],
                    )
                )
                i = end + 1
                continue
        out.append(tok)
        i += 1
    return out


def _marks(text: str, tokens: list[Token] | None) -> tuple[tuple[int, str], ...]:
    """Where the analysis read a ``%s``/``%(name)s`` placeholder: (offset, text)."""
    if tokens is None:
        return ()
    return tuple(
        (t.start, text[t.start : t.end + 1])
        for t in _placeholders(tokens)
        if t.token_type is TokenType.PLACEHOLDER and text[t.start] == "%"
    )


def _statements(
    sql: str,
    tokens: list[Token] | None,
    dialect: Dialect,
    name: str,
    converted: bool = False,
    trees: list[exp.Expr | None] | None = None,
) -> tuple[Statement, ...]:
    """The facts of each statement of ``sql``; ``converted``: ``sql`` is a
    pyformat driver's text as sent (``pyformat.py``), its values spelled ``?``.
    ``trees``, when given, receives each statement's syntax tree (None for
    one read without a tree), in the statements' order: see ``trees_of``."""
    statements: list[Statement] = []

    def add(fact: Statement, tree: exp.Expr | None = None) -> None:
        statements.append(fact)
        if trees is not None:
            trees.append(tree)

    if tokens is None:
        add(untokenizable(sql, name))
        return tuple(statements)
    if name == "mysql" and ("/*!" in sql or "/*M!" in sql):
        # MySQL runs the inside of /*! ... */; every parser skips it.
        add(Statement.unknown("MySQL executable comment (/*! ... */)"))
        return tuple(statements)
    if name in ("postgres", "mysql") and not converted:
        tokens = _placeholders(tokens)
    tokens, differential = normalize_tokens(tokens, sql, name)
    if differential:
        # The server would split or read this text otherwise: no fact holds,
        # so no policy may let it through.
        add(replace(Statement.unknown(differential), refused=differential))
        return tuple(statements)
    for chunk in _chunks(tokens):
        control = _transaction_control(chunk)
        if control is not None:
            add(control)
            continue
        facts, problem = expand_commands(chunk, name)
        refused = kernel_refusal(facts, name)
        if refused:
            add(replace(Statement.unknown(refused), refused=refused))
            continue
        if problem:
            add(Statement.unknown(problem))
            continue
        parsing = _PARSING.set(True)
        try:
            parsed = dialect.parser(error_level=ErrorLevel.RAISE).parse(chunk, sql)
        except Exception as exc:  # any parser failure, even its own bugs: not understood
            add(Statement.unknown(parse_problem(exc)))
            continue
        finally:
            _PARSING.reset(parsing)
        text = sql[chunk[0].start : chunk[-1].end + 1]
        for tree in parsed:
            if tree is None:
                continue
            if converted and name == "postgres" and _operator_as_value(tree):
                add(Statement.unknown(_OPERATOR_AS_VALUE))
                continue
            try:
                fact = classify(tree, text, name, facts)
            except Exception as exc:  # a tree shape the classifier did not expect
                _log.debug("guardeddb: statement not classified", exc_info=exc)
                fact = Statement.unknown("a statement shape the analyzer does not classify")
            if fact.tables_unknown and not fact.unparsed:
                # An opaque command (CALL p(pg_read_file(...))): its arguments
                # were never parsed, but the names it calls are in its tokens.
                fact = replace(fact, functions=called_names(facts))
            add(fact, tree)
    return tuple(statements)


def trees_of(analysis: Analysis) -> list[exp.Expr | None] | None:
    """The syntax tree of each of ``analysis``'s statements (None where it
    has none), read from the same normalized tokens as its facts (comments
    dropped, ``U&`` names decoded, pyformat markers as values, empty
    statements left out), so that ``trees_of(a)[i]`` is the tree of
    ``a.statements[i]``. None when that cannot be had (the analysis keeps
    only facts: checks that need a tree ask for it again, rarely)."""
    sql = analysis.sent or analysis.text
    try:
        tokens = _tokenize(analysis.dialect, sql)
    except Exception:  # the analysis could not tokenize it either
        return None
    out: list[exp.Expr | None] = []
    _statements(sql, tokens, _dialect(analysis.dialect), analysis.dialect, bool(analysis.sent), out)
    return out if len(out) == len(analysis.statements) else None


def cache_for(dialect: str, converted: bool = False) -> dict[str, Analysis]:
    """The analysis cache of one dialect, keyed by SQL text; ``converted``:
    the one of texts executed with parameters by a pyformat driver, which
    rewrites them (``pyformat.py``), so one text has two analyses.

    Guarded cursors look statements up here directly: a dict hit is the
    cheapest thing the hot path can do. ``analyze`` keeps it bounded.
    """
    key = dialect + "%" if converted else dialect
    cache = _CACHES.get(key)
    if cache is None:
        cache = _CACHES.setdefault(key, {})
    return cache


_CACHES: dict[str, dict[str, Analysis]] = {}

#: Per dialect, shape key -> the analysis of its first text while the shape
#: is unchecked, True once checked, False when it may not be shared.
_SEEN: dict[str, dict[str, Analysis]] = {}
_SHAPES: dict[str, dict[str, Analysis | None]] = {}
_PLACEHOLDER = {"sqlite": "?", "postgres": "%s", "mysql": "%s"}

#: analyze() outcomes since start: [shape hits, full analyses, shapes checked,
#: shapes refused]; read by the ``guardeddb.analysis.cache`` metric.
_COUNTS = [0, 0, 0, 0]


def cache_counts() -> dict[str, int]:
    """How statements were analyzed since start: ``shape`` (a known shape
    with other literals), ``full`` (analyzed from scratch), ``checked`` and
    ``refused`` (shapes checked before sharing, and those found unshareable)."""
    hits, full, checked, refused = _COUNTS
    return {"shape": hits, "full": full, "checked": checked, "refused": refused}


def _bounded(cache: dict[str, Any], key: str, value: Any) -> None:
    if len(cache) >= CACHE_SIZE:
        # Dropping everything at once keeps the bound without per-hit LRU
        # bookkeeping; a working set reloads in a few hundred microseconds.
        cache.clear()
    cache[key] = value


def _same_facts(a: tuple[Statement, ...], b: tuple[Statement, ...]) -> bool:
    """Whether two texts' statements say the same: every fact a decision or
    a mask plan reads, lineage included."""
    if a != b:
        return False
    for x, y in zip(a, b, strict=True):
        ox, oy = x.outputs, y.outputs
        if isinstance(ox, Lineage) or isinstance(oy, Lineage):
            if not (isinstance(ox, Lineage) and isinstance(oy, Lineage)):
                return False
            if (ox.known, ox.reads, ox.fold, ox.tree is None) != (
                oy.known,
                oy.reads,
                oy.fold,
                oy.tree is None,
            ):
                return False
    return True


def _shared(
    text: str, dialect: str, d: Dialect, tokens: list[Token]
) -> tuple[Analysis | None, str | None]:
    """The analysis of ``text`` copied from the first text of its shape, if
    that shape may be shared; else None, and the shape key to remember the
    full analysis under (None when it has none or may not be shared)."""
    found = shape_of(text, tokens)
    if found is None:
        return None, None
    key, spans, values = found
    if names_own_state(values):
        # The kernel reads strings (guardeddb's own table names in SQL text
        # a function could run): a text whose own values it refuses is
        # analyzed whole, never copied from one it let through.
        return None, None
    shapes = _SHAPES.setdefault(dialect, {})
    if key in shapes:
        template = shapes[key]
        if template is None:
            return None, None
    else:
        seen = _SEEN.setdefault(dialect, {})
        first = seen.pop(key, None)
        if first is None:
            return None, key  # first sighting: nothing to check against yet
        # Second sighting: before sharing, the facts of the text with every
        # taken-out value replaced by a placeholder must equal the first
        # text's. A classifier that read one of those values (a constant
        # folded, a pattern, an argument) would tell them apart.
        _COUNTS[2] += 1
        probe = with_placeholders(text, spans, _PLACEHOLDER[dialect])
        try:
            probe_tokens = _tokenize(dialect, probe)
        except Exception:  # cannot be: it tokenized with values; refuse to share
            probe_tokens = None
        same = probe_tokens is not None and _same_facts(
            first.statements, _statements(probe, probe_tokens, d, dialect)
        )
        template = first if same else None
        if template is None:
            _COUNTS[3] += 1
        _bounded(shapes, key, template)
        if template is None:
            return None, None
    _COUNTS[0] += 1
    marks = _marks(text, tokens) if "%" in text and dialect in ("postgres", "mysql") else ()
    t = template
    return Analysis(
        text, t.dialect, t.sanitized, t.summary, t.fingerprint, t.statements, marks, t.procedure, t
    ), None


def fresh(text: str, dialect: str, tokens: list[Token] | None = None) -> Analysis:
    """The analysis of ``text`` from scratch, no cache read or written
    (``tokens``: the text's, when the caller has them)."""
    _COUNTS[1] += 1
    d = _dialect(dialect)
    sanitized, summary, tokens, procedure = sanitize_and_summarize(text, d, tokens)
    statements = _checked(_statements(text, tokens, d, dialect), dialect, text)
    marks = _marks(text, tokens) if "%" in text and dialect in ("postgres", "mysql") else ()
    return Analysis(
        text, dialect, sanitized, summary, _fingerprint(sanitized), statements, marks, procedure
    )


def _checked(
    statements: tuple[Statement, ...], dialect: str, server_text: str, converted: bool = False
) -> tuple[Statement, ...]:
    """``statements``, or all not understood when PostgreSQL's own parser
    reads ``server_text`` otherwise (``pgparse.py``)."""
    if dialect == "postgres" and (
        disagreement := second_opinion(server_text, statements, converted)
    ):
        why = f"the PostgreSQL parser disagrees: {disagreement}"
        return tuple(Statement.unknown(why) for _ in statements or (None,))
    return statements


def _fingerprint(sanitized: str) -> str:
    """A stable id of the statement's shape: its sanitized text, spaces and case folded."""
    shape = " ".join(sanitized.split()).lower()
    return hashlib.sha256(shape.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def _operator_as_value(tree: exp.Expr) -> bool:
    """Whether sqlglot read a ``%`` of a converted text as a placeholder:
    its PostgreSQL parser takes ``%`` where an operand starts for a pyformat
    placeholder (``% s``), which the server reads as an operator. The
    driver's own placeholders are ``?`` there, read with ``jdbc`` set."""
    return any(not p.args.get("jdbc") for p in tree.find_all(exp.Placeholder))


_OPERATOR_AS_VALUE = (
    "a '%' where a value starts, which the SQL parser would read as a placeholder "
    "and the server as an operator"
)
#: the dialects of pyformat drivers, which rewrite a text given parameters
CONVERTING = frozenset({"postgres", "mysql"})


def fresh_converted(text: str, dialect: str) -> Analysis:
    """The analysis of ``text`` as a pyformat driver given parameters sends
    it (``%%`` as ``%``), no cache read or written. ``text`` stays the text
    as written, and ``placeholders`` are offsets in it: ``_surface.placement``
    matches them against the driver's own reading of that text."""
    _COUNTS[1] += 1
    d = _dialect(dialect)
    sent = convert(text)
    sql = sent.analyzed
    # db.query.text, the summary and the fingerprint show the text as
    # written (its placeholders as written), like every other statement's
    sanitized, summary, _, procedure = sanitize_and_summarize(text, d)
    tokens: list[Token] | None = None
    if len(sql) <= MAX_TOKENIZED:
        try:
            tokens = _tokenize(dialect, sql)
        except Exception:  # not understood: _statements says so
            tokens = None
    statements = _statements(sql, tokens, d, dialect, converted=True)
    if sent.glued:
        why = (
            f"the placeholder {sent.glued} touches a name, number or quote, which the "
            "value the driver writes there would join; put a space or an operator between them"
        )
        statements = (replace(Statement.unknown(why), refused=why),)
    statements = _checked(statements, dialect, sent.server, True)
    values = (
        set()
        if tokens is None
        else {t.start for t in tokens if t.token_type is TokenType.PLACEHOLDER}
    )
    marks = tuple((at, spec) for start, at, spec in sent.placeholders if start in values)
    return Analysis(
        text,
        dialect,
        sanitized,
        summary,
        _fingerprint(sanitized),
        statements,
        marks,
        procedure,
        sent=sql,
    )


def analyze(text: str, dialect: str, converted: bool = False) -> Analysis:
    """Analyze ``text`` as ``dialect`` (sqlglot's name); results are cached,
    by text and by shape (texts that differ only in plain literal values).

    ``converted``: the text is executed with parameters by a pyformat driver
    (psycopg, PyMySQL), which sends ``%%`` as ``%``; it is analyzed as sent.

    Never raises: what cannot be understood is a statement with ``unparsed``
    set, which policies treat as ``on_unparsed`` says (block by default).
    """
    if converted and "%" in text and dialect in CONVERTING:
        kept = cache_for(dialect, True)
        found = kept.get(text)
        if found is None:
            found = fresh_converted(text, dialect)
            if len(text) <= MAX_CACHED_TEXT:
                _bounded(kept, text, found)
        return found
    cache = cache_for(dialect)
    found = cache.get(text)
    if found is not None:
        return found
    d = _dialect(dialect)
    tokens: list[Token] | None = None
    key = None
    if dialect in _PLACEHOLDER and len(text) <= MAX_CACHED_TEXT:
        try:
            tokens = _tokenize(dialect, text)
        except Exception:  # analyzed below, where a failure is a statement of its own
            tokens = None
        if tokens is not None:
            result, key = _shared(text, dialect, d, tokens)
            if result is not None:
                _bounded(cache, text, result)
                return result
    result = fresh(text, dialect, tokens)
    if len(text) > MAX_CACHED_TEXT:
        return result  # one-off giants (bulk loads) would pin megabytes
    if key is not None:
        _bounded(_SEEN.setdefault(dialect, {}), key, result)
    _bounded(cache, text, result)
    return result


def oversized(size: int, limit: int, dialect: str) -> Analysis:
    """A statement over ``limits.max_statement_bytes``, never read: tokenizing
    and parsing megabytes of SQL costs far more memory than the text, and no
    application statement needs it (bulk data goes in parameters or COPY)."""
    reason = (
        f"the statement is {size} bytes, over limits.max_statement_bytes ({limit}); "
        "send data as parameters, or raise the limit in the policy"
    )
    shown = f"<statement of {size} bytes>"
    return Analysis(
        "",
        dialect,
        shown,
        "",
        "oversized",
        (replace(Statement.unknown(reason), refused=reason),),
    )
