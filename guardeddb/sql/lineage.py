"""Lineage of output columns: which source columns each returned column comes from.

Masking follows it. An output records every source column it may carry
(``"table.column"``; ``"table.*"`` for a whole row; ``"?.name"`` where the
table cannot be told) and whether it is *bare*: exactly one column passed
through unchanged (aliased, through derived tables, CTEs, UNION branches
that are all bare). Only a bare output may get an operator that reveals part
of a value; anything else computed from a masked column is redacted whole.

Lineage is complete or admits it is not: CTE and alias column lists rename
by position, table functions (``json_each``, ``JSON_TABLE``, ``unnest``),
LATERAL and VALUES are followed, and what cannot be followed carries a
``"?."`` source. Beside the outputs, :class:`Lineage` lists every column the
statement reads anywhere (``reads``), so masking can redact an output of
unknown lineage whenever the statement touches a masked column at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from sqlglot import exp

__all__ = ["Columns", "Lineage", "Output", "identifier", "outputs", "stored", "table_name"]

#: A table's column names from the catalog, in order; None when unknown.
Columns = Callable[[str], tuple[str, ...] | None]


@dataclass(frozen=True, slots=True)
class Output:
    """One returned column, or a star standing for several."""

    name: str | None  # the column's output name, when the SQL says it
    sources: frozenset[str]  # "table.column"; "table.*" is the whole row; "?." an unknown table
    star: tuple[str, ...] = ()  # a star over these tables ("?": unknown): as many columns
    bare: bool = False  # one column passed through unchanged (sources: where it may come from)


class Lineage(tuple[Output, ...]):
    """The outputs of one statement, whether they could be followed at all
    (``known``), and every column the statement reads anywhere (``reads``).

    ``tree`` is kept when a star or a positional column list over a table
    mattered: :meth:`resolve` follows it again with the catalog's columns.
    """

    known: bool
    reads: frozenset[str]
    tree: exp.Expr | None
    fold: bool

    def __new__(
        cls,
        outs: tuple[Output, ...] | list[Output],
        known: bool,
        reads: frozenset[str],
        tree: exp.Expr | None = None,
        fold: bool = True,
    ) -> Lineage:
        self = super().__new__(cls, outs)
        self.known = known
        self.reads = reads
        self.tree = tree
        self.fold = fold
        return self

    def resolve(self, columns: Columns) -> Lineage:
        """The lineage again, stars and positional lists over tables resolved
        by ``columns`` (the catalog); itself when nothing needs the catalog."""
        if self.tree is None:
            return self
        return outputs(self.tree, self.fold, columns)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Lineage)
            and tuple.__eq__(self, other)
            and (self.known, self.reads) == (other.known, other.reads)
        )

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __hash__(self) -> int:
        return hash((tuple(self), self.known, self.reads))


def identifier(node: exp.Expr | str | None, fold: bool) -> str:
    """An identifier as the dialect resolves it: unquoted ones fold case."""
    if isinstance(node, exp.Identifier):
        text = str(node.this)
        return text if node.quoted or not fold else text.lower()
    if isinstance(node, str):
        return node.lower() if fold else node
    return ""


def table_name(table: exp.Table, fold: bool) -> str:
    """A table's name, schema-qualified when written so, as the dialect resolves it."""
    parts = [identifier(table.args.get(p), fold) for p in ("catalog", "db", "this")]
    return ".".join(p for p in parts if p)


def _unwrap(q: exp.Expr) -> exp.Expr:
    while isinstance(q, exp.Subquery | exp.Paren) and q.this is not None:
        q = q.this
    return q


def _with(q: exp.Expr) -> Any:
    return q.args.get("with_") or q.args.get("with")  # renamed in sqlglot 30


def _alias_columns(node: exp.Expr) -> list[str] | None:
    alias = node.args.get("alias")
    if isinstance(alias, exp.TableAlias) and alias.columns:
        return [identifier(c, True) for c in alias.columns]
    return None


