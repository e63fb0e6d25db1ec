"""Masking: a policy's masking section compiled, and the plan for one result.

A MaskPlan is built once per (statement, column names) and says, for each
returned column, which operator masks it or whether the detectors scan it.
Per row the work is a few index operations; the row keeps its type (tuple,
list, dict, namedtuple, ``sqlite3.Row``). A row type guardeddb cannot
rebuild is refused rather than returned unmasked.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import MaskingError, driver_error
from ..identity import Identity
from ..sql.analysis import Analysis
from ..sql.lineage import Columns, Lineage, Output
from ..sql.patterns import column_matches
from .detectors import _NOT_TEXT, DETECTORS, Scanner
from .operators import REDACTED, Operator, email, last4, null, redact

__all__ = ["ColumnRule", "MaskPlan", "MaskRun", "Masking", "MaskingError"]

_ALL_DETECTORS = Scanner(DETECTORS)
_KEEP = object()  # a dict key whose values pass as they are
_SCAN = object()  # a dict key whose text the detectors scan
_PLAN_CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True)
class ColumnRule:
    """Mask columns matching ``patterns`` (``*.email``, ``customers.ssn``, ``ssn``).

    ``keyed``, when set, gives the operator for one column by name: ``hash``
    keys its pseudonyms per column, so no other column's (or literal's)
    pseudonym can be matched against this one's. ``filter`` (``allow``,
    ``equality``, ``deny``) bounds how a masked identity's query may use the
    column beyond showing it (``filters.py``): predicates are an oracle.
    """

    patterns: tuple[str, ...]
    operator: Operator
    name: str
    keyed: Callable[[str], Operator] | None = None
    filter: str = "allow"


# A column's values in, masked values and how many were masked out.
ColumnMask = Callable[[Sequence[Any]], tuple[Sequence[Any], int]]
# Results with fewer rows are masked row by row: a batch costs a transpose.
_BATCH_ROWS = 16


def _operator_column(op: Operator) -> ColumnMask:
    """``op`` over a whole column (NULL stays NULL and is not counted).

    On a column of plain ``str`` the built-in operators that keep part of a
    value run in bulk (:data:`_STR_COLUMNS`): the same text as ``op`` gives
    each cell, without a Python call per cell.
    """
    bulk = _STR_COLUMNS.get(op)

    def column(values: Sequence[Any]) -> tuple[Sequence[Any], int]:
        nulls = values.count(None)
        count = len(values) - nulls
        if op is null:
            return [None] * len(values), count
        if op is redact or bulk is not None:
            types = set(map(type, values))
            if op is redact:
                if types == {str}:
                    return [REDACTED] * len(values), count
                if types <= _NOT_TEXT:  # numbers, dates, NULLs: redact makes each NULL
                    return [None] * len(values), count
            elif types == {str} and bulk is not None:
                masked = bulk(values)
                if masked is not None:
                    return masked, count
        if not nulls:
            return list(map(op, values)), count
        return [v if v is None else op(v) for v in values], count

    return column


def _email_column(values: Sequence[str]) -> list[str] | None:
    """:func:`operators.email` of every cell: ``a***@domain``, or redacted."""
    return [
        f"{local[0]}***@{domain}" if local and domain else REDACTED
        for local, _, domain in map(str.rpartition, values, itertools.repeat("@"))
    ]


_NOT_DIGIT_BYTES = bytes(c for c in range(256) if not 0x30 <= c <= 0x39 and c != 0)
_STARS = tuple("*" * n for n in range(64))


def _last4_column(values: Sequence[str]) -> list[str] | None:
    """:func:`operators.last4` of every cell, the digits of all cells taken
    out in one bytes.translate; None when the text is not ASCII (where
    ``isdigit`` and ``\\D`` say more than 0-9) or a cell holds a NUL."""
    joined = "\0".join(values)
    if not joined.isascii() or joined.count("\0") != len(values) - 1:
        return None
    digits = joined.encode().translate(None, _NOT_DIGIT_BYTES).decode().split("\0")
    stars = _STARS
    return [
        (stars[n - 4] if n < 68 else "*" * (n - 4)) + d[-4:]
        if (n := len(d)) > 4
        else "*" * len(text)
        for text, d in zip(values, digits, strict=True)
    ]


#: Built-in operators with a bulk form over a column of plain ``str``.
_STR_COLUMNS: dict[Operator, Callable[[Sequence[str]], list[str] | None]] = {
    email: _email_column,
    last4: _last4_column,
}


class MaskPlan:
    """What to do with each column of one result shape."""

    __slots__ = ("by_name", "columns", "masked_columns", "ops", "scan_cols", "scanner", "width")

    def __init__(
        self,
        ops: list[tuple[int, Operator]],
        scan_cols: list[int],
        scanner: Scanner | None,
        names: Sequence[str],
    ) -> None:
        self.ops = tuple(ops)
        self.scan_cols = tuple(scan_cols)
        self.scanner = scanner
        self.width = len(names)
        self.masked_columns = len(self.ops)
        # Each column's mask, made once per plan, for batches of rows.
        columns: list[tuple[int, ColumnMask]] = [(i, _operator_column(op)) for i, op in ops]
        if scanner is not None:
            columns += [(i, scanner.scan_column) for i in scan_cols]
        self.columns = tuple(columns)
        # For dict rows, what to do by key: an operator, _SCAN, or _KEEP; the
        # strictest when a name repeats (dict rows keep one of them).
        by_name: dict[str, Any] = {}
        op_at = dict(ops)
        for i, name in enumerate(names):
            if i in op_at:
                by_name[name] = op_at[i]
            elif i in scan_cols:
                if by_name.get(name, _KEEP) is _KEEP:
                    by_name[name] = _SCAN
            else:
                by_name.setdefault(name, _KEEP)
        self.by_name = by_name


class MaskRun:
    """One result being masked with a plan; counts what it masked."""

    __slots__ = ("analysis", "count", "cursor", "plan")

    def __init__(self, plan: MaskPlan, cursor: Any, analysis: Analysis) -> None:
        self.plan = plan
        self.cursor = cursor  # the raw cursor, which sqlite3.Row needs
        self.analysis = analysis
        self.count = 0  # values masked so far

    def _values(self, vals: list[Any]) -> list[Any]:
        plan = self.plan
        n = 0
        for i, op in plan.ops:
            v = vals[i]
            if v is not None:
                vals[i] = op(v)
                n += 1
        scanner = plan.scanner
        if scanner is not None:
            for i in plan.scan_cols:
                v = vals[i]
                if type(v) is str:
                    vals[i], k = scanner.scan(v)
                    n += k
                elif type(v) not in _NOT_TEXT:
                    vals[i], k = scanner.scan_value(v)
                    n += k
        self.count += n
        return vals

    def values(self, values: Sequence[Any]) -> tuple[Any, ...]:
        """Raw column values, masked (for row factories to build rows from)."""
        return tuple(self._values(list(values)))

    def row(self, row: Any) -> Any:
        """``row`` masked, of the same type."""
        cls = type(row)
        if cls is tuple:
            return tuple(self._values(list(row)))
        if cls is list:
            return self._values(row)
        if isinstance(row, dict):
            return self._dict(row)
        if isinstance(row, tuple) and hasattr(row, "_make"):
            return row._make(self._values(list(row)))  # a namedtuple
        if cls is sqlite3.Row:
            return sqlite3.Row(self.cursor, tuple(self._values(list(row))))
        if row is None:
            return None
        name = f"{cls.__module__}.{cls.__qualname__}"
        raise driver_error(MaskingError, self.cursor)(
            f"guardeddb cannot mask rows of type {name}; use tuple, dict or namedtuple "
            "rows (or a policy that unmasks this identity)",
            row_type=name,
        )

    def rows(self, rows: Any) -> Any:
        """Every row of a fetchmany/fetchall result, in the same container type."""
        masked = self._batch(rows) if len(rows) >= _BATCH_ROWS else None
        if masked is None:
            masked = [self.row(r) for r in rows]
        return tuple(masked) if type(rows) is tuple else masked

    def _batch(self, rows: Sequence[Any]) -> list[Any] | None:
        """``rows`` masked column by column (each column's mask runs once over
        all its values), or None when they are not rows of one sequence type
        and the plan's width, which are then masked one by one."""
        types = set(map(type, rows))
        if len(types) != 1:
            return None
        cls = types.pop()
        plan = self.plan
        if cls is dict:
            return self._dicts(rows)
        if not (cls is tuple or cls is list or cls is sqlite3.Row) and not (
            issubclass(cls, tuple) and hasattr(cls, "_make")
        ):
            return None
        if plan.width == 0 or set(map(len, rows)) != {plan.width}:
            return None
        cols: list[Sequence[Any]] = list(zip(*rows, strict=True))
        n = 0
        for i, column in plan.columns:
            cols[i], k = column(cols[i])
            n += k
        self.count += n
        masked = zip(*cols, strict=True)
        if cls is tuple:
            return list(masked)
        if cls is list:
            return list(map(list, masked))
        if cls is sqlite3.Row:
            return [sqlite3.Row(self.cursor, r) for r in masked]
        make: Callable[[Any], Any] = getattr(cls, "_make")  # noqa: B009 (a namedtuple)
        return list(map(make, masked))

    def _dicts(self, rows: Sequence[dict[str, Any]]) -> list[Any] | None:
        """Dict rows with the same keys masked column by column, as
        :meth:`_dict` masks each; None when their keys differ."""
        shapes = set(map(tuple, map(dict.keys, rows)))
        if len(shapes) != 1:
            return None
        keys = shapes.pop()
        if not keys:
            return None
        plan = self.plan
        cols: list[Sequence[Any]] = list(zip(*map(dict.values, rows), strict=True))
        n = 0
        for i, key in enumerate(keys):
            name = key if key in plan.by_name else str(key).rsplit(".", 1)[-1]
            what = plan.by_name.get(name)
            if what is _KEEP:
                continue
            if what is _SCAN:
                if plan.scanner is None:
                    continue
                cols[i], k = plan.scanner.scan_column(cols[i])
            else:  # an operator, or redact for a key the plan cannot place
                cols[i], k = _operator_column(redact if what is None else what)(cols[i])
            n += k
        self.count += n
        return [dict(zip(keys, r, strict=True)) for r in zip(*cols, strict=True)]

    def _dict(self, row: dict[str, Any]) -> dict[str, Any]:
        plan = self.plan
        out = dict(row)
        n = 0
        for key, value in row.items():
            if value is None:
                continue
            # PyMySQL's DictCursor names a repeated column "table.column".
            name = key if key in plan.by_name else str(key).rsplit(".", 1)[-1]
            what = plan.by_name.get(name)
            if what is _KEEP:
                continue
            if what is None:
                out[key] = redact(value)  # a key the plan cannot place: fail closed
                n += 1
            elif what is _SCAN:
                if plan.scanner is not None:
                    out[key], k = plan.scanner.scan_value(value)
                    n += k
            else:
                out[key] = what(value)
                n += 1
        self.count += n
        return out


