"""The engines' own ground truth: what the database enforces beside the policy.

The policy judges what the analyzer saw; an analyzer can be fooled (a
tokenizer that reads ``$a(')...'`` differently from SQLite's). What is
enforced here holds whatever the analyzer thought:

- SQLite: an authorizer (``set_authorizer``) on the raw connection. Every
  statement SQLite compiles reports its actions (reads, writes, DDL, ATTACH,
  PRAGMA, functions); before each guarded execute the engine is *armed* with
  the analysis the policy judged, and any action outside that analysis's
  classes (or a write, any non-read pragma, an unlisted function for a
  read-only identity) is denied by SQLite itself.
- Read-only identities: functions allowed only when known not to write,
  lock or reach outside the database (PostgreSQL: the server's own
  non-volatile functions in ``pg_proc``; MariaDB and SQLite: a reviewed list
  of built-ins; stored and application functions are refused, since their
  declared characteristics are not checked), and a read-only session that is
  re-asserted after any statement that might have changed it or a reconnect.
- The current database of MariaDB, tracked through ``USE`` and
  ``select_db()``, so table rules resolve unqualified names as the server does.
- ``limits:``: a statement timeout set on the session by guardeddb (a progress
  handler on SQLite).

Trust boundary: guardeddb's own steps (the read-only switch, dry-run
savepoints, catalog reads) run with the authorizer disarmed by scope; an
authorizer the application installs on the raw connection replaces this one
(the proxy refuses ``set_authorizer``).
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ._steps import Call, Sql, Steps
from .drivers import is_async
from .policy.decision import Decision
from .sql.catalog import TableColumns, columns_sql

if TYPE_CHECKING:
    from .drivers import ConnectionFacts, Driver
    from .sql.analysis import Analysis

__all__ = [
    "MARIADB_READ_FUNCTIONS",
    "PG_VOLATILE_ALLOWED",
    "SQLITE_READ_FUNCTIONS",
    "Engine",
    "engine_for",
    "use_database",
]


def _words(text: str) -> list[str]:
    """A reviewed list written as words, one per name."""
    return text.split()


#: PostgreSQL functions that are volatile in pg_proc yet neither write, lock
#: nor reach outside the database: reviewed one by one. Not here on purpose:
#: nextval/setval (write a sequence), txid_current (assigns a transaction id),
#: setseed (changes session state), pg_sleep (holds a backend).
PG_VOLATILE_ALLOWED = frozenset(
    {
        "random",
        "random_normal",
        "clock_timestamp",
        "timeofday",
        "gen_random_uuid",
        "uuid_generate_v4",
        "statement_timestamp",
    }
)

#: Names sqlglot gives built-ins it models itself, mapped to the server's own
#: name (looked up in the catalog) or to None: known safe whatever the
#: dialect (expression forms such as CAST that no catalog lists as a function).
_SQLGLOT_NAMES: dict[str, str | None] = {
    "cast": None,
    "try_cast": None,
    "case": None,
    "if": None,
    "current_timestamp": None,
    "current_date": None,
    "current_time": None,
    "localtimestamp": None,
    "current_user": None,
    "current_version": None,
    "session_user": None,
    "rand": "random",
    "substring": "substr",
    "json_extract": None,
    "json_extract_scalar": None,
    "jsonb_extract": None,
    "jsonb_extract_scalar": None,
    "time_to_str": None,
    "str_to_time": None,
    "ts_or_ds_to_timestamp": None,
    "ts_or_ds_to_date": None,
    "date_add": None,
    "date_sub": None,
    "date_diff": None,
    "array_agg": None,
    "group_concat": None,
    "string_agg": None,
    "regexp_like": None,
    "extract": None,
    "count_if": None,
    "safe_divide": None,
    "struct_extract": None,
    "array_size": None,
    "array": None,
    "unnest": None,
    "explode": None,
    "stddev": None,
    "variance": None,
}

#: SQLite built-ins (core, date, JSON, math, aggregate, window) that neither
#: write nor reach outside the database. Not here: load_extension, readfile,
#: writefile, edit, fts3_tokenizer, and any function the application
#: registered with create_function (refused for read-only identities).
SQLITE_READ_FUNCTIONS = frozenset(
    _words(
        """
        abs changes char coalesce concat concat_ws format glob hex ifnull iif instr
        last_insert_rowid length like likelihood likely lower ltrim max min nullif
        octet_length printf quote random randomblob replace round rtrim sign soundex
        sqlite_compileoption_get sqlite_compileoption_used sqlite_offset
        sqlite_source_id sqlite_version substr substring total_changes trim typeof unhex
        unicode unlikely upper zeroblob date time datetime julianday unixepoch strftime
        timediff current_date current_time current_timestamp avg count group_concat
        string_agg sum total median row_number rank dense_rank percent_rank cume_dist
        ntile lag lead first_value last_value nth_value acos acosh asin asinh atan atan2
        atanh ceil ceiling cos cosh degrees exp floor ln log log10 log2 mod pi pow power
        radians sin sinh sqrt tan tanh trunc json jsonb json_array jsonb_array
        json_array_length json_error_position json_extract jsonb_extract -> ->>
        json_insert jsonb_insert json_object jsonb_object json_patch jsonb_patch
        json_pretty json_remove jsonb_remove json_replace jsonb_replace json_set
        jsonb_set json_type json_valid json_quote json_group_array jsonb_group_array
        json_group_object jsonb_group_object json_each json_tree match
        """
    )
)

#: Functions that keep a value the session can read back later (a sequence's
#: value, LAST_INSERT_ID(expr), a setting, a lock's key, a large object):
#: refused for masked identities when the statement reads a masked column.
VALUE_STORING_FUNCTIONS = frozenset(
    _words(
        """
        setval nextval last_insert_id set_config lo_from_bytea lo_put lo_create
        lo_import pg_advisory_lock pg_advisory_xact_lock pg_try_advisory_lock
        pg_try_advisory_xact_lock pg_advisory_lock_shared pg_advisory_xact_lock_shared
        pg_try_advisory_lock_shared pg_try_advisory_xact_lock_shared pg_notify get_lock
        is_free_lock is_used_lock
        """
    )
)

#: MariaDB built-ins reviewed as read-only and deterministic enough: string,
#: math, date, JSON, aggregate, window and conversion functions. Not here:
#: GET_LOCK, RELEASE_LOCK, IS_FREE_LOCK, SLEEP, BENCHMARK, LOAD_FILE, NEXTVAL,
#: SETVAL, LASTVAL, LAST_INSERT_ID, MASTER_POS_WAIT, UUID_SHORT, SYS_*, ...
MARIADB_READ_FUNCTIONS = frozenset(
    _words(
        """
        abs acos ascii asin atan atan2 avg bin bit_and bit_count bit_length bit_or
        bit_xor cast ceil ceiling char char_length character_length chr coalesce concat
        concat_ws conv convert cos cot count crc32 date date_add date_format date_sub
        datediff day dayname dayofmonth dayofweek dayofyear degrees elt exp export_set
        extract field find_in_set floor format from_days from_unixtime greatest
        group_concat hex hour if ifnull insert instr interval isnull json_array
        json_arrayagg json_contains json_contains_path json_depth json_extract
        json_insert json_keys json_length json_merge json_merge_patch
        json_merge_preserve json_object json_objectagg json_query json_quote json_remove
        json_replace json_search json_set json_type json_unquote json_valid json_value
        last_day lcase least left length ln locate log log10 log2 lower lpad ltrim
        make_set makedate maketime max md5 microsecond mid min minute mod month
        monthname now nullif oct octet_length ord period_add period_diff pi position pow
        power quarter quote radians rand regexp_instr regexp_replace regexp_substr
        repeat replace reverse right round rpad rtrim sec_to_time second sha sha1 sha2
        sign sin soundex space sqrt std stddev stddev_pop stddev_samp str_to_date strcmp
        subdate substr substring substring_index sum sysdate tan time time_format
        time_to_sec timediff timestamp timestampadd timestampdiff to_days to_seconds
        trim truncate ucase unhex unix_timestamp upper utc_date utc_time utc_timestamp
        uuid var_pop var_samp variance week weekday weekofyear year yearweek curdate
        curtime current_date current_time current_timestamp localtime localtimestamp
        row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value
        last_value nth_value median percentile_cont percentile_disc date_diff version
        database schema user current_user
        """
    )
)

_RULE = "read-only-functions"

# SQLite authorizer action codes, by what they amount to.
_READS = frozenset(
    {sqlite3.SQLITE_READ, sqlite3.SQLITE_SELECT, getattr(sqlite3, "SQLITE_RECURSIVE", 33)}
)
_TX = frozenset({sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT})
_WRITES = frozenset({sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE})
_DDL = frozenset(
    getattr(sqlite3, name)
    for name in dir(sqlite3)
    if name.startswith(("SQLITE_CREATE_", "SQLITE_DROP_"))
) | {sqlite3.SQLITE_ALTER_TABLE, sqlite3.SQLITE_REINDEX, sqlite3.SQLITE_ANALYZE}
_ATTACH = frozenset({sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH})
_FUNCTION = sqlite3.SQLITE_FUNCTION
_PRAGMA = sqlite3.SQLITE_PRAGMA
_SCHEMA_TABLES = frozenset(
    {"sqlite_master", "sqlite_temp_master", "sqlite_schema", "sqlite_temp_schema"}
)
#: Pragmas whose argument names a table or index: they only read.
_TABLE_PRAGMAS = frozenset(
    _words(
        """
        table_info table_xinfo index_list index_info index_xinfo foreign_key_list
        """
    )
)
#: Pragmas that act even without a value (a read-only identity may not run
#: them); any other pragma without a value reads a setting.
_ACTION_PRAGMAS = frozenset(
    _words(
        """
        optimize wal_checkpoint shrink_memory incremental_vacuum
        """
    )
)


#: Statements before which MySQL and MariaDB commit the open transaction
#: (their "implicit commit" list), by kind and by class.
_IMPLICIT_COMMIT_KINDS = frozenset(
    {"begin", "lock", "unlock tables", "analyze", "optimize", "repair", "check", "flush"}
)
#: Among a statement's kinds: ``SET autocommit = 1`` (sql/settings.py)
_COMMITTING_KINDS = frozenset({"autocommit"})
_IMPLICIT_COMMIT_CLASSES = frozenset({"ddl", "dcl"})


class Engine:
    """What one guarded connection enforces beside the policy. The base class,
    for drivers guardeddb knows nothing of, enforces nothing more."""

    __slots__ = ("columns", "decisions", "facts_stale", "limits", "stale", "starting")

    def __init__(self, limits: dict[str, Any]) -> None:
        self.limits = limits
        self.stale = False  # a read-only identity's statement may have changed the session
        self.starting = False  # session_start() statements still to run
        self.facts_stale = False  # the current database changed (USE): re-read it
        # the guard's decision cache, cleared when name resolution changes
        self.decisions: dict[Any, Any] = {}
        # tables' columns from the catalog, for lineage; None: not readable
        self.columns: TableColumns | None = None

    def arm(self, analysis: Analysis, read_only: bool) -> None:
        """``analysis`` (judged allowed) is about to run for an identity that
        is (or is not) read-only. Called on every execute: keep it cheap."""
        if read_only and not self.stale and not _plain_read(analysis):
            self.stale = True
        if self.columns is not None:
            self.columns.after(analysis)

    def session_changed(self, raw: Any) -> bool:
        """Whether guardeddb's belief in the read-only session may be stale:
        after a statement that was not a plain read, or a reconnect."""
        return self.stale

    def commits_first(self, analysis: Analysis, raw: Any) -> bool:
        """Whether the server commits the open transaction before it runs
        ``analysis`` (MySQL and MariaDB do for DDL, GRANT, BEGIN, LOCK
        TABLES and table maintenance): guardeddb then commits it first
        itself, judged and recorded."""
        return False

    def reconnected(self, raw: Any) -> bool:
        """Whether the driver opened a new session since guardeddb last set
        one up (PyMySQL's ``ping(reconnect=True)``): its settings are gone."""
        return False

    def renew(self, raw: Any) -> None:
        """A new session: set it up again before the next statement."""

    def current_database(self, raw: Any) -> str | None:
        """The server's current database (after USE), read by guardeddb."""
        return None

    def reassert(self, driver: Driver, raw: Any) -> Steps[bool]:
        """Put the session back in read-only mode; False if it cannot be
        (a transaction that is already read-write)."""
        self.stale = False
        for sql in driver.read_only_statements(True):
            yield Sql(sql)
        return True

    def functions_decision(
        self, raw: Any, analysis: Analysis, decision: Decision
    ) -> Steps[Decision]:
        """For a read-only identity: ``decision``, or a block naming the
        functions not known to be read-only."""
        return decision
        yield  # pragma: no cover  (a generator)

    def refusal(self, exc: BaseException) -> Decision | None:
        """The decision behind a driver error the engine caused, if it did."""
        return None

    def session_start(self, driver: Driver) -> tuple[str, ...]:
        """Statements guardeddb runs once at connect (the policy's limits)."""
        return ()

    @contextlib.contextmanager
    def own_steps(self) -> Iterator[None]:
        """guardeddb's own statements run inside: nothing is denied."""
        yield


def _plain_read(analysis: Analysis) -> bool:
    return all(st.classes == _READ_CLASS and not st.unparsed for st in analysis.statements)


_READ_CLASS = frozenset({"read"})


def _unknown_functions(
    names: frozenset[str], known: Any, allowed_unknown: frozenset[str] = frozenset()
) -> list[str]:
    """The names neither in ``known`` (a callable: name -> bool | None) nor
    sqlglot's own safe names."""
    bad = []
    for name in sorted(names):
        if name in _SQLGLOT_NAMES:
            mapped = _SQLGLOT_NAMES[name]
            if mapped is None or known(mapped) or known(name):
                continue
        if name in allowed_unknown or known(name):
            continue
        bad.append(name)
    return bad


def _blocked(names: list[str]) -> Decision:
    return Decision(
        "block",
        _RULE,
        "functions not known to be read-only are refused for read-only identities: "
        + ", ".join(names),
    )


class SqliteEngine(Engine):
    """SQLite: the authorizer, the function allowlist, a progress-handler timeout."""

    __slots__ = (
        "allowed",
        "analysis",
        "codes",
        "denied",
        "internal",
        "read_only",
        "started",
        "timeout",
    )

    def __init__(self, raw: sqlite3.Connection, limits: dict[str, Any]) -> None:
        super().__init__(limits)
        self.analysis: Analysis | None = None
        self.read_only = False
        # the armed statement's allowed action codes, found at its first
        # authorizer call (a statement SQLite has cached compiles no more)
        self.codes: frozenset[int] | None = None
        self.internal = 0
        self.denied: str | None = None  # why the last action was denied
        # per (analysis, read_only): the action codes allowed, computed at
        # first compile; the analyses live in the analysis cache anyway
        self.allowed: dict[tuple[Analysis, bool], frozenset[int]] = {}
        self.started = 0.0  # when the running statement's first progress call came
        self.timeout = float(limits.get("statement_timeout") or 0)
        raw.set_authorizer(self._authorize)
        if self.timeout:
            raw.set_progress_handler(self._progress, 10_000)

    def arm(self, analysis: Analysis, read_only: bool) -> None:
        self.analysis = analysis
        self.read_only = read_only
        self.codes = None
        self.denied = None
        # The clock starts at the statement's first progress call (after
        # 10,000 VM steps, well under a millisecond): no clock read per execute.
        self.started = 0.0
        if self.columns is not None:
            self.columns.after(analysis)

    def session_changed(self, raw: Any) -> bool:
        return False  # query_only is enforced by the authorizer as well

    def _progress(self) -> int:
        """Abort a statement past its deadline (sqlite3 raises OperationalError
        'interrupted'); guardeddb's own steps are never interrupted."""
        if self.internal or self.analysis is None:
            return 0
        now = time.monotonic()
        if not self.started:
            self.started = now
            return 0
        if now - self.started > self.timeout:
            self.denied = (
                f"statement ran longer than the policy's statement_timeout "
                f"({self.limits['statement_timeout']}s) and was interrupted"
            )
            return 1
        return 0

    @contextlib.contextmanager
    def own_steps(self) -> Iterator[None]:
        self.internal += 1
        try:
            yield
        finally:
            self.internal -= 1

    def _codes(self, analysis: Analysis, read_only: bool) -> frozenset[int]:
        key = (analysis.key, read_only)
        codes = self.allowed.get(key)
        if codes is None:
            codes = _READS | _TX
            kinds = analysis.kinds
            if not read_only:
                classes = analysis.classes
                if analysis.unparsed:
                    # The policy allowed what it could not understand
                    # (on_unparsed: allow): nothing to hold it to.
                    codes = codes | _WRITES | _DDL | _ATTACH | {_PRAGMA}
                if "write" in classes or "ddl" in classes:
                    codes = codes | _WRITES  # DDL writes sqlite_master
                if "ddl" in classes or kinds & {"analyze", "reindex", "vacuum"}:
                    codes = codes | _DDL
                if kinds & {"attach", "detach"}:
                    codes = codes | _ATTACH
            if "pragma" in kinds:
                codes = codes | {_PRAGMA}
            if len(self.allowed) > 4096:
                self.allowed.clear()
            self.allowed[key] = codes
        return codes

    def _authorize(
        self, action: int, arg1: str | None, arg2: str | None, db: str | None, inner: str | None
    ) -> int:
        """SQLite's question for each action of a statement being compiled."""
        if self.internal:
            return sqlite3.SQLITE_OK
        analysis = self.analysis
        if analysis is None:
            return sqlite3.SQLITE_OK  # nothing guarded has run yet: guardeddb's own setup
        read_only = self.read_only
        codes = self.codes
        if codes is None:
            codes = self.codes = self._codes(analysis, read_only)
        if action in codes:
            if action == _PRAGMA:
                name = (arg1 or "").lower()
                if name in _TABLE_PRAGMAS:
                    return sqlite3.SQLITE_OK  # the argument is a table or index name
                if arg2 is not None and (read_only or name == "query_only"):
                    return self._deny(f"PRAGMA {name} = {arg2}")
                if read_only and name in _ACTION_PRAGMAS:
                    return self._deny(f"PRAGMA {name}")
            return sqlite3.SQLITE_OK
        if action in _WRITES and arg1 in _SCHEMA_TABLES:
            # SQLite's own bookkeeping (it reports these while loading the
            # schema for a pragma table); a real schema change also reports
            # its CREATE/DROP/ALTER code, which is judged on its own.
            return sqlite3.SQLITE_OK
        if action == _PRAGMA:
            name = (arg1 or "").lower()
            if name in _TABLE_PRAGMAS or (arg2 is None and name not in _ACTION_PRAGMAS):
                return sqlite3.SQLITE_OK  # reads a setting or a table's shape
        if action == _FUNCTION:
            name = (arg2 or "").lower()
            if name in SQLITE_READ_FUNCTIONS:
                return sqlite3.SQLITE_OK
            if not read_only and name in analysis.functions:
                return sqlite3.SQLITE_OK  # a function the policy saw and judged
            return self._deny(f"function {name}()")
        what = {
            _PRAGMA: f"PRAGMA {arg1}" + ("" if arg2 is None else f" = {arg2}"),
            sqlite3.SQLITE_ATTACH: "ATTACH",
            sqlite3.SQLITE_DETACH: "DETACH",
        }.get(action)
        if what is None:
            if action in _WRITES:
                what = f"a write to {arg1}"
            elif action in _DDL:
                what = f"a schema change ({arg1 or ''})"
            else:
                what = f"action {action}"
        return self._deny(what)

    def _deny(self, what: str) -> int:
        mode = "a read-only identity" if self.read_only else "the statement the policy judged"
        self.denied = f"SQLite compiled {what}, which {mode} may not do"
        return sqlite3.SQLITE_DENY

    def refusal(self, exc: BaseException) -> Decision | None:
        denied = self.denied
        if denied is None or not isinstance(exc, sqlite3.DatabaseError):
            return None
        self.denied = None
        rule = "limits" if "statement_timeout" in denied else "engine"
        return Decision("block", rule, denied)

    def functions_decision(
        self, raw: Any, analysis: Analysis, decision: Decision
    ) -> Steps[Decision]:
        bad = _unknown_functions(analysis.functions, SQLITE_READ_FUNCTIONS.__contains__)
        return _blocked(bad) if bad else decision
        yield  # pragma: no cover


class ServerEngine(Engine):
    """PostgreSQL and MariaDB: function catalogs, read-only re-assertion,
    reconnect detection, the statement timeout."""

    __slots__ = ("catalog", "driver", "module", "session", "system", "tracks_use")

    def __init__(self, driver: Driver, raw: Any, limits: dict[str, Any]) -> None:
        super().__init__(limits)
        self.driver = driver
        self.module = driver.module
        self.system = driver.system
        # function name -> read-only (True) or not; None until first needed
        self.catalog: dict[str, bool] | None = None
        self.session = self._session_id(raw)
        self.tracks_use = driver.module == "pymysql"
        self.starting = bool(self.session_start(driver))

    def _session_id(self, raw: Any) -> Any:
        try:
            if self.module == "psycopg":
                return raw.info.backend_pid
            return raw.thread_id()
        except Exception:
            return None

    def arm(self, analysis: Analysis, read_only: bool) -> None:
        if read_only and not self.stale and not _plain_read(analysis):
            self.stale = True
        if self.columns is not None:
            self.columns.after(analysis)
        if self.tracks_use:
            for st in analysis.statements:
                if st.kind == "use" or st.unparsed:
                    # unqualified names resolve elsewhere from now on: decide again
                    self.facts_stale = True
                    self.decisions.clear()

    def session_changed(self, raw: Any) -> bool:
        """A statement since the last re-assertion may have changed the
        session, or the driver reconnected (a new backend or thread id)."""
        if self.stale:
            return True
        return bool(self._session_id(raw) != self.session)

    def commits_first(self, analysis: Analysis, raw: Any) -> bool:
        return (
            self.tracks_use
            and bool(getattr(raw, "server_status", 0) & 1)  # SERVER_STATUS_IN_TRANS
            and any(
                st.kind in _IMPLICIT_COMMIT_KINDS
                or st.classes & _IMPLICIT_COMMIT_CLASSES
                or st.kinds & _COMMITTING_KINDS
                for st in analysis.statements
            )
        )

    def reconnected(self, raw: Any) -> bool:
        # psycopg never reconnects a connection; PyMySQL does on ping(True).
        return self.tracks_use and self._session_id(raw) != self.session

    def renew(self, raw: Any) -> None:
        self.session = self._session_id(raw)
        self.stale = False
        self.starting = bool(self.session_start(self.driver))
        self.facts_stale = True  # the new session starts in the database of the DSN
        self.decisions.clear()

    def reassert(self, driver: Driver, raw: Any) -> Steps[bool]:
        self.stale = False
        self.session = self._session_id(raw)
        held = True
        if driver.in_transaction(raw):
            # The open transaction keeps the mode it started with: verify it,
            # then set the session default for the transactions after it.
            held = yield from self.read_only_transaction(raw)
        for sql in driver.read_only_statements(True):
            yield Sql(sql)
        return held

    def read_only_transaction(self, raw: Any) -> Steps[bool]:
        """Whether the open transaction is read-only (MariaDB shows only the
        session default it started from)."""
        if self.module == "psycopg":
            check = "SELECT 1 WHERE current_setting('transaction_read_only') = 'on'"
        else:
            check = "SELECT 1 FROM DUAL WHERE @@session.tx_read_only = 1"
        return bool((yield Sql(check)) == 1)

    def session_start(self, driver: Driver) -> tuple[str, ...]:
        timeout = self.limits.get("statement_timeout")
        if not timeout:
            return ()
        if self.module == "psycopg":
            return (f"SET statement_timeout = {int(float(timeout) * 1000)}",)
        if self.system == "mariadb":
            return (f"SET SESSION max_statement_time = {float(timeout)}",)
        return (f"SET SESSION max_execution_time = {int(float(timeout) * 1000)}",)

    def functions_decision(
        self, raw: Any, analysis: Analysis, decision: Decision
    ) -> Steps[Decision]:
        if self.module == "psycopg":
            if self.catalog is None:
                self.catalog = yield Call(self._load_catalog, (raw,))
            catalog = self.catalog

            def known(name: str) -> bool:
                return catalog.get(name, False) or name in PG_VOLATILE_ALLOWED

        else:
            # Stored functions are refused: MariaDB does not check a routine's
            # declared characteristics (CONTAINS SQL is the default), and one
            # that only reads may still take a lock or sleep.
            def known(name: str) -> bool:
                return name in MARIADB_READ_FUNCTIONS

        bad = _unknown_functions(analysis.functions, known)
        return _blocked(bad) if bad else decision

    def _load_catalog(self, raw: Any) -> Any:
        """Each function name and whether every overload of it is read-only
        (PostgreSQL: not volatile; MariaDB stored functions: not MODIFIES SQL
        DATA). An asyncio connection gets a coroutine, awaited by the runner."""
        if self.module == "psycopg":
            # Only the server's own functions: a STABLE function of an
            # application schema may call a volatile one (PostgreSQL does not
            # check), e.g. take an advisory lock.
            sql = (
                "SELECT lower(proname), bool_and(provolatile <> 'v' AND pronamespace IN "
                "('pg_catalog'::regnamespace, 'information_schema'::regnamespace)) "
                "FROM pg_catalog.pg_proc GROUP BY lower(proname)"
            )
        else:
            sql = (
                "SELECT lower(ROUTINE_NAME), MIN(SQL_DATA_ACCESS <> 'MODIFIES SQL DATA') "
                "FROM information_schema.ROUTINES WHERE ROUTINE_TYPE = 'FUNCTION' "
                "AND ROUTINE_SCHEMA = DATABASE() GROUP BY lower(ROUTINE_NAME)"
            )
        if is_async(raw):
            return _load_async(raw, sql)
        rows = _own_query(self.driver, raw, sql)
        return {str(name): bool(ok) for name, ok in rows}

    def current_database(self, raw: Any) -> str | None:
        rows = _own_query(self.driver, raw, "SELECT DATABASE()")
        return None if not rows or rows[0][0] is None else str(rows[0][0])


def _own_query(driver: Driver, raw: Any, sql: str, params: Any = None) -> list[Any]:
    """Rows of one of guardeddb's own catalog queries, leaving no transaction
    open that was not open before (it would pin the session's mode)."""
    idle = not driver.in_transaction(raw)
    cur = raw.cursor()
    try:
        cur.execute(sql) if params is None else cur.execute(sql, params)
        return list(cur.fetchall())
    finally:
        cur.close()
        if idle and driver.in_transaction(raw):
            raw.rollback()


async def _load_async(raw: Any, sql: str) -> dict[str, bool]:
    from psycopg.pq import TransactionStatus

    idle = raw.info.transaction_status == TransactionStatus.IDLE
    cur = raw.cursor()
    try:
        await cur.execute(sql)
        return {str(name): bool(ok) for name, ok in await cur.fetchall()}
    finally:
        await cur.close()
        if idle and raw.info.transaction_status != TransactionStatus.IDLE:
            await raw.rollback()


def engine_for(driver: Driver, raw: Any, limits: dict[str, Any]) -> Engine:
    """The engine of one guarded connection."""
    engine: Engine
    if driver.module == "sqlite3" and isinstance(raw, sqlite3.Connection):
        engine = SqliteEngine(raw, limits)
    elif driver.module in ("psycopg", "pymysql"):
        engine = ServerEngine(driver, raw, limits)
    else:
        return Engine(limits)
    query = columns_sql(driver.module)
    if query is not None and not is_async(raw):

        def run(sql: str, params: tuple[Any, ...]) -> list[Any]:
            with engine.own_steps():
                return _own_query(driver, raw, sql, params)

        engine.columns = TableColumns(query, run)
    return engine


def use_database(facts: ConnectionFacts, database: str | None) -> ConnectionFacts:
    """The facts after MariaDB's ``USE database`` or ``select_db()``: unqualified
    table names now resolve in ``database``."""
    from dataclasses import replace

    if not database:
        return facts
    return replace(facts, schemas=frozenset({database.lower()}))
