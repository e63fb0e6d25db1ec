"""Masking: a policy's masking section compiled, and the plan for one result.

A MaskPlan is built once per (statement, column names) and says, for each
returned column, which operator masks it or whether the detectors scan it.
Per row the work is a few index operations; the row keeps its type (tuple,
list, dict, namedtuple, ``sqlite3.Row``). A row type guardeddb cannot
rebuild is refused rather than returned unmasked.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import Error
from ..identity import Identity
from ..sql.analysis import Analysis
from ..sql.lineage import Output
from ..sql.patterns import column_matches
from .detectors import DETECTORS, Scanner
from .operators import Operator, redact

__all__ = ["ColumnRule", "MaskPlan", "MaskRun", "Masking", "MaskingError"]

_ALL_DETECTORS = Scanner(DETECTORS)
_KEEP = object()  # a dict key whose values pass as they are
_SCAN = object()  # a dict key whose text the detectors scan
_PLAN_CACHE_SIZE = 4096


class MaskingError(Error):
    """A result guardeddb cannot mask, refused instead of returned raw."""

    __module__ = "guardeddb"


@dataclass(frozen=True, slots=True)
class ColumnRule:
    """Mask columns matching ``patterns`` (``*.email``, ``customers.ssn``, ``ssn``)."""

    patterns: tuple[str, ...]
    operator: Operator
    name: str


class MaskPlan:
    """What to do with each column of one result shape."""

    __slots__ = ("by_name", "masked_columns", "ops", "scan_cols", "scanner", "width")

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
        raise MaskingError(
            f"guardeddb cannot mask rows of type {cls.__module__}.{cls.__qualname__}; "
            "use tuple, dict or namedtuple rows (or a policy that unmasks this identity)"
        )

    def rows(self, rows: Any) -> Any:
        """Every row of a fetchmany/fetchall result, in the same container type."""
        masked = [self.row(r) for r in rows]
        return tuple(masked) if type(rows) is tuple else masked

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
                if plan.scanner is not None and type(value) is str:
                    out[key], k = plan.scanner.scan(value)
                    n += k
            else:
                out[key] = what(value)
                n += 1
        self.count += n
        return out


def _align(outs: tuple[Output, ...] | None, names: Sequence[str]) -> list[set[str]] | None:
    """The sources of each described column, or None when lineage does not fit."""
    if outs is None:
        return None
    stars = [o for o in outs if o.star]
    fixed = len(outs) - len(stars)
    if not stars:
        return [set(o.sources) for o in outs] if len(outs) == len(names) else None
    if len(stars) > 1 or len(names) < fixed:
        return None
    width = len(names) - fixed
    out: list[set[str]] = []
    for o in outs:
        if o.star:
            for name in names[len(out) : len(out) + width]:
                out.append({f"{t}.{name}" for t in o.star})
        else:
            out.append(set(o.sources))
    return out


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

    def applies_to(self, ident: Identity | None) -> bool:
        """Whether ``ident``'s results are masked (False for unmask identities)."""
        if not self.active:
            return False
        if ident is None:
            return True
        return not (ident.roles & self.unmask_roles or (ident.user in self.unmask_users))

    def unmasks(self, ident: Identity | None) -> bool:
        """Whether ``ident`` sees raw values where others see masked ones."""
        return self.active and not self.applies_to(ident)

    def _rule_for(self, sources: set[str]) -> Operator | None:
        """The operator for a column derived from ``sources``.

        One masked source: its rule's operator (``lower(email)`` is still an
        email). A whole row, or several masked sources (``json_object(email,
        ssn)``), is a composite no single operator understands: redacted whole.
        """
        found: dict[str, Operator] = {}
        for src in sources:
            for rule in self.rules:
                if any(column_matches(p, src, None) for p in rule.patterns):
                    found[src] = redact if src.endswith(".*") else rule.operator
                    break
        if not found:
            return None
        ops = set(found.values())
        # "?.email" and "customers.email" are one column seen two ways.
        names = {s.rsplit(".", 1)[-1].lower() for s in found}
        return ops.pop() if len(ops) == 1 and len(names) == 1 else redact

    def plan(self, analysis: Analysis, names: tuple[str, ...]) -> MaskPlan | None:
        """The plan for a result with columns ``names``; None when nothing is masked."""
        key = (analysis, names)
        if key in self._plans:
            return self._plans[key]
        outs = analysis.statements[0].outputs if len(analysis.statements) == 1 else None
        aligned = _align(outs, names)
        ops: list[tuple[int, Operator]] = []
        scan: list[int] = []
        for i, name in enumerate(names):
            sources = aligned[i] if aligned is not None else {f"?.{name}"}
            unknown = aligned is None or any(s.startswith("?.") for s in sources)
            if unknown:
                sources = sources | {f"?.{name}"}  # also judge it by its own name
            op = self._rule_for(sources)
            if op is not None:
                ops.append((i, op))
            elif self.scanner is not None or unknown:
                scan.append(i)
        # Where lineage failed, the detectors run even if the policy named none.
        scanner = self.scanner or (_ALL_DETECTORS if scan else None)
        plan = MaskPlan(ops, scan if scanner else [], scanner, names) if (ops or scanner) else None
        if len(self._plans) >= _PLAN_CACHE_SIZE:
            self._plans.clear()
        self._plans[key] = plan
        return plan
