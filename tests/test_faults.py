"""Fail closed under faults: a policy file that cannot be exploded, an audit
trail that recovers from a failed disk, and identity and error contracts.

Findings of issue #12 reproduced on real files, filesystems and servers;
each test says which finding it holds."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import guardeddb
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
