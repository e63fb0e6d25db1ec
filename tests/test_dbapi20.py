"""PEP 249 compliance, raw and guarded: a guarded connection passes wherever its driver does.

Every check of ``tests/pep249.py`` runs against sqlite3, psycopg and PyMySQL,
each once on the raw driver connection and once on ``guardeddb.wrap()`` of it
(with recording OpenTelemetry providers, so the tracing paths run too). Where
a driver itself departs from PEP 249 the check is a strict xfail for both, so
the guarded result always equals the raw one.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("tests.pep249")  # detailed assertion messages from the suite

import guardeddb  # noqa: E402

from .fix_db import PERMISSIVE, Backend  # noqa: E402
from .fix_otel import Otel  # noqa: E402
from .pep249 import PEP249Suite, Target  # noqa: E402

DRIVERS = ("sqlite3", "psycopg", "pymysql")
MODES = ("raw", "guarded")
SERVER_MARKS = {"psycopg": [pytest.mark.pg], "pymysql": [pytest.mark.mysql]}

#: (driver, check) pairs where the raw driver departs from PEP 249.
DEVIATIONS: dict[tuple[str, str], str] = {
    ("sqlite3", "test_description_type_code"): (
        "sqlite3 defines no type objects (STRING...) and reports type_code None"
    ),
    ("sqlite3", "test_fetch_before_execute_raises"): (
        "sqlite3 returns None or [] when fetching before any execute()"
    ),
    ("sqlite3", "test_fetch_after_non_query_raises"): (
        "sqlite3 returns None or [] when fetching after a statement without rows"
    ),
    ("pymysql", "test_rowcount_after_non_query"): (
        "PyMySQL sets rowcount to the server's affected rows, 0, after DDL"
    ),
    ("pymysql", "test_fetch_after_non_query_raises"): (
        "PyMySQL returns None or () when fetching after a statement without rows"
    ),
    ("pymysql", "test_setoutputsize"): "PyMySQL's cursors spell it setoutputsizes()",
    ("pymysql", "test_nextset"): (
        "a CALL's trailing status packet is one more (empty) result set in PyMySQL"
    ),
}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each check per driver and mode, marking the driver's own deviations."""
    if "target" not in metafunc.fixturenames:
        return
    params = []
    for driver in DRIVERS:
        marks = list(SERVER_MARKS.get(driver, []))
        reason = DEVIATIONS.get((driver, metafunc.function.__name__))
        if reason is not None:
            marks.append(pytest.mark.xfail(strict=True, reason=reason))
        for mode in MODES:
            params.append(pytest.param((driver, mode), id=f"{driver}-{mode}", marks=marks))
    metafunc.parametrize("target", params, indirect=True)


def _pg_two_sets(target: Target, cur: Any, table: str) -> None:
    cur.execute(f"SELECT COUNT(*) FROM {table}; SELECT name FROM {table}")


def _mysql_two_sets(target: Target, cur: Any, table: str) -> None:
    proc = target.new_name("PROCEDURE")
    cur.execute(
        f"CREATE PROCEDURE {proc}() BEGIN SELECT COUNT(*) FROM {table}; "
        f"SELECT name FROM {table}; END"
    )
    cur.callproc(proc)


@pytest.fixture
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Target]:
    """The connections under test for one (driver, mode) pair; cleaned up after."""
    driver, mode = request.param
    if driver == "sqlite3":
        path = str(tmp_path / "pep249.db")
        target = Target("sqlite3", sqlite3, lambda: sqlite3.connect(path))
    elif driver == "psycopg":
        import psycopg

        pg: Backend = request.getfixturevalue("pg_backend")
        target = Target("psycopg", psycopg, pg.connect_raw, two_result_sets=_pg_two_sets)
    else:
        import pymysql

        my: Backend = request.getfixturevalue("mysql_backend")
        target = Target("pymysql", pymysql, my.connect_raw, two_result_sets=_mysql_two_sets)
    if mode == "guarded":
        otel: Otel = request.getfixturevalue("otel")

        def wrap(raw: Any) -> guardeddb.GuardedConnection:
            # PEP 249 checks create and drop tables: transparency, not guardrails.
            conn: guardeddb.GuardedConnection = guardeddb.wrap(
                raw,
                policy=PERMISSIVE,
                tracer_provider=otel.tracer_provider,
                meter_provider=otel.meter_provider,
            )
            return conn

        target.wrap = wrap
        target.label += "-guarded"
    try:
        yield target
    finally:
        target.cleanup()


class TestDBAPI20(PEP249Suite):
    """Every PEP 249 check, for each driver, raw and guarded."""

    def test_guarded_target_is_guarded(self, target: Target) -> None:
        """The guarded runs really test a GuardedConnection and GuardedCursor."""
        conn = target.connect()
        guarded = target.label.endswith("-guarded")
        assert isinstance(conn, guardeddb.GuardedConnection) is guarded
        assert isinstance(conn.cursor(), guardeddb.GuardedCursor) is guarded
