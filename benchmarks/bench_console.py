"""Page loads of ``guardeddb console`` over a large audit trail.

Writes a hash-chained trail of N records (default 100,000: decisions and
results of 20 agents for 50 users over a week, some blocked, held, masked)
to a JSONL file and, unless ``--no-pg``, to a PostgreSQL stream; then times
each page through Starlette's TestClient (the whole app: routing, session,
templates, headers; no network). The first load reads and verifies the
whole chain; every later load reads and verifies only what was appended.
Medians of ``--rounds`` loads, one process.

    python benchmarks/bench_console.py [--records N] [--rounds N] [--no-pg]

The PostgreSQL sink is read by its primary key (stream, seq): the console
asks only for ``seq > last verified``, so that index is the one it needs;
filters run over the records in memory.
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from starlette.testclient import TestClient

import guardeddb
from guardeddb.audit.chain import GENESIS, _digest, head_path
from guardeddb.console import create_app
from guardeddb.console.auth import Auth

TOKEN = "bench-console-token-" + uuid.uuid4().hex
PG_DSN = os.environ.get("GUARDEDDB_TEST_PG_DSN", "postgresql://postgres@127.0.0.1:5432/test")
TABLES = ["customers", "orders", "invoices", "tickets", "payments"]


def records(n: int) -> Iterator[dict[str, Any]]:
    """``n`` chained records, alternating decisions and their results."""
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    prev = GENESIS
    for i in range(n):
        ts = (start + datetime.timedelta(seconds=i * 6)).isoformat(timespec="microseconds")
        who = {
            "user": f"user{i // 2 % 50}@example.com",
            "agent": f"agent-{i // 2 % 20}",
            "roles": ["support"],
            "session": None,
            "verified": False,
        }
        table = TABLES[i // 2 % len(TABLES)]
        rec: dict[str, Any]
        if i % 2 == 0:
            action = "block" if i % 30 == 0 else "review" if i % 50 == 0 else "allow"
            rec = {
                "ts": ts,
                "event": "decision",
                "identity": who,
                "db": {"system": "postgresql", "namespace": "shop", "address": "db"},
                "statement": f"SELECT id, name, email FROM {table} WHERE id = ?",
                "fingerprint": "f" * 16,
                "kinds": ["select"],
                "tables": [table],
                "decision": {
                    "action": action,
                    "rule": None if action == "allow" else f"rule-{action}",
                    "message": None,
                },
                "unmasked": False,
                "impact_rows": None,
                "transaction": "c:0",
                "trace_id": f"{i:032x}",
                "span_id": f"{i:016x}",
            }
        else:
            rec = {
                "ts": ts,
                "event": "result",
                "identity": who,
                "db": None,
                "statement": f"SELECT id, name, email FROM {table} WHERE id = ?",
                "fingerprint": "f" * 16,
                "rows": 1,
                "masked_columns": 1,
                "masked_values": i % 3,
                "duration_ms": 0.4,
                "error": None,
                "transaction": "c:0",
            }
        rec["seq"] = i + 1
        rec["prev_hash"] = prev
        rec["hash"] = prev = _digest(prev, rec)
        yield rec


def write_jsonl(path: Path, n: int, skip: int = 0) -> None:
    """Records ``skip + 1`` to ``n``, appended; the head anchor moved on."""
    last: dict[str, Any] = {}
    with open(path, "a", encoding="utf-8") as f:
        for last in records(n):
            if last["seq"] > skip:
                f.write(json.dumps(last, ensure_ascii=False) + "\n")
    Path(head_path(path)).write_text(f"{last['seq']:020d} {last['hash']}\n")


def write_postgres(stream: str, n: int, skip: int = 0) -> None:
    """Records ``skip + 1`` to ``n`` of ``stream``, by COPY; the head row moved on."""
    import psycopg

    from guardeddb.audit import PostgresSink

    sink = PostgresSink(PG_DSN, stream)
    sink._connect()  # the sink's own tables, as a writer makes them
    sink.close()
    with psycopg.connect(PG_DSN) as conn:
        last: dict[str, Any] = {}
        with conn.cursor().copy(
            "COPY guardeddb_audit (stream, seq, hash, prev_hash, record) FROM STDIN"
        ) as copy:
            for last in records(n):
                if last["seq"] <= skip:
                    continue
                copy.write_row(
                    (stream, last["seq"], last["hash"], last["prev_hash"], json.dumps(last))
                )
        conn.execute(
            "INSERT INTO guardeddb_audit_head (stream, seq, hash) VALUES (%s, %s, %s) "
            "ON CONFLICT (stream) DO UPDATE SET seq = EXCLUDED.seq, hash = EXCLUDED.hash",
            (stream, last["seq"], last["hash"]),
        )


def signed_in(policy: Any) -> TestClient:
    auth = Auth(TOKEN, guardeddb.Identity(user="auditor@example.com", roles=frozenset({"dba"})))
    client = TestClient(create_app(policy, auth))
    csrf = re.search(r'name="csrf" value="([^"]+)"', client.get("/login").text)
    assert csrf is not None
    client.post("/login", data={"token": TOKEN, "csrf": csrf.group(1)})
    return client


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def measure(
    name: str, policy: Any, rounds: int, out: io.StringIO, append: Callable[[], None]
) -> None:
    client = signed_in(policy)

    def get(path: str, **params: str) -> Callable[[], None]:
        def load() -> None:
            response = client.get(path, params=params)
            assert response.status_code == 200, response.text[:300]
            assert path != "/audit" or "Hash chain intact" in response.text, response.text[:3000]

        return load

    cold = timed(get("/audit"))
    pages = {
        "audit, page 1": get("/audit"),
        "audit, user filter": get("/audit", user="user7@example.com"),
        "audit, action+rule": get("/audit", action="block", rule="rule-block"),
        "audit, table+time": get("/audit", table="orders", since="2026-01-03", until="2026-01-04"),
        "audit, page 1000": get("/audit", page="1000"),
        "activity": get("/activity"),
        "approvals": get("/approvals"),
    }
    times: dict[str, list[float]] = {k: [] for k in pages}
    for _ in range(rounds):  # interleaved, so noise spreads evenly
        for key, load in pages.items():
            times[key].append(timed(load))
    append()  # 1,000 more records: read and verified on the next load only
    grown = timed(get("/audit"))
    regrown = timed(get("/activity"))
    print(f"\n{name}", file=out)
    print(f"  {'first load (read + verify all)':34} {cold:9.1f} ms", file=out)
    print(f"  {'audit after 1,000 appended':34} {grown:9.1f} ms", file=out)
    print(f"  {'activity after 1,000 appended':34} {regrown:9.1f} ms", file=out)
    for key, values in times.items():
        flag = "" if statistics.median(values) < 100 else "   (over 100 ms)"
        print(f"  {key:34} {statistics.median(values):9.1f} ms{flag}", file=out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-pg", action="store_true", help="skip the PostgreSQL sink")
    args = parser.parse_args()
    out = io.StringIO()
    print(f"{args.records} audit records; median of {args.rounds} loads per page", file=out)
    with tempfile.TemporaryDirectory() as tmp:
        trail = Path(tmp) / "audit.jsonl"
        write_jsonl(trail, args.records)
        base = {"version": 1, "approvals": {"store": f"sqlite:///{tmp}/approvals.db"}}
        policy = guardeddb.load_policy({**base, "audit": {"jsonl": str(trail)}})
        n = args.records
        measure("JSONL trail", policy, args.rounds, out, lambda: write_jsonl(trail, n + 1000, n))
        if not args.no_pg:
            stream = f"bench_console_{uuid.uuid4().hex[:8]}"
            write_postgres(stream, args.records)
            try:
                pg = guardeddb.load_policy(
                    {**base, "audit": {"postgresql": PG_DSN, "stream": stream}}
                )
                measure(
                    "PostgreSQL sink",
                    pg,
                    args.rounds,
                    out,
                    lambda: write_postgres(stream, n + 1000, n),
                )
            finally:
                import psycopg

                with psycopg.connect(PG_DSN) as conn:
                    conn.execute("DELETE FROM guardeddb_audit WHERE stream = %s", (stream,))
                    conn.execute("DELETE FROM guardeddb_audit_head WHERE stream = %s", (stream,))
    print(out.getvalue(), end="")


if __name__ == "__main__":
    main()
