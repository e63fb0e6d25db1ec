"""Fail closed under faults: a policy file that cannot be exploded, an audit
trail that recovers from a failed disk, and identity and error contracts.

Findings of issue #12 reproduced on real files, filesystems and servers;
each test says which finding it holds."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import guardeddb
import guardeddb.audit
from guardeddb import PolicyError
from guardeddb.policy.loader import MAX_BYTES

from .fix_db import PG_DSN

# --- 1. A policy loader that cannot be exploded (findings 1, 2, 11) ---------


def _bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels + 1):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "version: 1\nunknown_key:\n" + "".join(f"  {line}\n" for line in lines)


HOSTILE: dict[str, tuple[bytes, int, str]] = {
    # name: (file content, line named in the error, words in the message)
    "nul byte": (b"version: 1\nmode: enforce\x00\n", 2, "NUL byte"),
    "python tag": (b"version: 1\nmode: !!python/name:os.system\n", 2, "not allowed"),
    "python object": (b"version: 1\nx: !!python/object/apply:os.system [id]\n", 2, "not allowed"),
    "custom tag": (b"version: 1\nmode: !shell enforce\n", 2, "not allowed"),
    "self alias": (b"version: 1\nrules: &a [*a]\n", 2, "refers to itself"),
    "self alias in map": (b"version: 1\nx: &m {k: *m}\n", 2, "refers to itself"),
    "not utf-8": (b"version: 1\nmode: \xff\xfe\n", 2, "not UTF-8"),
    "billion laughs": (_bomb().encode(), 8, "once aliases are expanded"),
    "nested brackets": (b"version: 1\nx: " + b"[" * 100_000 + b"]" * 100_000 + b"\n", 2, "deeper"),
    "nested mappings": (
        b"version: 1\nx: " + b"{a: " * 5000 + b"1" + b"}" * 5000 + b"\n",
        2,
        "deeper",
    ),
    "huge integer": (b"version: 1\nx: " + b"9" * 6000 + b"\n", 2, "invalid value"),
    "huge ttl": (b"version: 1\napprovals:\n  ttl: 99999999999999999999d\n", 3, "366d"),
    "control char": (b"version: 1\nmode: a\x07b\n", 2, "invalid YAML"),
    "two documents": (b"version: 1\n---\nversion: 1\n", 2, "invalid YAML"),
    "undefined alias": (b"version: 1\nmode: *nope\n", 2, "invalid YAML"),
}


def _limited_memory(mb: int) -> None:
    """The child's address space, so a bomb that expanded would MemoryError."""
    resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_policy_file_is_a_policy_error_naming_file_and_line(
    name: str, tmp_path: Path
) -> None:
    """Finding 1 and 2: every hostile file fails fast with PolicyError, the
    file and the line; nothing is expanded (a 9-level billion-laughs took 28 s
    and 3 GB; now milliseconds), nothing recurses."""
    content, line, words = HOSTILE[name]
    path = tmp_path / "policy.yaml"
    path.write_bytes(content)
    started = time.perf_counter()
    with pytest.raises(PolicyError) as caught:
        guardeddb.load_policy(str(path))
    assert time.perf_counter() - started < 5
    assert caught.value.source == str(path)
    assert caught.value.line == line, str(caught.value)
    assert words in str(caught.value)
    assert str(caught.value).startswith(f"{path}:{line}")