class _Src:
    """One FROM item as seen by column references: a table, a derived table
    with known outputs, or an opaque one (a table function, a renamed table)
    whose columns may carry ``carries``."""

    __slots__ = ("carries", "kind", "outs", "table")

    def __init__(
        self,
        kind: str,
        table: str = "",
        outs: list[Output] | None = None,
        carries: frozenset[str] = frozenset(),
    ) -> None:
        self.kind = kind  # table | derived | opaque
        self.table = table
        self.outs = outs
        self.carries = carries

    def column(self, name: str) -> tuple[set[str], bool]:
        """The sources of column ``name`` of this item, and whether it is bare;
        an empty set when the item certainly has no such column."""
        if self.kind == "table":
            return {f"{self.table}.{name}"}, True
        if self.kind == "opaque" or self.outs is None:
            return set(self.carries) | {f"?.{name}"}, False
        found: set[str] = set()
        bare = True
        certain = True
        low = name.lower()
        for o in self.outs:
            if o.star:
                found.update(f"{t}.{name}" for t in o.star)
                found.update(o.sources)
                bare = bare and not o.sources and "?" not in o.star
                certain = False
            elif (o.name or "").lower() == low:
                found.update(o.sources)
                bare = bare and o.bare
            elif o.name is None:
                certain = False
        if not found and not certain:
            return {f"?.{name}"}, False
        return found, bare and bool(found)

    def whole_row(self) -> set[str]:
        """Every column a whole-row reference to this item carries."""
        if self.kind == "table":
            return {f"{self.table}.*"}
        if self.kind == "opaque" or self.outs is None:
            return set(self.carries) | {"?.*"}
        found: set[str] = set()
        for o in self.outs:
            found.update(o.sources)
            found.update(f"{t}.*" for t in o.star)
        return found

    def star(self) -> list[Output]:
        if self.kind == "table":
            return [Output(None, frozenset(), (self.table,), True)]
        if self.kind == "opaque" or self.outs is None:
            return [Output(None, self.carries, ("?",))]
        return list(self.outs)


class _Scope:
    """The FROM items of one SELECT by alias, inside its enclosing scopes."""

    __slots__ = ("items", "parent")

    def __init__(self, parent: _Scope | None) -> None:
        self.items: dict[str, _Src] = {}
        self.parent = parent

    def chain(self) -> Iterator[_Scope]:
        s: _Scope | None = self
        while s is not None:
            yield s
            s = s.parent


def _rename(outs: list[Output] | None, names: list[str]) -> list[Output] | None:
    """Outputs renamed by a column list (``WITH x(a, b)``, ``AS s(a, b)``), by position."""
    if outs is None:
        return None
    if any(o.star for o in outs):
        # Positions unknown: every renamed column may be any of them.
        carried = frozenset().union(*(o.sources | {f"{t}.*" for t in o.star} for o in outs))
        return [Output(n, carried | {f"?.{n}"}) for n in names] + [Output(None, carried, ("?",))]
    renamed = [Output(n, o.sources, (), o.bare) for n, o in zip(names, outs, strict=False)]
    return renamed + outs[len(names) :]


