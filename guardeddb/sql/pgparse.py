"""PostgreSQL's own parser as a second opinion on guardeddb's facts.

sqlglot's tokenizer and PostgreSQL's differ in corners an attacker can aim
at (nested block comments, dollar quotes, ``E''`` and ``U&""`` escapes). When
pglast (libpg_query, the server's parser compiled as a library) is installed,
every PostgreSQL analysis is checked against it: the statement count, each
statement's kind, nested data-modifying statements, the relations it names,
the functions it calls, COPY's target and SET's variable. Any disagreement
makes the analysis refuse the whole text (fail closed).

pglast is GPL-3.0-or-later, so it is an optional extra (``guardeddb[pgparse]``)
and imported only on the first PostgreSQL analysis, never by ``import guardeddb``.
The comparison runs on analysis cache misses only.

The checks go in the safe direction: what PostgreSQL sees must be among
what guardeddb decided on (guardeddb may list more tables or functions,
for example a ``CASE`` or a cast, than PostgreSQL calls functions).
"""

from __future__ import annotations

import importlib
import json
import re
from functools import lru_cache
from types import ModuleType
from typing import Any

from .classify import Statement

__all__ = ["available", "second_opinion"]

_UNLOADED: Any = object()
_parser: Any = _UNLOADED


def _pglast() -> ModuleType | None:
    """``pglast.parser``, imported on first use; None when not installed."""
    global _parser
    if _parser is _UNLOADED:
        try:
            _parser = importlib.import_module("pglast.parser")
        except ImportError:  # the optional extra is not installed
            _parser = None
    return _parser  # type: ignore[no-any-return]


def available() -> bool:
    """True when pglast is installed and the second opinion runs."""
    return _pglast() is not None


# A text executed without parameters reaches the server as written, ``%%``
# included; the analysis reads its %s, %b, %t and %(name)s as values (and
# ``_surface.placement`` refuses them where the driver interpolates), so
# pglast is shown them as values too, ``$1``. A text executed with
# parameters is converted by the caller first (``pyformat.convert``: ``%%``
# as ``%``, placeholders as ``$1``), as psycopg sends it.
_PYFORMAT = re.compile(r"%%|%(?:\([^)]+\))?[sbt]")


def _server_text(text: str) -> str:
    return _PYFORMAT.sub(lambda m: "%%" if m.group() == "%%" else "$1", text)


# What each PostgreSQL statement node is in guardeddb's vocabulary: the kinds
# guardeddb may report for it. A node missing here is a disagreement.
_KINDS: dict[str, frozenset[str]] = {
    "SelectStmt": frozenset({"select"}),
    "InsertStmt": frozenset({"insert", "upsert"}),
    "UpdateStmt": frozenset({"update"}),
    "DeleteStmt": frozenset({"delete"}),
    "MergeStmt": frozenset({"merge"}),
    "CopyStmt": frozenset({"copy"}),
    "VariableShowStmt": frozenset({"show"}),
    "ConstraintsSetStmt": frozenset({"set"}),
    "CallStmt": frozenset({"call"}),
    "TruncateStmt": frozenset({"truncate"}),
    "CommentStmt": frozenset({"comment"}),
    "LockStmt": frozenset({"lock"}),
    "CheckPointStmt": frozenset({"checkpoint"}),
    "ReindexStmt": frozenset({"reindex"}),
    "RefreshMatViewStmt": frozenset({"refresh"}),
    "ClusterStmt": frozenset({"cluster"}),
    "ReassignOwnedStmt": frozenset({"reassign"}),
    "DropOwnedStmt": frozenset({"drop"}),
    "ViewStmt": frozenset({"create"}),
    "IndexStmt": frozenset({"create"}),
    "DefineStmt": frozenset({"create"}),
    "CompositeTypeStmt": frozenset({"create"}),
    "RuleStmt": frozenset({"create"}),
    "CreatedbStmt": frozenset({"create"}),
    "RenameStmt": frozenset({"alter", "rename"}),
    "DropdbStmt": frozenset({"drop"}),
}
_SET_KINDS = frozenset({"set", "set_role", "set_session_authorization"})
_TRANSACTION_KINDS = {
    "TRANS_STMT_BEGIN": "begin",
    "TRANS_STMT_START": "begin",
    "TRANS_STMT_COMMIT": "commit",
    "TRANS_STMT_ROLLBACK": "rollback",
    "TRANS_STMT_ROLLBACK_TO": "rollback",
    "TRANS_STMT_SAVEPOINT": "savepoint",
    "TRANS_STMT_RELEASE": "release",
    # PREPARE TRANSACTION, COMMIT/ROLLBACK PREPARED: nothing guardeddb reports.
}
_NESTED = {
    "InsertStmt": "insert",
    "UpdateStmt": "update",
    "DeleteStmt": "delete",
    "MergeStmt": "merge",
}
_STRICT_CLASSES = frozenset({"write", "ddl", "dcl", "admin"})
# SET ROLE and SET SESSION AUTHORIZATION however spelled: PostgreSQL names
# the variable so, and a statement switching privileges is never "other".
_PRIVILEGE_SETTINGS = frozenset({"role", "session_authorization"})


