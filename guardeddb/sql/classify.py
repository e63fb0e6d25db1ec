"""Statement facts from sqlglot's tree: kinds, classes, tables, columns, functions.

Fail closed: a statement is either understood (its facts are complete, or
flagged as unknown where they cannot be) or it is *unparsed*, with the reason.
Parser differentials are the classic bypass of SQL firewalls, so anything the
parser only half understood (a ``Command`` fallback it cannot classify, a tree
whose root is not a statement, dynamic SQL, ``COPY ... PROGRAM``) is unparsed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from itertools import pairwise

from sqlglot import Token, TokenType, exp
from sqlglot.dialects.dialect import Dialect

from .lineage import Output, identifier, outputs, table_name
from .settings import (
    OWN_TABLES,
    TOKENIZER_SETTINGS,
    SetVerdict,
    decode_unicode_identifier,
    judge_set,
    judge_variable,
)

__all__ = [
    "CLASSES",
    "KINDS",
    "MYSQL_SERVER_PATH_VARIABLES",
    "READ_KINDS",
    "SERVER_PATH_SETTINGS",
    "Statement",
    "classify",
    "is_tautology",
    "kernel_refusal",
    "normalize_tokens",
    "untokenizable",
]

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
    refused: str | None = None  # a kernel refusal: blocked under every policy

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


def _command(stmt: exp.Command, tokens: Sequence[Token], dialect: str) -> Statement:
    words = [w for w in (_word(t) for t in tokens[:5])]
    if not words:
        return Statement.unknown("an empty command")
    first = words[0]
    if first in _DYNAMIC:
        return Statement.unknown(f"{first} runs SQL the analyzer cannot see", first.lower())
    if first == "SHOW" and dialect == "postgres":
        name = " ".join(t.text.lower() for t in tokens[1:])
        if name == "all" or name in SERVER_PATH_SETTINGS:
            return Statement.simple("show", "admin")  # server paths
        # PostgreSQL's SHOW names a setting, never a table.
        return Statement.simple("show", "read")
    for n in (4, 3, 2, 1):
        key = " ".join(words[:n])
        if "" not in words[:n] and key in _COMMANDS:
            kind, klass = _COMMANDS[key]
            return Statement.simple(kind, klass, tables_unknown=True)
    return Statement.unknown(f"{first} is not a statement guardeddb can classify", first.lower())


def _word(tok: Token) -> str:
    """A token as a keyword; '' for quoted identifiers and literals, which are names."""
    if tok.token_type in _NOT_WORDS:
        return ""
    return tok.text.upper()


_NOT_WORDS = frozenset(
    {
        TokenType.IDENTIFIER,
        TokenType.STRING,
        TokenType.NUMBER,
        TokenType.NATIONAL_STRING,
        TokenType.HEX_STRING,
        TokenType.BIT_STRING,
        TokenType.BYTE_STRING,
        TokenType.RAW_STRING,
        TokenType.HEREDOC_STRING,
        TokenType.UNICODE_STRING,
    }
)

#: Tokens that are values: a message may name a keyword, never one of these.
_VALUE_TOKENS = _NOT_WORDS - {TokenType.IDENTIFIER}

#: MySQL/MariaDB variables that name server files and directories.
MYSQL_SERVER_PATH_VARIABLES = frozenset(
    {
        "datadir",
        "basedir",
        "tmpdir",
        "plugin_dir",
        "secure_file_priv",
        "general_log_file",
        "slow_query_log_file",
        "log_error",
        "log_bin_basename",
        "log_bin_index",
        "relay_log_basename",
        "pid_file",
        "socket",
        "character_sets_dir",
        "lc_messages_dir",
        "innodb_data_home_dir",
        "innodb_log_group_home_dir",
        "innodb_undo_directory",
        "innodb_tmpdir",
        "aria_log_dir_path",
        "ssl_key",
        "ssl_cert",
        "ssl_ca",
        "init_file",
    }
)

#: PostgreSQL settings that name server files, directories or programs:
#: reading them (``SHOW``, ``current_setting``) is server administration.
SERVER_PATH_SETTINGS = frozenset(
    {
        "data_directory",
        "config_file",
        "hba_file",
        "ident_file",
        "external_pid_file",
        "log_directory",
        "log_filename",
        "unix_socket_directories",
        "ssl_cert_file",
        "ssl_key_file",
        "ssl_ca_file",
        "ssl_crl_file",
        "ssl_crl_dir",
        "ssl_dh_params_file",
        "krb_server_keyfile",
        "dynamic_library_path",
        "archive_command",
        "archive_library",
        "restore_command",
        "archive_cleanup_command",
        "recovery_end_command",
        "shared_preload_libraries",
        "local_preload_libraries",
        "session_preload_libraries",
        "stats_temp_directory",
    }
)


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


def _not_a_statement(tokens: Sequence[Token]) -> str:
    """Why a text that parsed as a bare expression (``foo bar``, ``x``) is
    no statement, in words: the word it starts with, never a value."""
    if not tokens or tokens[0].token_type in _VALUE_TOKENS:
        return "not a recognizable statement: it does not start with a SQL command"
    return f"not a recognizable statement: {tokens[0].text[:40]!r} is not a SQL command"


def classify(stmt: exp.Expr, text: str, dialect: str, tokens: Sequence[Token] = ()) -> Statement:
    """The facts of one parsed statement.

    ``tokens`` are the statement's tokens (comments dropped, identifiers
    normalized by ``normalize_tokens``): keyword facts (SET targets, PRAGMA
    shapes, SHOW targets) come from them, never from ``text``.
    """
    verdict = judge_set(tokens, dialect)
    if verdict is not None:
        return _set_statement(stmt, verdict, dialect)
    if isinstance(stmt, exp.Command):
        return _command(stmt, tokens, dialect)
    root = _ROOT_KINDS.get(type(stmt))
    if root is None:
        # A misparse: sqlglot read a statement it does not know as an alias,
        # a column, a bare expression. Never guess what that does.
        return Statement.unknown(_not_a_statement(tokens))
    kind, klass = root
    kinds = {kind}
    classes = {klass}
    if isinstance(stmt, exp.Set):
        # judge_set saw no SET keyword, yet sqlglot read a SET: never guess.
        return Statement.unknown("a SET the analyzer could not read from its tokens", "set")
    if isinstance(stmt, exp.Transaction):
        # BEGIN READ WRITE would escape a read-only session.
        if any("WRITE" in str(m).upper() for m in stmt.args.get("modes") or ()):
            classes = {"admin"}
    elif isinstance(stmt, exp.Pragma):
        target = stmt.this
        if isinstance(target, exp.EQ):  # sqlglot reads name(arg) as name = arg
            target = target.this
        pname = target.name if isinstance(target, exp.Expr) else ""
        types = {t.token_type for t in tokens}
        if TokenType.EQ not in types and (
            pname.lower() in _READ_PRAGMAS
            or (TokenType.L_PAREN not in types and pname.lower() in _READ_WHEN_BARE_PRAGMAS)
        ):
            classes = {"read"}
    elif isinstance(stmt, exp.Copy):
        target = _copy_target(stmt)
        if target is None:
            return Statement.unknown(
                "COPY to or from something other than a file, STDIN or STDOUT "
                "(PROGRAM runs a server-side program)",
                "copy",
            )
        if target == "file":
            classes = {"admin"}  # reads or writes a file on the database server
        elif target == "STDOUT":
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
    return _facts(stmt, dialect, kind, kinds, classes)


def _set_config(call: exp.Expr, dialect: str) -> SetVerdict:
    """The verdict of ``set_config(name, ...)``: a computed name is admin."""
    args = call.expressions
    first = args[0] if args else None
    while isinstance(first, exp.Cast):
        first = first.this
    if isinstance(first, exp.Literal) and first.is_string:
        return judge_variable(str(first.this), dialect)
    return SetVerdict("set", "admin")


def _reads_server_path(call: exp.Expr) -> bool:
    """``current_setting('data_directory')``, or a name the analyzer cannot read."""
    args = call.expressions
    if not args:
        return False
    first = args[0]
    while isinstance(first, exp.Cast):
        first = first.this
    if isinstance(first, exp.Placeholder | exp.Parameter):
        # A bound parameter (SQLAlchemy's reflection sends one): its value is
        # not in the text. A known limit; the engine's privileges decide.
        return False
    if not (isinstance(first, exp.Literal) and first.is_string):
        return True
    return str(first.this).lower() in SERVER_PATH_SETTINGS


#: Schemas of the server's own catalogs: writing them directly changes roles,
#: routines, settings and guardeddb's tables behind every rule.
_PG_SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast"})
_MYSQL_SYSTEM_SCHEMAS = frozenset({"mysql", "information_schema", "performance_schema", "sys"})
_SQLITE_SCHEMA_TABLES = frozenset(
    {"sqlite_master", "sqlite_schema", "sqlite_temp_master", "sqlite_temp_schema"}
)
_WRITES = (exp.Insert, exp.Update, exp.Delete, exp.Merge, exp.Copy)


def tables_of(stmt: exp.Expr) -> list[str]:
    """The plain names of a USE statement's database (sqlglot reads it as a table)."""
    return [t.name for t in stmt.find_all(exp.Table)]