def test_a_billion_laughs_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """Finding 2: the bomb is refused in a child limited to 512 MB of address space."""
    path = tmp_path / "bomb.yaml"
    path.write_text(_bomb())
    code = (
        "import resource, sys, guardeddb\n"
        "resource.setrlimit(resource.RLIMIT_AS, (512 << 20, 512 << 20))\n"
        "try:\n"
        "    guardeddb.load_policy(sys.argv[1])\n"
        "except guardeddb.PolicyError as exc:\n"
        "    print('refused', exc)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("refused"), out.stdout


def test_oversized_and_unreadable_files_are_policy_errors(tmp_path: Path) -> None:
    """A file over the size limit, a directory and a missing file: PolicyError, line 1."""
    big = tmp_path / "big.yaml"
    big.write_bytes(b"version: 1\n" + b"#" * MAX_BYTES + b"\n")
    for path in (big, tmp_path, tmp_path / "missing.yaml"):
        with pytest.raises(PolicyError) as caught:
            guardeddb.load_policy(str(path))
        assert caught.value.source == str(path) and caught.value.line == 1


def test_anchors_and_aliases_within_limits_still_load(tmp_path: Path) -> None:
    """The limits refuse bombs, not reuse: a few aliases of a list load as before."""
    path = tmp_path / "policy.yaml"
    path.write_text(
        "version: 1\n"
        "extends: []\n"
        "rules:\n"
        "  - id: no-ddl\n"
        "    action: block\n"
        "    match: {statements: &ddl [ddl], tables: &t [secrets]}\n"
        "  - id: no-ddl-2\n"
        "    action: block\n"
        "    match: {statements: *ddl, tables: *t}\n"
        "approvals:\n"
        "  ttl: 366d\n"
    )
    policy = guardeddb.load_policy(str(path))
    assert [r.id for r in policy.rules] == ["no-ddl", "no-ddl-2"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.binary(max_size=400))
def test_random_bytes_load_or_raise_policy_error(data: bytes, tmp_path_factory: Any) -> None:
    """Hypothesis: whatever the bytes, load_policy returns a Policy or raises PolicyError."""
    path = tmp_path_factory.mktemp("fuzz") / "p.yaml"
    path.write_bytes(data)
    try:
        guardeddb.load_policy(str(path))
    except PolicyError as exc:
        assert exc.source == str(path) and exc.line is not None


_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=20),
    st.sampled_from(["enforce", "block", "allow", "ddl", "1h", "99999999999999999999d", "*x"]),
)
_yaml_values = st.recursive(
    _scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(
            st.sampled_from(
                [
                    "version",
                    "mode",
                    "rules",
                    "id",
                    "action",
                    "match",
                    "statements",
                    "tables",
                    "masking",
                    "audit",
                    "approvals",
                    "ttl",
                    "extends",
                    "require_identity",
                    "x",
                ]
            ),
            children,
            max_size=5,
        ),
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=_yaml_values, tag=st.sampled_from(["", "!!str ", "!!python/none ", "!x ", "&a "]))
def test_random_yaml_loads_or_raises_policy_error(
    value: Any, tag: str, tmp_path_factory: Any
) -> None:
    """Hypothesis: random YAML documents (policy-shaped keys, tags, anchors)
    give a Policy or a PolicyError with a line, never anything else."""
    import yaml

    text = "version: 1\n" + tag + yaml.safe_dump(value, default_flow_style=True)
    path = tmp_path_factory.mktemp("fuzz") / "p.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    try:
        guardeddb.load_policy(str(path))
    except PolicyError as exc:
        assert exc.source == str(path) and exc.line is not None


