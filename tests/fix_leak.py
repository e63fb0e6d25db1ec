"""The leak judge: a seeded database per dialect, opened once per module,
and everything a masked identity can see of a query (issue #11).

A query is judged by its returned cells, the exception (str, repr, args),
its spans and its audit records. None may hold a seeded secret, a digest or
encoding of one, nor a 5-character window of one (or of its reversal or
digit substitution) beyond what the bare columns' operators show by design:
what ``SELECT *`` shows the same identity.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import guardeddb
from guardeddb import Identity

from .fix_db import Backend, _mysql_backend, _pg_backend
from .fix_otel import Otel
from .fix_shop import SECRETS, SHOP_POLICY, Shop, seeded

AGENT = Identity(user="u-leak", agent="support-bot", roles=frozenset({"support"}))
WINDOW = 5
#: Audit fields that are random or derived (hashes, times, ids): not the caller's data.
_AUDIT_NOISE = frozenset(
    {
        "ts",
        "fingerprint",
        "transaction",
        "trace_id",
        "span_id",
        "seq",
        "prev_hash",
        "hash",
        "duration_ms",
    }
)


def _derived(secret: str) -> set[str]:
    """Deterministic encodings of a secret a query could return instead of
    it: digests (a lookup oracle), hex, base64, CRC32, the reversal and a
    digit substitution (``translate``), whose windows recover it."""
    raw = secret.encode()
    forms = {
        hashlib.md5(raw).hexdigest(),
        hashlib.sha1(raw).hexdigest(),
        hashlib.sha256(raw).hexdigest(),
        raw.hex(),
        base64.b64encode(raw).decode().rstrip("="),
        str(zlib.crc32(raw)),
    }
    return {f.lower() for f in forms}


_SHIFTED = str.maketrans("0123456789", "abcdefghij")
#: Secrets as a query may spell them back: reversed, or digits substituted.
_SPELLINGS = {s: {s[::-1], s.translate(_SHIFTED)} for s in SECRETS}


def windows(text: str) -> set[str]:
    """Every 5-character window of ``text``, lowercased."""
    low = text.lower()
    return {low[i : i + WINDOW] for i in range(len(low) - WINDOW + 1)}


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes | bytearray) else str(value)


def fetch_every_way(cur: Any) -> list[Any]:
    """Every row of a result through every fetch path: fetchone, fetchmany, iteration."""
    rows: list[Any] = []
    first = cur.fetchone()
    if first is not None:
        rows.append(first)
        rows.extend(cur.fetchmany(1))
        rows.extend(iter(cur))
    return rows


@dataclass
class LeakDb:
    """One database with the seeded shop, a guarded connection as the agent,
    and everything that connection records."""

    backend: Backend
    shop: Shop
    conn: Any
    otel: Otel
    audit: Path
    baseline: set[str]
    #: what each corpus query showed, for the union test (each query runs once)
    shown: dict[str, list[str]] = field(default_factory=dict)

    def run(self, sql: str) -> tuple[list[str], list[str], BaseException | None]:
        """What the caller sees of ``sql``: its cells (every fetch path); the
        exception's text, the spans' and the audit records'; the exception."""
        self.otel.clear()
        start = self.audit.stat().st_size if self.audit.exists() else 0
        cells: list[str] = []
        seen: list[str] = []
        failure: BaseException | None = None
        cur = self.conn.cursor()
        try:
            cur.execute(self.shop.sql(sql))
            cells += [_text(v) for row in fetch_every_way(cur) for v in row]
        except self.backend.error as exc:
            failure = exc
            seen += [str(exc), repr(exc), repr(exc.args)]
            assert exc.__cause__ is None and exc.__context__ is None
        finally:
            cur.close()
            self.conn.rollback()
        for span in self.otel.spans():
            seen.append(json.dumps(dict(span.attributes or {}), default=str))
            seen.append(str(span.status.description))
            seen.append(repr([(e.name, e.attributes) for e in span.events]))
        with self.audit.open("rb") as f:
            f.seek(start)
            for line in f.read().decode().splitlines():
                record = json.loads(line)
                seen.append(json.dumps({k: v for k, v in record.items() if k not in _AUDIT_NOISE}))
        return cells, seen, failure

    def exposed(self, seen: list[str]) -> list[str]:
        """Seeded secrets, or windows of them beyond the baseline, in ``seen``."""
        text = "\n".join(seen).lower()
        found = [s for s in SECRETS if s.lower() in text]
        found += [f"{s} as {d}" for s in SECRETS for d in _derived(s) if d in text]
        found += sorted(
            w
            for s in SECRETS
            for spelled in (s, *_SPELLINGS[s])
            for w in windows(spelled)
            if w in text and w not in self.baseline
        )
        return found

    def where(self, seen: list[str], w: str) -> list[str]:
        return [s for s in seen if w in s.lower()]


def _open(name: str, tmp: Path, stack: contextlib.ExitStack) -> LeakDb:
    """The seeded shop on database ``name``, and a guarded connection as the
    masked agent, recording spans in memory and audit records to a file."""
    import sqlite3

    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    if name == "postgresql":
        backend = _pg_backend()
    elif name == "mysql":
        backend = _mysql_backend()
    else:
        path = tmp / "leak.db"
        backend = Backend(
            "sqlite", f"sqlite:///{path}", lambda: sqlite3.connect(path), "?", "sqlite"
        )
    exporter = InMemorySpanExporter()
    tp = TracerProvider()
    tp.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    otel = Otel(tp, MeterProvider(metric_readers=[reader]), exporter, reader)
    stack.callback(otel.meter_provider.shutdown)
    stack.callback(tp.shutdown)
    audit = tmp / "audit.jsonl"
    policy = {**SHOP_POLICY, "extends": [], "audit": {"jsonl": str(audit), "fsync": "never"}}
    shop = stack.enter_context(seeded(backend))
    conn = guardeddb.connect(
        backend.url,
        policy=policy,
        identity=AGENT,
        tracer_provider=otel.tracer_provider,
        meter_provider=otel.meter_provider,
    )
    stack.callback(conn.close)
    db = LeakDb(backend, shop, conn, otel, audit, set())
    for sql in ("SELECT * FROM {c}", "SELECT * FROM {p}"):
        cells, _, failure = db.run(sql)
        assert failure is None
        db.baseline |= set().union(*(windows(c) for c in cells))
    return db


@pytest.fixture(scope="module")
def leakdbs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], LeakDb]]:
    """Each database opened and seeded once for the whole module, on first use."""
    opened: dict[str, LeakDb] = {}
    with contextlib.ExitStack() as stack:

        def get(name: str) -> LeakDb:
            if name not in opened:
                opened[name] = _open(name, tmp_path_factory.mktemp(f"leak-{name}"), stack)
            return opened[name]

        yield get


MARKS = {"sqlite": (), "postgresql": (pytest.mark.pg,), "mysql": (pytest.mark.mysql,)}