def _is_catalog(table: exp.Table, dialect: str, fold: bool) -> bool:
    name = table_name(table, fold).lower()
    schema, _, rel = name.rpartition(".")
    schema = schema.rsplit(".", 1)[-1]
    if dialect == "postgres":
        return schema in _PG_SYSTEM_SCHEMAS or (not schema and rel.startswith("pg_"))
    if dialect == "mysql":
        return schema in _MYSQL_SYSTEM_SCHEMAS
    if dialect == "sqlite":
        return rel in _SQLITE_SCHEMA_TABLES
    return schema in _PG_SYSTEM_SCHEMAS | _MYSQL_SYSTEM_SCHEMAS


def _catalog_write(stmt: exp.Expr, dialect: str, fold: bool) -> str | None:
    """A kernel refusal for a write whose target is a system catalog
    (``UPDATE pg_catalog.pg_class``, ``INSERT INTO mysql.func``,
    ``UPDATE sqlite_master``): the tables read by a write are not targets,
    but every table of an UPDATE/DELETE's own FROM/JOIN list is (a MySQL
    multi-table UPDATE may write any of them)."""
    for node in stmt.walk():
        if not isinstance(node, _WRITES):
            continue
        if isinstance(node, exp.Copy) and not node.args.get("kind"):
            continue  # COPY ... TO: a read
        targets: list[exp.Table] = []
        if isinstance(node, exp.Update | exp.Delete):
            for table in node.find_all(exp.Table):
                parent = table.parent
                while (
                    parent is not None
                    and parent is not node
                    and not isinstance(parent, exp.Select | exp.Subquery)
                ):
                    parent = parent.parent
                if parent is node:
                    targets.append(table)
        else:
            target = node.this
            while isinstance(target, exp.Schema):
                target = target.this
            if isinstance(target, exp.Table):
                targets.append(target)
        for table in targets:
            if _is_catalog(table, dialect, fold):
                return f"a write to the system catalog {table_name(table, fold)}"
    return None