class _Resolver:
    def __init__(self, fold: bool, columns: Columns | None = None) -> None:
        self.fold = fold
        self.columns = columns  # the catalog, when the caller has one
        self.starred = False  # a star or positional list over a table was met

    def table_columns(self, table: str) -> list[Output] | None:
        """A table's columns as bare outputs, from the catalog; None unknown."""
        self.starred = True
        names = self.columns(table) if self.columns is not None else None
        if not names:
            return None
        return [Output(n, frozenset({f"{table}.{n}"}), (), True) for n in names]

    def star(self, item: _Src, merged: bool = False) -> list[Output]:
        """What ``item.*`` stands for: the table's columns when the catalog
        knows them, unless a USING or NATURAL join (``merged``) merges
        columns and so moves the positions the catalog gives."""
        if item.kind == "table" and not merged:
            cols = self.table_columns(item.table)
            if cols is not None:
                return cols
        return item.star()

    def query(
        self, q: exp.Expr, ctes: dict[str, list[Output] | None], outer: _Scope | None
    ) -> list[Output] | None:
        q = _unwrap(q)
        ctes = self.with_ctes(q, ctes, outer)
        if isinstance(q, exp.SetOperation):
            left = self.query(q.this, ctes, outer)
            right = self.query(q.expression, ctes, outer)
            if left is None or right is None:
                return None
            if len(left) != len(right) or any(o.star for o in left + right):
                # Branches of unknown widths: every output may be anything of either.
                carried = frozenset().union(
                    *(o.sources | {f"{t}.*" for t in o.star} for o in left + right)
                )
                return [Output(None, carried, ("?",))]
            return [
                Output(a.name, a.sources | b.sources, (), a.bare and b.bare)
                for a, b in zip(left, right, strict=True)
            ]
        if isinstance(q, exp.Values):
            return self.values(q, ctes, outer)
        if not isinstance(q, exp.Select):
            return None
        scope = self.scope(q, ctes, outer)
        merged = any(
            j.args.get("using") or j.method.upper() == "NATURAL" for j in q.args.get("joins") or []
        )
        out: list[Output] = []
        for proj in q.expressions:
            if isinstance(proj, exp.Star):
                for item in scope.items.values():
                    out.extend(self.star(item, merged))
                if not scope.items:
                    return None
            elif isinstance(proj, exp.Column) and isinstance(proj.this, exp.Star):
                src = self.find(proj.table.lower(), scope)
                if src is None:
                    return None
                out.extend(self.star(src, merged))
            else:
                sources, bare = self.expr(proj, scope, ctes)
                out.append(Output(proj.alias_or_name or None, frozenset(sources), (), bare))
        return _merge_stars(out)

    def with_ctes(
        self,
        q: exp.Expr,
        ctes: dict[str, list[Output] | None],
        outer: _Scope | None,
        visit: Callable[[exp.Expr, dict[str, list[Output] | None]], None] | None = None,
    ) -> dict[str, list[Output] | None]:
        """``ctes`` with the CTEs of ``q``'s WITH added, each renamed by its
        column list; ``visit`` sees each CTE's query first, with the CTEs
        it can refer to (masking/filters.py judges them so)."""
        with_ = _with(q)
        if not isinstance(with_, exp.With):
            return ctes
        ctes = dict(ctes)
        for cte in with_.expressions:
            name = identifier(cte.args["alias"].this, self.fold).lower()
            if with_.args.get("recursive"):
                ctes[name] = None  # its self-reference: not followed
            if visit is not None:
                visit(cte.this, ctes)
            outs = self.query(cte.this, ctes, outer)
            cols = _alias_columns(cte)
            ctes[name] = _rename(outs, cols) if cols else outs
        return ctes

    def values(
        self, q: exp.Values, ctes: dict[str, list[Output] | None], scope: _Scope | None
    ) -> list[Output]:
        rows = [r.expressions if isinstance(r, exp.Tuple) else [r] for r in q.expressions]
        width = max((len(r) for r in rows), default=0)
        at: list[set[str]] = [set() for _ in range(width)]
        for row in rows:
            for i, e in enumerate(row):
                at[i] |= self.sources(e, scope, ctes)
        return [Output(None, frozenset(s)) for s in at]

    def find(self, qual: str, scope: _Scope) -> _Src | None:
        for s in scope.chain():
            if qual in s.items:
                return s.items[qual]
        return None

    def scope(
        self, q: exp.Select, ctes: dict[str, list[Output] | None], outer: _Scope | None
    ) -> _Scope:
        """The FROM items of a SELECT by alias; LATERAL items and table
        functions see the items before them, derived tables only ``outer``."""
        scope = _Scope(outer)
        from_ = q.args.get("from_") or q.args.get("from")  # renamed in sqlglot 30
        items: list[exp.Expr] = []
        if isinstance(from_, exp.From):
            items.append(from_.this)
            items.extend(from_.expressions or [])
        for join in q.args.get("joins") or []:
            items.append(join.this)
        for n, item in enumerate(items):
            alias = item.alias_or_name.lower() if hasattr(item, "alias_or_name") else ""
            cols = _alias_columns(item)
            src: _Src
            if isinstance(item, exp.Table) and isinstance(item.this, exp.Identifier):
                name = table_name(item, self.fold)
                if not item.args.get("db") and name.lower() in ctes:
                    outs = ctes[name.lower()]
                    src = _Src("derived", outs=_rename(outs, cols) if cols else outs)
                elif cols:
                    # customers AS c(i, n, e): positions come from the catalog.
                    known = self.table_columns(name)
                    if known is None:
                        src = _Src("opaque", carries=frozenset({f"{name}.*"}))
                    else:
                        src = _Src("derived", outs=_rename(known, cols))
                else:
                    src = _Src("table", table=name)
                alias = alias or name.rsplit(".", 1)[-1].lower()
            elif isinstance(item, exp.Subquery):
                outs = self.query(item.this, ctes, outer)
                src = _Src("derived", outs=_rename(outs, cols) if cols else outs)
            elif isinstance(item, exp.Lateral) and isinstance(item.this, exp.Subquery):
                outs = self.query(item.this, ctes, scope)
                src = _Src("derived", outs=_rename(outs, cols) if cols else outs)
            elif isinstance(item, exp.Values):
                outs = self.values(item, ctes, outer)
                src = _Src("derived", outs=_rename(outs, cols) if cols else outs)
            else:
                # A table function, UNNEST, JSON_TABLE, LATERAL f(...): opaque,
                # carrying whatever its arguments read.
                src = _Src("opaque", carries=frozenset(self.sources(item, scope, ctes)))
            scope.items[alias or f"?{n}"] = src
        return scope

    def expr(
        self, proj: exp.Expr, scope: _Scope, ctes: dict[str, list[Output] | None]
    ) -> tuple[set[str], bool]:
        """The sources of a projection, and whether it is one bare column."""
        node = proj
        while isinstance(node, exp.Alias | exp.Paren):
            node = node.this
        if isinstance(node, exp.Column) and not isinstance(node.this, exp.Star):
            return self.column(node, scope)
        return self.sources(proj, scope, ctes), False

    def column(self, col: exp.Column, scope: _Scope) -> tuple[set[str], bool]:
        if isinstance(col.this, exp.Star):
            src = self.find(col.table.lower(), scope) if col.table else None
            if src is not None:
                return src.whole_row(), False
            whole: set[str] = {"?.*"} if col.table else set()
            for s in scope.chain():
                for item in s.items.values():
                    whole |= item.whole_row()
            return whole or {"?.*"}, False
        name = identifier(col.this, self.fold)
        qual = col.table.lower()
        if qual:
            owner = self.find(qual, scope)
            if owner is None:
                return {f"?.{name}"}, False
            found, bare = owner.column(name)
            return (found, bare) if found else ({f"?.{name}"}, False)
        found = set()
        bare = True
        row = self.find(name.lower(), scope)
        if row is not None:
            # SELECT u FROM users u: the whole row (or a column named u).
            found |= row.whole_row()
            bare = False
        # An unqualified name may come from any item in scope, or (correlated)
        # from an enclosing query's.
        for s in scope.chain():
            for item in s.items.values():
                got, b = item.column(name)
                found |= got
                bare = bare and (b or not got)
        if not found:
            return {f"?.{name}"}, False
        return found, bare

    def sources(
        self, expr: exp.Expr, scope: _Scope | None, ctes: dict[str, list[Output] | None]
    ) -> set[str]:
        """Every source column anything in ``expr`` reads (subqueries included)."""
        here = scope if scope is not None else _Scope(None)
        found: set[str] = set()
        stack: list[exp.Expr] = [expr]
        while stack:
            node = stack.pop()
            if node is not expr and isinstance(node, exp.Subquery | exp.Select | exp.SetOperation):
                inner = self.query(node, ctes, here)
                if inner is None:
                    found.add("?.*")
                else:
                    for o in inner:
                        found.update(o.sources)
                        found.update(f"{t}.*" for t in o.star)
                continue
            if isinstance(node, exp.Column):
                found |= self.column(node, here)[0]
                continue
            if isinstance(node, exp.Star) and not isinstance(node.parent, exp.Count):
                for s in here.chain():
                    for item in s.items.values():
                        found |= item.whole_row()
            stack.extend(node.iter_expressions())
        return found


