"""Guardrail policies: the model, loading, rule matching, presets, Decision."""

from __future__ import annotations

from .decision import ALLOW, Decision

__all__ = ["ALLOW", "Decision"]
