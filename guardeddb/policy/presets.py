"""Built-in policies: ``agent-safe`` (the default) and ``readonly``.

Written as the same dicts a user would write in YAML, and loaded through
the same validation.
"""

from __future__ import annotations

from typing import Any

__all__ = ["DANGEROUS_FUNCTIONS", "PRESETS"]

#: Functions that reach the server's files, programs, network or other
#: sessions, run SQL of their own, or change the session's safety settings.
DANGEROUS_FUNCTIONS = [
    # PostgreSQL: server files, large objects, other servers, other sessions
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_*",
    "pg_stat_file",
    "pg_file_*",
    "pg_logdir_ls",
    "lo_import",
    "lo_export",
    "dblink*",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_promote",
    "pg_switch_wal",
    "pg_sleep*",
    "set_config",
    "query_to_xml*",
    "query_to_xmlschema",
    "cursor_to_xml*",
    # MySQL / MariaDB
    "load_file",
    "sleep",
    "benchmark",
    "sys_exec",
    "sys_eval",
    # SQLite
    "load_extension",
    "readfile",
    "writefile",
    "edit",
    "fts3_tokenizer",
]

_SAFETY_RULES: list[dict[str, Any]] = [
    {
        "id": "no-stacked-statements",
        "match": {"multiple_statements": True},
        "action": "block",
        "message": "send one statement per query (stacked statements are how injections chain)",
    },
    {
        "id": "no-dangerous-functions",
        "match": {"functions": DANGEROUS_FUNCTIONS},
        "action": "block",
        "message": "functions that reach server files, programs, other servers or "
        "session settings are not allowed",
    },
]

AGENT_SAFE: dict[str, Any] = {
    "version": 1,
    "default": "allow",
    "on_unparsed": "block",
    # Secure by default: sensitive values found in any returned text are masked.
    "masking": {"detectors": "all"},
    "rules": [
        {
            "id": "no-ddl",
            "match": {"statements": ["ddl"]},
            "action": "block",
            "message": "schema changes (CREATE, ALTER, DROP, TRUNCATE) are not allowed",
        },
        {
            "id": "no-dcl",
            "match": {"statements": ["dcl"]},
            "action": "block",
            "message": "privilege and role changes (GRANT, REVOKE, SET ROLE, "
            "SET SESSION AUTHORIZATION) are not allowed",
        },
        {
            "id": "no-admin",
            "match": {"statements": ["admin"]},
            "action": "block",
            "message": "server administration (server-side COPY, PRAGMA, ATTACH, VACUUM, "
            "transaction and session safety settings) is not allowed",
        },
        {
            "id": "write-needs-where",
            "match": {"statements": ["update", "delete"], "where": False},
            "action": "block",
            "message": "UPDATE and DELETE need a WHERE clause that is not always true",
        },
        *_SAFETY_RULES,
    ],
}

READONLY: dict[str, Any] = {
    "version": 1,
    "default": "allow",
    "on_unparsed": "block",
    "masking": {"detectors": "all"},
    "rules": [
        {
            "id": "read-only",
            "match": {"statements": ["write", "ddl", "dcl", "admin"]},
            "action": "block",
            "message": "only reads are allowed",
        },
        *_SAFETY_RULES,
    ],
}

PRESETS: dict[str, dict[str, Any]] = {"agent-safe": AGENT_SAFE, "readonly": READONLY}