def _align(outs: Sequence[Output] | None, names: Sequence[str]) -> list[Output] | None:
    """One output per described column (stars expanded by the description's
    names), or None when the lineage does not fit the description."""
    if outs is None or (isinstance(outs, Lineage) and not outs.known):
        return None
    stars = [o for o in outs if o.star]
    fixed = len(outs) - len(stars)
    if not stars:
        return list(outs) if len(outs) == len(names) else None
    if len(stars) > 1 or len(names) < fixed:
        return None
    width = len(names) - fixed
    out: list[Output] = []
    for o in outs:
        if o.star:
            for name in names[len(out) : len(out) + width]:
                sources = o.sources | {f"{t}.{name}" for t in o.star}
                out.append(Output(name, sources, (), o.bare and "?" not in o.star))
        else:
            out.append(o)
    return out


def _with_catalog(outs: Lineage, columns: Columns, names: Sequence[str]) -> Lineage:
    """``outs`` resolved with the catalog, if the result agrees with it: as
    many columns as described, and every output the SQL names named so by
    the server too. Otherwise (a table changed by another session since the
    catalog was read) the lineage without it, which is conservative."""
    resolved = outs.resolve(columns)
    if not resolved.known or len(resolved) != len(names) or any(o.star for o in resolved):
        return outs
    for o, name in zip(resolved, names, strict=True):
        if o.name is not None and o.name.lower() != name.lower():
            return outs
    return resolved


