"""Guardrails: the adversarial corpus, fail-closed analysis, policy semantics."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import guardeddb
from guardeddb import Identity, Policy, PolicyError, QueryBlocked
from guardeddb.policy import preset
from guardeddb.sql import analyze

from .corpus import CORPUS, Case
from .fix_db import Backend
from .fix_otel import Otel

DIALECT = {"p": "postgres", "m": "mysql", "s": "sqlite"}
CODE = {"sqlite": "s", "postgresql": "p", "mysql": "m"}
AGENT = Identity(user="alice@example.com", agent="support-bot")


def _sql(case: Case, code: str, table: str = "gdb_t") -> str:
    sql = case.sql.replace("{t}", table)
    return sql.replace("?", "%s") if code in "pm" else sql


def _cases(code: str, agent_safe: str | None = None, readonly: str | None = None) -> list[Case]:
    return [
        c
        for c in CORPUS
        if code in c.dialects
        and (agent_safe is None or c.agent_safe == agent_safe)
        and (readonly is None or c.readonly == readonly)
    ]


def test_corpus_is_large_and_covers_every_dialect() -> None:
    """At least 150 labelled statements, each dialect with both outcomes."""
    assert len(CORPUS) >= 150
    for code in "pms":
        assert len(_cases(code, "block")) > 40 and len(_cases(code, "allow")) > 20


@pytest.mark.parametrize(
    ("case", "code"),
    [pytest.param(c, d, id=f"{d}:{c.sql[:60]}") for c in CORPUS for d in c.dialects],
)
def test_corpus_decisions(case: Case, code: str) -> None:
    """Every corpus statement gets its labelled action under agent-safe and readonly."""
    sql = _sql(case, code)
    got_agent = preset("agent-safe").check(sql, AGENT, DIALECT[code])
    got_readonly = preset("readonly").check(sql, AGENT, DIALECT[code])
    assert (got_agent.action, got_readonly.action) == (case.agent_safe, case.readonly), (
        got_agent,
        got_readonly,
    )


def _snapshot(backend: Backend, table: str) -> list[tuple[Any, ...]]:
    raw = backend.connect_raw()
    try:
        cur = raw.cursor()
        cur.execute(f"SELECT id, name, email FROM {table} ORDER BY id")
        return [tuple(r) for r in cur.fetchall()]
    finally:
        raw.close()


@pytest.mark.parametrize("policy_name", ["agent-safe", "readonly"])
def test_blocked_statements_never_reach_the_database(
    backend: Backend, table: str, policy_name: str
) -> None:
    """Each blocked corpus statement raises before running: the table and rows are intact."""
    before = _snapshot(backend, table)
    conn = guardeddb.connect(backend.url, policy=preset(policy_name))
    cur = conn.cursor()
    code = CODE[backend.name]
    blocked = [
        c
        for c in CORPUS
        if code in c.dialects and getattr(c, policy_name.replace("-", "_")) == "block"
    ]
    assert blocked
    with guardeddb.identity(AGENT):
        for case in blocked:
            sql = _sql(case, code, table)
            params = (1, 1) if "?" in case.sql else None
            with pytest.raises(QueryBlocked) as info:
                cur.execute(sql, params) if params else cur.execute(sql)
            assert isinstance(info.value, backend.error)
            assert info.value.decision.action == "block"
    conn.close()
    assert _snapshot(backend, table) == before


def test_allowed_statements_are_not_blocked(backend: Backend, table: str) -> None:
    """Statements agent-safe and readonly both allow run (the database may still refuse)."""
    conn = guardeddb.connect(backend.url, policy=preset("readonly"))
    code = CODE[backend.name]
    with guardeddb.identity(AGENT):
        for case in _cases(code, "allow", "allow"):
            if case.sql.startswith("COPY"):
                continue  # COPY needs psycopg's copy() protocol, covered elsewhere
            cur = conn.cursor()
            sql = _sql(case, code, table)
            try:
                cur.execute(sql, (1,)) if "?" in case.sql else cur.execute(sql)
                if cur.description is not None:
                    cur.fetchall()
            except QueryBlocked:
                raise
            except backend.error:
                conn.rollback()  # e.g. RELEASE of a savepoint that does not exist
            cur.close()
    conn.rollback()
    conn.close()


def test_blocked_error_is_also_the_drivers_programming_error(backend: Backend) -> None:
    """QueryBlocked raised by a cursor is caught by ``except driver.ProgrammingError``."""
    conn = guardeddb.connect(backend.url)
    cur = conn.cursor()
    module = __import__(
        {"sqlite": "sqlite3", "postgresql": "psycopg", "mysql": "pymysql"}[backend.name]
    )
    with pytest.raises(module.ProgrammingError) as info:
        cur.execute("DROP TABLE gdb_anything")
    exc = info.value
    assert isinstance(exc, QueryBlocked) and isinstance(exc, guardeddb.Error)
    assert exc.decision.rule_id == "no-ddl"
    assert "no-ddl" in str(exc) and "schema changes" in str(exc)
    assert type(exc).__name__ == "QueryBlocked"
    conn.close()


def test_blocked_query_is_an_error_span_with_the_rule(backend: Backend, otel: Otel) -> None:
    """A blocked query leaves an ERROR span naming the rule, and no database call."""
    conn = guardeddb.connect(
        backend.url, tracer_provider=otel.tracer_provider, meter_provider=otel.meter_provider
    )
    with pytest.raises(QueryBlocked), guardeddb.identity(AGENT):
        conn.cursor().execute("DELETE FROM gdb_anything WHERE 1 = 1")
    (span,) = otel.spans()
    attrs = dict(span.attributes or {})
    assert attrs["error.type"] == "guardeddb.QueryBlocked"
    assert attrs["guardeddb.decision.action"] == "block"
    assert attrs["guardeddb.decision.rule"] == "write-needs-where"
    assert attrs["gen_ai.agent.name"] == "support-bot"
    assert "db.response.status_code" not in attrs
    conn.close()


# --- read-only sessions enforced by the database itself


READONLY_AGENTS = {
    "version": 1,
    "rules": [
        {
            "id": "agents-read-only",
            "match": {"identity": {"agent": "*"}, "statements": ["write", "ddl", "dcl", "admin"]},
            "action": "block",
            "message": "AI agents may only read",
        }
    ],
}


def test_read_only_identity_gets_a_read_only_session(backend: Backend, table: str) -> None:
    """The database refuses writes for a read-only identity even when the guard is bypassed,
    and the same connection serves a read-write identity afterwards."""
    conn = guardeddb.connect(backend.url, policy=READONLY_AGENTS)
    cur = conn.cursor()
    with guardeddb.identity(AGENT):
        cur.execute(f"SELECT count(*) FROM {table}")
        assert cur.fetchone()[0] == 3
        raw_cur = conn.__wrapped__.cursor()  # what a side-effecting function would do
        with pytest.raises(backend.error):
            raw_cur.execute(backend.sql(f"DELETE FROM {table} WHERE id = ?"), (1,))
        raw_cur.close()
        conn.rollback()
        with pytest.raises(QueryBlocked, match="AI agents may only read"):
            cur.execute(backend.sql(f"DELETE FROM {table} WHERE id = ?"), (1,))
        conn.commit()
    # A person (no agent) may write on the same connection, in a new transaction.
    with guardeddb.identity(user="dba@example.com"):
        cur.execute(backend.sql(f"DELETE FROM {table} WHERE id = ?"), (1,))
        conn.commit()
    assert [r[0] for r in _snapshot(backend, table)] == [2, 3]
    conn.close()


@pytest.mark.pg
def test_postgres_side_effecting_function_fails_for_read_only_identity(
    pg_backend: Backend,
) -> None:
    """SELECT nextval(...) is a read to the analyzer: the volatile function is
    refused for a read-only identity, and the database refuses it too."""
    import psycopg

    setup = psycopg.connect(pg_backend.url, autocommit=True)
    setup.execute("CREATE SEQUENCE IF NOT EXISTS gdb_seq")
    conn = guardeddb.connect(pg_backend.url, policy=preset("readonly"))
    with guardeddb.identity(AGENT), pytest.raises(QueryBlocked, match="nextval"):
        conn.cursor().execute("SELECT nextval('gdb_seq')")
    with guardeddb.identity(AGENT):
        conn.cursor().execute("SELECT 1")  # the session is the identity's (read-only) now
    with guardeddb.identity(AGENT), pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
        conn.__wrapped__.cursor().execute("SELECT nextval('gdb_seq')")
    conn.rollback()
    conn.close()
    setup.execute("DROP SEQUENCE gdb_seq")
    setup.close()


@pytest.mark.mysql
def test_mariadb_side_effecting_function_fails_for_read_only_identity(
    mysql_backend: Backend,
) -> None:
    """A stored function that writes passes as a read but MariaDB refuses it."""
    import pymysql

    from guardeddb.drivers import connect_url

    setup = connect_url(mysql_backend.url, {"autocommit": True})
    sc = setup.cursor()
    sc.execute("DROP FUNCTION IF EXISTS gdb_write")
    sc.execute("CREATE TABLE IF NOT EXISTS gdb_log (x INT)")
    sc.execute(
        "CREATE FUNCTION gdb_write() RETURNS INT MODIFIES SQL DATA "
        "BEGIN INSERT INTO gdb_log VALUES (1); RETURN 1; END"
    )
    conn = guardeddb.wrap(connect_url(mysql_backend.url, {}), policy=preset("readonly"))
    with guardeddb.identity(AGENT), pytest.raises(pymysql.err.MySQLError):
        conn.cursor().execute("SELECT gdb_write()")
    conn.close()
    sc.execute("SELECT count(*) FROM gdb_log")
    assert sc.fetchone()[0] == 0
    sc.execute("DROP FUNCTION gdb_write")
    sc.execute("DROP TABLE gdb_log")
    setup.close()


def test_identity_switch_inside_a_transaction_is_refused(backend: Backend, table: str) -> None:
    """A read-only identity never runs inside a transaction a writer opened."""
    if backend.name == "sqlite":
        pytest.skip("SQLite's query_only switches at once, inside a transaction too")
    conn = guardeddb.connect(backend.url, policy=READONLY_AGENTS)
    cur = conn.cursor()
    with guardeddb.identity(user="dba@example.com"):
        cur.execute(backend.sql(f"UPDATE {table} SET name = ? WHERE id = ?"), ("x", 1))
    with guardeddb.identity(AGENT), pytest.raises(QueryBlocked, match="commit or roll back"):
        cur.execute(f"SELECT * FROM {table}")
    conn.rollback()
    with guardeddb.identity(AGENT):
        cur.execute(f"SELECT count(*) FROM {table}")
        assert cur.fetchone()[0] == 3
    conn.close()


# --- policy semantics


def _policy(**kwargs: Any) -> Policy:
    return guardeddb.load_policy({"version": 1, "extends": [], **kwargs})


def test_first_matching_rule_wins_and_default_applies() -> None:
    """Rules are tried in file order; with none matching the default decides."""
    policy = _policy(
        default="review",
        rules=[
            {"id": "reads", "match": {"statements": ["read"]}, "action": "allow"},
            {"id": "selects", "match": {"statements": ["select"]}, "action": "block"},
        ],
    )
    assert policy.check("SELECT 1").rule_id == "reads"
    assert policy.check("INSERT INTO t VALUES (1)").action == "review"


def test_identity_matching_users_agents_roles() -> None:
    """user/agent globs, roles (any of) and roles_absent (none of)."""
    policy = _policy(
        rules=[
            {
                "id": "billing-finance-only",
                "match": {"tables": ["billing.*"], "identity": {"roles_absent": ["finance"]}},
                "action": "block",
            },
            {"id": "bots", "match": {"identity": {"agent": "*-bot"}}, "action": "warn"},
            {
                "id": "admins",
                "match": {"identity": {"user": "*@admin.example"}},
                "action": "review",
            },
        ]
    )
    q = "SELECT * FROM billing.invoices"
    assert policy.check(q, Identity(user="a", roles=frozenset({"finance"}))).action == "allow"
    assert policy.check(q, Identity(user="a", roles=frozenset({"support"}))).action == "block"
    assert policy.check("SELECT 1", Identity(agent="support-bot")).action == "warn"
    assert policy.check("SELECT 1", Identity(user="x@admin.example")).action == "review"
    assert policy.check("SELECT 1", None).action == "allow"


def test_table_patterns_schemas_and_case() -> None:
    """Schema-qualified patterns, bare names in any schema, case folding, quoting."""
    policy = _policy(rules=[{"id": "b", "match": {"tables": ["billing.*"]}, "action": "block"}])
    for sql in (
        "SELECT * FROM billing.invoices",
        "SELECT * FROM BILLING.Invoices",
        'SELECT * FROM "billing"."invoices"',
        "SELECT * FROM x JOIN billing.invoices i ON true",
        "UPDATE billing.invoices SET a = 1 WHERE id = 1",
        "SELECT * FROM (SELECT * FROM billing.invoices) s",
        "WITH c AS (SELECT * FROM billing.invoices) SELECT * FROM c",
        "SELECT * FROM invoices",  # unqualified: its schema is unknown to check()
    ):
        assert policy.check(sql).action == "block", sql
    assert policy.check("SELECT * FROM public.invoices").action == "allow"
    bare = _policy(rules=[{"id": "b", "match": {"tables": ["invoices"]}, "action": "block"}])
    assert bare.check("SELECT * FROM billing.invoices").action == "block"
    assert bare.check("SELECT * FROM invoices_archive").action == "allow"


def test_unqualified_tables_resolve_to_the_connections_schemas(backend: Backend) -> None:
    """Through a connection, an unqualified table is in its default schemas only."""
    policy = _policy(rules=[{"id": "b", "match": {"tables": ["billing.*"]}, "action": "block"}])
    conn = guardeddb.connect(backend.url, policy=policy)
    guard = conn._self_guard
    decision = guard.decide(analyze("SELECT * FROM invoices", guard.dialect), None)[0]
    # Each knows its default schemas (MySQL: the current database, tracked through USE).
    assert decision.action == "allow"
    conn.close()


def test_columns_functions_limit_where_regex() -> None:
    """columns (a star counts as every column), functions, limit, where, sql_regex."""
    policy = _policy(
        rules=[
            {"id": "ssn", "match": {"columns": ["*.ssn"]}, "action": "block"},
            {"id": "fn", "match": {"functions": ["md5"]}, "action": "review"},
            {
                "id": "nolimit",
                "match": {"statements": ["select"], "limit": False, "tables": ["big"]},
                "action": "warn",
            },
            {"id": "re", "match": {"sql_regex": "secret_[a-z]+"}, "action": "block"},
        ]
    )
    assert policy.check("SELECT ssn FROM people").rule_id == "ssn"
    assert policy.check("SELECT p.SSN AS x FROM people p").rule_id == "ssn"
    assert policy.check("SELECT * FROM people").rule_id == "ssn"
    assert policy.check("SELECT p.* FROM people p").rule_id == "ssn"
    assert policy.check("SELECT name FROM people").action == "allow"
    assert policy.check("SELECT md5(name) FROM people").rule_id == "fn"
    assert policy.check("SELECT a FROM big").rule_id == "nolimit"
    assert policy.check("SELECT a FROM big LIMIT 5").action == "allow"
    assert policy.check("SELECT secret_token FROM x").rule_id == "re"


def test_strictest_action_across_statements() -> None:
    """A text with several statements takes the strictest of their decisions."""
    policy = _policy(
        rules=[
            {"id": "w", "match": {"statements": ["insert"]}, "action": "warn"},
            {"id": "r", "match": {"statements": ["delete"]}, "action": "review"},
        ]
    )
    d = policy.check("SELECT 1; INSERT INTO t VALUES (1); DELETE FROM t WHERE id = 1")
    assert (d.action, d.rule_id) == ("review", "r")


def test_opaque_statements_match_holding_table_rules_only() -> None:
    """A command whose tables are unknown is assumed to touch them when the rule
    would block, and not when it would allow."""
    block = _policy(rules=[{"id": "b", "match": {"tables": ["billing.*"]}, "action": "block"}])
    allow = _policy(
        default="block",
        rules=[{"id": "a", "match": {"tables": ["public.*"]}, "action": "allow"}],
    )
    assert block.check("VACUUM").action == "block"
    assert allow.check("VACUUM").action == "block"


def test_on_unparsed_and_require_identity() -> None:
    """Unparsed statements follow on_unparsed; require_identity needs someone."""
    assert _policy().check("DROPP TABLE t").rule_id == "on_unparsed"
    assert _policy(on_unparsed="warn").check("DROPP TABLE t").action == "warn"
    strict = _policy(require_identity=True)
    assert strict.check("SELECT 1", None).rule_id == "require_identity"
    assert strict.check("SELECT 1", Identity(user="a")).action == "allow"
    verified = _policy(require_identity="verified")
    assert verified.check("SELECT 1", Identity(user="a")).action == "block"
    from guardeddb.identity import _minting

    minting = _minting.set(True)  # what Identity.from_jwt does
    try:
        proved = Identity(user="a", verified=True)
    finally:
        _minting.reset(minting)
    assert verified.check("SELECT 1", proved).action == "allow"


def test_extends_presets_user_rules_first() -> None:
    """extends appends the preset's rules after the policy's own."""
    policy = _policy(
        extends=["agent-safe"],
        rules=[
            {
                "id": "allow-temp-ddl",
                "match": {"tables": ["tmp_*"], "statements": ["ddl"]},
                "action": "allow",
            }
        ],
    )
    assert policy.check("CREATE TABLE tmp_x (id int)").action == "allow"
    assert policy.check("DROP TABLE customers").rule_id == "no-ddl"
    assert policy.read_only_for(None) is False
    assert preset("readonly").read_only_for(AGENT) is True
    assert guardeddb.load_policy(READONLY_AGENTS).read_only_for(AGENT) is True
    assert guardeddb.load_policy(READONLY_AGENTS).read_only_for(Identity(user="p")) is False


def test_report_mode_decides_but_blocks_nothing(backend: Backend, otel: Otel) -> None:
    """mode: report runs the query and records what enforce would have done."""
    conn = guardeddb.connect(
        backend.url,
        policy={"version": 1, "mode": "report", "extends": ["agent-safe"]},
        tracer_provider=otel.tracer_provider,
    )
    cur = conn.cursor()
    cur.execute("SELECT 1; SELECT 2" if backend.name == "postgresql" else "SELECT 1")
    cur.fetchall()
    attrs = dict(otel.spans()[0].attributes or {})
    if backend.name == "postgresql":
        assert attrs["guardeddb.decision.action"] == "block"
        assert attrs["guardeddb.decision.rule"] == "no-stacked-statements"
    conn.close()


def test_warn_runs_and_logs(backend: Backend, caplog: pytest.LogCaptureFixture) -> None:
    """warn lets the statement run and logs the rule."""
    conn = guardeddb.connect(
        backend.url,
        policy={
            "version": 1,
            "rules": [
                {
                    "id": "w",
                    "match": {"statements": ["select"]},
                    "action": "warn",
                    "message": "selects are watched",
                }
            ],
        },
    )
    with caplog.at_level(logging.WARNING, logger="guardeddb"):
        cur = conn.cursor()
        cur.execute("SELECT 1")
        assert cur.fetchone()[0] == 1
    assert "selects are watched" in caplog.text
    conn.close()


def test_review_holds_the_query(backend: Backend) -> None:
    """review refuses to run the query and says that it is held (no approval store yet)."""
    conn = guardeddb.connect(
        backend.url,
        policy={
            "version": 1,
            "rules": [{"id": "r", "match": {"statements": ["select"]}, "action": "review"}],
        },
    )
    with pytest.raises(QueryBlocked, match="held for review by rule 'r'") as info:
        conn.cursor().execute("SELECT 1")
    assert info.value.decision.action == "review"
    conn.close()


# --- policy loading errors name the file, the line and the key


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        ("version: 1\nmoed: enforce\n", 2, "moed", "unknown key 'moed'"),
        ("version: 2\n", 1, "version", "unsupported policy version"),
        ("version: 1\ndefault: maybe\n", 2, "default", "must be one of allow"),
        (
            "version: 1\nrules:\n  - id: a\n    match: {statements: [selct]}\n    action: block\n",
            4,
            "rules[0].match.statements[0]",
            "unknown statement class or kind 'selct'",
        ),
        (
            "version: 1\nrules:\n  - id: a\n    match:\n      tabels: [x]\n    action: block\n",
            5,
            "rules[0].match.tabels",
            "unknown key 'tabels'",
        ),
        (
            "version: 1\nrules:\n  - id: a\n    match: {tables: ['bad[']}\n    action: block\n",
            4,
            "rules[0].match.tables[0]",
            "bad glob",
        ),
        (
            "version: 1\nrules:\n  - id: a\n    match: {sql_regex: '('}\n    action: block\n",
            4,
            "rules[0].match.sql_regex",
            "bad regular expression",
        ),
        ("version: 1\nrules:\n  - id: a\n    action: nuke\n", 4, "rules[0].action", "must be one"),
        ("version: 1\nrules:\n  - match: {}\n    action: block\n", 3, "rules[0].id", "needs 'id'"),
        (
            "version: 1\nrules:\n  - {id: a, action: block}\n  - {id: a, action: allow}\n",
            4,
            "rules[1].id",
            "duplicate rule id",
        ),
        ("version: 1\nversion: 1\n", 2, "version", "duplicate key"),
        ("version: 1\nextends: [paranoid]\n", 2, "extends[0]", "unknown preset"),
        ("version: 1\nrules: [\n", 3, None, "invalid YAML"),
        (
            "version: 1\nrules:\n  - id: a\n    match: {where: maybe}\n    action: block\n",
            4,
            "rules[0].match.where",
            "true or false",
        ),
        ("version: 1\nmasking: {rulez: []}\n", 2, "masking.rulez", "unknown key"),
    ],
)
def test_policy_errors_name_file_line_and_key(
    tmp_path: Any, text: str, line: int, key: str | None, message: str
) -> None:
    """A bad policy is refused with the file, the line and the key."""
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        guardeddb.load_policy(str(path))
    err = info.value
    assert err.source == str(path) and err.line == line and err.key == key
    assert message in str(err)
    assert str(err).startswith(f"{path}:{line}")


def test_bad_policy_fails_before_connecting(tmp_path: Any) -> None:
    """connect() with a broken policy raises PolicyError and opens nothing."""
    path = tmp_path / "p.yaml"
    path.write_text("version: 1\nrules: 3\n")
    with pytest.raises(PolicyError, match="must be a list"):
        guardeddb.connect("sqlite:///:memory:", policy=str(path))
    with pytest.raises(PolicyError, match="cannot read policy"):
        guardeddb.load_policy(str(tmp_path / "missing.yaml"))


def test_design_example_policy_loads(tmp_path: Any) -> None:
    """The policy in DESIGN.md and the README loads as written."""
    from .test_cli import EXAMPLE_POLICY

    path = tmp_path / "policy.yaml"
    path.write_text(EXAMPLE_POLICY)
    policy = guardeddb.load_policy(str(path))
    assert [r.id for r in policy.rules][:4] == [
        "agents-read-only",
        "delete-needs-where",
        "billing-is-finance-only",
        "mass-delete-review",
    ]
    assert policy.check("DROP TABLE x", Identity(agent="bot")).rule_id == "agents-read-only"


# --- properties


_IDENT = st.from_regex(r"[a-z][a-z0-9_]{0,10}", fullmatch=True).filter(
    lambda s: s.upper() not in {"SELECT", "FROM", "WHERE", "SET", "TABLE", "VALUES", "INTO"}
)
_VALUE = st.one_of(
    st.integers(-1000, 1000).map(str),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="'\\\x00"), max_size=20).map(
        lambda s: "'" + s + "'"
    ),
)
_NOISE = st.sampled_from(["", " ", "/* c */", "\n", "  ", "-- c\n"])


@st.composite
def _write_statement(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["insert", "update", "delete", "merge_like", "cte"]))
    t, c = draw(_IDENT), draw(_IDENT)
    v = draw(_VALUE)
    n = draw(_NOISE)
    case = draw(st.sampled_from([str.upper, str.lower, str.title]))
    if kind == "insert":
        return f"{case('insert into')}{n} {t} ({c}) {case('values')} ({v})"
    if kind == "update":
        return f"{case('update')} {t}{n} {case('set')} {c} = {v} {case('where')} {c} = {v}"
    if kind == "delete":
        return f"{case('delete from')} {t} {n}{case('where')} {c} = {v}"
    if kind == "cte":
        return f"WITH d AS ({case('delete from')} {t} RETURNING *) SELECT * FROM d"
    return f"{case('insert into')} {t} {case('select')} * {case('from')} {t}"


@settings(max_examples=300, deadline=None)
@given(sql=_write_statement(), dialect=st.sampled_from(["postgres", "mysql", "sqlite"]))
def test_a_write_is_never_classified_as_a_read(sql: str, dialect: str) -> None:
    """Whatever its case, comments or values, a write is a write or is not understood."""
    analysis = analyze(sql, dialect)
    assert analysis.statements
    for statement in analysis.statements:
        assert statement.unparsed or "write" in statement.classes, (sql, statement)
    assert preset("readonly").check(sql, None, dialect).action == "block"


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200), dialect=st.sampled_from(["postgres", "mysql", "sqlite"]))
def test_arbitrary_text_is_judged_without_raising(text: str, dialect: str) -> None:
    """Any text gets a decision; what is not understood is blocked by default."""
    decision = preset("agent-safe").check(text, None, dialect)
    assert decision.action in ("allow", "block")
    if analyze(text, dialect).unparsed:
        assert decision.action == "block"


def test_sqlite_shortcuts_are_judged_as_the_statements_they_amount_to(tmp_path: Any) -> None:
    """iterdump, backup, serialize and blob writes cannot dodge the policy."""
    import sqlite3

    path = tmp_path / "shop.db"
    setup = sqlite3.connect(path)
    setup.executescript("CREATE TABLE files (data BLOB); INSERT INTO files VALUES (x'00');")
    setup.close()
    masked = guardeddb.connect(f"sqlite:///{path}", policy=preset("readonly"))
    if hasattr(masked.__wrapped__, "blobopen"):
        with pytest.raises(QueryBlocked, match="masking-raw-api"):  # bytes would skip masking
            masked.blobopen("files", "data", 1, readonly=True)
    masked.close()
    unmasked = {"version": 1, "extends": ["readonly"], "masking": {"detectors": []}}
    conn = guardeddb.connect(f"sqlite:///{path}", policy=unmasked)
    with pytest.raises(QueryBlocked, match="read-only"):
        list(conn.iterdump())
    with pytest.raises(QueryBlocked):
        conn.backup(sqlite3.connect(":memory:"))
    if hasattr(conn.__wrapped__, "serialize"):
        with pytest.raises(QueryBlocked):
            conn.serialize()
    if hasattr(conn.__wrapped__, "blobopen"):
        with pytest.raises(QueryBlocked, match="only reads"):
            conn.blobopen("files", "data", 1)
        with conn.blobopen("files", "data", 1, readonly=True) as blob:
            assert blob.read() == b"\x00"
    if hasattr(conn.__wrapped__, "enable_load_extension"):
        with pytest.raises(QueryBlocked, match="no-dangerous-functions"):
            conn.enable_load_extension(True)
    conn.close()
    permissive = guardeddb.connect(
        f"sqlite:///{path}", policy={"version": 1, "extends": [], "on_unparsed": "allow"}
    )
    assert any("CREATE TABLE files" in line for line in permissive.iterdump())
    permissive.close()


def test_own_command_fallbacks_do_not_log_but_others_still_do(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """sqlglot's 'Falling back to parsing as a Command' warning is noise for the
    statements guardeddb judges itself (SQLAlchemy's SHOW at connect), and only
    for those: the application's own sqlglot calls still log it."""
    import sqlglot

    with caplog.at_level(logging.WARNING, logger="sqlglot"):
        # One word: PostgreSQL's own parser (pglast, when installed) reads it too.
        analysis = analyze(f"SHOW gdb_{uuid.uuid4().hex}", "postgres")
        assert analysis.statements[0].kind == "show"
        assert not caplog.records
        sqlglot.parse("SHOW gdb_unrelated thing", read="postgres")
    assert any("Falling back" in r.getMessage() for r in caplog.records)


# --- #13 finding 1: a policy without extends builds on agent-safe -------------

MASKING_ONLY_YAML = """\
version: 1
masking:
  rules:
    - {columns: ["*.email"], operator: email}
"""


def _table_exists(backend: Backend, name: str) -> bool:
    raw = backend.connect_raw()
    try:
        cur = raw.cursor()
        cur.execute(f"SELECT count(*) FROM {name}")
        cur.fetchall()
        return True
    except Exception:
        return False
    finally:
        raw.close()


def test_a_masking_only_policy_file_still_refuses_ddl(
    backend: Backend, table: str, tmp_path: Path
) -> None:
    """The new user's masking-only file: its masking applies, and so does
    agent-safe underneath it, so DROP TABLE never reaches the server."""
    path = tmp_path / "policy.yaml"
    path.write_text(MASKING_ONLY_YAML)
    conn = guardeddb.connect(backend.url, policy=str(path))
    try:
        cur = conn.cursor()
        cur.execute(backend.sql(f"SELECT email FROM {table} WHERE id = ?"), (1,))
        assert [tuple(r) for r in cur.fetchall()] == [("a***@example.com",)]
        with pytest.raises(QueryBlocked) as blocked:
            cur.execute(f"DROP TABLE {table}")
        assert blocked.value.decision.rule_id == "no-ddl"
        conn.rollback()
    finally:
        conn.close()
    assert _table_exists(backend, table)


def test_extends_empty_is_the_explicit_opt_out(backend: Backend, tmp_path: Path) -> None:
    """extends: [] means only what is written: the same file then lets DDL run."""
    path = tmp_path / "policy.yaml"
    path.write_text("extends: []\n" + MASKING_ONLY_YAML)
    name = f"defaults_optout_{uuid.uuid4().hex[:10]}"
    conn = guardeddb.connect(backend.url, policy=str(path))
    try:
        conn.cursor().execute(f"CREATE TABLE {name} (id INTEGER)")
        conn.commit()
        assert _table_exists(backend, name)
        conn.cursor().execute(f"DROP TABLE {name}")
        conn.commit()
    finally:
        conn.close()
    assert not _table_exists(backend, name)


def test_a_dict_is_read_as_the_same_yaml_and_a_policy_object_as_it_is() -> None:
    """A dict is the YAML it stands for (agent-safe underneath unless it says
    extends); a Policy object was resolved when it was built and is used as is."""
    as_dict = guardeddb.load_policy({"version": 1})
    assert as_dict.extends == ("agent-safe",)
    assert [r.id for r in as_dict.rules] == [r.id for r in preset("agent-safe").rules]
    assert as_dict.check("DROP TABLE t").action == "block"
    assert guardeddb.load_policy({"version": 1, "extends": []}).check("DROP TABLE t").action == (
        "allow"
    )
    bare = Policy()  # built in code: exactly what it says, nothing inherited
    assert guardeddb.load_policy(bare) is bare and bare.check("DROP TABLE t").action == "allow"
    with pytest.raises(PolicyError, match=r"extends: \[\]"):
        guardeddb.load_policy({"version": 1, "extends": None})


def test_a_user_rule_comes_before_the_inherited_ones() -> None:
    """Written rules are tried first, so a policy can allow what agent-safe blocks."""
    policy = guardeddb.load_policy(
        {
            "version": 1,
            "rules": [
                {"id": "migrations", "match": {"identity": {"user": "migrate"}}, "action": "allow"}
            ],
        }
    )
    assert [r.id for r in policy.rules][:2] == ["migrations", "no-ddl"]
    assert policy.check("DROP TABLE t", Identity(user="migrate")).action == "allow"
    assert policy.check("DROP TABLE t", Identity(user="app")).rule_id == "no-ddl"


# --- #13 finding 2: presets by name wherever a policy is accepted -------------


def test_connect_takes_a_preset_by_name(backend: Backend, table: str) -> None:
    """policy="readonly" is the preset: reads run, the INSERT never reaches the server."""
    conn = guardeddb.connect(backend.url, policy="readonly")
    try:
        cur = conn.cursor()
        cur.execute(f"SELECT count(*) FROM {table}")
        assert cur.fetchone()[0] == 3
        with pytest.raises(QueryBlocked, match="only reads"):
            cur.execute(backend.sql(f"INSERT INTO {table} VALUES (?, ?, ?)"), (9, "x", "y"))
        conn.rollback()
    finally:
        conn.close()
    raw = backend.connect_raw()
    cur = raw.cursor()
    cur.execute(f"SELECT count(*) FROM {table}")
    assert cur.fetchone()[0] == 3
    raw.close()


def test_a_bare_preset_name_beats_a_file_of_that_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file planted in the working directory under a preset's name does not
    replace the preset; ./readonly (or a Path) reads the file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "readonly").write_text("version: 1\nextends: []\n")
    assert guardeddb.load_policy("readonly") is preset("readonly")
    assert guardeddb.load_policy("./readonly").rules == ()
    assert guardeddb.load_policy(tmp_path / "readonly").rules == ()
    with pytest.raises(PolicyError, match="cannot read policy"):
        guardeddb.load_policy("read-only")  # not a preset: a missing file


