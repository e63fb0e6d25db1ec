"""A loaded policy written back as the YAML a user would write, presets inlined.

For ``guardeddb policy show``: what a policy file *means* once its
``extends`` are resolved (every inherited rule, detector and limit), in a
form ``load_policy`` reads back to the same rules.
"""

from __future__ import annotations

from typing import Any

import yaml

from ..approvals.notify import Webhook
from .model import Match, Policy, Rule

__all__ = ["policy_dict", "policy_yaml"]

#: Masking keys whose values are secrets: shown as set, never printed.
_SECRET_KEYS = ("hash_key",)


def _match_dict(match: Match) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if match.identity is not None:
        ident: dict[str, Any] = {}
        if match.identity.user is not None:
            ident["user"] = match.identity.user
        if match.identity.agent is not None:
            ident["agent"] = match.identity.agent
        if match.identity.roles:
            ident["roles"] = sorted(match.identity.roles)
        if match.identity.roles_absent:
            ident["roles_absent"] = sorted(match.identity.roles_absent)
        out["identity"] = ident
    if match.statements:
        out["statements"] = sorted(match.statements)
    for key in ("tables", "columns", "functions"):
        values = getattr(match, key)
        if values:
            out[key] = list(values)
    for key in ("where", "limit", "multiple_statements"):
        value = getattr(match, key)
        if value is not None:
            out[key] = value
    if match.sql_regex is not None:
        out["sql_regex"] = match.sql_regex.pattern
    if match.affected_rows is not None:
        op, bound = match.affected_rows
        out["affected_rows"] = {op: bound}
    return out


def _rule_dict(rule: Rule) -> dict[str, Any]:
    out: dict[str, Any] = {"id": rule.id, "match": _match_dict(rule.match), "action": rule.action}
    if rule.message is not None:
        out["message"] = rule.message
    return out


def _webhook_dict(hook: Webhook) -> dict[str, Any]:
    """A webhook as written, its secret shown as set and its URL's path and
    query cut (a Slack webhook's path is its token)."""
    path = hook.url[len(hook.where) :]
    out: dict[str, Any] = {"url": hook.where + ("/<path-not-shown>" if path.strip("/") else path)}
    if hook.secret is not None:
        out["secret"] = "<set, not shown>"
    if hook.secret_env is not None:
        out["secret_env"] = hook.secret_env
    out["format"] = hook.format
    out["timeout"] = hook.timeout
    return out


def policy_dict(policy: Policy) -> dict[str, Any]:
    """The effective policy as a dict ``load_policy`` accepts: ``extends: []``
    because the presets' rules are written out, in the order they are tried."""
    masking = dict(policy.masking)
    for key in _SECRET_KEYS:
        if key in masking:
            masking[key] = "<set, not shown>"
    approvals = dict(policy.approvals)
    hooks = approvals.get("notify")
    if isinstance(hooks, tuple | list):
        approvals["notify"] = [
            _webhook_dict(h) if isinstance(h, Webhook) else "<not shown>" for h in hooks
        ]
    out: dict[str, Any] = {
        "version": policy.version,
        "extends": [],
        "mode": policy.mode,
        "default": policy.default,
        "on_unparsed": policy.on_unparsed,
        "require_identity": policy.require_identity,
        "rules": [_rule_dict(r) for r in policy.rules],
    }
    for key, value in (
        ("masking", masking),
        ("audit", dict(policy.audit)),
        ("approvals", approvals),
        ("limits", dict(policy.limits)),
    ):
        if value:
            out[key] = value
    return out


def policy_yaml(policy: Policy) -> str:
    """``policy_dict`` as YAML, headed by where it came from and what it extends."""
    built_on = ", ".join(policy.extends) if policy.extends else "no preset"
    head = f"# effective policy of {policy.source or '<policy object>'} (built on {built_on})\n"
    body = yaml.safe_dump(policy_dict(policy), sort_keys=False, allow_unicode=True, width=100)
    return head + body