def _run_instrumented(tmp_path: Path, policy: bytes) -> subprocess.CompletedProcess[str]:
    """An app run under ``opentelemetry-instrument`` with GUARDEDDB_POLICY
    set, trying CREATE TABLE on PostgreSQL with the driver's own connect."""
    path = tmp_path / "policy.yaml"
    path.write_bytes(policy)
    table = f"faults_{uuid.uuid4().hex[:10]}"
    app = tmp_path / "app.py"
    app.write_text(
        "import sys, psycopg\n"
        "try:\n"
        f"    conn = psycopg.connect({PG_DSN!r}, autocommit=True)\n"
        "except Exception as exc:\n"
        "    print('REFUSED', type(exc).__name__, exc)\n"
        "    sys.exit(3)\n"
        f"conn.execute('CREATE TABLE {table} (id int)')\n"
        "print('RAN')\n"
    )
    env = dict(
        os.environ,
        GUARDEDDB_POLICY=str(path),
        OTEL_TRACES_EXPORTER="none",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    exe = Path(sys.executable).parent / "opentelemetry-instrument"
    try:
        out = subprocess.run(
            [str(exe), sys.executable, str(app)],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as raw:
            exists = raw.execute("SELECT to_regclass(%s)", (table,)).fetchone()
            raw.execute(f"DROP TABLE IF EXISTS {table}")
    assert exists == (None,), f"CREATE TABLE ran unguarded: {out.stdout}{out.stderr}"
    return out


@pytest.mark.pg
@pytest.mark.parametrize(
    "name", ["nul byte", "python tag", "self alias", "billion laughs", "nested brackets"]
)
def test_opentelemetry_instrument_with_a_hostile_policy_never_runs_unguarded(
    name: str, tmp_path: Path, pg_backend: Any
) -> None:
    """Finding 1: under opentelemetry-instrument, a GUARDEDDB_POLICY that does
    not load leaves psycopg patched to refuse: CREATE TABLE does not run."""
    out = _run_instrumented(tmp_path, HOSTILE[name][0])
    assert out.returncode == 3, out.stdout + out.stderr
    assert "REFUSED PolicyError" in out.stdout and "refuses to connect" in out.stdout


@pytest.mark.pg
def test_opentelemetry_instrument_with_a_good_policy_guards(
    tmp_path: Path, pg_backend: Any
) -> None:
    """The same app under a readonly policy: connected, guarded, CREATE refused."""
    out = _run_instrumented(tmp_path, b"version: 1\nextends: [readonly]\n")
    assert "QueryBlocked" in out.stderr, out.stdout + out.stderr


# --- 2. An audit trail that recovers (findings 3, 6, 10, 15) ----------------


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 64 KB tmpfs, unmounted after the test (needs root)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path) -> Path:
    """Fill the filesystem to the last byte; returns the filler to delete."""
    filler = mnt / "filler"
    with open(filler, "wb", buffering=0) as f:
        for size in (4096, 512, 64, 1):
            while True:
                try:
                    f.write(b"x" * size)
                except OSError:
                    break
    return filler


def _pg_table() -> str:
    name = f"faults_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_DSN, autocommit=True) as raw:
        raw.execute(f"CREATE TABLE {name} (id int)")
    return name


def _pg_ids(table: str) -> list[int]:
    with psycopg.connect(PG_DSN, autocommit=True) as raw:
        return [r[0] for r in raw.execute(f"SELECT id FROM {table} ORDER BY id").fetchall()]


def _pg_drop(table: str) -> None:
    with psycopg.connect(PG_DSN, autocommit=True) as raw:
        raw.execute(f"DROP TABLE IF EXISTS {table}")


def _permissive_audit(**audit: Any) -> dict[str, Any]:
    return {"version": 1, "extends": [], "on_unparsed": "allow", "audit": audit}


@pytest.mark.pg
@pytest.mark.parametrize("required", [True, False])
def test_a_full_disk_refuses_exactly_the_unrecorded_statements_and_recovers(
    required: bool, full_disk: Path, pg_backend: Any
) -> None:
    """Finding 3: on a real full tmpfs, ``required: true`` refuses exactly the
    statements whose records could not be written (nothing reaches the
    server), ``required: false`` runs them; rollback()/close() never raise;
    once space is freed the same connection records and runs again, and the
    trail verifies with no torn line."""
    table = _pg_table()
    path = full_disk / "audit.jsonl"
    conn = guardeddb.connect(
        PG_DSN, policy=_permissive_audit(jsonl=str(path), required=required), autocommit=True
    )
    try:
        with guardeddb.identity(user="alice"):
            conn.execute(f"INSERT INTO {table} VALUES (1)")
            filler = _fill(full_disk)
            ran, refused = [], []
            for i in range(2, 40):  # the first records may still fit in the file's last page
                try:
                    conn.execute(f"INSERT INTO {table} VALUES ({i})")
                    ran.append(i)
                except guardeddb.AuditUnavailable:
                    refused.append(i)
            conn.rollback()  # no ValueError: I/O operation on closed file
            assert path.read_bytes().endswith(b"\n")  # a torn record was truncated back
            filler.unlink()
            conn.execute(f"INSERT INTO {table} VALUES (99)")
        sink: Any = conn._self_guard.audit.sink  # type: ignore[union-attr]
        assert sink.failures >= 1
        assert _pg_ids(table) == [1, *ran, 99]
        if required:
            assert len(refused) >= 10
        else:
            assert refused == [] and len(ran) == 38
    finally:
        conn.close()
        _pg_drop(table)
    report = guardeddb.audit.check(path)
    assert report.problems == [], report.problems
    inserts = [
        r
        for r in map(json.loads, path.read_text().splitlines())
        if r["event"] == "decision" and "INSERT" in r["statement"]
    ]
    if required:
        assert len(inserts) == 2 + len(ran)  # every statement that ran has its record: lost 0
    else:
        assert 2 <= len(inserts) < 40  # the missing ones counted in sink.failures


def test_an_immutable_file_refuses_then_recovers(tmp_path: Path) -> None:
    """Finding 3 with ``chattr +i``: refused while immutable, works after."""
    path = tmp_path / "audit.jsonl"
    db = tmp_path / "db.sqlite"
    conn = guardeddb.connect(f"sqlite:///{db}", policy=_permissive_audit(jsonl=str(path)))
    try:
        conn.execute("CREATE TABLE t (a)")
        if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not supported here")
        try:
            with pytest.raises(guardeddb.AuditUnavailable):
                conn.execute("INSERT INTO t VALUES (1)")
            conn.rollback()
        finally:
            subprocess.run(["chattr", "-i", str(path)], check=True)
        conn.execute("INSERT INTO t VALUES (2)")
        conn.commit()
        assert conn.execute("SELECT a FROM t").fetchall() == [(2,)]
    finally:
        conn.close()
    assert guardeddb.audit.check(path).problems == []


_WRITER = """
import sys
from guardeddb.audit import JsonlSink
sink = JsonlSink(sys.argv[1], fsync="never")
i = 0
while True:
    rec = sink.write({"event": "test", "pid": 0, "pad": "x" * (i % 700)})
    print(rec["seq"], rec["hash"], flush=True)
    i += 1
"""


@pytest.mark.slow
def test_kill_9_writers_lose_no_acknowledged_record(tmp_path: Path) -> None:
    """20 writers killed with SIGKILL at random points: every record a writer
    saw written is in the trail with its hash, a torn tail is truncated by
    the next writer, and the trail verifies."""
    import random
    import signal

    path = tmp_path / "audit.jsonl"
    acknowledged: dict[int, str] = {}
    rng = random.Random(12)
    for _ in range(20):
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert proc.stdout is not None
        first = proc.stdout.readline()  # writing has started
        time.sleep(rng.random() * 0.2)
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        for line in [first, *out.splitlines()]:
            parts = line.split()
            if len(parts) == 2 and len(parts[1]) == 64:
                acknowledged[int(parts[0])] = parts[1]
    sink = guardeddb.audit.JsonlSink(path)
    sink.write({"event": "after"})
    sink.close()
    written = {r["seq"]: r["hash"] for r in map(json.loads, path.read_text().splitlines())}
    lost = [seq for seq, digest in acknowledged.items() if written.get(seq) != digest]
    assert len(acknowledged) > 100 and lost == []
    assert guardeddb.audit.check(path).problems == []


def test_a_torn_tail_is_truncated_under_the_lock(tmp_path: Path) -> None:
    """A half record left by a killed writer is cut by the next write and counted."""
    path = tmp_path / "audit.jsonl"
    sink = guardeddb.audit.JsonlSink(path)
    sink.write({"event": "a"})
    with open(path, "ab") as f:
        f.write(b'{"event": "b", "seq": 2, "ha')
    other = guardeddb.audit.JsonlSink(path)
    assert other.write({"event": "c"})["seq"] == 2
    assert other.truncated == 1
    sink.close()
    other.close()
    assert guardeddb.audit.check(path).problems == []


def test_verify_reports_every_problem_streaming(tmp_path: Path) -> None:
    """Finding 6 and 15: a torn line, an edit, a deletion, a reorder and records
    cut from the end are all reported, each at its line, in one pass."""
    path = tmp_path / "audit.jsonl"
    sink = guardeddb.audit.JsonlSink(path, fsync="never")
    for i in range(12):
        sink.write({"event": "test", "i": i})
    sink.close()
    lines = path.read_text().splitlines(keepends=True)
    lines[2] = lines[2][:20] + "\n"  # line 3 torn
    lines[4] = lines[4].replace('"i": 4', '"i": 40')  # line 5 edited
    del lines[6]  # seq 7 deleted
    lines[7], lines[8] = lines[8], lines[7]  # seq 9 and 10 swapped
    del lines[-2:]  # seq 11 and 12 cut from the end
    path.write_text("".join(lines))
    report = guardeddb.audit.check(path)
    found = [(p.line, p.reason.split(":")[0]) for p in report.problems]
    assert (3, "torn line") in found
    assert (5, "edited") in found
    assert any(line == 7 and why.startswith("deleted") for line, why in found)
    assert any(line in (8, 9) and why.startswith("deleted") for line, why in found)
    assert (10, "records deleted from the end") in found
    from guardeddb.cli import main

    assert main(["audit", "verify", str(path)]) == 1


def test_deleting_the_last_records_is_found_and_not_papered_over(tmp_path: Path) -> None:
    """Finding 15: cutting the last records is found by verify through the head
    anchor, and a later write chains from the anchor, so the gap stays visible."""
    path = tmp_path / "audit.jsonl"
    sink = guardeddb.audit.JsonlSink(path)
    for i in range(5):
        sink.write({"i": i})
    sink.close()
    assert guardeddb.audit.check(path).problems == []
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]))
    assert "deleted from the end" in guardeddb.audit.verify(path)[1].reason  # type: ignore[union-attr]
    sink = guardeddb.audit.JsonlSink(path)
    assert sink.write({"i": "after"})["seq"] == 6
    sink.close()
    reasons = [p.reason for p in guardeddb.audit.check(path).problems]
    assert len(reasons) == 1 and reasons[0].startswith("deleted or reordered: expected seq 4")