def _expected_kinds(node_type: str, node: dict[str, Any]) -> frozenset[str]:
    found = _KINDS.get(node_type)
    if found is not None:
        return found
    if node_type == "TransactionStmt":
        kind = _TRANSACTION_KINDS.get(node.get("kind", ""))
        return frozenset({kind}) if kind else frozenset()
    if node_type == "VariableSetStmt":
        return _SET_KINDS
    if node_type in ("GrantStmt", "GrantRoleStmt"):
        return frozenset({"grant" if node.get("is_grant") else "revoke"})
    if node_type == "VacuumStmt":
        return frozenset({"vacuum" if node.get("is_vacuumcmd") else "analyze"})
    if node_type.startswith("Create"):
        return frozenset({"create"})
    if node_type.startswith("Alter"):
        return frozenset({"alter"})
    if node_type.startswith("Drop"):
        return frozenset({"drop"})
    return frozenset()


class _Facts:
    """What one PostgreSQL statement tree holds."""

    __slots__ = ("ctes", "functions", "nested", "relations", "select_into")

    def __init__(self) -> None:
        self.nested: set[str] = set()  # the root statement's own kind included
        self.relations: set[str] = set()
        self.ctes: set[str] = set()
        self.functions: list[tuple[tuple[str, ...], int, bool]] = []
        self.select_into = False


class _Collector:
    """Collects each statement's facts while ``json.loads`` builds the tree.

    The decoder calls :meth:`hook` on every object, innermost first and in
    text order, so a statement's nodes all arrive before its ``RawStmt``
    (the only node with a ``stmt`` field): one pass, no second walk.
    """

    __slots__ = ("current", "done")

    def __init__(self) -> None:
        self.current = _Facts()
        self.done: list[_Facts] = []

    def hook(self, node: dict[str, Any]) -> dict[str, Any]:
        facts = self.current
        if "relname" in node and "relpersistence" in node:  # a RangeVar, boxed or not
            parts = (node.get(p) for p in ("catalogname", "schemaname", "relname"))
            facts.relations.add(".".join(p for p in parts if p))
        elif "stmt" in node:  # RawStmt: the statement is complete
            self.done.append(facts)
            self.current = _Facts()
        elif len(node) == 1:  # a boxed node: {"NodeType": {fields}}
            ((key, inner),) = node.items()
            if key == "FuncCall":
                if inner.get("funcformat") != "COERCE_SQL_SYNTAX":
                    # EXTRACT, OVERLAY, AT TIME ZONE are grammar, not a name.
                    names = tuple(
                        n["String"]["sval"] for n in inner.get("funcname", ()) if "String" in n
                    )
                    star = bool(inner.get("agg_star"))
                    facts.functions.append((names, len(inner.get("args", ())), star))
            elif key == "CommonTableExpr":
                facts.ctes.add(inner.get("ctename", ""))
            elif key in _NESTED:
                facts.nested.add(_NESTED[key])
            elif key == "SelectStmt" and "intoClause" in inner:
                facts.select_into = True
        return node


def _without_quoted_text(exc: Exception) -> str:
    """libpg_query's message without the text it quotes (``at or near
    "'secret'"``): a refusal never repeats a literal of the statement."""
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return re.sub(r' at or near ".*"', "", first)[:200]