def _merge_stars(out: list[Output]) -> list[Output]:
    """Adjacent stars are one stretch of columns (``SELECT * FROM a, b``)."""
    merged: list[Output] = []
    for o in out:
        if o.star and merged and merged[-1].star:
            last = merged.pop()
            o = Output(None, last.sources | o.sources, (*last.star, *o.star), last.bare and o.bare)
        merged.append(o)
    return merged


_STORES = (exp.Insert, exp.Update, exp.Merge)
_FROM_KEY = "from_" if "from_" in exp.Select.arg_types else "from"  # renamed in sqlglot 30
_WITH_KEY = "with_" if "with_" in exp.Select.arg_types else "with"


def _carried(outs: list[Output] | None) -> frozenset[str] | None:
    """Every source the outputs carry; None when they could not be followed."""
    if outs is None:
        return None
    return frozenset().union(*(o.sources | {f"{t}.*" for t in o.star} for o in outs))


def _values_of(
    resolver: _Resolver, values: list[exp.Expr], items: list[exp.Expr], with_: Any
) -> frozenset[str] | None:
    """The sources of ``values`` read in the scope of ``items`` (a FROM item
    each, with their JOINs) under the CTEs of ``with_``: resolved as the
    projections of one SELECT, so aliases of derived tables, CTEs and
    correlated subqueries are followed exactly as for a query."""
    sel = exp.Select(expressions=[v.copy() for v in values])
    joins: list[exp.Expr] = []
    first: exp.Expr | None = None
    for item in items:
        item = item.copy()
        nested = list(item.args.get("joins") or [])
        item.set("joins", None)
        if first is None:
            first = item
        else:
            joins.append(exp.Join(this=item))
        joins.extend(nested)
    if first is not None:
        sel.set(_FROM_KEY, exp.From(this=first))
    if joins:
        sel.set("joins", joins)
    if isinstance(with_, exp.With):
        sel.set(_WITH_KEY, with_.copy())
    return _carried(resolver.query(sel, {}, None))