@pytest.mark.pg
def test_postgres_sink_recovers_from_a_terminated_backend(pg_backend: Any) -> None:
    """Finding 10/15 on PostgreSQL: after pg_terminate_backend of the sink's
    session, exactly the statement being recorded is refused, the next one
    reconnects; deleting the last rows is found through the head row."""
    stream = f"faults-{uuid.uuid4().hex[:8]}"
    table = _pg_table()
    conn = guardeddb.connect(
        PG_DSN, policy=_permissive_audit(postgresql=PG_DSN, stream=stream), autocommit=True
    )
    try:
        conn.execute(f"INSERT INTO {table} VALUES (1)")
        sink: Any = conn._self_guard.audit.sink  # type: ignore[union-attr]
        pid = sink._conn.info.backend_pid
        with psycopg.connect(PG_DSN, autocommit=True) as raw:
            raw.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with pytest.raises(guardeddb.AuditUnavailable):
            conn.execute(f"INSERT INTO {table} VALUES (2)")
        conn.execute(f"INSERT INTO {table} VALUES (3)")
        conn.rollback()
        assert _pg_ids(table) == [1, 3]
        assert sink.failures >= 1
        conn.close()
        assert guardeddb.audit.check_postgres(PG_DSN, stream).problems == []
        with psycopg.connect(PG_DSN, autocommit=True) as raw:
            (top,) = raw.execute(
                "SELECT max(seq) FROM guardeddb_audit WHERE stream = %s", (stream,)
            ).fetchone()  # type: ignore[misc]
            raw.execute(
                "DELETE FROM guardeddb_audit WHERE stream = %s AND seq >= %s", (stream, top - 1)
            )
        problems = guardeddb.audit.check_postgres(PG_DSN, stream).problems
        assert [p.reason.split(":")[0] for p in problems] == ["records deleted from the end"]
    finally:
        conn.close()
        _pg_drop(table)
        with psycopg.connect(PG_DSN, autocommit=True) as raw:
            raw.execute("DELETE FROM guardeddb_audit WHERE stream = %s", (stream,))
            raw.execute("DELETE FROM guardeddb_audit_head WHERE stream = %s", (stream,))