def _target_names(stmt: exp.Expr, fold: bool) -> frozenset[str]:
    """The names a column of an UPDATE/DELETE's target table may be qualified by."""
    target = stmt.this
    while isinstance(target, exp.Schema):
        target = target.this
    names: set[str] = set()
    if isinstance(target, exp.Table):
        names.add(table_name(target, fold).rsplit(".", 1)[-1].lower())
        names.add(table_name(target, fold).lower())
        if target.alias:
            names.add(target.alias.lower())
    return frozenset(names)


def _restricts(cond: exp.Expr, target: frozenset[str], strings: bool = False) -> bool:
    """Whether a WHERE narrows the rows of the target table.

    A condition that references no column of the target (constants, an
    uncorrelated ``EXISTS (SELECT 1)``, ``1 = (SELECT 1)``, another table's
    column) keeps all or none of its rows; ``col IS NOT NULL`` alone is taken
    for a tautology, since without the catalog a NOT NULL key column cannot
    be told apart. Unqualified columns outside subqueries count as the
    target's (they may belong to a joined table: the catalog would tell).
    ``strings``: SQLite, which reads a bare double-quoted name that is no
    column as a string (``"x" = 'x'``): such a name restricts nothing.
    """
    while isinstance(cond, exp.Paren):
        cond = cond.this
    if isinstance(cond, exp.And):
        return _restricts(cond.this, target, strings) or _restricts(
            cond.expression, target, strings
        )
    if isinstance(cond, exp.Or):
        return _restricts(cond.this, target, strings) and _restricts(
            cond.expression, target, strings
        )
    if (
        isinstance(cond, exp.Is)
        and isinstance(cond.expression, exp.Null)
        and cond.args.get("negate")
    ):
        return False  # x IS NOT NULL
    inner = cond.this if isinstance(cond, exp.Not) else None
    while isinstance(inner, exp.Paren):
        inner = inner.this
    if isinstance(inner, exp.Is) and isinstance(inner.expression, exp.Null):
        return False  # NOT (x IS NULL)
    for col in cond.find_all(exp.Column):
        qual = col.table.lower()
        nested = _in_query(col, cond)
        if qual:
            if qual in target:
                return True
        elif not nested and not (strings and col.this.args.get("quoted")):
            return True
    return False


