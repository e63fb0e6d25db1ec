"""The policy model and its decisions.

A policy is a list of rules, first match wins, judged statement by statement;
when a text holds several statements the strictest action wins. What the
analyzer could not understand is judged by ``on_unparsed`` (block by default),
and a rule that asks about facts an opaque statement cannot give (its tables)
is assumed to match when it would hold or block, and not to when it would
allow: unsure means dangerous.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

from ..identity import Identity
from ..masking.plan import Masking
from ..sql.analysis import Analysis, analyze
from ..sql.classify import CLASSES, READ_KINDS, Statement
from ..sql.patterns import column_matches, glob, table_matches
from .decision import Decision

__all__ = ["ACTIONS", "IdentityMatch", "Match", "Policy", "Rule"]

ACTIONS = ("allow", "warn", "review", "block")
_SEVERITY = {a: i for i, a in enumerate(ACTIONS)}


@dataclass(frozen=True, slots=True)
class IdentityMatch:
    """Who a rule is about: user and agent globs, roles present or absent."""

    user: str | None = None
    agent: str | None = None
    roles: frozenset[str] = frozenset()  # any of these
    roles_absent: frozenset[str] = frozenset()  # none of these

    def matches(self, ident: Identity | None) -> bool:
        user = ident.user if ident else None
        agent = ident.agent if ident else None
        roles = ident.roles if ident else frozenset()
        if self.user is not None and (user is None or not glob(self.user, user)):
            return False
        if self.agent is not None and (agent is None or not glob(self.agent, agent)):
            return False
        if self.roles and not (self.roles & roles):
            return False
        return not (self.roles_absent & roles)


@dataclass(frozen=True, slots=True)
class Match:
    """The conditions of a rule; every one given must hold."""

    identity: IdentityMatch | None = None
    statements: frozenset[str] = frozenset()  # classes or kinds
    tables: tuple[str, ...] = ()
    columns: tuple[str, ...] = ()
    functions: tuple[str, ...] = ()
    where: bool | None = None
    limit: bool | None = None
    multiple_statements: bool | None = None
    sql_regex: re.Pattern[str] | None = None
    affected_rows: tuple[str, int] | None = None  # ("gt", 1000): by a dry run's count

    def matches_identity(self, ident: Identity | None) -> bool:
        return self.identity is None or self.identity.matches(ident)

    def matches(
        self,
        st: Statement,
        analysis: Analysis,
        holds: bool,
        schemas: frozenset[str] | None,
        impact: Callable[[], int | None] | None = None,
    ) -> bool:
        """Whether ``st`` (one statement of ``analysis``) meets the conditions.

        ``holds`` is True for block/review/warn rules: facts the statement
        cannot give then count as matching.
        """
        if self.statements and not (self.statements & (st.kinds | st.classes)):
            return False
        if self.multiple_statements is not None and self.multiple_statements != (
            len(analysis.statements) > 1
        ):
            return False
        if self.where is not None and self.where != st.has_where:
            return False
        if self.limit is not None and self.limit != st.has_limit:
            return False
        if self.tables:
            if st.tables_unknown:
                if not holds:
                    return False
            elif not any(table_matches(p, t, schemas) for p in self.tables for t in st.tables):
                return False
        if (
            self.columns
            and not any(column_matches(p, c, schemas) for p in self.columns for c in st.columns)
            and not (st.tables_unknown and holds)
        ):
            return False
        if self.functions and not any(glob(p, f) for p in self.functions for f in st.functions):
            return False
        if self.sql_regex is not None and self.sql_regex.search(analysis.text) is None:
            return False
        if self.affected_rows is not None:
            count = impact() if impact is not None else None
            if count is None:
                return holds  # unknown impact: assumed large when holding, not when allowing
            op, bound = self.affected_rows
            return {
                "gt": count > bound,
                "gte": count >= bound,
                "lt": count < bound,
                "lte": count <= bound,
            }[op]
        return True


@dataclass(frozen=True, slots=True)
class Rule:
    """One guardrail: when ``match`` holds, take ``action``."""

    id: str
    match: Match
    action: str
    message: str | None = None


def _strictest(a: Decision, b: Decision) -> Decision:
    return b if _SEVERITY[b.action] > _SEVERITY[a.action] else a


@dataclass(frozen=True)
class Policy:
    """A loaded, validated guardrail policy (see ``guardeddb.load_policy``)."""

    version: int = 1
    mode: str = "enforce"  # enforce | report
    default: str = "allow"
    on_unparsed: str = "block"
    require_identity: bool | str = False  # False | True | "verified"
    rules: tuple[Rule, ...] = ()
    masking: dict[str, object] = field(default_factory=dict)
    masker: Masking | None = None  # the masking section, compiled
    audit: dict[str, object] = field(default_factory=dict)
    approvals: dict[str, object] = field(default_factory=dict)
    # statement_timeout (s), max_rows, max_statement_bytes (default 1 MB, see _pipeline)
    limits: dict[str, float] = field(default_factory=dict)
    source: str | None = None
    extends: tuple[str, ...] = ()  # the presets it was built on, in order

    __module__ = "guardeddb"

    @property
    def reads_text(self) -> bool:
        """Whether some rule reads the statement's text itself (``sql_regex``):
        then texts that share a shape may be decided apart."""
        return any(r.match.sql_regex is not None for r in self.rules)

    @property
    def uses_impact(self) -> bool:
        """Whether some rule asks for a dry run's row count."""
        return any(r.match.affected_rows is not None for r in self.rules)

    def decide(
        self,
        analysis: Analysis,
        ident: Identity | None,
        schemas: frozenset[str] | None = None,
        impact: Callable[[], int | None] | None = None,
    ) -> Decision:
        """The decision for ``analysis`` run by ``ident`` (mode not applied)."""
        if self.require_identity and (
            ident is None or (ident.user is None and ident.agent is None)
        ):
            return Decision("block", "require_identity", "this policy requires an identity")
        if self.require_identity == "verified" and not getattr(ident, "verified", False):
            return Decision(
                "block", "require_identity", "this policy requires a verified (signed) identity"
            )
        rules = [r for r in self.rules if r.match.matches_identity(ident)]
        decision: Decision | None = None
        # An empty text (a ping, a lone comment) names nothing: no table rule holds it.
        for st in analysis.statements or (Statement.simple("empty"),):
            if st.refused:
                # The kernel's refusals hold under every policy: no rule, default
                # or on_unparsed can let guardeddb's own state or a tokenizer
                # setting through.
                d = Decision("block", "kernel", f"refused by guardeddb: {st.refused}")
            elif st.unparsed and st.kind != "empty":
                d = Decision(self.on_unparsed, "on_unparsed", f"not understood: {st.unparsed}")
            else:
                d = Decision(self.default, None, None)
                for rule in rules:
                    if rule.match.matches(st, analysis, rule.action != "allow", schemas, impact):
                        d = Decision(rule.action, rule.id, rule.message)
                        break
            decision = d if decision is None else _strictest(decision, d)
        assert decision is not None
        return decision

    def check(
        self,
        sql: str,
        identity: Identity | None = None,
        dialect: str = "postgres",
    ) -> Decision:
        """Judge ``sql`` without a database: the enforced decision (``report``
        mode included, so callers see what would happen when enforced)."""
        return self.decide(analyze(sql, dialect), identity)

    def read_only_for(self, ident: Identity | None) -> bool:
        """Whether this policy lets ``ident`` run nothing but reads.

        True only when every write, ddl, dcl and admin statement is blocked
        for it by a rule that asks nothing else (or by the default): then the
        database itself is told to refuse writes too, so a function with side
        effects cannot write either.
        """
        if self.mode != "enforce":
            return False
        for klass in ("write", "ddl", "dcl", "admin"):
            action = self.default
            for rule in self.rules:
                m = rule.match
                if not m.matches_identity(ident):
                    continue
                if m.statements and klass not in m.statements:
                    # A rule naming kinds (insert, update) rather than classes
                    # may let some of this class through unless it blocks.
                    if (m.statements - CLASSES - READ_KINDS) and rule.action != "block":
                        return False
                    continue
                unconditional = not (
                    m.tables
                    or m.columns
                    or m.functions
                    or m.where is not None
                    or m.limit is not None
                    or m.multiple_statements is not None
                    or m.sql_regex is not None
                    or m.affected_rows is not None
                )
                if not unconditional:
                    if rule.action == "block":
                        continue  # blocks some of this class; says nothing of the rest
                    return False  # might let some statements of this class through
                action = rule.action
                break
            if action != "block":
                return False
        return True