def test_cli_output_escapes_control_and_bidi_characters(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 15: an agent name with ESC, CR and a bidi override cannot forge
    lines on the approver's terminal through ``audit show``."""
    from guardeddb.cli import main

    path = tmp_path / "audit.jsonl"
    conn = guardeddb.connect("sqlite://", policy=_permissive_audit(jsonl=str(path)))
    evil = "bot\x1b[2J\r\u202eFAKE\u2028x\x9b"
    with guardeddb.identity(user="eve\x07", agent=evil):
        conn.execute("SELECT 1").fetchall()
    conn.close()
    assert main(["audit", "show", str(path)]) == 0
    out = capsys.readouterr().out
    for ch in ("\x1b", "\r", "\u202e", "\u2028", "\x07", "\x9b"):
        assert ch not in out
    assert "\\x1b[2J" in out and "\\u202e" in out


# --- 3. Small contracts (findings 11, 12, 14) -------------------------------


def test_a_lone_surrogate_in_an_identity_is_escaped_not_raised(tmp_path: Path) -> None:
    """Finding 11: an identity with a lone surrogate is recorded (escaped) in
    the JSONL trail, and the trail verifies; no UnicodeEncodeError."""
    path = tmp_path / "audit.jsonl"
    conn = guardeddb.connect("sqlite://", policy=_permissive_audit(jsonl=str(path)))
    with guardeddb.identity(user="eve\ud800", agent="bot\udfff"):
        assert conn.execute("SELECT 1").fetchall() == [(1,)]
    conn.close()
    first = json.loads(path.read_text().splitlines()[0])
    assert first["identity"]["user"] == "eve\ud800"
    assert "\\ud800" in path.read_text()
    assert guardeddb.audit.check(path).problems == []


@pytest.mark.pg
def test_a_lone_surrogate_reaches_the_postgresql_sink(pg_backend: Any) -> None:
    """The same identity through the PostgreSQL sink: written and verified."""
    stream = f"faults-{uuid.uuid4().hex[:8]}"
    conn = guardeddb.connect(
        "sqlite://", policy=_permissive_audit(postgresql=PG_DSN, stream=stream)
    )
    try:
        with guardeddb.identity(user="eve\ud800"):
            conn.execute("SELECT 1").fetchall()
        conn.close()
        report = guardeddb.audit.check_postgres(PG_DSN, stream)
        assert report.problems == [] and report.records == 2
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as raw:
            raw.execute("DELETE FROM guardeddb_audit WHERE stream = %s", (stream,))
            raw.execute("DELETE FROM guardeddb_audit_head WHERE stream = %s", (stream,))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"user": "x" * 1025},
        {"agent": "a" * 5_000_000},
        {"session": "s" * 2000},
        {"roles": ["r" * 2000]},
        {"roles": [f"r{i}" for i in range(300)]},
        {"user": "u", "attributes": {"iss": "i" * 2000}},
    ],
    ids=["user", "agent-5MB", "session", "role", "roles", "attribute"],
)
def test_identity_fields_are_bounded(kwargs: dict[str, Any]) -> None:
    """Finding 14: a 5 MB agent name is refused at construction, with the limit."""
    with pytest.raises(ValueError, match=r"at most|longer than|more than"):
        guardeddb.Identity(**kwargs)


