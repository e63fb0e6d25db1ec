"""Predicates on masked columns: the oracle masking cannot close by itself.

Masking rewrites the cells a cursor returns; the server still evaluates the
query on raw values. ``WHERE substr(ssn, 1, 1) = '5'``, ``ORDER BY ssn``, a
``GROUP BY``, a window's ``PARTITION BY``, a failing cast in the select list:
each tells a masked caller something about the value by which rows come back,
in which order, or whether the statement fails. A masking rule's ``filter``
says how far a column may be used beyond being shown masked:

- ``allow`` (the default): anywhere; the oracle stays open (documented).
- ``equality``: in WHERE / JOIN ON / HAVING only as the bare column compared
  with ``=``, ``IN`` or ``IS NULL`` to a literal, a parameter or another
  column, in a plain AND/OR/NOT condition; nowhere else but as itself in
  a select list.
- ``deny``: only as itself in a select list.

Either way the column may pass through aliases, derived tables, CTEs and
UNION ALL branches as itself; it is judged where it is used, through that
lineage. What the analysis cannot follow is refused (fail closed).

On MySQL/MariaDB a string compared with a number is compared as a number,
which reads its leading digits: there ``equality`` accepts only what is
provably text on the other side (a string literal, NULL, a value cast to a
character type, a base-table column the same rule covers, a subquery of
those); a JOIN ... USING is held to the same, NATURAL JOIN is refused.

Writes are judged like queries: an UPDATE or DELETE as the SELECT of the
rows it touches (with MySQL's ORDER BY ... LIMIT, which picks them by
order); an INSERT whole: its WITH, its source rows, ON CONFLICT / ON
DUPLICATE KEY UPDATE as an UPDATE of the row in the way (its keys as an
equality), RETURNING as a select list of the target. A part of a statement
the judge does not walk is refused unless it holds only flags and names.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from ..sql.lineage import (
    Lineage,
    Output,
    _rename,
    _Resolver,
    _Scope,
    _unwrap,
    _with,
    identifier,
    table_name,
)
from .channels import parsed

if TYPE_CHECKING:
    from ..sql.analysis import Analysis
    from .plan import Masking

__all__ = ["FILTERS", "filters_masked"]

#: The values of a masking rule's ``filter`` key, least strict first.
FILTERS = ("allow", "equality", "deny")

_Ctes = dict[str, list[Output] | None]

# What an equality may compare a masked column with: values, not expressions.
_VALUES = (exp.Literal, exp.Placeholder, exp.Parameter, exp.Null, exp.Boolean, exp.Column)
# What may sit between a comparison and its WHERE / ON / HAVING.
_BOOLEAN = (exp.And, exp.Or, exp.Not, exp.Paren)
_CONDITIONS = (exp.Where, exp.Having, exp.Join)
_QUERIES = (exp.Select, exp.SetOperation, exp.Subquery)
# What a part of a statement the judge does not walk may hold: flags,
# keywords, names, constants; nothing that reads a column or a table.
_INERT = (exp.Var, exp.Identifier, exp.Literal, exp.Boolean, exp.Null)
# The parts of an INSERT / its ON CONFLICT and of an UPDATE / DELETE that the
# judge walks; any other part must be inert, or the statement is refused.
_INSERT_PARTS = frozenset({"this", "expression", "conflict", "returning", "with_", "with"})
_CONFLICT_PARTS = frozenset({"expressions", "conflict_keys", "index_predicate", "where"})
_CHANGE_PARTS = frozenset(
    {"with_", "with", "this", "expressions", "from_", "from", "where", "returning"}
    | {"order", "limit", "using", "tables", "joins"}
)
# The proposed row of an upsert (PostgreSQL's and SQLite's ``excluded``,
# MySQL's ``VALUES(c)`` and row alias), as a CTE name no query can spell.
_ROW = "guardeddb proposed row"
_ROW_ALIAS = "guardeddb proposed row alias"


class _Refused(Exception):
    """A use of a restricted column: the message the caller gets."""


class _Opaque(Exception):
    """A statement of a kind the judge does not walk (MERGE, CREATE ... AS, DDL)."""


def _fix(column: str, mode: str) -> str:
    """What the caller can do instead, per mode."""
    if mode == "equality":
        return (
            f"the masking rule for {column} has filter: equality; compare the bare "
            "column with = / IN / IS NULL to a value or a parameter (on MySQL/MariaDB a "
            "string, or CAST(%s AS CHAR)), in WHERE, JOIN ON or HAVING, and select it only "
            "as itself (or use an identity that may unmask it)"
        )
    return (
        f"the masking rule for {column} has filter: deny; select it only as itself, "
        "and filter, join, group and order on other columns (or use an identity that "
        "may unmask it)"
    )


class _Judge:
    """Walks one statement scope by scope, judging every use of a restricted column."""

    def __init__(self, masking: Masking, dialect: str) -> None:
        self.masking = masking
        self.mysql = dialect == "mysql"
        # the strictest (column, filter) the statement reads, for lost lineage
        self.unknown: tuple[str, str] | None = None
        fold = not self.mysql
        self.resolver = _Resolver(fold)
        self.fold = fold

    # -- what a set of sources is -------------------------------------------

    def restricted(self, sources: set[str] | frozenset[str]) -> tuple[str, str] | None:
        """The strictest (column, filter) among ``sources``, or None if all allow."""
        worst: tuple[str, str] | None = None
        for src in sorted(sources):
            rule = self.masking._rule(src)
            mode = rule.filter if rule is not None else "allow"
            if src.startswith("?.") and self.unknown is not None:
                # lineage lost (a recursive CTE's self-reference, an unknown
                # name) in a statement that reads a restricted column: it may be it
                mode = max(mode, self.unknown[1], key=FILTERS.index)
            if mode != "allow" and (worst is None or FILTERS.index(mode) > FILTERS.index(worst[1])):
                worst = (src, mode)
        return worst

    def refuse(self, found: tuple[str, str], what: str) -> None:
        column, mode = found
        if column.startswith("?.") and self.masking._rule(column) is None and self.unknown:
            read = self.unknown[0]
            raise _Refused(
                f"{what} uses {column[2:]}, whose origin guardeddb cannot follow, in a "
                f"statement that reads the masked column {read} (refused to be safe): "
                + _fix(read, mode)
            )
        raise _Refused(f"{what} would reveal the masked column {column}: {_fix(column, mode)}")

    # -- queries -------------------------------------------------------------

    def statement(self, tree: exp.Expr) -> None:
        if isinstance(tree, exp.Update | exp.Delete):
            tree = _as_select(tree)
        elif isinstance(tree, exp.Insert):
            self.insert(tree)
            return
        if isinstance(tree, (*_QUERIES, exp.Values)):
            self.query(tree, {}, None, True)
            return
        raise _Opaque  # MERGE, CREATE ... AS, DDL: refused only if it reads one

    # -- INSERT --------------------------------------------------------------

    def insert(self, tree: exp.Insert) -> None:
        """An INSERT judged whole: its WITH, its source rows, its ON CONFLICT
        / ON DUPLICATE KEY UPDATE (an UPDATE of the row in the way) and its
        RETURNING (a select list of the target). Only the plain target table
        and column list go unjudged; a part of any other kind is refused."""
        _walked(tree, _INSERT_PARTS)
        table, names = _target(tree.this)
        ctes = self.resolver.with_ctes(
            tree, {}, None, lambda cte, seen: self.query(cte, seen, None, True)
        )
        source = tree.expression
        outs: list[Output] | None = []
        if source is not None:
            if not isinstance(source, (*_QUERIES, exp.Values)):
                raise _Refused("")
            self.query(source, ctes, None, True)
            outs = self.resolver.query(source, ctes, None)
        conflict = tree.args.get("conflict")
        if conflict is not None:
            if not isinstance(conflict, exp.OnConflict):
                raise _Refused("")
            self.conflict(conflict, table, names, source, outs, ctes)
        returning = tree.args.get("returning")
        if returning is not None:
            # what the target's rows are now: shown masked, or judged
            if not isinstance(returning, exp.Returning) or not _inert(returning.args.get("into")):
                raise _Refused("")
            self.query(_select(list(returning.expressions), [table]), ctes, None, True)

    def conflict(
        self,
        conflict: exp.OnConflict,
        table: exp.Table,
        names: list[str] | None,
        source: exp.Expr | None,
        outs: list[Output] | None,
        ctes: _Ctes,
    ) -> None:
        """ON CONFLICT / ON DUPLICATE KEY UPDATE: its keys compare the new row
        with the existing ones (an equality); its SET and WHERE are an UPDATE
        of the existing row, judged as the SELECT of it, beside the proposed
        row (``excluded``, MySQL's ``VALUES(c)`` and row alias), which
        carries whatever the source rows carry."""
        _walked(conflict, _CONFLICT_PARTS)
        scope = self.resolver.scope(_select([exp.Null()], [table]), ctes, None)
        for key in conflict.args.get("conflict_keys") or []:
            key = key.this if isinstance(key, exp.Ordered) else key
            if isinstance(key, exp.Identifier):
                key = exp.Column(this=key.copy())
            if isinstance(key, exp.Column) and not isinstance(key.this, exp.Star):
                sources, bare = self.resolver.column(key, scope)
            else:
                sources, bare = self.resolver.sources(key, scope, ctes), False
            found = self.restricted(sources)
            # the unique index compares the new row's value with each row's
            if found is not None and (found[1] == "deny" or not bare):
                self.refuse(found, "ON CONFLICT on it compares it with the rows there and")
        predicate = conflict.args.get("index_predicate")
        if predicate is not None:
            cond = predicate.this if isinstance(predicate, exp.Where) else predicate
            self.query(_select([exp.Null()], [table], cond), ctes, None, True)
        sets = list(conflict.args.get("expressions") or [])
        where = conflict.args.get("where")
        if not sets and where is None:
            return  # DO NOTHING
        if not all(isinstance(e, exp.EQ) for e in sets):
            raise _Refused("")
        values = [_proposed(e.expression) for e in sets]
        name = table_name(table, self.fold)
        row = _proposed_row(name, names, outs)
        seen = {**ctes, _ROW: row}
        items: list[exp.Expr] = [table, _row_item(_ROW, "excluded" if not self.mysql else _ROW)]
        joins: list[exp.Expr] = []
        inner = _unwrap(source) if source is not None else None
        alias = source.args.get("alias") if isinstance(source, exp.Values) else None
        if self.mysql and isinstance(alias, exp.TableAlias):
            # VALUES (...) AS new(a, b): the proposed row by another name
            cols = [identifier(c, True) for c in alias.columns or []]
            seen[_ROW_ALIAS] = _rename(row, cols) if cols else row
            items.append(_row_item(_ROW_ALIAS, identifier(alias.this, True)))
        elif self.mysql and isinstance(inner, exp.Select):
            # MySQL resolves ON DUPLICATE KEY UPDATE's columns in the source
            # SELECT's FROM items too
            seen = self.resolver.with_ctes(inner, seen, None)
            from_ = inner.args.get("from_") or inner.args.get("from")
            if isinstance(from_, exp.From):
                items.append(from_.this)
                items.extend(from_.expressions or [])
            joins.extend(inner.args.get("joins") or [])
        if where is not None and not isinstance(where, exp.Where):
            raise _Refused("")
        _one_meaning([*items, *(j.this for j in joins if isinstance(j, exp.Join))], self.fold)
        cond = where.this if isinstance(where, exp.Where) else None
        self.query(_select(values or [exp.Null()], items, cond, joins), seen, None, True)

    def query(self, q: exp.Expr, ctes: _Ctes, outer: _Scope | None, output: bool) -> None:
        """Judge ``q``; ``output``: its columns are returned (FROM item, CTE,
        the statement) rather than compared (an IN / EXISTS / scalar subquery)."""
        q = _unwrap(q)
        ctes = self.resolver.with_ctes(
            q, ctes, outer, lambda cte, seen: self.query(cte, seen, outer, True)
        )
        if isinstance(q, exp.SetOperation):
            self.query(q.this, ctes, outer, output)
            self.query(q.expression, ctes, outer, output)
            outs = self.resolver.query(q, ctes, outer)
            every = _all_sources(outs)
            found = self.restricted(every)
            if found is not None:
                if q.args.get("distinct") or not isinstance(q, exp.Union):
                    self.refuse(found, "UNION / INTERSECT / EXCEPT without ALL compares values and")
                if q.args.get("order") is not None or q.args.get("limit") is not None:
                    self.refuse(found, "ORDER BY / LIMIT on a UNION")
            return
        if isinstance(q, exp.Values):
            for row in q.expressions:
                self.clauses(row, _Scope(outer), ctes, q, output)
            return
        if not isinstance(q, exp.Select):
            raise _Refused("")
        scope = self.resolver.scope(q, ctes, outer)
        self.from_items(q, scope, ctes, outer)
        self.clauses(q, scope, ctes, q, output)
        self.ordinals(q, ctes, outer)

    def ordinals(self, q: exp.Select, ctes: _Ctes, outer: _Scope | None) -> None:
        """``ORDER BY 2`` / ``GROUP BY 2``: the select list's column at that position."""
        terms: list[exp.Expr] = []
        for key in ("order", "group"):
            clause = q.args.get(key)
            if clause is not None:
                terms.extend(
                    t.this if isinstance(t, exp.Ordered) else t for t in clause.expressions
                )
        places = []
        for t in terms:
            while isinstance(t, exp.Paren):  # SQLite reads ORDER BY (2) as a position too
                t = t.this
            if isinstance(t, exp.Literal) and not t.is_string:
                try:
                    places.append(int(t.this))
                except ValueError:  # 2.0, 1e0: a constant, not a position
                    continue
        if not places:
            return
        outs = self.resolver.query(q, ctes, outer)
        if outs is None or any(o.star for o in outs):
            sources = _all_sources(outs)
        else:
            sources = set()
            for k in places:
                sources |= outs[k - 1].sources if 0 < k <= len(outs) else {"?.*"}
        found = self.restricted(sources)
        if found is not None:
            self.refuse(found, "ORDER BY / GROUP BY by position")

    def from_items(self, q: exp.Select, scope: _Scope, ctes: _Ctes, outer: _Scope | None) -> None:
        """Derived tables are judged as queries; a table function's arguments
        decide how many rows it makes, so a restricted column may not be one."""
        from_ = q.args.get("from_") or q.args.get("from")
        items: list[exp.Expr] = []
        if isinstance(from_, exp.From):
            items.append(from_.this)
            items.extend(from_.expressions or [])
        joins = q.args.get("joins") or []
        items.extend(j.this for j in joins)
        for item in items:
            if isinstance(item, exp.Table) and isinstance(item.this, exp.Identifier):
                for join in item.args.get("joins") or []:
                    self.condition_or_using(join, scope, ctes, q)
                continue
            if isinstance(item, exp.Subquery):
                self.query(item.this, ctes, outer, True)
            elif isinstance(item, exp.Lateral) and isinstance(item.this, exp.Subquery):
                self.query(item.this, ctes, scope, True)
            elif isinstance(item, exp.Values):
                self.query(item, ctes, outer, True)
            else:
                found = self.restricted(self.resolver.sources(item, scope, ctes))
                if found is not None:
                    self.refuse(
                        found, "a table function over it decides how many rows come back and"
                    )
        for join in joins:
            self.condition_or_using(join, scope, ctes, q)

    def condition_or_using(self, join: exp.Expr, scope: _Scope, ctes: _Ctes, q: exp.Select) -> None:
        """A join's USING and NATURAL compare columns for equality, hidden from the text."""
        names: list[str] = []
        if str(join.args.get("method") or "").upper() == "NATURAL":
            names.append("*")
        for ident in join.args.get("using") or []:
            names.append(
                identifier(ident if isinstance(ident, exp.Identifier) else ident.this, self.fold)
            )
        for name in names:
            sources: set[str] = set()
            for item in scope.items.values():
                if name == "*":
                    sources |= item.whole_row()
                else:
                    sources |= item.column(name)[0]
            found = self.restricted(sources)
            if found is None:
                continue
            # MySQL compares a string with a number as numbers: only provable
            # text may meet a masked column (NATURAL's columns are unknown)
            text = not self.mysql or (name != "*" and self.using_text(name, scope, sources))
            if found[1] == "deny" or not text:
                self.refuse(found, "a join USING / NATURAL on it")
        on = join.args.get("on")
        if on is not None:
            self.clauses(on, scope, ctes, q, False)

    def clauses(
        self,
        node: exp.Expr,
        scope: _Scope,
        ctes: _Ctes,
        q: exp.Expr,
        output: bool,
    ) -> None:
        """Every column and nested query of ``node`` that belongs to ``q``'s scope."""
        for col, sub in _own(node, q):
            if sub is not None:
                self.query(sub, ctes, scope, False)
                self.compared_query(sub, scope, ctes)
                continue
            assert col is not None
            self.column(col, scope, ctes, q, output)

    def compared_query(self, sub: exp.Expr, scope: _Scope, ctes: _Ctes) -> None:
        """A subquery in an expression: its columns are compared with something."""
        holder = sub
        while isinstance(holder.parent, exp.Paren | exp.Subquery):
            holder = holder.parent
        parent = holder.parent
        inner = _unwrap(sub)
        if isinstance(parent, exp.Exists):
            return  # only whether a row exists; the inner WHERE was judged
        outs = self.resolver.query(inner, ctes, scope)
        if outs is None:
            found = self.restricted(self.resolver.sources(inner, scope, ctes) | {"?.*"})
            if found is not None:
                self.refuse(found, "a subquery guardeddb cannot follow")
            return
        found = self.restricted(_all_sources(outs))
        if found is None:
            return
        bare = all(o.bare and not o.star for o in outs) and len(outs) == 1
        compared = self.compared(scope, ctes, _all_sources(outs))
        if found[1] == "equality" and bare and _equality(holder, compared):
            return
        self.refuse(found, "a subquery whose result is compared with something")

    def column(
        self, col: exp.Column, scope: _Scope, ctes: _Ctes, q: exp.Expr, output: bool
    ) -> None:
        clause, path = _clause(col, q)
        if isinstance(col.this, exp.Star) and clause == "expressions" and col.parent is q:
            return  # SELECT c.*: each column shown as itself
        sources, bare = self.resolve(col, scope, ctes, q, clause)
        found = self.restricted(sources)
        if found is None:
            return
        # the query's own ORDER BY is its clause, not an ORDER BY inside an aggregate
        inner = path[:-1] if path and isinstance(path[-1], exp.Order) else path
        plain = not any(isinstance(p, exp.Window | exp.Order | exp.WithinGroup) for p in inner)
        if clause == "expressions" and plain:
            if isinstance(q, exp.Select) and q.args.get("distinct") is not None:
                self.refuse(found, "SELECT DISTINCT compares values and")
            proj: exp.Expr = col
            while isinstance(proj.parent, exp.Alias | exp.Paren):
                proj = proj.parent
            whole = proj.parent is q or (
                isinstance(proj.parent, exp.Tuple) and isinstance(q, exp.Values)
            )
            if whole and bare:
                return  # shown as itself: masked, or compared by the query above
            self.refuse(found, "an expression over it can fail or branch on its value and")
        condition = clause in ("where", "having", "on") and plain
        equal = condition and found[1] == "equality" and bare
        if equal and _equality(col, self.compared(scope, ctes, sources)):
            return
        what = {
            "where": "this WHERE condition",
            "having": "this HAVING condition",
            "on": "this JOIN ON condition",
            "group": "GROUP BY",
            "order": "ORDER BY",
            "distinct": "DISTINCT ON",
        }.get(clause, "using it here")
        if not plain:
            what = "a window's PARTITION BY / ORDER BY, or an ORDER BY inside an aggregate,"
        self.refuse(found, what)

    def compared(
        self, scope: _Scope, ctes: _Ctes, sources: set[str] | frozenset[str]
    ) -> Callable[[exp.Expr | None], bool]:
        """What a column with ``sources`` may be compared with under
        ``equality``: values; on MySQL only provable text (``text``)."""
        if not self.mysql:
            return _plain
        own = frozenset(sources)
        return lambda node: self.text(node, scope, ctes, own)

    def text(self, node: exp.Expr | None, scope: _Scope, ctes: _Ctes, own: frozenset[str]) -> bool:
        """Whether MySQL compares ``node`` with a masked string as a string,
        not as a number (which reads the string's leading digits): a string
        literal, NULL, a value cast to a character type, a column only when
        it is the masked column itself (the same table's, in a self-join: a
        column of another table is not known to be text, whatever its name),
        a subquery only when each of its columns is such."""
        while isinstance(node, exp.Paren):
            node = node.this
        if isinstance(node, exp.Cast | exp.Literal | exp.Null):
            return _text_value(node)
        if isinstance(node, exp.Column):
            if isinstance(node.this, exp.Star):
                return False
            sources, bare = self.resolver.column(node, scope)
            return bare and _same_column(sources, own)
        if not isinstance(node, _QUERIES):
            return False
        q = _unwrap(node)
        ctes = self.resolver.with_ctes(q, ctes, scope)
        if isinstance(q, exp.SetOperation):
            return self.text(q.this, scope, ctes, own) and self.text(q.expression, scope, ctes, own)
        if not isinstance(q, exp.Select) or not q.expressions:
            return False
        inner = self.resolver.scope(q, ctes, scope)
        return all(
            self.text(e.this if isinstance(e, exp.Alias) else e, inner, ctes, own)
            for e in q.expressions
        )

    def using_text(self, name: str, scope: _Scope, sources: set[str]) -> bool:
        """On MySQL, whether a join USING (``name``) compares only the masked
        column with itself (a self-join): no item may bring a number."""
        own = frozenset(sources)
        if len(own) != 1:  # two tables' columns of that name: one may be a number
            return False
        for item in scope.items.values():
            if (
                item.kind == "derived"
                and item.outs is not None
                and all(o.name is not None and not o.star for o in item.outs)
                and not any(str(o.name).lower() == name.lower() for o in item.outs)
            ):
                continue  # certainly not a column of this item
            got, bare = item.column(name)
            if not bare or not _same_column(got, own):
                return False
        return True

    def resolve(
        self, col: exp.Column, scope: _Scope, ctes: _Ctes, q: exp.Expr, clause: str
    ) -> tuple[set[str], bool]:
        """The sources of a column reference; in GROUP BY / ORDER BY / HAVING
        an unqualified name may also be a select-list alias (both are judged)."""
        sources, bare = self.resolver.column(col, scope)
        if clause in ("group", "order", "having") and not col.table and isinstance(q, exp.Select):
            low = col.name.lower()
            for proj in q.expressions:
                if isinstance(proj, exp.Alias) and proj.alias.lower() == low:
                    more, _ = self.resolver.expr(proj, scope, ctes)
                    if all(src.startswith("?.") for src in sources):
                        sources = set()  # only the alias has that name
                    sources = sources | more
                    bare = False
        return sources, bare


def _all_sources(outs: list[Output] | None) -> set[str]:
    if outs is None:
        return {"?.*"}
    found: set[str] = set()
    for o in outs:
        found |= o.sources
        found |= {f"{t}.*" for t in o.star}
    return found


def _own(node: exp.Expr, q: exp.Expr) -> Iterator[tuple[exp.Column | None, exp.Expr | None]]:
    """The columns of ``node`` in ``q``'s own scope, and its nested queries
    (not FROM items, which ``from_items`` judges, nor CTEs)."""
    stack: list[exp.Expr] = [node]
    while stack:
        n = stack.pop()
        if n is q:
            for key, value in n.args.items():
                if key in ("from_", "from", "joins", "with_", "with"):
                    continue
                for child in value if isinstance(value, list) else [value]:
                    if isinstance(child, exp.Expr):
                        stack.append(child)
        elif isinstance(n, _QUERIES):
            yield None, n
        elif isinstance(n, exp.Column):
            yield n, None
        else:
            stack.extend(n.iter_expressions())


def _clause(col: exp.Expr, q: exp.Expr) -> tuple[str, list[exp.Expr]]:
    """Which clause of ``q`` ``col`` is in (``expressions`` is the select
    list), and the nodes between them."""
    path: list[exp.Expr] = []
    node = col
    while node.parent is not None and node.parent is not q:
        node = node.parent
        path.append(node)
        if isinstance(node, exp.Join):
            return "on", path
    key = str(node.arg_key) if node.parent is q else "?"
    return {"from_": "from"}.get(key, key), path


def _equality(node: exp.Expr, value: Callable[[exp.Expr | None], bool]) -> bool:
    """``node`` (a column or a subquery) compared with ``=`` / ``IN`` / ``IS
    NULL`` to what ``value`` accepts, in a plain AND / OR / NOT condition.

    On MySQL a string compared with a number is read as a number, which
    compares only its leading digits (``'123-45-6789' = 123``): there
    ``value`` accepts only provable text (``_Judge.text``)."""
    while isinstance(node.parent, exp.Paren):
        node = node.parent
    cmp = node.parent
    if isinstance(cmp, exp.EQ | exp.NullSafeEQ):
        other = cmp.expression if node is cmp.this else cmp.this
        if not value(other):
            return False
    elif isinstance(cmp, exp.In):
        if node is cmp.this:
            if cmp.args.get("unnest") is not None or cmp.args.get("field") is not None:
                return False
            if not all(value(e) for e in cmp.expressions):
                return False
            if cmp.args.get("query") is not None and not value(cmp.args["query"]):
                return False
        elif node is cmp.args.get("query"):
            if not value(cmp.this):
                return False
        elif not value(cmp.this) or not all(value(e) for e in cmp.expressions):
            return False
    elif isinstance(cmp, exp.Is):
        if node is not cmp.this or not isinstance(cmp.expression, exp.Null):
            return False
    else:
        return False
    up: Any = cmp
    while isinstance(up.parent, _BOOLEAN):
        up = up.parent
    return isinstance(up.parent, _CONDITIONS) and up.arg_key in ("this", "on")


def _plain(node: exp.Expr | None) -> bool:
    """A value, or a subquery whose every column is one (PostgreSQL, SQLite)."""
    return _value(node) or (node is not None and _query_of(node, _value))


def _query_of(node: exp.Expr, value: Any) -> bool:
    """A subquery whose every result column is a ``value`` (SELECT ssn ...)."""
    inner = _unwrap(node)
    if isinstance(inner, exp.SetOperation):
        return _query_of(inner.this, value) and _query_of(inner.expression, value)
    if not isinstance(inner, exp.Select):
        return False
    return all(value(e.this if isinstance(e, exp.Alias) else e) for e in inner.expressions)


def _value(node: exp.Expr | None) -> bool:
    """A literal, a parameter, NULL or a column (perhaps cast or negated)."""
    while isinstance(node, exp.Paren | exp.Cast | exp.Neg):
        node = node.this
    return isinstance(node, _VALUES) and not (
        isinstance(node, exp.Column) and isinstance(node.this, exp.Star)
    )


_TEXT = frozenset({"CHAR", "VARCHAR", "TEXT", "NCHAR", "NVARCHAR", "CHARACTER_SET"})


def _same_column(sources: set[str] | frozenset[str], own: frozenset[str]) -> bool:
    """Every source one of the masked column's own base-table columns."""
    return bool(sources) and all(
        not src.startswith("?.") and not src.endswith(".*") and src in own for src in sources
    )


def _text_value(node: exp.Expr | None) -> bool:
    """A value MySQL compares with a string column as a string: a string
    literal, NULL, a column, or anything cast to a character type."""
    while isinstance(node, exp.Paren):
        node = node.this
    if isinstance(node, exp.Cast):
        return str(node.to.this.name).upper() in _TEXT and _value(node.this)
    if isinstance(node, exp.Literal):
        return bool(node.is_string)
    return isinstance(node, exp.Null | exp.Column) and _value(node)


def _inert(value: object) -> bool:
    """A flag, a keyword, a name or a constant: nothing that reads a value."""
    if value is None or isinstance(value, bool | str):
        return True
    if isinstance(value, list):
        return all(_inert(v) for v in value)
    if isinstance(value, exp.Expr):
        return all(isinstance(n, _INERT) for n in value.walk())
    return False


def _walked(node: exp.Expr, parts: frozenset[str]) -> None:
    """Refuse ``node`` when a part the judge does not walk holds more than
    flags and names (an allowlist: a new clause is refused until judged).
    An optimizer hint (``/*+ ... */``) is never evaluated on rows."""
    for key, value in node.args.items():
        if key == "hint" and isinstance(value, exp.Hint):
            continue
        if key not in parts and not _inert(value):
            raise _Refused("")


def _target(node: exp.Expr | None) -> tuple[exp.Table, list[str] | None]:
    """An INSERT's target table and its column list (None: every column, by
    position); anything but a plain table and plain names is refused."""
    names: list[str] | None = None
    if isinstance(node, exp.Schema):
        if not all(isinstance(e, exp.Identifier) for e in node.expressions):
            raise _Refused("")
        names = [identifier(e, True) for e in node.expressions]
        node = node.this
    if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Identifier):
        raise _Refused("")
    for key, value in node.args.items():
        if key not in ("this", "db", "catalog", "alias") and not _inert(value):
            raise _Refused("")
    alias = node.args.get("alias")
    if alias is not None and (not isinstance(alias, exp.TableAlias) or alias.columns):
        raise _Refused("")
    return node, names


