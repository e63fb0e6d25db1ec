"""What guardeddb knows about one SQL text, computed once and cached."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache

from sqlglot.dialects.dialect import Dialect

from .text import sanitize_and_summarize

__all__ = ["CACHE_SIZE", "Analysis", "analyze", "cache_for"]

#: Distinct (dialect, SQL text) pairs kept; applications have a bounded set
#: of statements, and the cache must stay bounded when they do not.
CACHE_SIZE = 4096
MAX_CACHED_TEXT = 64 * 1024


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


_CACHES: dict[str, dict[str, Analysis]] = {}


def cache_for(dialect: str) -> dict[str, Analysis]:
    """The analysis cache of one dialect, keyed by SQL text.

    Guarded cursors look statements up here directly: a dict hit is the
    cheapest thing the hot path can do. ``analyze`` keeps it bounded.
    """
    cache = _CACHES.get(dialect)
    if cache is None:
        cache = _CACHES.setdefault(dialect, {})
    return cache


def analyze(text: str, dialect: str) -> Analysis:
    """Analyze ``text`` as ``dialect`` (sqlglot's name); results are cached."""
    cache = cache_for(dialect)
    found = cache.get(text)
    if found is not None:
        return found
    sanitized, summary = sanitize_and_summarize(text, _dialect(dialect))
    shape = " ".join(sanitized.split()).lower()
    fingerprint = hashlib.sha256(shape.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    result = Analysis(text, dialect, sanitized, summary, fingerprint)
    if len(text) > MAX_CACHED_TEXT:
        return result  # one-off giants (bulk loads) would pin megabytes
    if len(cache) >= CACHE_SIZE:
        # Dropping everything at once keeps the bound without per-hit LRU
        # bookkeeping; a working set reloads in a few hundred microseconds.
        cache.clear()
    cache[text] = result
    return result
