"""Side channels of masked results: database errors, statements that move values.

Masking happens in the client, on the rows a cursor returns. Anything else
the server hands back, or anything the server does with a value without
returning it, goes around it: an error message quoting the value that
failed a cast, ``SHOW WARNINGS`` echoing it, ``SET @x = (SELECT ssn ...)``
or an ``UPDATE ... SET notes = ssn`` that copies it into a column no rule
masks. For identities whose results are masked, errors are withheld
(``withheld``) and statements that would carry a masked column's value
anywhere but into a masked result are refused (``carries_masked``).
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Any

import sqlglot
from sqlglot import exp

from ..errors import Error

if TYPE_CHECKING:
    from ..sql.analysis import Analysis
    from .plan import Masking

__all__ = ["carries_masked", "parsed", "withheld"]

# SHOW WARNINGS / SHOW ERRORS / SHOW COUNT(*) WARNINGS and GET DIAGNOSTICS
# replay a statement's messages, which quote the values that failed.
_DIAGNOSTICS = re.compile(
    r"\bSHOW\s+(?:COUNT\s*\(\s*\*\s*\)\s+)?(?:WARNINGS|ERRORS)\b|\bGET\s+(?:CURRENT\s+|STACKED\s+)?"
    r"DIAGNOSTICS\b",
    re.IGNORECASE,
)
# A user variable assigned from a query: SET @x = ..., @x := ..., INTO @x.
_ASSIGNS = re.compile(r":=|\bINTO\s+@|\bSET\s+@|@\w+\s*=", re.IGNORECASE)
_PYFORMAT = re.compile(r"%\(\w+\)s|%s")
_MOVES = frozenset({"insert", "update", "merge", "replace", "create", "set", "upsert"})


def withheld(exc: BaseException, code: str | None) -> BaseException | None:
    """``exc`` rebuilt without its message: same class (or the nearest base
    class that can be built from a message), same SQLSTATE/errno, text
    replaced. None for guardeddb's own errors and for what is not an
    Exception (KeyboardInterrupt, cancellation), which pass unchanged."""
    if not isinstance(exc, Exception) or isinstance(exc, Error):
        return None
    cls = type(exc)
    name = f"{cls.__module__}.{cls.__qualname__}"
    message = (
        f"{name}{f' ({code})' if code else ''}: the database's message was withheld "
        "because this identity's results are masked"
    )
    errno = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
    for base in cls.__mro__:
        if not issubclass(base, Exception):
            break
        try:
            new = base(errno, message) if errno is not None else base(message)
            str(new)
        except Exception:
            continue
        for attr in ("sqlite_errorcode", "sqlite_errorname"):
            value = getattr(exc, attr, None)
            if value is not None:
                with contextlib.suppress(AttributeError, TypeError):
                    setattr(new, attr, value)
        new.__cause__ = None
        new.__suppress_context__ = True
        return new
    return Exception(message)  # pragma: no cover (Exception itself is always buildable)


def _source_names(tree: exp.Expression) -> set[str] | None:
    """Lower-case names of the columns whose values the statement moves
    somewhere other than the client (``*`` for a star); None when unsure."""
    sources: list[exp.Expression] = []
    if isinstance(tree, exp.Update):
        sources.extend(e.expression for e in tree.expressions if isinstance(e, exp.EQ))
        if len(sources) != len(tree.expressions):
            return None
    elif isinstance(tree, exp.Insert):
        if tree.expression is not None:
            sources.append(tree.expression)
        conflict = tree.args.get("conflict")
        if conflict is not None:
            sources.append(conflict)
    elif isinstance(tree, exp.Delete | exp.Select | exp.Union):
        if isinstance(tree, exp.Select) and tree.args.get("into") is not None:
            sources.append(tree)
    else:
        sources.append(tree)  # MERGE, CREATE ... AS, SET: every column it names
    # data-modifying CTEs: what they RETURN feeds the outer statement
    for cte in tree.find_all(exp.CTE):
        if cte.this is not None and not isinstance(cte.this, exp.Select | exp.Union):
            sources.append(cte)
    names: set[str] = set()
    for src in sources:
        for col in src.find_all(exp.Column):
            names.add("*" if isinstance(col.this, exp.Star) else col.name.lower())
        if any(True for _ in src.find_all(exp.Star)):
            names.add("*")
    return names


def parsed(analysis: Analysis) -> list[Any] | None:
    """The statements' syntax trees again (the analysis keeps only facts);
    None when they cannot be had. Only statements that read a masked column
    come here, once per statement and identity (decisions are cached)."""
    try:
        # pyformat markers read as ? on MySQL, NULL elsewhere: sqlglot's MySQL
        # parser takes %s for a modulo, its PostgreSQL one ? for a JSON operator
        mark = "?" if analysis.dialect == "mysql" else "NULL"
        text = _PYFORMAT.sub(mark, analysis.text)
        return list(sqlglot.parse(text, read=analysis.dialect))
    except Exception:
        return None


def carries_masked(analysis: Analysis, masking: Masking) -> str | None:
    """Why ``analysis`` would carry a masked column's value past masking, or
    None. Only columns the policy's rules mask count (and a star over a table
    some rule names); a WHERE reading a masked column is not judged here."""
    text = analysis.sanitized
    if _DIAGNOSTICS.search(text):
        return "SHOW WARNINGS/ERRORS and GET DIAGNOSTICS can quote masked values"
    assigns = bool(_ASSIGNS.search(text))
    trees = parsed(analysis)
    for i, st in enumerate(analysis.statements):
        masked = sorted(c for c in st.columns if masking._rule(c) is not None)
        if not masked:
            continue
        if assigns and (st.kind in ("set", "select") or "@" in text):
            return f"a user variable would hold the masked column {masked[0]}"
        if not (st.kinds & _MOVES) and "write" not in st.classes and "ddl" not in st.classes:
            continue
        tree = trees[i] if trees is not None and i < len(trees) else None
        names = _source_names(tree) if tree is not None and st.unparsed is None else None
        for col in masked:
            name = col.rsplit(".", 1)[-1].lower()
            if names is None or "*" in names or name == "*" or name in names:
                return f"the statement would copy the masked column {col} where it is not masked"
    return None
