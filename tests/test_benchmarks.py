"""The benchmarks run (as a smoke test: timings are not asserted, behaviour is)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_query_benchmark_quick_run() -> None:
    """bench_query.py --quick measures every case and checks its own spans."""
    out = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_query.py"), "--quick", "--no-pg"],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    assert "guardeddb, no SDK" in out and "otel-dbapi, SDK" in out
    assert "one per query" in out


def test_analysis_benchmark_quick_run() -> None:
    """bench_analysis.py compares guardeddb's analysis with sqlglot's parse."""
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_analysis.py"),
            "--rounds",
            "1",
            "--statements",
            "20",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    assert "two-table join" in out


def test_masking_benchmark_quick_run() -> None:
    """bench_masking.py masks and times a small fetchall."""
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_masking.py"),
            "--rounds",
            "1",
            "--rows",
            "200",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    assert "3 masked + detectors" in out and "cells/s" in out


def test_audit_benchmark_quick_run() -> None:
    """bench_audit.py times audited point queries."""
    out = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "bench_audit.py"),
            "--rounds",
            "1",
            "--queries",
            "20",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    ).stdout
    assert "fsync always" in out
