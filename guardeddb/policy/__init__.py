"""Guardrail policies: the model, loading, rule matching, presets, Decision."""

from __future__ import annotations

from .decision import ALLOW, Decision
from .loader import PolicySource, load_policy, preset
from .model import Policy, Rule

__all__ = ["ALLOW", "Decision", "Policy", "PolicySource", "Rule", "load_policy", "preset"]
