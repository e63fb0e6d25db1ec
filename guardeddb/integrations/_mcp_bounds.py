"""What bounds one ``guardeddb mcp`` tool call: time, size and leftover state.

An agent's statement may run for hours, return 10**8 rows or one 50 MB
cell, or take a lock meant to outlive it. The MCP server holds every call to
a deadline (the engine's own statement timeout, and a watchdog that cancels
the query on the server), reads results in batches against a row cap and a
byte budget (stopping the query on the server when the budget is spent), and
releases session-level locks after each call.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .. import drivers

__all__ = [
    "Budget",
    "Canceller",
    "Collected",
    "collect",
    "release_session_state",
    "timeout_error",
]

_log = logging.getLogger("guardeddb.mcp")

#: Rows asked of the driver at a time (fetchmany, or psycopg's stream chunk).
BATCH_ROWS = 200
_CUT = "…[cut]"


@dataclass(frozen=True)
class Budget:
    """How much of a result one call may hand the model."""

    rows: int = 100
    result_bytes: int = 256 * 1024  # the rows as JSON
    cell_bytes: int = 8 * 1024  # one cell's text (or bytes) before it is cut


@dataclass
class Collected:
    """The rows that fit the budget, and what was left out."""

    rows: list[list[Any]]
    more_rows: bool = False  # the row cap stopped the read
    over_bytes: bool = False  # the byte budget stopped the read
    cells_cut: int = 0  # cells shortened to Budget.cell_bytes

    @property
    def stopped_early(self) -> bool:
        """Whether rows were left unread (the query must be stopped on the server)."""
        return self.more_rows or self.over_bytes

    def truncation(self, budget: Budget) -> dict[str, Any] | bool:
        """``False``, or what was cut and how to ask for less."""
        if not (self.stopped_early or self.cells_cut):
            return False
        return {
            "rows": self.more_rows,
            "bytes": self.over_bytes,
            "cells": self.cells_cut,
            "hint": (
                f"at most {budget.rows} rows, {budget.result_bytes} bytes of rows and "
                f"{budget.cell_bytes} bytes per cell come back: select fewer columns, add a "
                "WHERE or a LIMIT, or take part of a long value (substr, left)"
            ),
        }


def _cell(value: Any, limit: int, to_json: Callable[[Any], Any]) -> tuple[Any, bool]:
    """A cell (already masked) as JSON, cut to about ``limit`` bytes, and
    whether it was cut. Long text and bytes are cut before they are
    converted, so a 50 MB value is never copied whole again."""
    if isinstance(value, str):
        if len(value) > limit // 4:
            data = value.encode("utf-8", "surrogatepass")
            if len(data) > limit:
                return data[:limit].decode("utf-8", "ignore") + _CUT, True
        return value, False
    if isinstance(value, bytes | bytearray | memoryview):
        keep = limit * 3 // 4
        if len(value) > keep:
            cell = to_json(bytes(value[:keep]))
            return ({**cell, "cut": True} if isinstance(cell, dict) else cell), True
        return to_json(value), False
    cell = to_json(value)
    if isinstance(cell, str | list | dict):
        text = cell if isinstance(cell, str) else json.dumps(cell, ensure_ascii=False)
        data = text.encode("utf-8", "surrogatepass")
        if len(data) > limit:
            return data[:limit].decode("utf-8", "ignore") + _CUT, True
    return cell, False


def collect(rows: Iterator[Any], budget: Budget, to_json: Callable[[Any], Any]) -> Collected:
    """Read ``rows`` (already masked) until the row cap or the byte budget;
    one row past the cap is read to know whether there were more."""
    out = Collected([])
    spent = 0
    for row in rows:
        if len(out.rows) >= budget.rows:
            out.more_rows = True
            break
        cells = []
        for value in row:
            cell, cut = _cell(value, budget.cell_bytes, to_json)
            out.cells_cut += cut
            cells.append(cell)
        size = len(json.dumps(cells, ensure_ascii=False).encode("utf-8"))
        if spent + size > budget.result_bytes and out.rows:
            out.over_bytes = True
            break
        spent += size
        out.rows.append(cells)
    return out


def batches(cur: Any) -> Iterator[Any]:
    """A cursor's rows, ``BATCH_ROWS`` at a time (never fetchall)."""
    while True:
        chunk = cur.fetchmany(BATCH_ROWS)
        if not chunk:
            return
        yield from chunk


def timeout_error(driver: drivers.Driver, exc: BaseException) -> bool:
    """Whether a driver error is the engine stopping a statement (its timeout,
    or a cancel/KILL QUERY): PostgreSQL 57014, MariaDB/MySQL 1317, 1969, 3024,
    SQLite ``interrupted``."""
    code = driver.status_code(exc)
    if code in ("57014", "1317", "1969", "3024"):
        return True
    return driver.module == "sqlite3" and "interrupted" in str(exc).lower()


class Canceller:
    """Stops the statement a connection is running, from another thread:
    psycopg's ``cancel_safe()``, MariaDB's ``KILL QUERY`` from a second
    connection, sqlite3's ``interrupt()``."""

    def __init__(self, driver: drivers.Driver, dsn: str) -> None:
        self.driver = driver
        self.dsn = dsn
        self.lock = threading.Lock()
        self.raw: Any = None  # the raw connection of the running call
        self.thread_id: int | None = None

    def attach(self, raw: Any) -> None:
        """The connection whose statements are cancelled from now on."""
        with self.lock:
            self.raw = raw
            self.thread_id = raw.thread_id() if self.driver.module == "pymysql" else None

    def cancel(self) -> None:
        """Stop whatever the attached connection is running now (no-op when idle)."""
        with self.lock:
            raw, thread_id = self.raw, self.thread_id
        if raw is None:
            return
        try:
            if self.driver.module == "sqlite3":
                raw.interrupt()
            elif self.driver.module == "psycopg":
                raw.cancel_safe(timeout=5.0)
            elif self.driver.module == "pymysql" and thread_id is not None:
                side = drivers.connect_url(self.dsn, {"connect_timeout": 5})
                try:
                    with side.cursor() as cur:
                        cur.execute("KILL QUERY %s", (int(thread_id),))
                finally:
                    side.close()
        except Exception as exc:  # the statement may have just ended; say so, do not raise
            _log.warning("guardeddb mcp: could not cancel the running statement: %s", exc)


def release_session_state(driver: drivers.Driver, raw: Any, guard: Any = None) -> None:
    """Release what a statement can hold past its transaction. PostgreSQL:
    ``DISCARD ALL`` (advisory locks, settings, temporary tables, prepared
    statements, cursors), then guardeddb's own session settings (the
    policy's limits, a read-only mode) set again at once. MariaDB: named
    locks and LOCK TABLES. Run after the call's commit or rollback, as
    guardeddb's own step (not an agent's statement)."""
    if driver.module == "psycopg":
        restore: list[str] = []
        if guard is not None:
            restore += guard.engine.session_start(driver)
            if guard.read_only is not False:
                restore += driver.read_only_statements(bool(guard.read_only))
        was = raw.autocommit
        raw.autocommit = True  # DISCARD ALL runs outside a transaction
        try:
            raw.execute("DISCARD ALL")
            for sql in restore:
                raw.execute(sql)
        finally:
            raw.autocommit = was
        return
    statements: tuple[str, ...]
    if driver.module == "pymysql":
        statements = ("SELECT RELEASE_ALL_LOCKS()", "UNLOCK TABLES")
    else:
        return
    cur = raw.cursor()
    try:
        for sql in statements:
            cur.execute(sql)
    finally:
        cur.close()
    raw.commit()