def test_every_entry_point_takes_a_preset_by_name(tmp_path: Path) -> None:
    """wrap, guard_engine, create_engine and instrument accept policy="readonly" too."""
    import sqlite3

    import sqlalchemy as sa

    from guardeddb.integrations.sqlalchemy import create_engine, guard_engine

    db = tmp_path / "x.db"
    sqlite3.connect(db).close()
    wrapped = guardeddb.wrap(sqlite3.connect(db), policy="readonly")
    with pytest.raises(QueryBlocked, match="only reads"):
        wrapped.execute("CREATE TABLE t (a)")
    wrapped.close()
    for engine in (
        guard_engine(sa.create_engine(f"sqlite:///{db}"), policy="readonly"),
        create_engine(f"sqlite:///{db}", policy="readonly"),
    ):
        with engine.connect() as conn, pytest.raises(sa.exc.ProgrammingError, match="only reads"):
            conn.execute(sa.text("CREATE TABLE t (a)"))
        engine.dispose()
    guardeddb.instrument(sqlite3, policy="readonly")
    try:
        instrumented = sqlite3.connect(db)
        with pytest.raises(QueryBlocked, match="only reads"):
            instrumented.execute("CREATE TABLE t (a)")
        instrumented.close()
    finally:
        guardeddb.uninstrument(sqlite3)