def _proposed(value: exp.Expr) -> exp.Expr:
    """``value`` with MySQL's ``VALUES(c)`` (the proposed row's column c)
    read as a column of the proposed row; any other VALUES(...) is refused."""

    def swap(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Anonymous) and str(node.name).upper() == "VALUES":
            args = node.expressions
            if len(args) != 1 or not isinstance(args[0], exp.Identifier | exp.Column):
                raise _Refused("")
            name = args[0] if isinstance(args[0], exp.Identifier) else args[0].this
            return exp.Column(this=name.copy(), table=exp.to_identifier(_ROW))
        return node

    return value.copy().transform(swap)


def _proposed_row(
    table: str, names: list[str] | None, outs: list[Output] | None
) -> list[Output] | None:
    """The proposed row's columns: column ``c`` is the value given for the
    target's ``c`` (so ``table.c``) and carries what its source value
    carries; without a column list, or with lists that do not line up,
    every column may carry any source value."""
    if outs is None:
        return None
    if names is not None and len(names) == len(outs) and not any(o.star for o in outs):
        return [
            Output(n, o.sources | {f"{table}.{n}"}, (), o.bare or not o.sources)
            for n, o in zip(names, outs, strict=True)
        ]
    return [Output(None, frozenset(_all_sources(outs)), (table,))]


