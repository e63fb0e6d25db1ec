"""Glob patterns over table and column names, shared by policies and masking.

Matching is case-insensitive: a rule must not be dodged by spelling a name
in another case or quoting it.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

__all__ = ["column_matches", "glob", "table_matches"]


def glob(pattern: str, value: str) -> bool:
    """Case-insensitive glob match."""
    return fnmatchcase(value.lower(), pattern.lower())


def table_matches(pattern: str, table: str, schemas: frozenset[str] | None) -> bool:
    """``billing.*`` matches ``billing.invoices``; a bare pattern any schema's table.

    An unqualified table is in one of the connection's default schemas; when
    those are unknown (``None``) it could be in any, so it matches.
    """
    if "." not in pattern:
        return glob(pattern, table.rsplit(".", 1)[-1])
    if "." in table:
        return glob(pattern, table) or glob(pattern, table.split(".", 1)[1])
    schema_pat, _, table_pat = pattern.rpartition(".")
    if not glob(table_pat, table):
        return False
    if schemas is None:
        return True
    return any(glob(schema_pat, s) for s in schemas)


def column_matches(pattern: str, column: str, schemas: frozenset[str] | None) -> bool:
    """``*.email``, ``customers.ssn`` or a bare ``ssn``; ``t.*`` (a star) is every column."""
    table, _, name = column.rpartition(".")
    ptable, _, pname = pattern.rpartition(".")
    if name != "*" and not glob(pname, name):
        return False
    if not ptable or ptable == "*" or table == "?":
        return True
    return table_matches(ptable, table, schemas)