def _in_query(node: exp.Expr, top: exp.Expr) -> bool:
    parent = node.parent
    while parent is not None and parent is not top:
        if isinstance(parent, exp.Query | exp.Subquery):
            return True
        parent = parent.parent
    return False


def _copy_target(stmt: exp.Copy) -> str | None:
    """STDIN, STDOUT or file, from the tree; None for anything else (PROGRAM)."""
    files = stmt.args.get("files") or []
    if len(files) != 1:
        return None
    f = files[0]
    direction_from = bool(stmt.args.get("kind"))
    if isinstance(f, exp.Literal) and f.is_string:
        return "file"
    if isinstance(f, exp.Identifier) and not f.quoted:
        word = str(f.this).upper()
        if word == ("STDIN" if direction_from else "STDOUT"):
            return word
    return None


def _set_statement(stmt: exp.Expr, verdict: SetVerdict, dialect: str) -> Statement:
    """A SET/RESET/DISCARD: kind and class from the tokens, facts of its
    values (``SET @x = (SELECT ...)``) from the tree where sqlglot read one."""
    if verdict.reason:
        return replace(Statement.unknown(verdict.reason, verdict.kind), refused=verdict.refused)
    if isinstance(stmt, exp.Set):
        # Columns keep the variable's name too: a column rule can only
        # over-match on it, while SET @x = (SELECT ssn ...) must stay visible.
        fact = _facts(stmt, dialect, verdict.kind, {verdict.kind}, {verdict.klass})
    else:
        # An opaque SET (PostgreSQL's values are names and literals only; a
        # MySQL value that sqlglot could not read may hold anything).
        fact = Statement.simple(verdict.kind, verdict.klass, tables_unknown=dialect != "postgres")
    if verdict.commits:
        # ``SET autocommit = 1`` commits: a kind of its own among its kinds,
        # so that the engine commits first, judged and recorded
        fact = replace(fact, kinds=fact.kinds | {"autocommit"})
    return replace(fact, refused=verdict.refused)