def _one_meaning(items: list[exp.Expr], fold: bool) -> None:
    """Refuse FROM items that share a name but are not the same table (the
    target of ON DUPLICATE KEY UPDATE beside its source SELECT's items):
    which one a column names is the server's choice, not the judge's."""
    seen: dict[str, str] = {}
    for n, item in enumerate(items):
        name = item.alias_or_name.lower() if hasattr(item, "alias_or_name") else ""
        plain = isinstance(item, exp.Table) and isinstance(item.this, exp.Identifier)
        what = table_name(item, fold) if isinstance(item, exp.Table) and plain else f"#{n}"
        if seen.setdefault(name, what) != what:
            raise _Refused("")


def _row_item(cte: str, alias: str) -> exp.Table:
    """A FROM item naming the proposed row (a CTE of the judge's own)."""
    return exp.Table(
        this=exp.to_identifier(cte, quoted=True),
        alias=exp.TableAlias(this=exp.to_identifier(alias, quoted=True)),
    )


def _select(
    projections: list[exp.Expr],
    items: list[exp.Expr],
    where: exp.Expr | None = None,
    joins: list[exp.Expr] | None = None,
) -> exp.Select:
    """The SELECT of ``projections`` over FROM ``items`` (a table's own
    JOINs moved into the SELECT's, where the resolver sees them) and
    ``joins``, filtered by ``where``: how a write's clauses are judged."""
    seen: set[int] = set()
    unique = [i for i in items if id(i) not in seen and not seen.add(id(i))]  # type: ignore[func-returns-value]
    if not unique:
        raise _Refused("")
    flat: list[exp.Expr] = []
    for item in unique:
        item = item.copy()
        nested = list(item.args.get("joins") or [])
        if nested:
            item.set("joins", None)
        flat.append(item if not flat else exp.Join(this=item))
        flat.extend(nested)
    flat.extend(j.copy() for j in joins or [])
    sel = exp.Select(expressions=[p.copy() for p in projections])
    sel.set("from_", exp.From(this=flat[0]))
    if len(flat) > 1:
        sel.set("joins", flat[1:])
    if where is not None:
        sel.set("where", exp.Where(this=where.copy()))
    return sel


