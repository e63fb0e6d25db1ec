"""A reusable PEP 249 (DB-API 2.0) compliance suite for connection objects.

It follows the checks of the public-domain ``dbapi20.py`` suite by Stuart
Bishop (the one psycopg vendors), written anew for guardeddb from the text of
PEP 249: no code of the original is reused. Unlike the original it tests a
*connection factory* rather than a driver module, so the very same checks run
against a raw driver connection and against ``guardeddb.wrap()`` of one.

Subclass :class:`PEP249Suite` in a ``test_*.py`` module and give it a
``target`` fixture returning a :class:`Target`, and call ``Target.cleanup()``
after each test.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest

#: Rows the fetch checks read back, already in sorted order.
SAMPLES = ("alder", "birch", "cedar", "hazel", "maple", "rowan")

#: The exception classes PEP 249's optional extension puts on connections.
ERROR_NAMES = (
    "Warning",
    "Error",
    "InterfaceError",
    "DatabaseError",
    "DataError",
    "OperationalError",
    "IntegrityError",
    "InternalError",
    "ProgrammingError",
    "NotSupportedError",
)


def _unchanged(conn: Any) -> Any:
    return conn


@dataclass
class Target:
    """What the suite runs against: a driver's connections, raw or wrapped.

    ``wrap`` turns each raw connection into the object under test.
    ``two_result_sets(target, cursor, table)`` makes ``cursor`` hold two
    result sets, ``COUNT(*)`` of ``table`` then its names (for ``nextset``);
    None when the driver offers no way to.
    """

    label: str
    module: ModuleType
    open_raw: Callable[[], Any]
    wrap: Callable[[Any], Any] = _unchanged
    two_result_sets: Callable[[Target, Any, str], None] | None = None
    _opened: list[Any] = field(default_factory=list)
    _drops: list[str] = field(default_factory=list)

    def connect(self) -> Any:
        """A new connection under test; ``cleanup`` closes it."""
        raw = self.open_raw()
        self._opened.append(raw)
        return self.wrap(raw)

    def new_name(self, kind: str = "TABLE") -> str:
        """A name no other run uses; ``cleanup`` drops the ``kind`` object so named."""
        name = f"pep249_{uuid.uuid4().hex[:12]}"
        self._drops.append(f"DROP {kind} IF EXISTS {name}")
        return name

    def cleanup(self) -> None:
        """End every transaction, close every connection, drop what was created."""
        for raw in self._opened:
            try:  # a test may have closed it; PyMySQL raises on a second close
                raw.rollback()  # releases the locks DROP would wait for
                raw.close()
            except Exception:
                pass
        self._opened.clear()
        if not self._drops:
            return
        raw = self.open_raw()
        try:
            cur = raw.cursor()
            for statement in self._drops:
                cur.execute(statement)
            raw.commit()
        finally:
            raw.close()
        self._drops.clear()


def markers(paramstyle: str, names: Sequence[str]) -> list[str]:
    """The placeholders for ``names`` in ``paramstyle``."""
    styles: dict[str, Callable[[int, str], str]] = {
        "qmark": lambda i, n: "?",
        "numeric": lambda i, n: f":{i + 1}",
        "named": lambda i, n: f":{n}",
        "format": lambda i, n: "%s",
        "pyformat": lambda i, n: f"%({n})s",
    }
    if paramstyle not in styles:
        pytest.fail(f"paramstyle {paramstyle!r} is none of PEP 249's five")
    return [styles[paramstyle](i, n) for i, n in enumerate(names)]


def arguments(paramstyle: str, values: Mapping[str, Any]) -> Sequence[Any] | Mapping[str, Any]:
    """``values`` as the parameters ``paramstyle`` expects: a mapping or a sequence."""
    return dict(values) if paramstyle in ("named", "pyformat") else tuple(values.values())


class PEP249Suite:
    """The checks. Each test takes the ``target`` fixture the subclass provides.

    Module-level globals (``apilevel``, constructors) are properties of the
    driver module, the same whether or not a connection is wrapped, so only
    what is reached through a connection or its cursors is checked here.
    """

    # helpers -------------------------------------------------------------

    @staticmethod
    def create(target: Target, cur: Any, rows: Sequence[str] = ()) -> str:
        """Create a one-column table holding ``rows`` (literals); its name."""
        table = target.new_name()
        cur.execute(f"CREATE TABLE {table} (name VARCHAR(20))")
        for row in rows:
            cur.execute(f"INSERT INTO {table} (name) VALUES ('{row}')")
        return table

    @staticmethod
    def names(cur: Any, table: str) -> list[str]:
        """The sorted names in ``table``."""
        cur.execute(f"SELECT name FROM {table}")
        return sorted(row[0] for row in cur.fetchall())

    def insert_with_parameters(self, target: Target, cur: Any) -> None:
        """Insert a literal row and a bound row, and read both back."""
        table = self.create(target, cur)
        cur.execute(f"INSERT INTO {table} (name) VALUES ('plain')")
        assert cur.rowcount in (-1, 1)
        style = target.module.paramstyle
        (mark,) = markers(style, ["name"])
        cur.execute(
            f"INSERT INTO {table} (name) VALUES ({mark})", arguments(style, {"name": "o'k"})
        )
        assert cur.rowcount in (-1, 1)
        assert self.names(cur, table) == ["o'k", "plain"]

    # connection ----------------------------------------------------------

    def test_exceptions_as_connection_attributes(self, target: Target) -> None:
        """The connection exposes the driver's exception classes, in PEP 249's hierarchy."""
        conn = target.connect()
        if not hasattr(conn, "Error"):
            pytest.skip("the driver does not put its exceptions on connections")
        for name in ERROR_NAMES:
            assert getattr(conn, name) is getattr(target.module, name), name
        assert issubclass(conn.Warning, Exception)
        assert issubclass(conn.Error, Exception)
        assert issubclass(conn.InterfaceError, conn.Error)
        assert issubclass(conn.DatabaseError, conn.Error)
        for name in ERROR_NAMES[4:]:
            assert issubclass(getattr(conn, name), conn.DatabaseError), name

    def test_commit(self, target: Target) -> None:
        """commit() works with nothing to commit, and makes changes visible elsewhere."""
        conn = target.connect()
        conn.commit()
        table = self.create(target, conn.cursor())
        conn.commit()
        conn.cursor().execute(f"INSERT INTO {table} (name) VALUES ('kept')")
        conn.commit()
        assert self.names(target.connect().cursor(), table) == ["kept"]

    def test_rollback(self, target: Target) -> None:
        """rollback() discards uncommitted changes, or raises NotSupportedError."""
        conn = target.connect()
        try:
            conn.rollback()
        except target.module.NotSupportedError:
            return
        cur = conn.cursor()
        table = self.create(target, cur)
        conn.commit()
        cur.execute(f"INSERT INTO {table} (name) VALUES ('gone')")
        conn.rollback()
        assert self.names(cur, table) == []

    def test_cursor(self, target: Target) -> None:
        """cursor() returns an object with PEP 249's cursor methods and attributes."""
        cur = target.connect().cursor()
        for name in ("close", "execute", "executemany", "fetchone", "fetchmany", "fetchall"):
            assert callable(getattr(cur, name)), name
        for name in ("description", "rowcount", "arraysize"):
            assert hasattr(cur, name), name

    def test_cursor_isolation(self, target: Target) -> None:
        """Cursors of one connection share its transaction: one sees the other's writes."""
        conn = target.connect()
        first, second = conn.cursor(), conn.cursor()
        table = self.create(target, first, ["shared"])
        second.execute(f"SELECT name FROM {table}")
        rows = second.fetchall()
        assert [len(r) for r in rows] == [1]
        assert rows[0][0] == "shared"

    def test_closed_connection_refuses_work(self, target: Target) -> None:
        """After conn.close(), its cursors' execute() and commit() raise the driver's Error."""
        conn = target.connect()
        cur = conn.cursor()
        conn.close()
        with pytest.raises(target.module.Error):
            cur.execute("SELECT 1")
        with pytest.raises(target.module.Error):
            conn.commit()

    def test_closed_cursor_refuses_work(self, target: Target) -> None:
        """After cursor.close(), its execute() raises the driver's Error."""
        cur = target.connect().cursor()
        cur.close()
        with pytest.raises(target.module.Error):
            cur.execute("SELECT 1")

    # description and rowcount --------------------------------------------

    def test_description(self, target: Target) -> None:
        """description is None after DDL and DML, seven items per column after a SELECT."""
        cur = target.connect().cursor()
        table = self.create(target, cur)
        assert cur.description is None
        cur.execute(f"SELECT name FROM {table}")
        description: Any = cur.description  # not narrowed to None by the assert above
        assert len(description) == 1
        assert len(description[0]) == 7
        assert description[0][0].lower() == "name"
        cur.execute(f"INSERT INTO {table} (name) VALUES ('x')")
        assert cur.description is None
        self.create(target, cur)
        assert cur.description is None

    def test_description_type_code(self, target: Target) -> None:
        """A VARCHAR column's type_code compares equal to the driver's STRING type object."""
        cur = target.connect().cursor()
        table = self.create(target, cur)
        cur.execute(f"SELECT name FROM {table}")
        assert hasattr(target.module, "STRING"), "the driver defines no STRING type object"
        assert cur.description[0][1] == target.module.STRING

    def test_rowcount(self, target: Target) -> None:
        """rowcount is the rows an INSERT wrote or a SELECT produced, or -1."""
        cur = target.connect().cursor()
        table = self.create(target, cur)
        cur.execute(f"INSERT INTO {table} (name) VALUES ('one')")
        assert cur.rowcount in (-1, 1)
        cur.execute(f"SELECT name FROM {table}")
        assert cur.rowcount in (-1, 1)

    def test_rowcount_after_non_query(self, target: Target) -> None:
        """rowcount is -1 after DDL, including after a SELECT set it."""
        cur = target.connect().cursor()
        table = self.create(target, cur)
        assert cur.rowcount == -1
        cur.execute(f"INSERT INTO {table} (name) VALUES ('one')")
        cur.execute(f"SELECT name FROM {table}")
        self.create(target, cur)
        assert cur.rowcount == -1

    # execute -------------------------------------------------------------

    def test_execute_with_parameters(self, target: Target) -> None:
        """execute() binds parameters written in the module's paramstyle."""
        self.insert_with_parameters(target, target.connect().cursor())

    def test_executemany(self, target: Target) -> None:
        """executemany() runs a statement once per parameter set; rowcount is the total or -1."""
        cur = target.connect().cursor()
        table = self.create(target, cur)
        style = target.module.paramstyle
        (mark,) = markers(style, ["name"])
        rows = [arguments(style, {"name": n}) for n in ("o'k", "plain")]
        cur.executemany(f"INSERT INTO {table} (name) VALUES ({mark})", rows)
        assert cur.rowcount in (-1, 2)
        assert self.names(cur, table) == ["o'k", "plain"]

    def test_none_round_trip(self, target: Target) -> None:
        """SQL NULL, written literally or bound as None, reads back as None."""
        cur = target.connect().cursor()
        table = self.create(target, cur)
        cur.execute(f"INSERT INTO {table} (name) VALUES (NULL)")
        style = target.module.paramstyle
        (mark,) = markers(style, ["name"])
        cur.execute(f"INSERT INTO {table} (name) VALUES ({mark})", arguments(style, {"name": None}))
        cur.execute(f"SELECT name FROM {table}")
        assert [tuple(r) for r in cur.fetchall()] == [(None,), (None,)]

    # fetching ------------------------------------------------------------

    def test_fetch_before_execute_raises(self, target: Target) -> None:
        """fetchone/fetchmany/fetchall raise the driver's Error before any execute()."""
        cur = target.connect().cursor()
        for fetch in (cur.fetchone, lambda: cur.fetchmany(4), cur.fetchall):
            with pytest.raises(target.module.Error):
                fetch()

    def test_fetch_after_non_query_raises(self, target: Target) -> None:
        """Fetching after DDL or an INSERT, which produce no rows, raises the driver's Error."""
        cur = target.connect().cursor()
        table = self.create(target, cur)
        for fetch in (cur.fetchone, lambda: cur.fetchmany(4), cur.fetchall):
            with pytest.raises(target.module.Error):
                fetch()
        cur.execute(f"INSERT INTO {table} (name) VALUES ('x')")
        for fetch in (cur.fetchone, lambda: cur.fetchmany(4), cur.fetchall):
            with pytest.raises(target.module.Error):
                fetch()

    def test_fetchone(self, target: Target) -> None:
        """fetchone() returns the next row as a sequence, then None when there is none."""
        cur = target.connect().cursor()
        table = self.create(target, cur)
        cur.execute(f"SELECT name FROM {table}")
        assert cur.fetchone() is None
        assert cur.rowcount in (-1, 0)
        cur.execute(f"INSERT INTO {table} (name) VALUES ('only')")
        cur.execute(f"SELECT name FROM {table}")
        row = cur.fetchone()
        assert len(row) == 1
        assert row[0] == "only"
        assert cur.fetchone() is None
        assert cur.rowcount in (-1, 1)

    def test_fetchmany(self, target: Target) -> None:
        """fetchmany() takes an explicit size, else arraysize; an empty list when done."""
        cur = target.connect().cursor()
        table = self.create(target, cur, SAMPLES)
        select = f"SELECT name FROM {table}"
        cur.execute(select)
        assert len(cur.fetchmany()) == 1  # arraysize defaults to 1
        cur.arraysize = 10
        assert [len(cur.fetchmany(n)) for n in (3, 4, 4)] == [3, 2, 0]
        assert cur.rowcount in (-1, 6)
        cur.arraysize = 4
        cur.execute(select)
        assert [len(cur.fetchmany()) for _ in range(3)] == [4, 2, 0]
        assert cur.rowcount in (-1, 6)
        cur.arraysize = 6
        cur.execute(select)
        assert sorted(r[0] for r in cur.fetchmany()) == list(SAMPLES)
        assert len(cur.fetchmany()) == 0
        assert cur.rowcount in (-1, 6)
        cur.execute(f"SELECT name FROM {self.create(target, cur)}")
        assert len(cur.fetchmany()) == 0
        assert cur.rowcount in (-1, 0)

    def test_fetchall(self, target: Target) -> None:
        """fetchall() returns every remaining row; an empty list when there are none."""
        cur = target.connect().cursor()
        table = self.create(target, cur, SAMPLES)
        cur.execute(f"SELECT name FROM {table}")
        rows = cur.fetchall()
        assert cur.rowcount in (-1, len(SAMPLES))
        assert sorted(r[0] for r in rows) == list(SAMPLES)
        assert len(cur.fetchall()) == 0
        assert cur.rowcount in (-1, len(SAMPLES))
        cur.execute(f"SELECT name FROM {self.create(target, cur)}")
        assert len(cur.fetchall()) == 0
        assert cur.rowcount in (-1, 0)

    def test_mixed_fetches(self, target: Target) -> None:
        """fetchone, fetchmany and fetchall share one position in the result."""
        cur = target.connect().cursor()
        table = self.create(target, cur, SAMPLES)
        cur.execute(f"SELECT name FROM {table}")
        first = [cur.fetchone()]
        two = cur.fetchmany(2)
        fourth = [cur.fetchone()]
        rest = cur.fetchall()
        assert (len(two), len(rest)) == (2, 2)
        assert cur.rowcount in (-1, 6)
        assert sorted(r[0] for r in [*first, *two, *fourth, *rest]) == list(SAMPLES)

    def test_arraysize(self, target: Target) -> None:
        """arraysize exists, defaults to 1 and can be set."""
        cur = target.connect().cursor()
        assert cur.arraysize == 1
        cur.arraysize = 7
        assert cur.arraysize == 7

    def test_setinputsizes(self, target: Target) -> None:
        """setinputsizes() is accepted and leaves the cursor working."""
        cur = target.connect().cursor()
        cur.setinputsizes((25,))
        self.insert_with_parameters(target, cur)

    def test_setoutputsize(self, target: Target) -> None:
        """setoutputsize(), with and without a column, is accepted and leaves the cursor working."""
        cur = target.connect().cursor()
        cur.setoutputsize(1000)
        cur.setoutputsize(2000, 0)
        self.insert_with_parameters(target, cur)

    def test_nextset(self, target: Target) -> None:
        """nextset() moves to the next result set, and returns None after the last."""
        cur = target.connect().cursor()
        if not hasattr(cur, "nextset"):
            pytest.skip("the driver's cursors have no nextset()")
        if target.two_result_sets is None:
            pytest.skip("no way to produce two result sets is given for this driver")
        table = self.create(target, cur, SAMPLES)
        target.two_result_sets(target, cur, table)
        assert cur.fetchone()[0] == len(SAMPLES)
        assert cur.nextset()
        assert sorted(r[0] for r in cur.fetchall()) == list(SAMPLES)
        assert cur.nextset() is None