def _facts(
    stmt: exp.Expr, dialect: str, kind: str, kinds: set[str], classes: set[str]
) -> Statement:
    """Tables, columns, functions, nested statements and WHERE of a tree."""
    fold = dialect != "mysql"
    refused: str | None = None
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
            fname = str(node.name).lower()
            functions.add(fname)
            if fname == "current_setting" and _reads_server_path(node):
                classes.add("admin")
            elif fname == "set_config":
                # set_config(name, value, is_local) is a SET: judged by the allowlist.
                verdict = _set_config(node, dialect)
                if verdict.klass != "other":
                    classes.add(verdict.klass)
                refused = refused or verdict.refused
        elif cls is exp.SessionParameter:
            if str(node.name).lower() in MYSQL_SERVER_PATH_VARIABLES:
                classes.add("admin")  # SELECT @@datadir: where the server's files are
        elif cls is exp.Lock:
            # SELECT ... FOR UPDATE / SHARE, LOCK IN SHARE MODE: row locks held
            # until the transaction ends, which an agent can keep open.
            kinds.add("lock")
            classes.add("admin")
        elif cls is exp.CTE:
            cte_nodes.append(node)  # type: ignore[arg-type]
        elif cls is exp.Star:
            star_outside_column = star_outside_column or not isinstance(
                node.parent, exp.Column | exp.Count
            )
        elif isinstance(node, exp.Func) and not isinstance(node, exp.Connector):
            functions.add(node.sql_name().lower())  # AND, OR, XOR are operators
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
    if isinstance(stmt, exp.Use):
        # USE db names a database (a schema), not a table: every table in it.
        tables = {f"{t}.*" for t in tables}
        if dialect == "mysql" and any(t.lower() in _MYSQL_SYSTEM_SCHEMAS for t in tables_of(stmt)):
            refused = refused or "USE of a system schema (its tables would be written unqualified)"
    refused = refused or _catalog_write(stmt, dialect, fold)

    where = stmt.args.get("where")
    has_where = (
        isinstance(where, exp.Where)
        and not is_tautology(where.this)
        and (
            not isinstance(stmt, exp.Update | exp.Delete)
            or _restricts(where.this, _target_names(stmt, fold), dialect == "sqlite")
        )
    )
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
        refused=refused,
    )


#: Every statement kind the analyzer can report, for validating policies.
KINDS = frozenset(
    {k for k, _ in _ROOT_KINDS.values()}
    | {k for k, _ in _COMMANDS.values()}
    | {d.lower() for d in _DYNAMIC}
    | {"unknown", "replace", "upsert", "savepoint", "release", "set_role"}
    | {"set_session_authorization", "lock"}
)


def normalize_tokens(tokens: list[Token], sql: str, dialect: str) -> tuple[list[Token], str | None]:
    """Tokens as the server reads them, or why the server would read them otherwise.

    PostgreSQL ``U&"..."`` identifiers (``UESCAPE`` included) become one
    identifier token with the escapes decoded, so ``U&"pg\\005fread\\005ffile"``
    is ``pg_read_file`` to every fact. SQLite reads ``$a(...)``, ``@a::b``
    and friends as one parameter token where sqlglot sees several tokens:
    such text is refused rather than guessed at.
    """
    if dialect == "sqlite":
        return tokens, _sqlite_variable_differential(sql)
    if dialect != "postgres" or not any(t.token_type is TokenType.AMP for t in tokens):
        return tokens, None
    out: list[Token] = []
    i, n = 0, len(tokens)
    while i < n:
        tok = tokens[i]
        if (
            tok.token_type is TokenType.VAR
            and tok.text.upper() == "U"
            and i + 2 < n
            and tokens[i + 1].token_type is TokenType.AMP
            and tokens[i + 1].start == tok.end + 1
            and tokens[i + 2].token_type is TokenType.IDENTIFIER
            and tokens[i + 2].start == tokens[i + 1].end + 1
        ):
            ident = tokens[i + 2]
            end = i + 2
            escape = "\\"
            if (
                i + 4 < n
                and tokens[i + 3].token_type is TokenType.VAR
                and tokens[i + 3].text.upper() == "UESCAPE"
            ):
                if tokens[i + 4].token_type is not TokenType.STRING or len(tokens[i + 4].text) != 1:
                    return tokens, "U& identifier with an invalid UESCAPE"
                escape = tokens[i + 4].text
                end = i + 4
            decoded = decode_unicode_identifier(ident.text, escape)
            if decoded is None:
                return tokens, "U& identifier with an invalid escape"
            out.append(
                Token(
                    TokenType.IDENTIFIER,
                    decoded,
                    line=tok.line,
                    col=tok.col,
                    start=tok.start,
                    end=tokens[end].end,
                    comments=[c for t in tokens[i : end + 1] for c in t.comments],
                )
            )
            i = end + 1
            continue
        if tok.token_type is TokenType.VAR and tok.text.upper() == "UESCAPE":
            return tokens, "UESCAPE outside a U& identifier the analyzer can read"
        out.append(tok)
        i += 1
    return out, None


