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
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from sqlglot import exp

from ..sql.lineage import Lineage, Output, _Resolver, _Scope, _unwrap, _with, identifier
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
            if isinstance(tree.expression, (*_QUERIES, exp.Values)):
                self.query(tree.expression, {}, None, True)
            return
        if isinstance(tree, (*_QUERIES, exp.Values)):
            self.query(tree, {}, None, True)
            return
        raise _Opaque  # MERGE, CREATE ... AS, DDL: refused only if it reads one

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
        places = [int(t.this) for t in terms if isinstance(t, exp.Literal) and not t.is_string]
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
            if found is not None and found[1] == "deny":
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
        if found[1] == "equality" and bare and _equality(holder, self.mysql):
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
        equal = condition and found[1] == "equality" and bare and _equality(col, self.mysql)
        if equal and (not self.mysql or self.masked_peers(col, scope)):
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

    def masked_peers(self, col: exp.Expr, scope: _Scope) -> bool:
        """On MySQL, whether every column ``col`` is compared with is masked by
        some rule too (a string like it); a number column would compare only
        the leading digits of ``col``'s value."""
        node = col
        while isinstance(node.parent, exp.Paren):
            node = node.parent
        cmp = node.parent
        assert cmp is not None
        for other in cmp.iter_expressions():
            while isinstance(other, exp.Paren):
                other = other.this
            if other is not node and isinstance(other, exp.Column):
                sources, _ = self.resolver.column(other, scope)
                if any(self.masking._rule(s) is None for s in sources):
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


def _equality(node: exp.Expr, mysql: bool) -> bool:
    """``node`` (a column or a subquery) compared with ``=`` / ``IN`` / ``IS
    NULL`` to values or columns, in a plain AND / OR / NOT condition.

    On MySQL a string compared with a number is read as a number, which
    compares only its leading digits (``'123-45-6789' = 123``): there a
    value must be a string literal or a parameter cast to text."""
    value = _text_value if mysql else _value
    while isinstance(node.parent, exp.Paren):
        node = node.parent
    cmp = node.parent
    if isinstance(cmp, exp.EQ | exp.NullSafeEQ):
        other = cmp.expression if node is cmp.this else cmp.this
        if not value(other) and not _query_of(other, value):
            return False
    elif isinstance(cmp, exp.In):
        if node is cmp.this:
            if cmp.args.get("unnest") is not None or cmp.args.get("field") is not None:
                return False
            if not all(value(e) for e in cmp.expressions):
                return False
            if cmp.args.get("query") is not None and not _query_of(cmp.args["query"], value):
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


def _as_select(tree: exp.Update | exp.Delete) -> exp.Select:
    """An UPDATE or DELETE read as the SELECT of the rows it touches: its
    WHERE, joins and FROM/USING judged like a query's, what it sets and
    returns as a select list (so subqueries there are judged too)."""
    items: list[exp.Expr] = []
    target = tree.this
    if isinstance(target, exp.Expr):
        items.append(target)
    for key in ("tables", "using"):
        items.extend(t for t in tree.args.get(key) or [] if isinstance(t, exp.Expr))
    from_ = tree.args.get("from_") or tree.args.get("from")
    if isinstance(from_, exp.From):
        items.append(from_.this)
        items.extend(from_.expressions or [])
    projections: list[exp.Expr] = [exp.Star()]
    if isinstance(tree, exp.Update):
        projections.extend(e.expression.copy() for e in tree.expressions if isinstance(e, exp.EQ))
    returning = tree.args.get("returning")
    if returning is not None:
        projections.extend(e.copy() for e in returning.expressions)
    seen: set[int] = set()
    unique = [i for i in items if id(i) not in seen and not seen.add(id(i))]  # type: ignore[func-returns-value]
    if not unique:
        raise _Refused("")
    sel = exp.Select(expressions=projections)
    sel.set("from_", exp.From(this=unique[0].copy()))
    joins = [exp.Join(this=i.copy()) for i in unique[1:]]
    joins.extend(j.copy() for j in tree.args.get("joins") or [])
    if joins:
        sel.set("joins", joins)
    where = tree.args.get("where")
    if where is not None:
        sel.set("where", where.copy())
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
        try:
            if tree is None:
                raise _Refused("")
            judge.statement(tree)
        except _Opaque:
            if named:
                return (
                    "guardeddb cannot follow how this statement uses the masked column "
                    f"{found[0]}: {_fix(found[0], found[1])}"
                )
        except _Refused as why:
            return str(why) or (
                "guardeddb cannot follow how this statement uses the masked column "
                f"{found[0]}: {_fix(found[0], found[1])}"
            )
        except Exception:  # a tree shape the judge did not expect: fail closed
            return (
                "guardeddb cannot follow how this statement uses the masked column "
                f"{found[0]}: {_fix(found[0], found[1])}"
            )
    return None