def second_opinion(text: str, statements: tuple[Statement, ...], sent: bool = False) -> str | None:
    """Why PostgreSQL's parser disagrees with ``statements``, or None.

    ``sent``: ``text`` is already what the driver sends (``pyformat.py``).

    Returns None when pglast is not installed, and when guardeddb already
    refused some statement as unparsed (there is nothing left to confirm).
    """
    parser = _pglast()
    if parser is None or any(s.unparsed for s in statements):
        return None
    collector = _Collector()
    try:
        sql = text if sent else _server_text(text)
        tree = json.loads(parser.parse_sql_json(sql), object_hook=collector.hook)
    except Exception as exc:  # pglast.parser.ParseError, or anything else: no agreement
        return f"it does not parse ({_without_quoted_text(exc)})"
    raws = tree.get("stmts", [])
    if len(raws) != len(statements) or len(collector.done) != len(raws):
        return f"{len(raws)} statement(s), not {len(statements)}"
    for number, (raw, facts, stmt) in enumerate(
        zip(raws, collector.done, statements, strict=True), 1
    ):
        reason = _compare(raw.get("stmt", {}), facts, stmt)
        if reason:
            return reason if len(statements) == 1 else f"statement {number}: {reason}"
    return None


def _compare(wrapped: dict[str, Any], facts: _Facts, stmt: Statement) -> str | None:
    if len(wrapped) != 1:
        return "an empty statement"
    ((node_type, node),) = wrapped.items()
    expected = _expected_kinds(node_type, node)
    if stmt.kind not in expected:
        return f"it reads a {node_type}, guardeddb a {stmt.kind}"
    reason = _compare_details(node_type, node, facts, stmt)
    if reason:
        return reason
    if stmt.tables_unknown:
        return None  # an opaque command: guardeddb claims no tables, nothing to compare
    missing_kinds = {k for k in facts.nested if k not in stmt.kinds}
    if missing_kinds:
        return f"it runs a nested {', '.join(sorted(missing_kinds))}"
    if facts.select_into and "create" not in stmt.kinds:
        return "SELECT ... INTO creates a table"
    relations = {r for r in facts.relations if r not in facts.ctes}
    missing = sorted(relations - stmt.tables)
    if missing:
        return f"it reads relation(s) {', '.join(missing)} that guardeddb did not see"
    for names, nargs, star in facts.functions:
        if not _function_seen(names, nargs, star, stmt.functions):
            return f"it calls {'.'.join(names)}() that guardeddb did not see"
    return None


def _compare_details(
    node_type: str, node: dict[str, Any], facts: _Facts, stmt: Statement
) -> str | None:
    """The facts beyond the kind that change what a statement may do."""
    if node_type == "CopyStmt":
        if node.get("is_program"):
            return "COPY runs a program"
        if node.get("filename") and "admin" not in stmt.classes:
            return "COPY reads or writes a server file"
        if node.get("is_from") and "write" not in stmt.classes and "admin" not in stmt.classes:
            return "COPY ... FROM writes"
    elif node_type == "VariableSetStmt":
        name = str(node.get("name", "")).lower()
        if node.get("kind") == "VAR_SET_MULTI" and name in (
            "transaction",
            "session characteristics",
        ):
            # SET TRANSACTION / SESSION CHARACTERISTICS: only READ WRITE (or
            # an option guardeddb does not know) needs a strict class.
            for opt in node.get("args", ()):
                elem = opt.get("DefElem", {})
                defname = elem.get("defname")
                ival = elem.get("arg", {}).get("A_Const", {}).get("ival", {}).get("ival", 0)
                if defname == "transaction_isolation" or (
                    defname == "transaction_read_only" and ival
                ):
                    continue
                if not (stmt.classes & _STRICT_CLASSES):
                    return f"it sets the transaction's {defname}"
            return None
        if node.get("kind") in ("VAR_SET_MULTI", "VAR_RESET_ALL") or not name:
            return None if stmt.classes & {"admin", "dcl"} else "a SET of several settings"
        needed = name in _PRIVILEGE_SETTINGS or (
            _set_classes(name, _plain_value(node.get("args", ()))) & _STRICT_CLASSES
        )
        if needed and not (stmt.classes & _STRICT_CLASSES):
            return f"it sets {name}"
    elif node_type == "TransactionStmt":
        for opt in node.get("options", ()):
            elem = opt.get("DefElem", {})
            if elem.get("defname") == "transaction_read_only" and not (
                stmt.classes & _STRICT_CLASSES
            ):
                ival = elem.get("arg", {}).get("A_Const", {}).get("ival", {}).get("ival", 0)
                if not ival:
                    return "it starts a read-write transaction"
    return None