_OWN_LENGTHS = frozenset(len(t) for t in OWN_TABLES)


def _id_char(c: str) -> bool:
    return c.isalnum() or c in "_$" or ord(c) >= 0x80


def _sqlite_variable_differential(sql: str) -> str | None:
    """Scan ``sql`` the way SQLite's tokenizer does (tokenize.c) and report a
    parameter token that SQLite extends past where sqlglot ends it.

    SQLite's ``$``, ``@``, ``:`` and ``#`` parameters take a ``::`` name
    separator and a ``(...)`` suffix up to the first space or ``)``: the
    text inside is no string, comment or statement boundary to SQLite.
    """
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c == "-" and sql.startswith("--", i):
            j = sql.find("\n", i)
            i = n if j < 0 else j + 1
        elif c == "/" and sql.startswith("/*", i):
            j = sql.find("*/", i + 2)
            i = n if j < 0 else j + 2
        elif c in "'\"`":
            j = i + 1
            while j < n:
                if sql[j] == c:
                    if j + 1 < n and sql[j + 1] == c:
                        j += 2
                        continue
                    break
                j += 1
            i = j + 1
        elif c == "[":
            j = sql.find("]", i + 1)
            i = n if j < 0 else j + 1
        elif c in "$@:#":
            j = i + 1
            named = 0
            while j < n:
                d = sql[j]
                if _id_char(d):
                    named += 1
                    j += 1
                elif d == "(" and named:
                    return "a SQLite parameter with a (...) suffix, which SQLite reads as one token"
                elif d == ":" and sql.startswith("::", j):
                    return "a SQLite parameter with ::, which SQLite reads as one token"
                else:
                    break
            i = max(j, i + 1)
        elif _id_char(c):
            j = i + 1
            while j < n and _id_char(sql[j]):
                j += 1
            i = j
        else:
            i += 1
    return None


def untokenizable(sql: str, dialect: str) -> Statement:
    """Text the tokenizer cannot read: not understood, and refused under every
    policy when it could name guardeddb's own tables (no boundary or quote
    in it can be trusted, so only a refusal is safe to derive from it)."""
    st = Statement.unknown("the SQL could not be tokenized")
    differential = _sqlite_variable_differential(sql) if dialect == "sqlite" else None
    if differential:
        return replace(st, refused=differential)
    if "guardeddb_" in sql.lower():
        return replace(st, refused="text that cannot be tokenized names guardeddb's own state")
    return st


def names_own_state(tokens: Sequence[Token]) -> str | None:
    """Why ``tokens`` reach guardeddb's own tables, named as identifiers or
    inside a string a function could run as SQL; None when they do not."""
    for tok in tokens:
        tt = tok.token_type
        if tt is TokenType.IDENTIFIER or tt is TokenType.VAR:
            if len(tok.text) in _OWN_LENGTHS and tok.text.lower() in OWN_TABLES:
                return f"{tok.text.lower()} is guardeddb's own state"
        elif tt in _NOT_WORDS and tt is not TokenType.NUMBER:
            lowered = tok.text.lower()
            if "guardeddb_" in lowered:
                for own in OWN_TABLES:
                    if own in lowered:
                        return f"{own} is guardeddb's own state"
    return None


