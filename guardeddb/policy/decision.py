"""Decision: what the guardrails said about one statement."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ALLOW", "Decision"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What the guardrails decided for a query, and which rule said so."""

    action: str  # allow | warn | review | block
    rule_id: str | None = None
    message: str | None = None

    __module__ = "guardeddb"


ALLOW = Decision("allow")
