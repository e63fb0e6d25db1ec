"""The benchmarks run (as a smoke test: timings are not asserted, behaviour is)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(script: str, *args: str) -> str:
    """The output of one benchmark script run with ``args``."""
    return subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout


@pytest.mark.slow
def test_query_benchmark_quick_run() -> None:
    """bench_query.py --quick measures every case and checks its own spans."""
    out = _run("bench_query.py", "--quick", "--no-pg")
    assert "guardeddb, no SDK" in out and "otel-dbapi, SDK" in out
    assert "one per query" in out
    assert "a new literal every time" in out and "three masked columns + detectors" in out


@pytest.mark.slow
def test_query_benchmark_workload_filter_and_json(tmp_path: Path) -> None:
    """--workloads runs only the matching workloads; --json has their ratios,
    guardeddb against raw and against otel-dbapi."""
    path = tmp_path / "out.json"
    out = _run(
        "bench_query.py",
        "--quick",
        "--workloads",
        "sqlite3-point-literals,sqlite3-fetchall-masked*",
        "--json",
        str(path),
    )
    assert "PostgreSQL: no workload selected" in out
    data = json.loads(path.read_text())
    assert sorted(data["ratios"]) == [
        "sqlite3-fetchall-masked",
        "sqlite3-fetchall-masked-detectors",
        "sqlite3-point-literals",
    ]
    literals = data["ratios"]["sqlite3-point-literals"]
    assert literals["guardeddb-sdk/raw"] > 0 and literals["guardeddb-sdk/otel-dbapi-sdk"] > 0
    assert data["workloads"]["sqlite3-point-literals"]["policy"] == "default"


def test_analysis_benchmark_quick_run() -> None:
    """bench_analysis.py compares guardeddb's analysis with sqlglot's parse."""
    assert "two-table join" in _run("bench_analysis.py", "--rounds", "1", "--statements", "20")


def test_masking_benchmark_quick_run() -> None:
    """bench_masking.py masks and times a small fetchall."""
    out = _run("bench_masking.py", "--rounds", "1", "--rows", "200")
    assert "3 masked + detectors" in out and "cells/s" in out
    assert "+us/row" in out and "ns per scanned cell" in out


def test_audit_benchmark_quick_run() -> None:
    """bench_audit.py times audited point queries."""
    assert "fsync always" in _run("bench_audit.py", "--rounds", "1", "--queries", "20")


def test_sqlalchemy_benchmark_quick_run() -> None:
    """bench_sqlalchemy.py times ORM operations on a plain and a guarded engine."""
    out = _run("bench_sqlalchemy.py", "--quick", "--no-pg")
    assert "guard_engine, no SDK" in out and "guard_engine, SDK" in out
    assert "spans exported by guardeddb" in out


def test_detectors_benchmark_quick_run() -> None:
    """bench_detectors.py scores the detectors on the corpus and times them."""
    out = _run("bench_detectors.py", "--quick")
    assert "recall" in out and "false-positive rate" in out and "us per cell" in out


def test_console_benchmark_quick_run() -> None:
    """bench_console.py loads the console's pages over a generated trail."""
    pytest.importorskip("starlette", reason="the console extra is not installed")
    out = _run("bench_console.py", "--records", "2000", "--rounds", "1", "--no-pg")
    assert "audit, user filter" in out and "activity after 1,000 appended" in out