def _as_select(tree: exp.Update | exp.Delete) -> exp.Select:
    """An UPDATE or DELETE read as the SELECT of the rows it touches: its
    WHERE, joins and FROM/USING judged like a query's, what it sets and
    returns as a select list (so subqueries there are judged too), and
    MySQL's ORDER BY ... LIMIT, which picks the rows by their order."""
    _walked(tree, _CHANGE_PARTS)
    # DELETE t1 FROM customers t1 ...: the targets name items of FROM/USING,
    # which come after them and so stand for the alias
    items: list[exp.Expr] = [t for t in tree.args.get("tables") or [] if isinstance(t, exp.Expr)]
    target = tree.this
    if isinstance(target, exp.Expr):
        items.append(target)
    items.extend(t for t in tree.args.get("using") or [] if isinstance(t, exp.Expr))
    from_ = tree.args.get("from_") or tree.args.get("from")
    if isinstance(from_, exp.From):
        items.append(from_.this)
        items.extend(from_.expressions or [])
    projections: list[exp.Expr] = [exp.Star()]
    if isinstance(tree, exp.Update):
        if not all(isinstance(e, exp.EQ) for e in tree.expressions):
            raise _Refused("")
        projections.extend(e.expression for e in tree.expressions)
    returning = tree.args.get("returning")
    if returning is not None:
        if not isinstance(returning, exp.Returning) or not _inert(returning.args.get("into")):
            raise _Refused("")
        projections.extend(returning.expressions)
    where = tree.args.get("where")
    if where is not None and not isinstance(where, exp.Where):
        raise _Refused("")
    sel = _select(
        projections, items, where.this if where is not None else None, tree.args.get("joins")
    )
    for key in ("order", "limit"):
        clause = tree.args.get(key)
        if clause is not None:
            sel.set(key, clause.copy())
    with_ = _with(tree)
    if with_ is not None:
        sel.set("with_", with_.copy())
    return sel


