"""Statement facts from sqlglot's tree: kinds, classes, tables, columns, functions.

Fail closed: a statement is either understood (its facts are complete, or
flagged as unknown where they cannot be) or it is *unparsed*, with the reason.
Parser differentials are the classic bypass of SQL firewalls, so anything the
parser only half understood (a ``Command`` fallback it cannot classify, a tree
whose root is not a statement, dynamic SQL, ``COPY ... PROGRAM``) is unparsed.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

from .lineage import Output, identifier, outputs, table_name

__all__ = ["CLASSES", "KINDS", "READ_KINDS", "Statement", "classify", "is_tautology"]

#: Statement classes a policy can name.
CLASSES = frozenset({"read", "write", "ddl", "dcl", "admin", "other"})
#: Kinds that only ever read.
READ_KINDS = frozenset({"select", "show", "describe"})

_ROOT_KINDS: dict[type[exp.Expr], tuple[str, str]] = {
    exp.Select: ("select", "read"),
    exp.Union: ("select", "read"),
    exp.Intersect: ("select", "read"),
    exp.Except: ("select", "read"),
    exp.Values: ("select", "read"),
    exp.Insert: ("insert", "write"),
    exp.Update: ("update", "write"),
    exp.Delete: ("delete", "write"),
    exp.Merge: ("merge", "write"),
    exp.Create: ("create", "ddl"),
    exp.Drop: ("drop", "ddl"),
    exp.Alter: ("alter", "ddl"),
    exp.TruncateTable: ("truncate", "ddl"),
    exp.Comment: ("comment", "ddl"),
    exp.Grant: ("grant", "dcl"),
    exp.Revoke: ("revoke", "dcl"),
    exp.Copy: ("copy", "write"),
    exp.Set: ("set", "other"),
    exp.Transaction: ("begin", "other"),
    exp.Commit: ("commit", "other"),
    exp.Rollback: ("rollback", "other"),
    exp.Show: ("show", "read"),
    exp.Describe: ("describe", "read"),
    exp.Use: ("use", "other"),
    exp.Analyze: ("analyze", "admin"),
    exp.Pragma: ("pragma", "admin"),
    exp.Attach: ("attach", "admin"),
    exp.Detach: ("detach", "admin"),
    exp.Kill: ("kill", "admin"),
}

# Nested statements that change what a statement does: a data-modifying CTE
# (WITH d AS (DELETE ...) SELECT ...) is a DELETE as much as a SELECT.
_NESTED_KINDS: dict[type[exp.Expr], tuple[str, str]] = {
    cls: _ROOT_KINDS[cls]
    for cls in (
        exp.Insert,
        exp.Update,
        exp.Delete,
        exp.Merge,
        exp.Create,
        exp.Drop,
        exp.Alter,
        exp.TruncateTable,
    )
}

# Statements sqlglot keeps as an opaque Command: classified by their leading
# words when that is unambiguous, unparsed otherwise. Their tables are unknown.
_COMMANDS: dict[str, tuple[str, str]] = {
    "SHOW": ("show", "read"),
    "CALL": ("call", "write"),  # a procedure may write: judged as a write
    "VACUUM": ("vacuum", "admin"),
    "REINDEX": ("reindex", "admin"),
    "REFRESH": ("refresh", "admin"),
    "CLUSTER": ("cluster", "admin"),
    "CHECKPOINT": ("checkpoint", "admin"),
    "LOCK": ("lock", "admin"),
    "LOCK TABLES": ("lock", "admin"),
    "UNLOCK": ("unlock", "admin"),
    "RENAME": ("rename", "ddl"),
    "SET ROLE": ("set_role", "dcl"),
    "SET LOCAL ROLE": ("set_role", "dcl"),
    "SET SESSION ROLE": ("set_role", "dcl"),
    "SET SESSION AUTHORIZATION": ("set_session_authorization", "dcl"),
    "SET LOCAL SESSION AUTHORIZATION": ("set_session_authorization", "dcl"),
    "RESET ROLE": ("set_role", "dcl"),
    "RESET SESSION AUTHORIZATION": ("set_session_authorization", "dcl"),
    "SET SESSION CHARACTERISTICS": ("set", "admin"),
    "RESET": ("set", "admin"),
    "CREATE ROLE": ("create", "dcl"),
    "CREATE USER": ("create", "dcl"),
    "CREATE GROUP": ("create", "dcl"),
    "ALTER ROLE": ("alter", "dcl"),
    "ALTER USER": ("alter", "dcl"),
    "ALTER GROUP": ("alter", "dcl"),
    "ALTER DEFAULT": ("alter", "dcl"),
    "DROP ROLE": ("drop", "dcl"),
    "DROP USER": ("drop", "dcl"),
    "DROP OWNED": ("drop", "dcl"),
    "REASSIGN": ("reassign", "dcl"),
    "ALTER SYSTEM": ("alter", "admin"),
    "CREATE EXTENSION": ("create", "admin"),
    "ALTER EXTENSION": ("alter", "admin"),
    "DROP EXTENSION": ("drop", "admin"),
    "CREATE SERVER": ("create", "admin"),
    "CREATE FOREIGN": ("create", "admin"),
    "CREATE TRIGGER": ("create", "ddl"),
    "CREATE TEMP": ("create", "ddl"),
    "CREATE TEMPORARY": ("create", "ddl"),
    "CREATE OR": ("create", "ddl"),
    "CREATE PROCEDURE": ("create", "ddl"),
    "CREATE FUNCTION": ("create", "ddl"),
    "CREATE TYPE": ("create", "ddl"),
    "CREATE DOMAIN": ("create", "ddl"),
    "CREATE POLICY": ("create", "ddl"),
    "CREATE RULE": ("create", "ddl"),
    "CREATE EVENT": ("create", "ddl"),
    "ALTER POLICY": ("alter", "ddl"),
    "ALTER FUNCTION": ("alter", "ddl"),
    "ALTER TYPE": ("alter", "ddl"),
    "FLUSH": ("flush", "admin"),
    "INSTALL": ("install", "admin"),
    "UNINSTALL": ("uninstall", "admin"),
}
# Dynamic SQL and server-side programs: what runs is not in the text.
_DYNAMIC = frozenset({"DO", "EXECUTE", "EXEC", "PREPARE", "DEALLOCATE", "EXPLAIN", "LOAD"})

# SET statements that touch privileges or the session's safety net.
_SET_DCL_WORDS = frozenset({"ROLE", "AUTHORIZATION", "PASSWORD"})
_SET_ADMIN_WORDS = frozenset(
    {
        "TRANSACTION",
        "CHARACTERISTICS",
        "DEFAULT_TRANSACTION_READ_ONLY",
        "TRANSACTION_READ_ONLY",
        "GLOBAL",
        "PERSIST",
        "PERSIST_ONLY",
        "SESSION_REPLICATION_ROLE",
        "SQL_LOG_BIN",
        "SQL_SAFE_UPDATES",
        "ALLOW_SYSTEM_TABLE_MODS",
    }
)
# SQLite pragmas that only read.
_READ_PRAGMAS = frozenset(
    {
        "table_info",
        "table_xinfo",
        "table_list",
        "index_list",
        "index_info",
        "index_xinfo",
        "foreign_key_list",
        "database_list",
        "collation_list",
        "function_list",
        "pragma_list",
        "compile_options",
    }
)
# SQLite pragmas that report a setting when given no value, and change it
# when given one: ``PRAGMA read_uncommitted`` is what SQLAlchemy runs at
# first connect to learn the isolation level.
_READ_WHEN_BARE_PRAGMAS = frozenset(
    {"read_uncommitted", "query_only", "foreign_keys", "journal_mode", "user_version"}
)


@dataclass(frozen=True, slots=True)
class Statement:
    """What one statement does, as far as guardeddb could tell."""

    kind: str  # select, insert, update, delete, create, drop, set_role, ...
    kinds: frozenset[str]  # the kind and those of nested statements
    classes: frozenset[str]  # read, write, ddl, dcl, admin, other
    tables: frozenset[str]  # schema-qualified when written so; normalized
    columns: frozenset[str]  # table.column (table.* for a star)
    functions: frozenset[str]  # lower-case names
    has_where: bool  # a WHERE that is not a tautology
    has_limit: bool
    tables_unknown: bool = False  # an opaque command: its tables cannot be listed
    unparsed: str | None = None  # why the statement is not understood
    outputs: tuple[Output, ...] | None = None  # lineage of returned columns, if known

    @staticmethod
    def simple(kind: str, klass: str = "other", tables_unknown: bool = False) -> Statement:
        """A statement known only by its kind: transaction control, an opaque command."""
        return Statement(
            kind,
            frozenset({kind}),
            frozenset({klass}),
            frozenset(),
            frozenset(),
            frozenset(),
            has_where=False,
            has_limit=False,
            tables_unknown=tables_unknown,
        )

    @staticmethod
    def unknown(reason: str, kind: str = "unknown") -> Statement:
        """A statement guardeddb does not understand (fail closed)."""
        return Statement(
            kind,
            frozenset({kind}),
            frozenset({"other"}),
            frozenset(),
            frozenset(),
            frozenset(),
            has_where=False,
            has_limit=False,
            tables_unknown=True,
            unparsed=reason,
        )


def _command(stmt: exp.Command) -> Statement:
    words = [str(stmt.this or "").upper()]
    rest = stmt.expression
    tail = rest.name if isinstance(rest, exp.Literal) else str(rest or "")
    words += tail.upper().split()[:3]
    first = words[0]
    if first in _DYNAMIC:
        return Statement.unknown(f"{first} runs SQL the analyzer cannot see", first.lower())
    for n in (4, 3, 2, 1):
        key = " ".join(w for w in words[:n] if w)
        if key in _COMMANDS:
            kind, klass = _COMMANDS[key]
            return Statement.simple(kind, klass, tables_unknown=True)
    return Statement.unknown(f"{first} is not a statement guardeddb can classify", first.lower())


def _set_class(stmt: exp.Expr, text: str) -> str:
    upper = text.upper()
    if "@@GLOBAL" in upper or "@@PERSIST" in upper:
        return "admin"
    words = {w.strip("=,;@").upper() for w in upper.replace("=", " ").split()}
    if words & _SET_DCL_WORDS:
        return "dcl"
    if words & _SET_ADMIN_WORDS:
        return "admin"
    return "other"


def _is_false(node: exp.Expr) -> bool:
    if isinstance(node, exp.Boolean):
        return not node.this
    if isinstance(node, exp.Literal):
        return node.this in ("0", "") or (node.is_number and float(node.this) == 0)
    return isinstance(node, exp.Null)


def _constant(node: exp.Expr) -> bool:
    return isinstance(node, exp.Literal | exp.Boolean | exp.Null) or (
        isinstance(node, exp.Neg) and isinstance(node.this, exp.Literal)
    )


def is_tautology(cond: exp.Expr) -> bool:
    """True when a condition holds for every row (1=1, TRUE, 'a'='a', x=x, x OR 1).

    Over-approximates on purpose: a WHERE that might be always true is no
    protection against a mass UPDATE or DELETE.
    """
    while isinstance(cond, exp.Paren):
        cond = cond.this
    if isinstance(cond, exp.Boolean | exp.Literal):
        return not _is_false(cond)
    if isinstance(cond, exp.Or):
        return is_tautology(cond.this) or is_tautology(cond.expression)
    if isinstance(cond, exp.And):
        return is_tautology(cond.this) and is_tautology(cond.expression)
    if isinstance(cond, exp.Not):
        inner = cond.this
        while isinstance(inner, exp.Paren):
            inner = inner.this
        return _constant(inner) and _is_false(inner)
    if isinstance(cond, exp.EQ | exp.NullSafeEQ | exp.GTE | exp.LTE | exp.Like | exp.ILike):
        left, right = cond.this, cond.expression
        if left == right:
            return True  # x = x, 'a' = 'a', 1 >= 1
        if isinstance(cond, exp.Like | exp.ILike) and isinstance(right, exp.Literal):
            return str(right.this).strip("%") == ""  # x LIKE '%'
    if isinstance(cond, exp.Is) and isinstance(cond.expression, exp.Null):
        return False
    if isinstance(cond, exp.In):
        return any(cond.this == e for e in cond.expressions)
    if _constant_expression(cond):
        # Constants only (2 > 1, 1 + 1 = 2, 'a' <> 'b'): let sqlglot fold it;
        # anything it cannot prove false counts as true.
        from sqlglot.optimizer.simplify import simplify

        try:
            folded = simplify(cond.copy())
        except Exception:
            return True
        return not (isinstance(folded, exp.Boolean) and not folded.this)
    return False


def _constant_expression(node: exp.Expr) -> bool:
    return not any(
        isinstance(
            n, exp.Column | exp.Subquery | exp.Select | exp.Func | exp.Placeholder | exp.Parameter
        )
        for n in node.walk()
    )


def classify(stmt: exp.Expr, text: str, dialect: str) -> Statement:
    """The facts of one parsed statement (``text`` is its SQL, for keyword checks)."""
    if isinstance(stmt, exp.Command):
        return _command(stmt)
    root = _ROOT_KINDS.get(type(stmt))
    if root is None:
        # A misparse: sqlglot read a statement it does not know as an alias,
        # a column, a bare expression. Never guess what that does.
        return Statement.unknown(f"not a recognizable statement ({type(stmt).__name__})")
    kind, klass = root
    fold = dialect != "mysql"
    kinds = {kind}
    classes = {klass}
    if isinstance(stmt, exp.Set):
        klass = _set_class(stmt, text)
        classes = {klass}
    elif isinstance(stmt, exp.Transaction):
        # BEGIN READ WRITE would escape a read-only session.
        if any("WRITE" in str(m).upper() for m in stmt.args.get("modes") or ()):
            classes = {"admin"}
    elif isinstance(stmt, exp.Pragma):
        target = stmt.this
        if isinstance(target, exp.EQ):  # sqlglot reads name(arg) as name = arg
            target = target.this
        pname = target.name if isinstance(target, exp.Expr) else ""
        bare = target is stmt.this and "(" not in text  # sqlglot reads name(arg) as name = arg
        if "=" not in text and (
            pname.lower() in _READ_PRAGMAS or (bare and pname.lower() in _READ_WHEN_BARE_PRAGMAS)
        ):
            classes = {"read"}
    elif isinstance(stmt, exp.Copy):
        upper = text.upper()
        if "PROGRAM" in upper.split():
            return Statement.unknown("COPY ... PROGRAM runs a server-side program", "copy")
        if "STDIN" not in upper and "STDOUT" not in upper:
            classes = {"admin"}  # reads or writes a file on the database server
        elif not stmt.args.get("kind"):
            classes = {"read"}  # COPY ... TO STDOUT
    elif isinstance(stmt, exp.Merge):
        # WHEN MATCHED THEN DELETE is a delete of every matched row; sqlglot
        # keeps it as a bare keyword rather than a Delete node.
        for when in stmt.find_all(exp.When):
            then = when.args.get("then")
            if isinstance(then, exp.Var) and then.name.upper() == "DELETE":
                kinds.add("delete")
    elif isinstance(stmt, exp.Select) and stmt.args.get("into") is not None:
        kinds.add("create")  # SELECT ... INTO new_table
        classes.add("ddl")

    # One walk over the tree, sorting out what the facts need.
    cte_nodes: list[exp.CTE] = []
    table_nodes: list[exp.Table] = []
    column_nodes: list[exp.Column] = []
    functions: set[str] = set()
    star_outside_column = False
    for node in stmt.walk():
        cls = type(node)
        if cls is exp.Column:
            column_nodes.append(node)  # type: ignore[arg-type]
        elif cls is exp.Table:
            table_nodes.append(node)  # type: ignore[arg-type]
        elif cls is exp.Anonymous:
            functions.add(str(node.name).lower())
        elif cls is exp.CTE:
            cte_nodes.append(node)  # type: ignore[arg-type]
        elif cls is exp.Star:
            star_outside_column = star_outside_column or not isinstance(
                node.parent, exp.Column | exp.Count
            )
        elif isinstance(node, exp.Func):
            functions.add(node.sql_name().lower())
        if node is not stmt:
            nested = _NESTED_KINDS.get(cls)
            if nested is not None:
                kinds.add(nested[0])
                classes.add(nested[1])

    ctes = {identifier(c.args.get("alias") and c.args["alias"].this, fold) for c in cte_nodes}
    tables: set[str] = set()
    aliases: dict[str, str] = {}
    for table in table_nodes:
        name = table_name(table, fold)
        if not name or (not table.args.get("db") and name in ctes):
            continue
        tables.add(name)
        aliases[name.rsplit(".", 1)[-1].lower()] = name
        alias = table.args.get("alias")
        if isinstance(alias, exp.TableAlias) and alias.this is not None:
            aliases[identifier(alias.this, fold).lower()] = name

    columns: set[str] = set()
    for col in column_nodes:
        cname = identifier(col.this, fold) if not isinstance(col.this, exp.Star) else "*"
        qual = col.table
        if qual:
            owner = aliases.get(qual.lower())
            columns.add(f"{owner or qual}.{cname}" if owner or qual not in ctes else f"?.{cname}")
        elif tables:
            columns.update(f"{t}.{cname}" for t in tables)
        else:
            columns.add(f"?.{cname}")
    if isinstance(stmt, exp.Insert) and isinstance(stmt.this, exp.Schema):
        # INSERT INTO t (a, b): the target columns are identifiers, not columns.
        target = stmt.this.this
        owner = table_name(target, fold) if isinstance(target, exp.Table) else "?"
        for ident in stmt.this.expressions:
            if isinstance(ident, exp.Identifier):
                columns.add(f"{owner}.{identifier(ident, fold)}")
    if star_outside_column:
        columns.update(f"{t}.*" for t in tables)

    where = stmt.args.get("where")
    has_where = isinstance(where, exp.Where) and not is_tautology(where.this)
    has_limit = bool(stmt.args.get("limit") or stmt.args.get("fetch"))
    return Statement(
        kind,
        frozenset(kinds),
        frozenset(classes),
        frozenset(tables),
        frozenset(columns),
        frozenset(functions),
        has_where=has_where,
        has_limit=has_limit,
        outputs=outputs(stmt, fold) if "read" in classes or stmt.args.get("returning") else None,
    )


#: Every statement kind the analyzer can report, for validating policies.
KINDS = frozenset(
    {k for k, _ in _ROOT_KINDS.values()}
    | {k for k, _ in _COMMANDS.values()}
    | {d.lower() for d in _DYNAMIC}
    | {"unknown", "replace", "upsert", "savepoint", "release"}
)