_IDENT = re.compile(r"[a-z_][a-z0-9_$]*")


def _plain_value(args: Any) -> str:
    """PostgreSQL's reading of a SET's value, written plainly: one string or
    number constant, or DEFAULT for anything else (the strictest reading)."""
    if len(args) != 1:
        return "DEFAULT"
    const = args[0].get("A_Const", {}) if isinstance(args[0], dict) else {}
    if "sval" in const:
        text = str(const["sval"].get("sval", ""))
        return "'" + text.replace("'", "''") + "'" if "\\" not in text else "DEFAULT"
    if "ival" in const:
        return str(int(const["ival"].get("ival", 0)))
    return "DEFAULT"


@lru_cache(maxsize=1024)
def _set_classes(name: str, value: str = "DEFAULT") -> frozenset[str]:
    """The classes guardeddb gives ``SET name TO value`` written plainly.

    The written form must not get a weaker class than the plain one: that
    is how a quoted or commented variable name would slip past.
    """
    if not all(_IDENT.fullmatch(part) for part in name.split(".")):
        return frozenset({"admin"})
    return _classes_of(f"SET {name} TO {value}")


def _classes_of(sql: str) -> frozenset[str]:
    from .analysis import _dialect, _statements

    d = _dialect("postgres")
    try:
        tokens = d.tokenize(sql)
    except Exception:  # not tokenizable: treat as the strictest
        return frozenset({"admin"})
    found = _statements(sql, tokens, d, "postgres")
    if not found or any(s.unparsed or s.refused for s in found):
        return frozenset({"admin"})  # not even the plain form is understood
    return frozenset().union(*(s.classes for s in found))


# Functions PostgreSQL's grammar calls for an operator (x SIMILAR TO y,
# x LIKE y ESCAPE z) as an ordinary pg_catalog call: sqlglot sees the operator.
_GRAMMAR_CALLS = frozenset({("pg_catalog", "similar_to_escape"), ("pg_catalog", "like_escape")})


def _function_seen(
    names: tuple[str, ...], nargs: int, star: bool, functions: frozenset[str]
) -> bool:
    """Whether guardeddb's function names account for this call."""
    if not names:
        return False
    last = names[-1].lower()
    if last in functions or ".".join(names).lower() in functions or names in _GRAMMAR_CALLS:
        return True
    mapped, operator = _sqlglot_names(last, nargs, star)
    return operator or bool(mapped & functions)


@lru_cache(maxsize=2048)
def _sqlglot_names(name: str, nargs: int, star: bool) -> tuple[frozenset[str], bool]:
    """The names guardeddb gives a plain call of ``name`` (now() is current_timestamp),
    and whether sqlglot reads that call as an operator (mod(a, b) is a % b)."""
    if not _IDENT.fullmatch(name):
        return frozenset(), False
    args = "*" if star else ", ".join(["NULL"] * nargs)
    from sqlglot import exp

    from .analysis import _dialect

    dialect = _dialect("postgres")
    try:
        tree = dialect.parse(f"SELECT {name}({args})")[0]
    except Exception:  # sqlglot cannot read the plain call either: nothing maps
        return frozenset(), False
    if tree is None:
        return frozenset(), False
    out: set[str] = set()
    for node in tree.walk():
        if isinstance(node, exp.Anonymous):
            out.add(str(node.name).lower())
        elif isinstance(node, exp.Func):
            out.add(node.sql_name().lower())
    # A builtin sqlglot knows by name and turns into an operator, not a call:
    # guardeddb lists no function for it, wherever it is written.
    operator = not out and name.upper() in dialect.parser_class.FUNCTIONS
    return frozenset(out), operator
