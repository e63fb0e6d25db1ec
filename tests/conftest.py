"""Shared test setup: fixtures live in fix_*.py plugins, as psycopg's do."""

from __future__ import annotations

import contextlib
import importlib
import os
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import pytest

_TESTS = os.path.dirname(os.path.abspath(__file__)) + os.sep

pytest_plugins = [
    "tests.fix_db",
    "tests.fix_otel",
    "tests.fix_otlp",
    "tests.fix_shop",
    "tests.fix_adversarial",
    "tests.fix_leak",
]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "pg: needs the PostgreSQL server")
    config.addinivalue_line("markers", "mysql: needs the MySQL/MariaDB server")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")


def _left_open(tb: TracebackType | None, protected: set[int]) -> Iterator[Any]:
    """Connections held by the test's own frames when it failed."""
    import sqlite3

    kinds: list[type[Any]] = [sqlite3.Connection]
    for module, name in (("psycopg", "Connection"), ("pymysql.connections", "Connection")):
        with contextlib.suppress(ImportError):
            kinds.append(getattr(importlib.import_module(module), name))
    from guardeddb import GuardedConnection

    seen: set[int] = set()
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_filename.startswith(_TESTS):
            for value in list(frame.f_locals.values()):
                if id(value) in protected or id(value) in seen:
                    continue
                if isinstance(value, (GuardedConnection, *kinds)):
                    seen.add(id(value))
                    yield value
        tb = tb.tb_next


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A test that fails between opening a connection and closing it leaves
    a transaction open: the fixture's DROP would wait on its locks, and the
    connection, collected during a later test, would fail that one with a
    ResourceWarning. So the connections its frames hold are closed here,
    after the failure and before fixtures tear down; fixtures' own
    connections (session-wide observers) are left alone."""
    yield
    if call.when != "call" or call.excinfo is None:
        return
    protected = {id(v) for v in getattr(item, "funcargs", {}).values()}
    manager = getattr(item.session, "_fixturemanager", None)
    for defs in getattr(manager, "_arg2fixturedefs", {}).values():
        for fixture_def in defs:
            cached = getattr(fixture_def, "cached_result", None)
            if cached is not None:
                protected.add(id(cached[0]))
    for conn in _left_open(call.excinfo.tb, protected):
        with contextlib.suppress(Exception):
            conn.close()
