"""``MaskingError`` keeps the error contract of #12 (finding 12).

It lives in ``guardeddb.errors``, is re-exported as ``guardeddb.MaskingError``,
and where a guarded cursor raises it, it is also that driver's Error (so
``except psycopg.Error`` / ``pymysql.Error`` / ``sqlite3.Error`` catch it),
and it pickles with its class and fields.
"""

from __future__ import annotations

import pickle
import sqlite3
from typing import Any

import psycopg
import pymysql
import pymysql.cursors
import pytest

import guardeddb
from guardeddb.errors import MaskingError, driver_error, for_driver

from .fix_db import Backend
from .fix_shop import SECRETS, Shop

POLICY: dict[str, Any] = {
    "version": 1,
    "extends": [],
    "masking": {"rules": [{"columns": ["*.ssn"], "operator": "redact"}]},
}


class Odd:
    """A row type guardeddb cannot rebuild: the result is refused, not returned raw."""

    def __init__(self, values: Any) -> None:
        self.values = values


def _odd_cursor(base: type) -> type:
    class OddCursor(base):  # type: ignore[misc]
        def fetchall(self) -> list[Odd]:
            return [Odd(r) for r in super().fetchall()]

    return OddCursor


def _cursor(backend: Backend, conn: Any) -> Any:
    if backend.name == "sqlite":
        return conn.cursor(_odd_cursor(sqlite3.Cursor))
    if backend.name == "mysql":
        return conn.cursor(_odd_cursor(pymysql.cursors.Cursor))
    conn.cursor_factory = _odd_cursor(psycopg.Cursor)
    return conn.cursor()


def test_masking_error_is_public_and_in_errors() -> None:
    assert guardeddb.MaskingError is MaskingError
    assert MaskingError.__module__ == "guardeddb"
    assert issubclass(MaskingError, guardeddb.Error)


def test_a_masking_error_is_the_drivers_error_and_pickles(backend: Backend, shop: Shop) -> None:
    """An application's cursor subclass that returns its own row type: the
    masked result is refused with a MaskingError that ``except <driver>.Error``
    catches, naming the row type, carrying no value, surviving pickle."""
    conn = guardeddb.connect(backend.url, policy=POLICY)
    try:
        cur = _cursor(backend, conn)
        cur.execute(shop.sql("SELECT id, ssn FROM {c} ORDER BY id"))
        with pytest.raises(backend.error) as caught:
            cur.fetchall()
        exc = caught.value
        assert isinstance(exc, MaskingError)
        assert exc.row_type is not None and exc.row_type.endswith("Odd")
        assert not any(s in str(exc) for s in SECRETS)
        back = pickle.loads(pickle.dumps(exc))
        assert type(back) is type(exc) and isinstance(back, backend.error)
        assert (str(back), back.row_type) == (str(exc), exc.row_type)
    finally:
        conn.rollback()
        conn.close()


@pytest.mark.parametrize("driver", ["sqlite3", "psycopg", "pymysql", None])
def test_masking_errors_pickle_plain_and_mixed(driver: str | None) -> None:
    pe = __import__(driver).ProgrammingError if driver else None
    exc = for_driver(MaskingError, pe)("cannot mask", row_type="app.Row")
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc) and back.row_type == "app.Row" and str(back) == "cannot mask"
    if pe is not None:
        assert isinstance(back, pe)


def test_driver_error_finds_the_driver_of_a_subclass() -> None:
    """An object of an unknown library leaves the class as it is."""
    raw = sqlite3.connect(":memory:")
    try:
        sub = _odd_cursor(sqlite3.Cursor)
        assert issubclass(driver_error(MaskingError, sub(raw)), sqlite3.ProgrammingError)
        assert driver_error(MaskingError, Odd(())) is MaskingError
    finally:
        raw.close()