def _stored(stmt: exp.Expr, fold: bool) -> frozenset[str] | None:
    resolver = _Resolver(fold)
    if any(isinstance(n, _STORES) for n in stmt.walk() if n is not stmt):
        return None  # a write nested in a CTE: its scope is the WITH being built
    if isinstance(stmt, exp.Update):
        values = [e.expression for e in stmt.expressions if isinstance(e, exp.EQ)]
        if len(values) != len(stmt.expressions):
            return None
        items: list[exp.Expr] = [stmt.this]
        from_ = stmt.args.get("from_") or stmt.args.get("from")
        if isinstance(from_, exp.From):
            items.append(from_.this)
            items.extend(from_.expressions or [])
        return _values_of(resolver, values, items, _with(stmt))
    if isinstance(stmt, exp.Insert):
        found: set[str] = set()
        source = stmt.expression
        if source is not None:
            if not isinstance(source, exp.Query | exp.Values | exp.Subquery):
                return None
            derived = exp.Subquery(this=source.copy(), alias=exp.TableAlias(this="_stored"))
            rows = _values_of(resolver, [exp.Star()], [derived], _with(stmt))
            if rows is None:
                return None
            found |= rows
        conflict = stmt.args.get("conflict")
        if conflict is not None:
            target = stmt.this
            while isinstance(target, exp.Schema):
                target = target.this
            if not isinstance(target, exp.Table):
                return None
            sets = [e.expression for e in conflict.expressions if isinstance(e, exp.EQ)]
            if len(sets) != len(conflict.expressions):
                return None
            # excluded.c, VALUES(c): the proposed value of column c, taken
            # here for the stored one (over-approximated, never missed).
            excluded = target.copy()
            excluded.set("alias", exp.TableAlias(this=exp.to_identifier("excluded")))
            got = _values_of(resolver, sets, [target, excluded], _with(stmt))
            if got is None:
                return None
            found |= got
            name = table_name(target, fold)
            for e in sets:
                for fn in e.find_all(exp.Anonymous):
                    if str(fn.name).upper() == "VALUES":
                        found.update(f"{name}.{identifier(a, fold)}" for a in fn.expressions)
        return frozenset(found)
    if isinstance(stmt, exp.Select | exp.SetOperation):
        if not any(True for _ in stmt.find_all(exp.Into)):
            return frozenset()
        return _carried(resolver.query(stmt, {}, None))  # SELECT ... INTO a table or a file
    if isinstance(stmt, exp.Delete):
        return frozenset()  # what RETURNING returns reaches the client, masked
    if isinstance(stmt, exp.Create):
        query = stmt.expression
        if query is None:
            return frozenset()
        if not isinstance(query, exp.Query | exp.Subquery):
            return None
        return _carried(resolver.query(query, {}, None))
    return None  # MERGE, SET, a command: not followed