def _reads(analysis: Analysis) -> frozenset[str] | None:
    """Every column the statements read anywhere; None when that is unknown."""
    reads: set[str] = set()
    for stmt in analysis.statements:
        if stmt.unparsed is not None:
            return None
        outs = stmt.outputs
        reads |= outs.reads if isinstance(outs, Lineage) else stmt.columns
    return frozenset(reads)


class Masking:
    """A policy's masking section, ready to plan results."""

    def __init__(
        self,
        rules: Iterable[ColumnRule] = (),
        scanner: Scanner | None = None,
        unmask_roles: Iterable[str] = (),
        unmask_users: Iterable[str] = (),
    ) -> None:
        self.rules = tuple(rules)
        self.scanner = scanner
        self.unmask_roles = frozenset(unmask_roles)
        self.unmask_users = frozenset(unmask_users)
        self.active = bool(self.rules or self.scanner)
        self._plans: dict[tuple[Analysis, tuple[str, ...]], MaskPlan | None] = {}
        self._matched: dict[str, ColumnRule | None] = {}

    def applies_to(self, ident: Identity | None) -> bool:
        """Whether ``ident``'s results are masked (False for unmask identities)."""
        if not self.active:
            return False
        if ident is None:
            return True
        return not (ident.roles & self.unmask_roles or (ident.user in self.unmask_users))

    def may_carry(self, analysis: Analysis) -> bool:
        """Whether ``analysis`` may read a column a rule masks (or one it
        cannot tell: a star, unknown lineage)."""
        if not self.rules:
            return False
        reads = _reads(analysis)
        if reads is None:
            return True
        return any(src.endswith(".*") or self._rule(src) is not None for src in reads)

    def unmasks(self, ident: Identity | None) -> bool:
        """Whether ``ident`` sees raw values where others see masked ones."""
        return self.active and not self.applies_to(ident)

    def _rule(self, source: str) -> ColumnRule | None:
        """The first rule naming ``source`` (``table.column``), remembered."""
        if source in self._matched:
            return self._matched[source]
        found = next(
            (r for r in self.rules if any(column_matches(p, source, None) for p in r.patterns)),
            None,
        )
        if len(self._matched) >= _PLAN_CACHE_SIZE:
            self._matched.clear()
        self._matched[source] = found
        return found

    def _operator(
        self, sources: frozenset[str], bare: bool, unknown: bool, reads_masked: bool
    ) -> Operator | None:
        """The operator for one output; None when no rule applies to it.

        Only a bare output (one column passed through unchanged) gets its
        rule's operator: ``email``, ``last4``, ``partial`` and ``hash`` of
        an expression would reveal whatever part the query chose. Anything
        else touching a masked column, a whole row, several masked columns,
        or lineage lost in a statement that reads a masked column anywhere,
        is redacted whole.
        """
        matched: dict[str, ColumnRule] = {}
        for src in sources:
            rule = self._rule(src)
            if rule is not None:
                matched[src] = rule
        if unknown and (matched or reads_masked):
            return redact
        if not matched:
            return None
        if not bare or any(s.endswith(".*") for s in matched):
            return redact
        rules = {id(r): r for r in matched.values()}
        # "?.email" and "customers.email" are one column seen two ways.
        names = {s.rsplit(".", 1)[-1].lower() for s in matched}
        if len(rules) != 1 or len(names) != 1:
            return redact
        rule = next(iter(rules.values()))
        if rule.keyed is not None:
            if len(matched) != len(sources):
                return redact  # a pseudonym of a column the rule does not name
            return rule.keyed(names.pop())
        return rule.operator

    def plan(
        self, analysis: Analysis, names: tuple[str, ...], columns: Columns | None = None
    ) -> MaskPlan | None:
        """The plan for a result with columns ``names``; None when nothing is masked.

        ``columns`` is the connection's catalog (``sql.catalog.TableColumns``):
        a statement whose stars or positional lists need it is planned with
        it, and that plan is kept with the catalog (forgotten after DDL).
        """
        key = (analysis.key, names)
        if key in self._plans:
            return self._plans[key]
        outs = analysis.statements[0].outputs if len(analysis.statements) == 1 else None
        if columns is not None and isinstance(outs, Lineage) and outs.tree is not None:
            plans: dict[Any, MaskPlan | None] = getattr(columns, "plans", {})
            if key not in plans:
                if len(plans) >= _PLAN_CACHE_SIZE:
                    plans.clear()
                plans[key] = self._build(analysis, names, _with_catalog(outs, columns, names))
            return plans[key]
        plan = self._build(analysis, names, outs)
        if len(self._plans) >= _PLAN_CACHE_SIZE:
            self._plans.clear()
        self._plans[key] = plan
        return plan

    def _build(
        self, analysis: Analysis, names: tuple[str, ...], outs: Sequence[Output] | None
    ) -> MaskPlan | None:
        aligned = _align(outs, names)
        reads = _reads(analysis)
        reads_masked = bool(self.rules) and (
            reads is None or any(self._rule(c) is not None for c in reads)
        )
        ops: list[tuple[int, Operator]] = []
        scan: list[int] = []
        for i, name in enumerate(names):
            if aligned is None:
                sources, bare, unknown = frozenset({f"?.{name}"}), False, True
            else:
                o = aligned[i]
                sources, bare = o.sources, o.bare
                unknown = any(s.startswith("?.") for s in sources)
                if unknown:
                    sources = sources | {f"?.{name}"}  # also judge it by its own name
            op = self._operator(sources, bare, unknown, reads_masked)
            if op is not None:
                ops.append((i, op))
            elif self.scanner is not None or unknown:
                scan.append(i)
        # Where lineage failed, the detectors run even if the policy named none.
        scanner = self.scanner or (_ALL_DETECTORS if scan else None)
        return MaskPlan(ops, scan if scanner else [], scanner, names) if (ops or scanner) else None