def filters_masked(analysis: Analysis, masking: Masking) -> str | None:
    """Why ``analysis`` would use a masked column beyond what its rule's
    ``filter`` allows (for an identity that sees it masked), or None."""
    if not any(r.filter != "allow" for r in masking.rules):
        return None
    judge = _Judge(masking, analysis.dialect)
    trees: list[Any] | None = None
    for i, st in enumerate(analysis.statements):
        reads = st.outputs.reads if isinstance(st.outputs, Lineage) else st.columns
        found = judge.restricted(reads)
        # USING / NATURAL compare columns the text never names: judge every
        # statement that reads a table, not only those naming a masked column.
        if found is None and not st.tables and st.unparsed is None:
            continue
        named = found is not None
        judge.unknown = found
        found = found or ("a masked column", "deny")
        if st.unparsed is not None:
            return (
                "the statement was not fully understood, so guardeddb cannot tell whether it "
                "filters, groups or orders on a masked column with a filter rule; "
                + _fix(found[0], found[1])
            )
        if trees is None:
            trees = parsed(analysis)
        tree = trees[i] if trees is not None and i < len(trees) else None
        lost = (
            "guardeddb cannot follow how this statement uses the masked column "
            f"{found[0]}: {_fix(found[0], found[1])}"
            if named
            else "guardeddb cannot follow every part of this statement, which may use a "
            "column masked by a rule with a filter (refused to be safe); select masked "
            "columns only as themselves and filter, join, group and order on other "
            "columns (or use an identity that may unmask them)"
        )
        try:
            if tree is None:
                raise _Refused("")
            judge.statement(tree)
        except _Opaque:
            if named:
                return lost
        except _Refused as why:
            return str(why) or lost
        except Exception:  # a tree shape the judge did not expect: fail closed
            return lost
    return None