def stored(stmt: exp.Expr, fold: bool) -> frozenset[str] | None:
    """Every source column whose value ``stmt`` stores somewhere other than
    the client: an UPDATE's SET values, an INSERT's rows and its ON CONFLICT
    / ON DUPLICATE KEY UPDATE values, the result of CREATE ... AS or SELECT
    ... INTO. Each is resolved in the statement's whole scope (its CTEs,
    FROM/JOIN items, subqueries), so ``x.s`` of ``(SELECT ssn AS s ...) x``
    is ``ssn``. Empty when nothing is stored; a ``"?."`` source or None
    (MERGE, SET, a write nested in a CTE) when it cannot be followed."""
    try:
        return _stored(stmt, fold)
    except Exception:  # not followed: the caller assumes the worst
        return None


def _reads(stmt: exp.Expr, fold: bool) -> frozenset[str]:
    """Every column ``stmt`` reads anywhere, over-approximated: a qualified
    column by its table, an unqualified one by every table (and ``?``), a
    star or whole-row reference as ``table.*``, a renamed table whole."""
    tables: dict[str, str] = {}
    derived: set[str] = set()
    opaque = False
    for node in stmt.walk():
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier):
            name = table_name(node, fold)
            alias = node.alias_or_name.lower()
            tables[alias] = name
            tables.setdefault(name.rsplit(".", 1)[-1].lower(), name)
        elif isinstance(node, exp.CTE | exp.Subquery | exp.Lateral | exp.Values | exp.Unnest):
            derived.add(node.alias_or_name.lower())
            opaque = True
        elif isinstance(node, exp.Table):
            opaque = True
    ctes = {identifier(c.args["alias"].this, fold).lower() for c in stmt.find_all(exp.CTE)}
    for name in ctes:
        tables.pop(name, None)
    every = set(tables.values())
    reads: set[str] = set()
    for node in stmt.walk():
        if isinstance(node, exp.Column):
            qual = node.table.lower()
            if isinstance(node.this, exp.Star):
                if qual in tables:
                    reads.add(f"{tables[qual]}.*")
                elif qual not in derived and qual not in ctes:
                    reads.add("?.*")
                continue
            name = identifier(node.this, fold)
            if qual:
                reads.add(f"{tables[qual]}.{name}" if qual in tables else f"?.{name}")
                continue
            reads.update(f"{t}.{name}" for t in every)
            if opaque or not every:
                reads.add(f"?.{name}")
            if name.lower() in tables:
                reads.add(f"{tables[name.lower()]}.*")  # a whole-row reference
        elif isinstance(node, exp.Star) and not isinstance(node.parent, exp.Count | exp.Column):
            reads.update(f"{t}.*" for t in every)
        elif (
            isinstance(node, exp.Table)
            and isinstance(node.this, exp.Identifier)
            and _alias_columns(node)
            and table_name(node, fold) in every
        ):
            reads.add(f"{table_name(node, fold)}.*")
    return frozenset(reads)


def outputs(stmt: exp.Expr, fold: bool, columns: Columns | None = None) -> Lineage:
    """The lineage of each column ``stmt`` returns, and what it reads;
    ``columns`` (the catalog) resolves stars and positional lists."""
    try:
        reads = _reads(stmt, fold)
    except Exception:  # cannot even list the columns: everything may be read
        return Lineage((), False, frozenset({"?.*"}))
    resolver = _Resolver(fold, columns)
    try:
        if isinstance(stmt, exp.Insert | exp.Update | exp.Delete) and stmt.args.get("returning"):
            table = stmt.this
            while isinstance(table, exp.Schema):
                table = table.this
            if not isinstance(table, exp.Table):
                return Lineage((), False, reads)
            name = table_name(table, fold)
            scope = _Scope(None)
            scope.items[table.alias_or_name.lower()] = _Src("table", table=name)
            out: list[Output] = []
            for proj in stmt.args["returning"].expressions:
                if isinstance(proj, exp.Star) or (
                    isinstance(proj, exp.Column) and isinstance(proj.this, exp.Star)
                ):
                    out.append(Output(None, frozenset(), (name,), True))
                else:
                    sources, bare = resolver.expr(proj, scope, {})
                    out.append(Output(proj.alias_or_name or None, frozenset(sources), (), bare))
            return Lineage(out, True, reads)
        result = resolver.query(stmt, {}, None)
    except Exception:  # lineage that cannot be followed: masking redacts
        return Lineage((), False, reads)
    # Without a catalog, keep the tree where one would have helped.
    tree = stmt if resolver.starred and columns is None else None
    if result is None:
        return Lineage((), False, reads, tree, fold)
    return Lineage(result, True, reads, tree, fold)
