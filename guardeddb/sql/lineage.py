"""Lineage of output columns: which source columns each returned column comes from.

Masking follows it: an output derived from a masked column (an alias,
``lower(email)``, ``concat(...)``, ``string_agg``, a subquery, a CTE, a
UNION branch) is masked too, and a whole-row reference (``SELECT u FROM
users u``, ``row_to_json(u)``, ``to_jsonb(u.*)``) counts as every column of
that table (``users.*``). A star is kept as a star over its tables: the
cursor's description names its columns. Where a query cannot be followed,
the answer is None and masking falls back to column names and detectors.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlglot import exp

__all__ = ["Output", "identifier", "outputs", "table_name"]


@dataclass(frozen=True, slots=True)
class Output:
    """One returned column, or a star standing for several."""

    name: str | None  # the column's output name, when the SQL says it
    sources: frozenset[str]  # "table.column"; "table.*" is the whole row; "?." an unknown table
    star: tuple[str, ...] = ()  # a star over these tables: as many columns as they have


_Source = tuple[str, "str | list[Output] | None"]  # ("table", name) | ("derived", outputs)


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


class _Resolver:
    def __init__(self, fold: bool) -> None:
        self.fold = fold

    def query(self, q: exp.Expr, ctes: dict[str, list[Output] | None]) -> list[Output] | None:
        q = _unwrap(q)
        with_ = q.args.get("with_") or q.args.get("with")  # renamed in sqlglot 30
        if isinstance(with_, exp.With):
            ctes = dict(ctes)
            for cte in with_.expressions:
                ctes[identifier(cte.args["alias"].this, self.fold).lower()] = self.query(
                    cte.this, ctes
                )
        if isinstance(q, exp.SetOperation):
            left = self.query(q.this, ctes)
            right = self.query(q.expression, ctes)
            if left is None or right is None:
                return None
            if len(left) != len(right) or any(o.star for o in left + right):
                # Branches of different shapes: every output may come from anything.
                merged = frozenset().union(*(o.sources for o in left + right))
                stars = tuple(t for o in left + right for t in o.star)
                return (
                    [Output(None, merged | {f"{t}.*" for t in stars})]
                    if stars
                    else [Output(o.name, merged) for o in left]
                )
            return [Output(a.name, a.sources | b.sources) for a, b in zip(left, right, strict=True)]
        if isinstance(q, exp.Values):
            return [
                Output(None, frozenset())
                for _ in (q.expressions[0].expressions if q.expressions else [])
            ]
        if not isinstance(q, exp.Select):
            return None
        scope = self.scope(q, ctes)
        if scope is None:
            return None
        out: list[Output] = []
        for proj in q.expressions:
            if isinstance(proj, exp.Star):
                expanded = self.star(list(scope.values()))
                if expanded is None:
                    return None
                out.extend(expanded)
            elif isinstance(proj, exp.Column) and isinstance(proj.this, exp.Star):
                src = scope.get(proj.table.lower())
                expanded = self.star([src] if src else [])
                if expanded is None:
                    return None
                out.extend(expanded)
            else:
                name = proj.alias_or_name or None
                out.append(Output(name, self.sources(proj, scope, ctes)))
        return out

    def scope(
        self, q: exp.Select, ctes: dict[str, list[Output] | None]
    ) -> dict[str, _Source] | None:
        """The tables and derived tables a SELECT reads, by alias."""
        scope: dict[str, _Source] = {}
        from_ = q.args.get("from_") or q.args.get("from")  # renamed in sqlglot 30
        items: list[exp.Expr] = []
        if isinstance(from_, exp.From):
            items.append(from_.this)
            items.extend(from_.expressions or [])
        for join in q.args.get("joins") or []:
            items.append(join.this)
        for item in items:
            alias = item.alias_or_name.lower() if hasattr(item, "alias_or_name") else ""
            if isinstance(item, exp.Table) and isinstance(item.this, exp.Identifier):
                name = table_name(item, self.fold)
                if not item.args.get("db") and name.lower() in ctes:
                    scope[alias or name.lower()] = ("derived", ctes[name.lower()])
                else:
                    scope[alias or name.lower()] = ("table", name)
            elif isinstance(item, exp.Subquery):
                scope[alias] = ("derived", self.query(item.this, ctes))
            else:
                scope[alias or "?"] = ("derived", None)  # a table function, LATERAL, UNNEST
        return scope

    def star(self, sources: list[_Source]) -> list[Output] | None:
        out: list[Output] = []
        for kind, value in sources:
            if kind == "table":
                assert isinstance(value, str)
                if out and out[-1].star:
                    last = out.pop()  # a star over several tables is one stretch
                    out.append(Output(None, last.sources, (*last.star, value)))
                else:
                    out.append(Output(None, frozenset(), (value,)))
            elif value is None:
                return None
            else:
                assert isinstance(value, list)
                out.extend(value)
        return out

    def column(self, col: exp.Column, scope: dict[str, _Source]) -> set[str]:
        name = "*" if isinstance(col.this, exp.Star) else identifier(col.this, self.fold)
        qual = col.table.lower()
        if qual:
            picked = [scope[qual]] if qual in scope else []
        else:
            picked = list(scope.values())
            if name != "*" and name.lower() in scope:
                # SELECT u FROM users u: the whole row (or a column named u).
                picked_row = scope[name.lower()]
                whole = _whole_row(picked_row)
                return whole | set().union(*(self._from(s, name) for s in picked))
        if not picked:
            return {f"?.{name}"}  # an outer query's table, or one not understood
        return set().union(*(self._from(s, name) for s in picked))

    def _from(self, source: _Source, name: str) -> set[str]:
        kind, value = source
        return {f"{value}.{name}"} if kind == "table" else self._derived(source, name)

    def _derived(self, source: _Source, name: str) -> set[str]:
        _, value = source
        if value is None:
            return {f"?.{name}"}
        assert isinstance(value, list)
        found: set[str] = set()
        for o in value:
            if o.star:
                found.update(f"{t}.{name}" for t in o.star)
            elif name == "*" or (o.name or "").lower() == name.lower():
                found.update(o.sources)
        return found or {f"?.{name}"}

    def sources(
        self, expr: exp.Expr, scope: dict[str, _Source], ctes: dict[str, list[Output] | None]
    ) -> frozenset[str]:
        found: set[str] = set()
        for node in expr.walk():
            if isinstance(node, exp.Subquery | exp.Select) and node is not expr:
                inner = self.query(node, ctes)
                if inner is None:
                    found.add("?.*")
                else:
                    for o in inner:
                        found.update(o.sources)
                        found.update(f"{t}.*" for t in o.star)
            elif isinstance(node, exp.Column) and not _in_subquery(node, expr):
                found.update(self.column(node, scope))
        return frozenset(found)


def _whole_row(source: _Source) -> set[str]:
    """Every column a whole-row reference to ``source`` carries."""
    kind, value = source
    if kind == "table":
        return {f"{value}.*"}
    if value is None:
        return {"?.*"}
    assert isinstance(value, list)
    found: set[str] = set()
    for o in value:
        found.update(o.sources)
        found.update(f"{t}.*" for t in o.star)
    return found


def _in_subquery(node: exp.Expr, top: exp.Expr) -> bool:
    if node is top:
        return False
    parent = node.parent
    while parent is not None and parent is not top:
        if isinstance(parent, exp.Select | exp.Subquery):
            return True
        parent = parent.parent
    return False


def outputs(stmt: exp.Expr, fold: bool) -> tuple[Output, ...] | None:
    """The lineage of each column ``stmt`` returns; None when it cannot be followed."""
    resolver = _Resolver(fold)
    try:
        if isinstance(stmt, exp.Insert | exp.Update | exp.Delete) and stmt.args.get("returning"):
            table = stmt.this
            while isinstance(table, exp.Schema):
                table = table.this
            if not isinstance(table, exp.Table):
                return None
            name = table_name(table, fold)
            scope: dict[str, _Source] = {table.alias_or_name.lower(): ("table", name)}
            out: list[Output] = []
            for proj in stmt.args["returning"].expressions:
                if isinstance(proj, exp.Star) or (
                    isinstance(proj, exp.Column) and isinstance(proj.this, exp.Star)
                ):
                    out.append(Output(None, frozenset(), (name,)))
                else:
                    out.append(
                        Output(proj.alias_or_name or None, resolver.sources(proj, scope, {}))
                    )
            return tuple(out)
        result = resolver.query(stmt, {})
    except Exception:  # lineage that cannot be followed: masking falls back
        return None
    return None if result is None else tuple(result)
