"""Side channels of masked results: database errors, statements that move values.

Masking happens in the client, on the rows a cursor returns. Anything else
the server hands back, or anything the server does with a value without
returning it, goes around it: an error message quoting the value that
failed a cast, ``SHOW WARNINGS`` echoing it, ``SET @x = (SELECT ssn ...)``
or an ``UPDATE ... SET notes = ssn`` that copies it into a column no rule
masks. For identities whose results are masked, errors are withheld
(``withheld``) and statements that would carry a masked column's value
anywhere but into a masked result are refused (``carries_masked``). What
a statement stores is followed through its aliases, derived tables and
CTEs (``sql.lineage.stored``); where that cannot be followed, a statement
that reads a masked column anywhere is refused.
"""

from __future__ import annotations

import contextlib
import re
from typing import TYPE_CHECKING, Any

from ..errors import Error
from ..sql.analysis import trees_of
from ..sql.lineage import stored

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
#: Catalogs that keep copies of column values: PostgreSQL's most common
#: values and histogram bounds (pg_stats, pg_stats_ext and what they show),
#: MariaDB's per-column min/max and histograms (and MySQL 8's), SQLite's
#: index samples. No rule names them and a translate() hides their values
#: from the detectors, so masked identities may not read them.
STATISTICS_CATALOGS: dict[str, frozenset[str]] = {
    "postgres": frozenset(
        {"pg_stats", "pg_statistic", "pg_stats_ext", "pg_stats_ext_exprs", "pg_statistic_ext_data"}
    ),
    "mysql": frozenset(
        {
            "mysql.column_stats",
            "mysql.index_stats",
            "mysql.table_stats",
            "information_schema.column_statistics",
        }
    ),
    "sqlite": frozenset({"sqlite_stat1", "sqlite_stat2", "sqlite_stat3", "sqlite_stat4"}),
}
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


def _statistics(table: str, dialect: str) -> bool:
    """Whether ``table`` (a normalized name, as the analysis lists it) is a
    statistics catalog: PostgreSQL's unqualified or in pg_catalog (which is
    searched first), MariaDB's by schema, SQLite's in any attached schema."""
    parts = table.lower().split(".")
    rel, schema = parts[-1], (parts[-2] if len(parts) > 1 else "")
    if dialect == "postgres":
        return schema in ("", "pg_catalog") and rel in STATISTICS_CATALOGS["postgres"]
    if dialect == "mysql":
        return f"{schema}.{rel}" in STATISTICS_CATALOGS["mysql"]
    return rel in STATISTICS_CATALOGS["sqlite"]


def parsed(analysis: Analysis) -> list[Any] | None:
    """The statements' syntax trees again, one per statement of the analysis
    and read from its own tokens (``trees_of``); None when they cannot be
    had. Only statements that read a masked column come here, once per
    statement and identity (decisions are cached)."""
    return trees_of(analysis)


def carries_masked(analysis: Analysis, masking: Masking) -> str | None:
    """Why ``analysis`` would carry a masked column's value past masking, or
    None. Only columns the policy's rules mask count (and a star over a table
    some rule names); a WHERE reading a masked column is not judged here."""
    text = analysis.sanitized
    if _DIAGNOSTICS.search(text):
        return "SHOW WARNINGS/ERRORS and GET DIAGNOSTICS can quote masked values"
    for st in analysis.statements:
        for table in sorted(st.tables):
            if _statistics(table, analysis.dialect):
                return f"the statistics catalog {table} keeps copies of column values"
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
        moved = (
            stored(tree, analysis.dialect != "mysql")
            if tree is not None and st.unparsed is None
            else None
        )
        if moved is None or any(s.startswith("?.") for s in moved):
            # Where the values come from cannot be told, and a masked column
            # is read somewhere in the statement: it may be what is stored.
            return f"the statement may copy the masked column {masked[0]} where it is not masked"
        hit = next((s for s in sorted(moved) if masking._rule(s) is not None), None)
        if hit is not None:
            return f"the statement would copy the masked column {hit} where it is not masked"
    return None
