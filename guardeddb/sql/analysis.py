"""What guardeddb knows about one SQL text, computed once and cached."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

from sqlglot.dialects.dialect import Dialect

from .text import sanitize_and_summarize

__all__ = ["CACHE_SIZE", "Analysis", "analyze"]

#: Distinct (dialect, SQL text) pairs kept; applications have a bounded set
#: of statements, and the cache must stay bounded when they do not.
CACHE_SIZE = 4096


@dataclass(frozen=True, slots=True, eq=False)
class Analysis:
    """Facts about a SQL text that do not depend on who runs it.

    ``eq=False``: each analysis is its own cache key (hashed by identity),
    so per-connection caches keyed by it cost one pointer hash.
    """

    text: str
    dialect: str
    sanitized: str  # every literal replaced by ?
    summary: str  # db.query.summary; '' when nothing could be named
    fingerprint: str  # stable id of the statement's shape


@lru_cache(maxsize=32)
def _dialect(name: str) -> Dialect:
    return Dialect.get_or_raise(name)


@lru_cache(maxsize=CACHE_SIZE)
def analyze(text: str, dialect: str) -> Analysis:
    """Analyze ``text`` as ``dialect`` (sqlglot's name); results are cached."""
    sanitized, summary = sanitize_and_summarize(text, _dialect(dialect))
    shape = " ".join(sanitized.split()).lower()
    fingerprint = hashlib.sha256(shape.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return Analysis(text, dialect, sanitized, summary, fingerprint)
