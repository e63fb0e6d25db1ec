"""Column names of tables, read from the database's catalog (issue #11).

Lineage resolves ``SELECT *`` and positional column lists over a star
(``WITH x(a, b) AS (SELECT * FROM t)``, ``AS t(i, n, e)``) by position, which
only the catalog knows. :class:`TableColumns` reads it once per connection
and table (``PRAGMA table_xinfo``, ``pg_attribute``, MariaDB's
``information_schema.COLUMNS``) and forgets everything after a statement
that may change a schema (DDL, ``USE``, ``SET search_path``, anything not
understood). A catalog that cannot be read gives None: lineage then keeps
its conservative answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .analysis import Analysis

__all__ = ["TableColumns", "columns_sql"]

_log = logging.getLogger("guardeddb")
_CACHE_SIZE = 1024
#: statement classes that cannot change which columns a table has
_SCHEMA_KEEPING = frozenset({"read", "write"})

#: How to ask for one table's columns: its name -> (SQL, parameters).
Query = Callable[[str], tuple[str, tuple[Any, ...]]]


def _split(table: str) -> tuple[str | None, str]:
    schema, _, name = table.rpartition(".")
    return (schema or None), name


def _sqlite(table: str) -> tuple[str, tuple[Any, ...]]:
    # table_xinfo: generated columns are in SELECT * (hidden 2, 3), a virtual
    # table's hidden ones (1) are not; table_info would leave out both.
    schema, name = _split(table)
    if schema is None:  # temp first, then main and attached: as the query resolves it
        return "SELECT name FROM pragma_table_xinfo(?) WHERE hidden <> 1 ORDER BY cid", (name,)
    return (
        "SELECT name FROM pragma_table_xinfo(?, ?) WHERE hidden <> 1 ORDER BY cid",
        (name, schema),
    )


def _pg(table: str) -> tuple[str, tuple[Any, ...]]:
    # to_regclass parses its text as a (possibly qualified) name, on the
    # search_path: quote each part so it resolves as lineage spelled it.
    quoted = ".".join('"' + p.replace('"', '""') + '"' for p in table.split("."))
    return (
        "SELECT attname FROM pg_catalog.pg_attribute WHERE attrelid = to_regclass(%s) "
        "AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        (quoted,),
    )


def _mysql(table: str) -> tuple[str, tuple[Any, ...]]:
    return (
        "SELECT COLUMN_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = "
        "COALESCE(%s, DATABASE()) AND TABLE_NAME = %s AND EXTRA NOT LIKE '%%INVISIBLE%%' "
        "ORDER BY ORDINAL_POSITION",
        _split(table),
    )


def columns_sql(module: str) -> Query | None:
    """The catalog query for one driver module, or None when guardeddb has none."""
    return {"sqlite3": _sqlite, "psycopg": _pg, "pymysql": _mysql}.get(module)


def _first(row: Any) -> Any:
    """A row's first value, whatever the connection's row factory makes of it."""
    return next(iter(row.values())) if isinstance(row, dict) else row[0]


class TableColumns:
    """The columns of each table one connection has asked about, in order.

    Called with a table name as lineage spells it (``schema.table`` or
    ``table``): its column names, or None when the catalog does not say
    (no such table, a view the query cannot see, a read that failed).
    Masking plans built from these answers are kept here too, so that a
    schema change forgets both at once.
    """

    __slots__ = ("_known", "plans", "query", "run")

    def __init__(self, query: Query, run: Callable[[str, tuple[Any, ...]], Sequence[Any]]) -> None:
        self.query = query
        self.run = run  # executes one catalog query on the connection, returns rows
        self._known: dict[str, tuple[str, ...] | None] = {}
        self.plans: dict[Any, Any] = {}

    def __call__(self, table: str) -> tuple[str, ...] | None:
        if table in self._known:
            return self._known[table]
        try:
            rows = self.run(*self.query(table))
            found = tuple(str(_first(r)) for r in rows) or None
        except Exception as exc:  # fail closed: lineage keeps its conservative answer
            _log.debug("guardeddb: columns of %s not read from the catalog: %r", table, exc)
            found = None
        if len(self._known) >= _CACHE_SIZE:
            self.clear()
        self._known[table] = found
        return found

    def clear(self) -> None:
        """Forget every table's columns and every plan built from them."""
        self._known.clear()
        self.plans.clear()

    def after(self, analysis: Analysis) -> None:
        """``analysis`` is about to run: forget everything if it may change a schema."""
        if not self._known:
            return
        for st in analysis.statements:
            if st.unparsed or not st.classes <= _SCHEMA_KEEPING or st.kind in ("use", "set"):
                self.clear()
                return