def kernel_refusal(tokens: Sequence[Token], dialect: str) -> str | None:
    """Why this statement is refused under every policy, or None.

    guardeddb's own tables (named as identifiers, or inside a string that a
    function could run as SQL) and settings that change how the server reads
    SQL are out of reach whatever the policy says.
    """
    own = names_own_state(tokens)
    if own:
        return own
    verdict = judge_set(tokens, dialect)
    if verdict is not None and verdict.refused:
        return verdict.refused
    first = _word(tokens[0]) if tokens else ""
    if first == "ALTER":
        # ALTER ROLE/USER/DATABASE ... SET standard_conforming_strings = off:
        # every later session would read SQL otherwise.
        for tok, nxt in pairwise(tokens):
            if _word(tok) == "SET":
                refused = judge_variable(nxt.text, dialect).refused
                if refused:
                    return refused
    elif first in _DYNAMIC or first in ("CREATE", "SET"):
        # SQL text run later (DO, EXECUTE, PREPARE, a function body, a user
        # variable PREPARE will read): a tokenizer setting named in it is
        # refused like the SET itself.
        for tok in tokens:
            if tok.token_type in _NOT_WORDS and tok.token_type is not TokenType.NUMBER:
                lowered = tok.text.lower()
                if any(name in lowered for name in _TOKENIZER_NAMES.get(dialect, ())):
                    return f"{tok.text[:40]!r} names a setting that changes how SQL is read"
    return None


_TOKENIZER_NAMES = {
    dialect: tuple(n for n in names if " " not in n and n != "names")
    + (("character_set_",) if dialect == "mysql" else ())
    for dialect, names in TOKENIZER_SETTINGS.items()
}


@lru_cache(maxsize=8)
def _dialect(name: str) -> Dialect:
    return Dialect.get_or_raise(name)


def expand_commands(tokens: list[Token], dialect: str) -> tuple[list[Token], str | None]:
    """The statement's tokens with a command's raw tail tokenized too.

    sqlglot's tokenizer keeps what follows ``RESET``, ``SHOW``, ``VACUUM``,
    ``CALL``... as one string of raw text, comments and quotes included;
    facts about those statements need the tail's own tokens.
    """
    if not any(t.token_type is TokenType.STRING for t in tokens):
        return tokens, None
    d = _dialect(dialect)
    commands = d.tokenizer_class.COMMANDS
    out: list[Token] = []
    for i, tok in enumerate(tokens):
        prev = tokens[i - 1] if i else None
        if tok.token_type is TokenType.STRING and prev is not None and prev.token_type in commands:
            try:
                tail = d.tokenize(tok.text)
            except Exception:  # a tail the tokenizer cannot read: no facts from it
                return tokens, f"{prev.text.upper()} with a tail the analyzer cannot tokenize"
            tail, problem = normalize_tokens(tail, tok.text, dialect)
            if problem:
                return tokens, problem
            if any(t.token_type is TokenType.SEMICOLON for t in tail):
                return tokens, f"{prev.text.upper()} with a statement boundary in its tail"
            out.extend(tail)
        else:
            out.append(tok)
    return out, None


def called_names(tokens: Sequence[Token]) -> frozenset[str]:
    """Every name followed by ``(`` past a command's first word (``CALL p(f(x))``):
    an opaque command's arguments were never parsed, but what they call is
    in its tokens."""
    return frozenset(
        tok.text.lower()
        for tok, nxt in pairwise(tokens[1:])
        if nxt.token_type is TokenType.L_PAREN
        and (tok.token_type not in _NOT_WORDS or tok.token_type is TokenType.IDENTIFIER)
    )