@pytest.mark.parametrize("field", ["user", "agent", "session"])
@pytest.mark.parametrize("value", ["", "   "])
def test_an_empty_string_is_no_identity(field: str, value: str) -> None:
    """Finding 14: ``Identity(user="")`` raises ValueError (pass None for nobody),
    so ``require_identity: true`` can never be satisfied by an empty name."""
    with pytest.raises(ValueError, match="empty"):
        guardeddb.Identity(**{field: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="empty"):
        guardeddb.Identity(user="u", roles=frozenset([""]))


def test_verified_true_in_code_is_refused(tmp_path: Path) -> None:
    """Finding 12: ``verified=True`` written in code raises; nothing but
    Identity.from_jwt makes a verified identity, so a policy requiring one
    refuses every hand-made identity."""
    with pytest.raises(ValueError, match="from_jwt"):
        guardeddb.Identity(user="mallory", verified=True)
    with pytest.raises(ValueError, match="from_jwt"):
        guardeddb.Identity(user="mallory", verified=1)  # type: ignore[arg-type]
    db = tmp_path / "db.sqlite"
    conn = guardeddb.connect(
        f"sqlite:///{db}", policy={"version": 1, "require_identity": "verified"}
    )
    with guardeddb.identity(user="mallory"), pytest.raises(guardeddb.QueryBlocked):
        conn.execute("CREATE TABLE t (a)")
    conn.close()
    import sqlite3

    with sqlite3.connect(db) as raw:
        assert raw.execute("SELECT count(*) FROM sqlite_master").fetchone() == (0,)


def test_identity_equality_and_hash_cover_attributes() -> None:
    """Finding 13/14: two tokens' identities differing only in issuer are different."""
    a = guardeddb.Identity(user="u", attributes={"iss": "https://a"})
    b = guardeddb.Identity(user="u", attributes={"iss": "https://b"})
    assert a != b and hash(a) != hash(b)
    assert a == guardeddb.Identity(user="u", attributes={"iss": "https://a"})
    assert hash(a) == hash(guardeddb.Identity(user="u", attributes={"iss": "https://a"}))
    assert len({a, b}) == 2


def _pickled(exc: BaseException) -> Any:
    import pickle

    return pickle.loads(pickle.dumps(exc))


@pytest.mark.parametrize("driver", ["sqlite3", "psycopg", "pymysql", None])
def test_errors_survive_pickling_with_their_fields(driver: str | None) -> None:
    """Finding 12: QueryBlocked, ApprovalRequired, AuditUnavailable (plain and
    mixed with each driver's ProgrammingError), PolicyError and IdentityError
    come back from pickle with their class and fields."""
    from guardeddb.errors import IdentityError, for_driver

    pe = None
    if driver is not None:
        pe = __import__(driver).ProgrammingError
    decision = guardeddb.Decision("block", "no-ddl", "no DDL here")
    blocked = for_driver(guardeddb.QueryBlocked, pe)(decision)
    held = for_driver(guardeddb.ApprovalRequired, pe)(decision, "req-1")
    down = for_driver(guardeddb.AuditUnavailable, pe)(decision, "audit down")
    for exc in (blocked, held, down):
        back = _pickled(exc)
        assert type(back) is type(exc) and str(back) == str(exc)
        assert back.decision == decision
        if pe is not None:
            assert isinstance(back, pe)
    assert _pickled(held).request_id == "req-1"
    policy_error = PolicyError("bad", source="p.yaml", line=3, key="mode")
    back = _pickled(policy_error)
    assert (back.source, back.line, back.key, str(back)) == ("p.yaml", 3, "mode", str(policy_error))
    ident = _pickled(IdentityError("expired token", reason="expired"))
    assert ident.reason == "expired" and str(ident) == "expired token"


@pytest.mark.pg
def test_a_real_blocked_query_pickles(pg_backend: Any) -> None:
    """The QueryBlocked a guarded psycopg cursor raised, pickled and back."""
    conn = guardeddb.connect(PG_DSN, policy={"version": 1, "extends": ["readonly"]})
    try:
        with pytest.raises(psycopg.ProgrammingError) as caught:
            conn.execute("CREATE TABLE never_created (a int)")
    finally:
        conn.close()
    back = _pickled(caught.value)
    assert isinstance(back, guardeddb.QueryBlocked) and isinstance(back, psycopg.ProgrammingError)
    assert back.decision == caught.value.decision  # type: ignore[attr-defined]


def test_cli_approvals_list_escapes_a_forged_statement(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Finding 15: a held statement with a quoted identifier full of ESC and CR
    is listed escaped: it cannot overwrite the approver's screen."""
    from guardeddb.approvals import ApprovalStore
    from guardeddb.cli import main

    store_url = f"sqlite:///{tmp_path}/approvals.db"
    store = ApprovalStore(store_url)
    store.hold(None, "h", 'DELETE FROM "t\x1b[1A\r\u202eapproved"', "r\x1b", "why")
    assert main(["approvals", "--store", store_url, "list"]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\r" not in out and "\u202e" not in out
    assert "\\x1b[1A" in out


def test_a_replaced_trail_is_reopened_not_written_into_the_void(tmp_path: Path) -> None:
    """Finding 3: when the trail's directory is removed and made again, the
    next record goes to the new file at the path, not to the deleted inode."""
    import shutil

    folder = tmp_path / "logs"
    folder.mkdir()
    path = folder / "audit.jsonl"
    sink = guardeddb.audit.JsonlSink(path)
    sink.write({"i": 1})
    shutil.rmtree(folder)
    with pytest.raises(OSError):
        sink.write({"i": 2})  # nowhere to write: the caller is told
    folder.mkdir()
    assert sink.write({"i": 3})["seq"] == 1  # a new trail in the new file
    sink.close()
    assert [json.loads(line)["i"] for line in path.read_text().splitlines()] == [3]
    assert sink.failures == 1
