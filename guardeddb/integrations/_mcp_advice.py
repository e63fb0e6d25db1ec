"""Refusals a model can act on: what rule said no, and what would be allowed.

A refusal that only says "blocked" invites the model to retry the same
statement, or to guess. Each refusal here carries a ``suggestion`` derived
from the kind of rule that matched (the presets' rules by id, a policy's own
rules by what they match), and never the analyzer's internals.
"""

from __future__ import annotations

from ..policy import Policy
from ..policy.decision import Decision
from ..policy.model import Rule
from ..sql.classify import CLASSES

__all__ = ["reason", "suggestion"]

_BY_ID: dict[str, str] = {
    "no-ddl": (
        "schema changes cannot be made from here: work with the existing tables "
        "(list_tables, describe_table), or ask a person to make the change"
    ),
    "no-dcl": "privileges and roles cannot be changed from here: ask a person",
    "no-admin": (
        "send the query without session, transaction-safety or server commands "
        "(SET, PRAGMA, COPY, VACUUM...): this server manages the session itself"
    ),
    "write-needs-where": (
        "add a WHERE on a key column naming the rows to change, e.g. WHERE id = ? with the "
        "value in params (describe_table shows the primary key)"
    ),
    "no-credential-catalogs": (
        "password, privilege and server-setting catalogs are not available: query the "
        "application's tables (list_tables)"
    ),
    "no-stacked-statements": "send one statement per call, without ';' between statements",
    "no-dangerous-functions": (
        "leave out functions that reach files, other sessions, locks, sleeps or settings; "
        "plain SQL functions (string, math, date, aggregate) are fine"
    ),
    "read-only": "only reads are allowed here: use SELECT",
    "read-only-functions": (
        "use built-in functions that only read (string, math, date, aggregate); functions "
        "that may write, lock or sleep are refused for this identity"
    ),
    "on_unparsed": (
        "rewrite it as one plain statement in standard SQL, without comments that carry code, "
        "vendor-specific extensions, procedural blocks or dynamic SQL"
    ),
    "parameter-placement": (
        "pass each value as a param with a placeholder where a value goes, never as a "
        "table, column or keyword"
    ),
    "masking-side-channel": (
        "select masked columns plainly and let masking apply; do not filter, sort, group, "
        "compare or copy by them: filter on a key or another column instead"
    ),
    "masking-copy": "use a SELECT instead of COPY ... TO STDOUT",
    "require_identity": (
        "the server's identity is not accepted by the policy: a person must configure a "
        "(verified) identity for this server"
    ),
    "kernel": "this statement touches guardeddb's own state or the SQL tokenizer: send another",
}

_UNPARSED_REASON = (
    "guardeddb could not fully understand this statement, and statements it cannot "
    "understand are refused"
)


def _rule(policy: Policy, rule_id: str | None) -> Rule | None:
    return next((r for r in policy.rules if r.id == rule_id), None)


def suggestion(decision: Decision, policy: Policy) -> str:
    """What the model could send instead, for the rule that refused."""
    rule_id = decision.rule_id
    if rule_id is None:
        return (
            "this policy refuses what no rule allows: ask a person which statements "
            "are allowed for you"
        )
    if rule_id in _BY_ID:
        return _BY_ID[rule_id]
    rule = _rule(policy, rule_id)
    if rule is None:
        return "change the statement; do not send it again as it is"
    m = rule.match
    if m.where is False:
        return _BY_ID["write-needs-where"]
    if m.limit is False:
        return "add a LIMIT to the SELECT (e.g. LIMIT 100)"
    if m.multiple_statements:
        return _BY_ID["no-stacked-statements"]
    if m.tables:
        shown = ", ".join(m.tables[:5])
        return (
            f"tables matching {shown} are not available to you: query another table "
            "(list_tables shows the ones you may read), and qualify each table with its "
            "schema as list_tables shows it (schema.table)"
        )
    if m.columns:
        shown = ", ".join(m.columns[:5])
        return f"leave out the columns matching {shown} (describe_table shows what you may read)"
    if m.functions:
        shown = ", ".join(m.functions[:5])
        return f"leave out the functions matching {shown}"
    if m.statements:
        if m.statements & {"write", "insert", "update", "delete", "merge"}:
            return "only reads are allowed for you here: use SELECT"
        named = ", ".join(sorted(k if k in CLASSES else k.upper() for k in m.statements))
        return f"statements of kind {named} are not allowed for you: use another kind"
    if rule.message:
        return f"change the statement so that rule {rule_id!r} no longer applies: {rule.message}"
    return "change the statement; do not send it again as it is"


def reason(decision: Decision) -> str:
    """The refusal's reason without the analyzer's internals."""
    if decision.rule_id == "on_unparsed":
        return _UNPARSED_REASON
    return decision.message or "refused by the policy"
