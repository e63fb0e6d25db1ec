"""Shared test setup: fixtures live in fix_*.py plugins, as psycopg's do."""

from __future__ import annotations

import pytest

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
