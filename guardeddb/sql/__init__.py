"""SQL analysis: sanitized text, summaries and fingerprints (sqlglot)."""

from __future__ import annotations

from .analysis import Analysis, analyze

__all__ = ["Analysis", "analyze"]
